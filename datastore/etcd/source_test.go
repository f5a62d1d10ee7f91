package etcd

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/datastore/calico"
	"github.com/overlayd/overlayd/internal/etcdtest"
	"github.com/overlayd/overlayd/plan"
	"github.com/overlayd/overlayd/pool"
)

// fakeIPAM stands in for IPAM.EnsureBlocks: it records the pools it was
// given and, like a claim, writes node-a's block and affinity itself.
type fakeIPAM struct {
	mu    sync.Mutex
	calls [][]string // pool names, per call
	cli   *clientv3.Client
	t     *testing.T
	// block is claimed (written) when a pool is given; its first address
	// is the VXLAN tunnel address.
	block netip.Prefix
}

func (f *fakeIPAM) EnsureBlocks(ctx context.Context, node Member, pools []*calico.IPPool) (Claimed, error) {
	var names []string
	for _, p := range pools {
		names = append(names, p.Metadata.Name)
	}
	f.mu.Lock()
	f.calls = append(f.calls, names)
	f.mu.Unlock()
	if node.Name != "node-a" || node.Labels["zone"] == "" {
		return Claimed{}, fmt.Errorf("EnsureBlocks for %+v, want node-a with its file's labels (a zone)", node)
	}
	l := newLayout(f.t).block(f.block.String(), node.Name)
	for k, v := range l.kv {
		if _, err := f.cli.Put(ctx, k, v); err != nil {
			return Claimed{}, err
		}
	}
	return Claimed{Blocks: []netip.Prefix{f.block}, TunnelAddr: f.block.Addr(), TunnelType: calico.AttrTypeVXLAN}, nil
}

func (f *fakeIPAM) Calls() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

type harness struct {
	t        *testing.T
	etcd     *etcdtest.Server
	cli      *clientv3.Client // the test's own, as another node or calicoctl
	ipam     *fakeIPAM
	stateDir string
	log      *slog.Logger
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(testWriter(t), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	e := etcdtest.Start(t)
	cli, err := Connect(e.Datastore())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return &harness{
		t: t, etcd: e, cli: cli, log: log, stateDir: filepath.Join(t.TempDir(), "state"),
		ipam: &fakeIPAM{cli: cli, t: t, block: netip.MustParsePrefix("192.168.0.0/26")},
	}
}

// testWriter logs through t until the test ends (goroutines may outlive it
// by a moment).
func testWriter(t *testing.T) io.Writer {
	w := &tw{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return w
}

type tw struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *tw) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

// testOptions are short timeouts for tests.
func (h *harness) options() Options {
	return Options{
		StateDir: h.stateDir, StartTimeout: 500 * time.Millisecond, WaitTimeout: 1500 * time.Millisecond,
		ProbeInterval: 200 * time.Millisecond, RetryMin: 50 * time.Millisecond, RetryMax: 300 * time.Millisecond,
		LeaseTTL: 5 * time.Second, LivenessInterval: time.Second, IPAM: h.ipam,
	}
}

func (h *harness) open(o Options) *Source {
	h.t.Helper()
	local := localFile(h.t, h.etcd.Endpoint(), "node-a", "198.18.1.10/24")
	s, err := OpenWith(local.Datastore, local, "node-a", h.log, o)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { s.Close() })
	return s
}

func (h *harness) load(s *Source) *config.Cluster {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := s.Load(ctx)
	if err != nil {
		h.t.Fatalf("Load: %v", err)
	}
	return c
}

// applied collects what Watch applies.
type applied struct {
	ch      chan *config.Cluster
	running sync.Mutex // held by apply: a second call at once fails the test
	t       *testing.T
}

// watch runs s.Watch until the test ends.
func (h *harness) watch(s *Source) *applied {
	a := &applied{ch: make(chan *config.Cluster, 100), t: h.t}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Watch(ctx, func(c *config.Cluster) {
			if !a.running.TryLock() {
				a.t.Error("apply called concurrently")
				return
			}
			defer a.running.Unlock()
			a.ch <- c
		})
	}()
	h.t.Cleanup(func() { cancel(); <-done })
	return a
}

func (a *applied) next(t *testing.T, within time.Duration) *config.Cluster {
	t.Helper()
	select {
	case c := <-a.ch:
		return c
	case <-time.After(within):
		t.Fatalf("no cluster applied within %s", within)
		return nil
	}
}

func (a *applied) none(t *testing.T, during time.Duration) {
	t.Helper()
	select {
	case c := <-a.ch:
		t.Fatalf("a cluster was applied (blocks %s), want none", blocksOf(c))
	case <-time.After(during):
	}
}

// eventually polls cond until it holds or within passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (h *harness) get(key string) *clientv3.GetResponse {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := h.cli.Get(ctx, key)
	if err != nil {
		h.t.Fatal(err)
	}
	return resp
}

// vxlanCluster: a VXLAN Always pool and node-b with one block.
func vxlanCluster(t *testing.T) *layout {
	return newLayout(t).
		pool(pool.Spec{Name: "vxlan", CIDR: "192.168.0.0/16", VXLANMode: "Always"}).
		node("node-b", "198.18.1.11/24", "192.168.0.64").
		block("192.168.0.64/26", "node-b")
}

func TestLoadRegistersThisNode(t *testing.T) {
	h := newHarness(t)
	vxlanCluster(t).put(h.cli)
	s := h.open(h.options())
	c := h.load(s)

	if got, want := blocksOf(c), "node-a:192.168.0.0/26 node-b:192.168.0.64/26"; got != want {
		t.Errorf("blocks %s, want %s", got, want)
	}
	p, err := plan.Build(c, "node-a", 1500)
	if err != nil {
		t.Fatalf("plan.Build: %v", err)
	}
	if len(p.Routes) != 1 || p.Routes[0].Node != "node-b" || p.Routes[0].Encap != plan.EncapVXLAN || p.TunnelAddr != netip.MustParseAddr("192.168.0.0") {
		t.Errorf("routes %+v, tunnel %s: want 192.168.0.64/26 to node-b over VXLAN, tunnel 192.168.0.0", p.Routes, p.TunnelAddr)
	}
	if calls := h.ipam.Calls(); !slices.EqualFunc(calls, [][]string{{"vxlan"}}, slices.Equal) {
		t.Errorf("EnsureBlocks calls %v, want one with the pool", calls)
	}

	resp := h.get(calico.Keys{}.Node("node-a"))
	if len(resp.Kvs) != 1 {
		t.Fatal("node-a's Node is not in etcd")
	}
	n, err := calico.DecodeNode(resp.Kvs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	info, err := n.Info()
	if err != nil {
		t.Fatal(err)
	}
	if info.Address != netip.MustParsePrefix("198.18.1.10/24") || info.Labels["zone"] != "a" ||
		info.VXLANTunnelAddr != netip.MustParseAddr("192.168.0.0") || n.Spec.VXLANTunnelMACAddr != "" || n.Metadata.UID == "" {
		t.Errorf("node-a's Node %s: want its address with prefix, labels, tunnel address, the derived MAC left out, a uid", resp.Kvs[0].Value)
	}

	live := h.get(calico.Keys{}.Liveness("node-a"))
	if len(live.Kvs) != 1 || live.Kvs[0].Lease == 0 {
		t.Fatalf("liveness %v: want the key under a lease", live.Kvs)
	}
	if _, err := calico.DecodeLiveness(live.Kvs[0].Value); err != nil {
		t.Error(err)
	}

	st := s.Status()
	if !st.Up || st.Revision == 0 || st.Skipped != 0 {
		t.Errorf("status %+v: want up, at a revision, nothing skipped", st)
	}
	fi, err := os.Stat(filepath.Join(h.stateDir, SnapshotFile))
	if err != nil {
		t.Fatalf("no snapshot: %v", err)
	}
	di, err := os.Stat(h.stateDir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || di.Mode().Perm() != 0o700 {
		t.Errorf("snapshot %v in %v: want 0600 in 0700", fi.Mode(), di.Mode())
	}
}

func TestLoadKeepsCalicoFieldsOfAnExistingNode(t *testing.T) {
	h := newHarness(t)
	vxlanCluster(t).put(h.cli)
	old := `{"kind":"Node","apiVersion":"projectcalico.org/v3","metadata":{"name":"node-a","uid":"u-1","creationTimestamp":"2026-11-30T09:11:58Z"},` +
		`"spec":{"bgp":{"asNumber":64512,"ipv4Address":"10.0.0.1/8"},"orchRefs":[{"nodeName":"node-a","orchestrator":"k8s"}]},"status":{}}`
	if _, err := h.cli.Put(context.Background(), calico.Keys{}.Node("node-a"), old); err != nil {
		t.Fatal(err)
	}
	h.load(h.open(h.options()))
	got := string(h.get(calico.Keys{}.Node("node-a")).Kvs[0].Value)
	for _, want := range []string{`"asNumber":64512`, `"orchRefs":[{"nodeName":"node-a","orchestrator":"k8s"}]`, `"uid":"u-1"`, `"ipv4Address":"198.18.1.10/24"`, `"ipv4VXLANTunnelAddr":"192.168.0.0"`} {
		if !strings.Contains(got, want) {
			t.Errorf("node-a's Node %s\nlacks %s", got, want)
		}
	}
}

func TestWatchAppliesABurstOnce(t *testing.T) {
	h := newHarness(t)
	vxlanCluster(t).put(h.cli)
	o := h.options()
	o.BatchDelay = time.Second
	s := h.open(o)
	h.load(s)
	a := h.watch(s)

	// node-c joins with two blocks: five keys arriving one by one within
	// the batch, one cluster.
	newLayout(t).node("node-c", "198.18.2.10/24", "192.168.0.128").
		block("192.168.0.128/26", "node-c").block("192.168.0.192/26", "node-c").putSpaced(h.cli, 50*time.Millisecond)
	c := a.next(t, 3*time.Second)
	if got, want := blocksOf(c), "node-a:192.168.0.0/26 node-b:192.168.0.64/26 node-c:192.168.0.128/26 node-c:192.168.0.192/26"; got != want {
		t.Errorf("blocks %s\nwant   %s", got, want)
	}
	a.none(t, 500*time.Millisecond)
	if _, err := plan.Build(c, "node-a", 1500); err != nil {
		t.Errorf("plan.Build: %v", err)
	}

	t.Run("a change that routes alike is not applied", func(t *testing.T) {
		// A pod's address allocated in node-c's block, its handle, and a
		// liveness report: the block's value changes, its owner does not.
		l := newLayout(t)
		b, err := calico.NewBlock(netip.MustParsePrefix("192.168.0.128/26"), "node-c", l.now)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Assign(1, "k8s-pod-network.abc", nil); err != nil {
			t.Fatal(err)
		}
		l.raw(calico.Keys{}.Block(b.CIDR), l.encode(b)).
			raw(calico.Keys{}.Handle("k8s-pod-network.abc"), `{"block":{"192.168.0.128/26":1},"deleted":false}`).
			raw(calico.Keys{}.Liveness("node-c"), `{"time":"2026-11-30T09:00:00Z","uptime":1,"first_update":true}`).put(h.cli)
		a.none(t, 2*time.Second)
	})

	t.Run("a deleted node's blocks disappear", func(t *testing.T) {
		if _, err := h.cli.Delete(context.Background(), calico.Keys{}.Node("node-b")); err != nil {
			t.Fatal(err)
		}
		c := a.next(t, 3*time.Second)
		if c.Node("node-b") != nil {
			t.Error("node-b is still in the cluster")
		}
		if got, want := blocksOf(c), "node-a:192.168.0.0/26 node-c:192.168.0.128/26 node-c:192.168.0.192/26"; got != want {
			t.Errorf("blocks %s\nwant   %s", got, want)
		}
		if st := s.Status(); st.Skipped != 1 || !strings.Contains(st.LastError, "192.168.0.64/26") {
			t.Errorf("status %+v: want node-b's orphaned block skipped", st)
		}
		// Another rebuild: the orphaned block is still skipped, not counted again.
		newLayout(t).node("node-d", "198.18.2.11/24", "").put(h.cli)
		a.next(t, 3*time.Second)
		if st := s.Status(); st.Skipped != 1 {
			t.Errorf("status %+v: want the orphaned block counted once", st)
		}
	})
}

func TestWatchListsAgainAfterCompaction(t *testing.T) {
	h := newHarness(t)
	vxlanCluster(t).put(h.cli)
	s := h.open(h.options())
	h.load(s)
	// Changes made and compacted away before the watch starts: only a
	// new list can see them.
	newLayout(t).node("node-c", "198.18.2.10/24", "").block("192.168.0.128/26", "node-c").put(h.cli)
	resp, err := h.cli.Delete(context.Background(), calico.Keys{}.Node("node-b"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.cli.Compact(context.Background(), resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	a := h.watch(s)
	c := a.next(t, 3*time.Second)
	if got, want := blocksOf(c), "node-a:192.168.0.0/26 node-c:192.168.0.128/26"; got != want {
		t.Errorf("blocks %s\nwant   %s", got, want)
	}
	if st := s.Status(); !st.Up || st.Revision < resp.Header.Revision {
		t.Errorf("status %+v: want up at revision %d or later", st, resp.Header.Revision)
	}
}

func TestEtcdLostAndBack(t *testing.T) {
	h := newHarness(t)
	vxlanCluster(t).put(h.cli)
	s := h.open(h.options())
	h.load(s)
	a := h.watch(s)

	stopped := time.Now()
	h.etcd.Stop() // takes seconds: the server waits for its streams
	eventually(t, 5*time.Second, "Status says etcd is down", func() bool { return !s.Status().Up })
	st := s.Status()
	if st.LastError == "" || st.Since.Before(stopped) {
		t.Errorf("status %+v: want why and since when", st)
	}
	a.none(t, time.Second) // the last cluster stays: nothing is applied

	h.etcd.Restart()
	eventually(t, 10*time.Second, "Status says etcd is back", func() bool { return s.Status().Up })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for k, v := range newLayout(t).node("node-c", "198.18.2.10/24", "").block("192.168.0.128/26", "node-c").kv {
		if _, err := h.cli.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	c := a.next(t, 5*time.Second)
	if got, want := blocksOf(c), "node-a:192.168.0.0/26 node-b:192.168.0.64/26 node-c:192.168.0.128/26"; got != want {
		t.Errorf("blocks %s\nwant   %s", got, want)
	}
}

func TestStartFromTheSnapshot(t *testing.T) {
	h := newHarness(t)
	vxlanCluster(t).put(h.cli)
	first := h.open(h.options())
	want := h.load(first)
	first.Close()
	h.etcd.Stop()

	s := h.open(h.options())
	t0 := time.Now()
	c := h.load(s)
	if !sameRouting(c, want) {
		t.Errorf("blocks %s, want the snapshot's %s", blocksOf(c), blocksOf(want))
	}
	if d := time.Since(t0); d < h.options().StartTimeout {
		t.Errorf("started from the snapshot after %s, before StartTimeout", d)
	}
	if st := s.Status(); st.Up || st.LastError == "" {
		t.Errorf("status %+v: want down, with why", st)
	}
	calls := len(h.ipam.Calls())

	h.etcd.Restart()
	h.watch(s)
	eventually(t, 10*time.Second, "the source reaches etcd", func() bool { return s.Status().Up })
	if got := len(h.ipam.Calls()); got != calls+1 {
		t.Errorf("%d EnsureBlocks calls after etcd came back, want %d: a source started from the snapshot registers when etcd answers", got, calls+1)
	}
}

func TestStartWithoutEtcdOrSnapshotFails(t *testing.T) {
	h := newHarness(t)
	h.etcd.Stop()
	o := h.options()
	s := h.open(o)
	t0 := time.Now()
	_, err := s.Load(context.Background())
	if err == nil {
		t.Fatal("Load succeeded without etcd or a snapshot")
	}
	if d := time.Since(t0); d < o.WaitTimeout || d > o.WaitTimeout+5*time.Second {
		t.Errorf("failed after %s, want about WaitTimeout %s", d, o.WaitTimeout)
	}
	for _, want := range []string{h.etcd.Endpoint(), "no snapshot", h.stateDir, "check that etcd runs"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

func TestBlocksAreClaimedWhenAPoolAppears(t *testing.T) {
	h := newHarness(t)
	newLayout(t).node("node-b", "198.18.1.11/24", "").put(h.cli)
	s := h.open(h.options())
	c := h.load(s)
	if calls := h.ipam.Calls(); len(calls) != 0 {
		t.Errorf("EnsureBlocks called %v without pools", calls)
	}
	if len(h.get(calico.Keys{}.Node("node-a")).Kvs) != 1 || blocksOf(c) != "" {
		t.Fatalf("node-a not registered without blocks (blocks %q)", blocksOf(c))
	}
	a := h.watch(s)
	newLayout(t).pool(pool.Spec{Name: "vxlan", CIDR: "192.168.0.0/16", VXLANMode: "Always"}).put(h.cli)
	eventually(t, 5*time.Second, "node-a has a block and its tunnel address", func() bool {
		for {
			select {
			case c = <-a.ch:
			default:
				n := c.Node("node-a")
				return len(n.Blocks) == 1 && n.TunnelAddr == netip.MustParseAddr("192.168.0.0")
			}
		}
	})
	if calls := h.ipam.Calls(); !slices.EqualFunc(calls, [][]string{{"vxlan"}}, slices.Equal) {
		t.Errorf("EnsureBlocks calls %v, want one with the new pool", calls)
	}
}

func TestLivenessSurvivesALostLease(t *testing.T) {
	h := newHarness(t)
	vxlanCluster(t).put(h.cli)
	s := h.open(h.options())
	h.load(s)
	key := calico.Keys{}.Liveness("node-a")
	eventually(t, 5*time.Second, "the liveness key is written", func() bool { return len(h.get(key).Kvs) == 1 })
	lease := clientv3.LeaseID(h.get(key).Kvs[0].Lease)
	if _, err := h.cli.Revoke(context.Background(), lease); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the liveness key is back under a new lease", func() bool {
		kvs := h.get(key).Kvs
		return len(kvs) == 1 && clientv3.LeaseID(kvs[0].Lease) != lease
	})
}

func TestDeletedNodeStaysDeleted(t *testing.T) {
	h := newHarness(t)
	vxlanCluster(t).put(h.cli)
	s := h.open(h.options())
	h.load(s)
	a := h.watch(s)
	key := calico.Keys{}.Node("node-a")
	if _, err := h.cli.Delete(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	// A pool change would make a registered node claim again.
	newLayout(t).pool(pool.Spec{Name: "ipip", CIDR: "10.1.0.0/16", IPIPMode: "Always"}).put(h.cli)
	eventually(t, 5*time.Second, "the new pool is applied", func() bool {
		select {
		case c := <-a.ch:
			return len(c.Pools) == 2
		default:
			return false
		}
	})
	a.none(t, 300*time.Millisecond)
	if n := len(h.get(key).Kvs); n != 0 {
		t.Error("node-a's Node was written again after it was deleted")
	}
	if calls := h.ipam.Calls(); len(calls) != 1 {
		t.Errorf("EnsureBlocks calls %v, want only the first", calls)
	}
	eventually(t, 5*time.Second, "the liveness key is gone", func() bool { return len(h.get(calico.Keys{}.Liveness("node-a")).Kvs) == 0 })
}

func TestReloadWritesTheFilesNewLabels(t *testing.T) {
	h := newHarness(t)
	vxlanCluster(t).put(h.cli)
	path := filepath.Join(t.TempDir(), "cluster.toml")
	file := func(zone string) {
		src := fmt.Sprintf("[datastore]\ntype = \"etcd\"\nendpoints = [%q]\n\n[[nodes]]\nname = \"node-a\"\naddress = \"198.18.1.10/24\"\nlabels = { zone = %q }\n", h.etcd.Endpoint(), zone)
		if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	file("a")
	local, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := OpenWith(local.Datastore, local, "node-a", h.log, h.options())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	h.load(s)

	file("b")
	c := h.load(s) // a reload
	if got := c.Node("node-a").Labels["zone"]; got != "b" {
		t.Errorf("node-a's zone in the cluster is %q, want the file's new %q", got, "b")
	}
	n, err := calico.DecodeNode(h.get(calico.Keys{}.Node("node-a")).Kvs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	if got := n.Metadata.Labels["zone"]; got != "b" {
		t.Errorf("node-a's Node has zone %q, want the file's new %q", got, "b")
	}
}

// TestSnapshotIsWrittenAtMostEveryInterval: the first Load writes the
// snapshot; a change applied later is written once SnapshotInterval has
// passed since, or by Close, whichever comes first.
func TestSnapshotIsWrittenAtMostEveryInterval(t *testing.T) {
	tests := []struct {
		name     string
		interval time.Duration
		// byItself: the change is on disk before Close.
		byItself bool
	}{
		{"an interval that has not passed: Close writes it", time.Hour, false},
		{"an interval that passes: written without Close", 300 * time.Millisecond, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			vxlanCluster(t).put(h.cli)
			o := h.options()
			o.SnapshotInterval = tt.interval
			s := h.open(o)
			h.load(s)
			blocks := func() string {
				snap, ok, err := loadSnapshot(h.stateDir)
				if err != nil || !ok {
					t.Fatalf("the snapshot: ok %v, err %v", ok, err)
				}
				entries, err := snap.entries(calico.Keys{})
				if err != nil {
					t.Fatal(err)
				}
				b, err := build(calico.Keys{}, s.local, "node-a", entries)
				if err != nil {
					t.Fatal(err)
				}
				return blocksOf(b.cluster)
			}
			before := blocks()
			a := h.watch(s)
			newLayout(t).node("node-c", "198.18.2.10/24", "").block("192.168.0.128/26", "node-c").put(h.cli)
			c := a.next(t, 5*time.Second)
			want := blocksOf(c)
			if want == before {
				t.Fatalf("the change applied nothing new: %s", want)
			}
			if tt.byItself {
				eventually(t, 5*time.Second, "the snapshot holds the change", func() bool { return blocks() == want })
				return
			}
			time.Sleep(500 * time.Millisecond)
			if got := blocks(); got != before {
				t.Errorf("snapshot %s before Close, want the first Load's %s: one write per interval", got, before)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if got := blocks(); got != want {
				t.Errorf("snapshot %s after Close, want %s", got, want)
			}
		})
	}
}
