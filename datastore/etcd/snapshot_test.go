package etcd

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/overlayd/overlayd/datastore/calico"
)

func TestSnapshotRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if _, ok, err := loadSnapshot(dir); ok || err != nil {
		t.Fatalf("no snapshot yet: ok %v, err %v; want neither", ok, err)
	}
	want := &snapshot{Prefix: "/calico", Revision: 42, Entries: map[string]snapshotEntry{
		"/calico/resources/v3/projectcalico.org/nodes/node-b": {Value: `{"kind":"Node"}`, ModRevision: 7},
		"/calico/resources/v3/projectcalico.org/nodes/bad":    {Value: "not JSON \x00", ModRevision: 8},
	}}
	for range 2 { // the second save replaces the first
		if err := saveSnapshot(dir, want); err != nil {
			t.Fatal(err)
		}
	}
	got, ok, err := loadSnapshot(dir)
	if err != nil || !ok {
		t.Fatalf("loadSnapshot: ok %v, err %v", ok, err)
	}
	if got.Prefix != want.Prefix || got.Revision != want.Revision || len(got.Entries) != len(want.Entries) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for k, v := range want.Entries {
		if got.Entries[k] != v {
			t.Errorf("%s: got %+v, want %+v", k, got.Entries[k], v)
		}
	}
	files, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 1 || files[0].Name() != SnapshotFile {
		t.Errorf("state directory holds %v, want only %s: no temporary file left", files, SnapshotFile)
	}
}

func TestSnapshotThatIsNotJSONIsAnError(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, SnapshotFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := loadSnapshot(dir); err == nil || ok {
		t.Errorf("ok %v, err %v: want an error", ok, err)
	}
}

// TestSnapshotKeepsWhatTheIndexBuilds: a start from the snapshot builds
// what the index it was taken from builds (the same pools, nodes, blocks,
// skipped keys and reasons, pools to claim from), on random datastores of
// every kind of key and malformed value.
func TestSnapshotKeepsWhatTheIndexBuilds(t *testing.T) {
	u := universe(t)
	all := slices.Sorted(maps.Keys(u))
	keys := calico.Keys{}
	local := localFile(t, "http://127.0.0.1:2379", "node-a", "198.18.1.10/24")
	for seed := range uint64(8) {
		t.Run(fmt.Sprintf("seed %d", seed), func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(seed, 3))
			ix := newIndex(keys, local, "node-a")
			for _, k := range all {
				if rnd.IntN(2) == 0 {
					continue
				}
				if e := decodeEntry(keys, k, []byte(u[k][rnd.IntN(len(u[k]))]), 7); e != nil {
					ix.put(k, e)
				}
			}
			want, err := ix.build()
			if err != nil {
				t.Fatal(err)
			}
			snap, err := snapshotOf(ix, 42)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			if err := saveSnapshot(dir, snap); err != nil {
				t.Fatal(err)
			}
			read, ok, err := loadSnapshot(dir)
			if err != nil || !ok {
				t.Fatalf("loadSnapshot: ok %v, err %v", ok, err)
			}
			entries, err := read.entries(keys)
			if err != nil {
				t.Fatal(err)
			}
			got, err := build(keys, local, "node-a", entries)
			if err != nil {
				t.Fatal(err)
			}
			if g, w := describe(got), describe(want); g != w {
				t.Errorf("from the snapshot\n%s\nwant\n%s", g, w)
			}
			if read.Revision != 42 || read.Version != snapshotVersion {
				t.Errorf("revision %d, version %d: want 42, %d", read.Revision, read.Version, snapshotVersion)
			}
			for k, e := range entries {
				if e.key.Kind == calico.KindIPPool && e.err == nil && e.modRev != 7 {
					t.Errorf("pool %s at modRevision %d, want 7: poolSignature needs it", k, e.modRev)
				}
			}
		})
	}
}

func TestSnapshotVersions(t *testing.T) {
	keys := calico.Keys{}
	l := cluster(t)
	v1 := &snapshot{Prefix: "/calico", Revision: 5, Entries: map[string]snapshotEntry{}}
	for k, v := range l.kv {
		v1.Entries[k] = snapshotEntry{Value: v, ModRevision: 3}
	}
	local := localFile(t, "http://127.0.0.1:2379", "node-a", "198.18.1.10/24")
	want := describe(mustBuild(t, l))
	tests := []struct {
		name string
		snap *snapshot
		err  string // "": read, building cluster's cluster
	}{
		{"version 1, raw values, as overlayd wrote it before", v1, ""},
		{"a version this overlayd does not know", &snapshot{Version: snapshotVersion + 1, Prefix: "/calico"}, "delete it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := saveSnapshot(dir, tt.snap); err != nil {
				t.Fatal(err)
			}
			read, _, err := loadSnapshot(dir)
			if err != nil {
				t.Fatal(err)
			}
			entries, err := read.entries(keys)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("entries: %v, want an error saying %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			b, err := build(keys, local, "node-a", entries)
			if err != nil {
				t.Fatal(err)
			}
			if got := describe(b); got != want {
				t.Errorf("built\n%s\nwant\n%s", got, want)
			}
		})
	}
}
