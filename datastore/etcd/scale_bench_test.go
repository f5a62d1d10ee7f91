package etcd

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/datastore/calico"
	"github.com/overlayd/overlayd/internal/etcdtest"
	"github.com/overlayd/overlayd/plan"
)

// scaleMTU is the underlay MTU the watchers' plans are built for.
const scaleMTU = 1500

// BenchmarkScale measures the scale figures against one embedded
// etcd holding nodes × blocks (scaleSize; 5,000 × 20 with `make
// bench-scale`), written as calico-node would have (seedScale):
//
//   - list: one node's list of the datastore (list-ms) and the cluster
//     built from it (build-ms), and the heap both keep (MB-kept: the
//     Source's index and its cluster);
//   - snapshot: one Source's snapshot of the listed datastore, taken and
//     written (ns/op; a Source writes it at most every SnapshotInterval,
//     30 s by default, and on Close), and its size (snapshot-MB);
//   - rebuild: what a watch batch of one new block (its block and affinity
//     keys, for a node that has blocks) costs a node that has listed the
//     datastore: the index's build and the comparison with the last
//     cluster (rebuild-ms, the mean of adding the block and removing it
//     again), against the build of everything (full-build-ms);
//   - load: a node's first Load (list, register, list again, build,
//     snapshot), what a restart pays;
//   - plan: plan.Build of that cluster for one node (ns/op) and the heap
//     the plan keeps (MB/plan);
//   - propagate/watchers=N: a new node claims its block (IPAM.EnsureBlocks)
//     and writes its Node, as a joining node registers; N Sources, each
//     its own node with its own client, watch, and each hands the new
//     cluster to an apply that builds its plan. Reported: the time from the
//     claim's start until a watcher's plan is built, p50 and max across
//     watchers and iterations (p50-ms, max-ms), the claim itself
//     (claim-ms), and the live heap per watcher (heap-MB/watcher: its
//     Source, cluster and plan). An iteration ends when every watcher has
//     applied, so iterations do not overlap. The latency includes the
//     Source's batch delay (100 ms, its default). All watchers share this
//     process's cores: with many watchers it measures the rebuilds queued
//     behind each other, not one node's latency;
//   - fanout/streams=N: etcd's part of the fan-out alone. N clients each
//     watch the prefix as a Source does (from the next revision, with
//     previous values); a new node joins. Reported: the time from the
//     claim's start until a stream delivers the new Node, p50 and max
//     across streams and iterations. A stream costs next to nothing here,
//     unlike a Source (heap-MB/watcher), so N can be what one etcd serves.
func BenchmarkScale(b *testing.B) {
	size := scaleSizeFromEnv(b)
	srv := etcdtest.Start(b)
	cli := ipamClient(b, srv)
	keys := calico.Keys{Prefix: config.DefaultDatastorePrefix}
	t0 := time.Now()
	p := seedScale(b, cli, keys, size.nodes, size.blocks)
	b.Logf("seeded %d nodes × %d blocks in %s", size.nodes, size.blocks, time.Since(t0).Round(time.Millisecond))
	pools := []*calico.IPPool{p}

	b.Run("list", func(b *testing.B) { benchScaleList(b, srv) })
	b.Run("snapshot", func(b *testing.B) { benchScaleSnapshot(b, srv) })
	b.Run("rebuild", func(b *testing.B) { benchScaleRebuild(b, srv) })
	b.Run("load", func(b *testing.B) { benchScaleLoad(b, srv) })
	b.Run("plan", func(b *testing.B) { benchScalePlan(b, srv) })
	joiner := &scaleJoiner{ipam: NewIPAM(cli, keys, nil), cli: cli, keys: keys, pools: pools, next: size.nodes}
	for _, n := range slices.Compact([]int{1, size.watchers}) {
		b.Run(fmt.Sprintf("propagate/watchers=%d", n), func(b *testing.B) { benchScalePropagate(b, srv, joiner, n) })
	}
	b.Run(fmt.Sprintf("fanout/streams=%d", size.streams), func(b *testing.B) { benchScaleFanout(b, srv, joiner, size.streams) })
}

// openScaleSource opens the Source of scale node i (not loaded), with its
// snapshot in a directory of its own.
func openScaleSource(b *testing.B, srv *etcdtest.Server, i int) *Source {
	b.Helper()
	local := scaleLocalFile(b, srv.Endpoint(), i)
	s, err := OpenWith(local.Datastore, local, scaleNodeName(i), nil, Options{StateDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// heapAfterGC is the live heap in bytes.
func heapAfterGC() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func benchScaleList(b *testing.B, srv *etcdtest.Server) {
	s := openScaleSource(b, srv, 0)
	ctx := context.Background()
	listBuild := func() (*index, built, time.Duration, time.Duration) {
		t0 := time.Now()
		entries, _, err := s.list(ctx)
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		ix := s.indexOf(entries)
		bl, err := ix.build()
		if err != nil {
			b.Fatal(err)
		}
		return ix, bl, t1.Sub(t0), time.Since(t1)
	}
	before := heapAfterGC()
	ix, bl, _, _ := listBuild()
	kept := float64(heapAfterGC()) - float64(before)
	b.ReportMetric(float64(len(ix.all())), "keys")
	b.ReportMetric(float64(len(bl.skipped)), "skipped")
	runtime.KeepAlive(ix)
	runtime.KeepAlive(bl)
	var listT, buildT time.Duration
	for b.Loop() {
		_, _, l, bu := listBuild()
		listT += l
		buildT += bu
	}
	b.ReportMetric(float64(listT.Microseconds())/1e3/float64(b.N), "list-ms/op")
	b.ReportMetric(float64(buildT.Microseconds())/1e3/float64(b.N), "build-ms/op")
	b.ReportMetric(kept/1e6, "MB-kept")
}

func benchScaleSnapshot(b *testing.B, srv *etcdtest.Server) {
	s := openScaleSource(b, srv, 0)
	entries, rev, err := s.list(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	ix := s.indexOf(entries)
	if _, err := ix.build(); err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	for b.Loop() {
		snap, err := snapshotOf(ix, rev)
		if err != nil {
			b.Fatal(err)
		}
		if err := saveSnapshot(dir, snap); err != nil {
			b.Fatal(err)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, SnapshotFile))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(fi.Size())/1e6, "snapshot-MB")
}

func benchScaleRebuild(b *testing.B, srv *etcdtest.Server) {
	s := openScaleSource(b, srv, 0)
	entries, _, err := s.list(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	ix := newIndex(s.keys, s.local, s.node)
	for k, e := range entries {
		ix.put(k, e)
	}
	last, err := ix.build()
	if err != nil {
		b.Fatal(err)
	}
	full := time.Since(t0)
	// A free block of the pool, for node 1.
	host := scaleNodeName(1)
	var cidr netip.Prefix
	for c := range candidates(netip.MustParsePrefix(scalePoolCIDR), scaleBlockSize, "rebuild") {
		if ix.get(s.keys.Block(c)) == nil {
			cidr = c
			break
		}
	}
	blk, err := calico.NewBlock(cidr, host, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	blockKey, affKey := s.keys.Block(cidr), s.keys.Affinity(host, cidr)
	blockVal, err := json.Marshal(blk)
	if err != nil {
		b.Fatal(err)
	}
	affVal := []byte(`{"state":"confirmed","deleted":false}`)
	rebuild := func() {
		next, err := ix.build()
		if err != nil {
			b.Fatal(err)
		}
		if sameRouting(last.cluster, next.cluster) {
			b.Fatal("a batch that adds or removes a block routes as the last")
		}
		last = next
	}
	var took time.Duration
	for b.Loop() {
		ix.put(blockKey, decodeEntry(s.keys, blockKey, blockVal, 1))
		ix.put(affKey, decodeEntry(s.keys, affKey, affVal, 1))
		t := time.Now()
		rebuild()
		took += time.Since(t)
		ix.remove(blockKey)
		ix.remove(affKey)
		t = time.Now()
		rebuild()
		took += time.Since(t)
	}
	b.ReportMetric(float64(took.Microseconds())/1e3/float64(2*b.N), "rebuild-ms")
	b.ReportMetric(float64(full.Microseconds())/1e3, "full-build-ms")
}

func benchScaleLoad(b *testing.B, srv *etcdtest.Server) {
	for b.Loop() {
		s := openScaleSource(b, srv, 0)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		if _, err := s.Load(ctx); err != nil {
			b.Fatal(err)
		}
		cancel()
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

func benchScalePlan(b *testing.B, srv *etcdtest.Server) {
	s := openScaleSource(b, srv, 0)
	entries, _, err := s.list(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	bl, err := build(s.keys, s.local, s.node, entries)
	if err != nil {
		b.Fatal(err)
	}
	c := bl.cluster
	entries = nil
	before := heapAfterGC()
	p, err := plan.Build(c, s.node, scaleMTU)
	if err != nil {
		b.Fatal(err)
	}
	kept := float64(heapAfterGC()) - float64(before)
	runtime.KeepAlive(p)
	for b.Loop() {
		if _, err := plan.Build(c, s.node, scaleMTU); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(kept/1e6, "MB/plan")
	b.ReportMetric(float64(len(c.Nodes)), "nodes")
}

// scaleJoiner adds nodes to the scale datastore as they join: node next
// claims its block and writes its Node.
type scaleJoiner struct {
	ipam  *IPAM
	cli   *clientv3.Client
	keys  calico.Keys
	pools []*calico.IPPool
	next  int
}

// join registers the next node as Source.register does (blocks, then the
// Node with the tunnel address) and returns its name.
func (j *scaleJoiner) join(b testing.TB) string {
	b.Helper()
	i := j.next
	j.next++
	ctx := context.Background()
	c, err := j.ipam.EnsureBlocks(ctx, Member{Name: scaleNodeName(i), Labels: scaleLabels(i)}, j.pools)
	if err != nil {
		b.Fatal(err)
	}
	if len(c.New) != 1 {
		b.Fatalf("%s claimed %v, want one new block", scaleNodeName(i), c.New)
	}
	data, err := json.Marshal(calico.NewNode(scaleNodeInfo(i, c.TunnelAddr), newUID(), time.Now()))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := j.cli.Put(ctx, j.keys.Node(scaleNodeName(i)), string(data)); err != nil {
		b.Fatal(err)
	}
	return scaleNodeName(i)
}

// scaleWatcher is one watching node: its Source, and what its apply saw.
type scaleWatcher struct {
	src *Source
	// awaited is the node whose arrival is timed; seen gets the time the
	// plan of the first cluster routing that node's blocks was built.
	awaited *atomic.Pointer[string]
	seen    chan time.Time
	plan    *plan.Plan // the plan in force, kept as the daemon keeps it
	last    string     // the awaited node last reported
	err     atomic.Pointer[error]
}

func (w *scaleWatcher) apply(c *config.Cluster) {
	p, err := plan.Build(c, w.src.node, scaleMTU)
	at := time.Now()
	if err != nil {
		w.err.CompareAndSwap(nil, &err)
		return
	}
	w.plan = p
	want := w.awaited.Load()
	if want == nil || *want == w.last {
		return
	}
	if n := c.Node(*want); n != nil && len(n.Blocks) > 0 {
		w.last = *want
		w.seen <- at
	}
}

func benchScalePropagate(b *testing.B, srv *etcdtest.Server, j *scaleJoiner, watchers int) {
	var awaited atomic.Pointer[string]
	ws := make([]*scaleWatcher, watchers)
	ctx, cancel := context.WithCancel(context.Background())
	var running sync.WaitGroup
	defer func() { cancel(); running.Wait() }()
	before := heapAfterGC()
	t0 := time.Now()
	for i := range ws {
		// One at a time: each first Load lists the whole datastore twice.
		s := openScaleSource(b, srv, i)
		w := &scaleWatcher{src: s, awaited: &awaited, seen: make(chan time.Time, 1)}
		lctx, lcancel := context.WithTimeout(ctx, 10*time.Minute)
		if _, err := s.Load(lctx); err != nil {
			b.Fatal(err)
		}
		lcancel()
		running.Go(func() { _ = s.Watch(ctx, w.apply) })
		ws[i] = w
	}
	b.Logf("%d watchers loaded in %s", watchers, time.Since(t0).Round(time.Millisecond))

	var latency []time.Duration
	var claim time.Duration
	for b.Loop() {
		name := scaleNodeName(j.next)
		awaited.Store(&name)
		start := time.Now()
		if got := j.join(b); got != name {
			b.Fatalf("joined %s, awaited %s", got, name)
		}
		claim += time.Since(start)
		for _, w := range ws {
			select {
			case at := <-w.seen:
				latency = append(latency, at.Sub(start))
			case <-time.After(10 * time.Minute):
				b.Fatalf("watcher %s never applied a cluster with %s", w.src.node, name)
			}
		}
	}
	for _, w := range ws {
		if err := w.err.Load(); err != nil {
			b.Fatalf("watcher %s: plan.Build: %v", w.src.node, *err)
		}
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }
	slices.Sort(latency)
	b.ReportMetric(ms(latency[len(latency)/2]), "p50-ms")
	b.ReportMetric(ms(latency[len(latency)-1]), "max-ms")
	b.ReportMetric(ms(claim)/float64(b.N), "claim-ms")
	b.ReportMetric((float64(heapAfterGC())-float64(before))/1e6/float64(watchers), "heap-MB/watcher")
}

func benchScaleFanout(b *testing.B, srv *etcdtest.Server, j *scaleJoiner, streams int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rev, err := j.cli.Get(ctx, j.keys.Node(scaleNodeName(0)))
	if err != nil {
		b.Fatal(err)
	}
	type delivery struct {
		key string
		at  time.Time
	}
	got := make([]chan delivery, streams)
	for i := range got {
		cli := ipamClient(b, srv)
		got[i] = make(chan delivery, 16)
		ch := cli.Watch(ctx, config.DefaultDatastorePrefix+"/", clientv3.WithPrefix(), clientv3.WithRev(rev.Header.Revision+1), clientv3.WithPrevKV())
		go func() {
			for resp := range ch {
				at := time.Now()
				for _, ev := range resp.Events {
					if k := string(ev.Kv.Key); strings.HasPrefix(k, j.keys.Nodes()) {
						got[i] <- delivery{k, at}
					}
				}
			}
		}()
	}
	var latency []time.Duration
	for b.Loop() {
		start := time.Now()
		key := j.keys.Node(j.join(b))
		for _, ch := range got {
			for d := range ch {
				if d.key == key {
					latency = append(latency, d.at.Sub(start))
					break
				}
			}
		}
	}
	slices.Sort(latency)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }
	b.ReportMetric(ms(latency[len(latency)/2]), "p50-ms")
	b.ReportMetric(ms(latency[len(latency)-1]), "max-ms")
}
