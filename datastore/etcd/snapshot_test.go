package etcd

import (
	"os"
	"path/filepath"
	"testing"
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
