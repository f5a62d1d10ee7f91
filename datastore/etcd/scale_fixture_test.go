package etcd

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/datastore/calico"
	"github.com/overlayd/overlayd/internal/etcdtest"
	"github.com/overlayd/overlayd/pool"
)

// scaleSize is the datastore the scale benchmarks run against: nodes ×
// blocks /26 blocks in one 10.0.0.0/8 VXLAN pool, and how many Sources
// watch it at once. The defaults keep `go test -bench .` quick; `make
// bench-scale` sets the issue's figures (5,000 × 20, 100 watchers).
//
//	OVERLAYD_SCALE_NODES    nodes in the datastore (default 200)
//	OVERLAYD_SCALE_BLOCKS   blocks per node (default 20)
//	OVERLAYD_SCALE_WATCHERS Sources watching at once, each its own node
//	                        (default 4; at most the nodes)
//	OVERLAYD_SCALE_STREAMS  plain etcd watches for the fan-out of etcd
//	                        alone (default 16)
type scaleSize struct {
	nodes, blocks, watchers, streams int
}

func scaleSizeFromEnv(b *testing.B) scaleSize {
	s := scaleSize{
		nodes:    benchEnvInt(b, "OVERLAYD_SCALE_NODES", 200),
		blocks:   benchEnvInt(b, "OVERLAYD_SCALE_BLOCKS", 20),
		watchers: benchEnvInt(b, "OVERLAYD_SCALE_WATCHERS", 4),
		streams:  benchEnvInt(b, "OVERLAYD_SCALE_STREAMS", 16),
	}
	if s.watchers > s.nodes {
		b.Fatalf("OVERLAYD_SCALE_WATCHERS=%d: the watchers are nodes of the datastore, of which there are %d", s.watchers, s.nodes)
	}
	return s
}

// The scale datastore's pool, as calicoctl would create the default one.
const (
	scalePoolCIDR  = "10.0.0.0/8"
	scaleBlockSize = 26
)

func scalePool(tb testing.TB) *calico.IPPool {
	tb.Helper()
	p, err := calico.NewIPPool(pool.Spec{Name: "default-ipv4-ippool", CIDR: scalePoolCIDR, VXLANMode: "CrossSubnet", NATOutgoing: true, BlockSize: scaleBlockSize},
		"uid-default-ipv4-ippool", time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC))
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// A scale node i: its name, underlay address (250 nodes to a /24, as
// plan's scaleCluster) and the labels calico-node gives it.
func scaleNodeName(i int) string { return "node-" + strconv.Itoa(i) }

func scaleNodeAddr(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i / 250), byte(10 + i%250)}), 24)
}

func scaleLabels(i int) map[string]string {
	return map[string]string{"kubernetes.io/hostname": scaleNodeName(i), "kubernetes.io/os": "linux"}
}

func scaleNodeInfo(i int, tunnel netip.Addr) calico.NodeInfo {
	return calico.NodeInfo{Name: scaleNodeName(i), Address: scaleNodeAddr(i), Labels: scaleLabels(i), VXLANTunnelAddr: tunnel}
}

// scaleLocalFile is node i's cluster file in etcd mode: its own entry
// only, with the address and labels its Node in the datastore has, so
// that its registration writes nothing.
func scaleLocalFile(tb testing.TB, endpoint string, i int) *config.Cluster {
	tb.Helper()
	src := fmt.Sprintf("[datastore]\ntype = \"etcd\"\nendpoints = [%q]\n\n[[nodes]]\nname = %q\naddress = %q\nlabels = { \"kubernetes.io/hostname\" = %q, \"kubernetes.io/os\" = \"linux\" }\n",
		endpoint, scaleNodeName(i), scaleNodeAddr(i), scaleNodeName(i))
	c, err := config.Parse("cluster.toml", []byte(src))
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// seedScale writes the scale datastore as calico-node would have left it
// after nodes joined and each claimed blocks /26 blocks: the pool; per
// node its blocks (its seeded candidates, in Calico's order, skipping those
// taken), each with its confirmed affinity, the tunnel address allocated in
// the first under calico-node's handle, the handle, and the Node with that
// tunnel address. The blocks hold no workloads. Writes go in transactions
// of etcd's default limit of 128 operations, a few at once.
func seedScale(tb testing.TB, cli *clientv3.Client, keys calico.Keys, nodes, blocks int) *calico.IPPool {
	tb.Helper()
	p := scalePool(tb)
	cidr := netip.MustParsePrefix(scalePoolCIDR)
	if have := 1 << (scaleBlockSize - cidr.Bits()); nodes*blocks > have {
		tb.Fatalf("%d nodes × %d blocks do not fit the %d /%d blocks of %s", nodes, blocks, have, scaleBlockSize, cidr)
	}
	now := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	enc := func(v any) string {
		data, err := json.Marshal(v)
		if err != nil {
			tb.Fatal(err)
		}
		return string(data)
	}
	affVal := enc(calico.Affinity{State: calico.StateConfirmed})

	const maxTxnOps = 128 // etcd's default --max-txn-ops
	txns := make(chan []clientv3.Op)
	var (
		wg      sync.WaitGroup
		errOnce sync.Once
		failed  error
	)
	for range 4 {
		wg.Go(func() {
			for ops := range txns {
				if _, err := cli.Txn(context.Background()).Then(ops...).Commit(); err != nil {
					errOnce.Do(func() { failed = err })
				}
			}
		})
	}
	var ops []clientv3.Op
	add := func(batch ...clientv3.Op) {
		for _, op := range batch {
			if len(ops) == maxTxnOps {
				txns <- ops
				ops = nil
			}
			ops = append(ops, op)
		}
	}
	add(clientv3.OpPut(keys.IPPool(p.Metadata.Name), enc(p)))

	taken := make(map[netip.Prefix]bool, nodes*blocks)
	for i := range nodes {
		name := scaleNodeName(i)
		handleID, attrs, err := calico.TunnelAllocation(name, calico.AttrTypeVXLAN)
		if err != nil {
			tb.Fatal(err)
		}
		handle := calico.NewHandle()
		var tunnel netip.Addr
		var batch []clientv3.Op
		for c := range candidates(cidr, scaleBlockSize, name) {
			if taken[c] {
				continue
			}
			taken[c] = true
			b, err := calico.NewBlock(c, name, now)
			if err != nil {
				tb.Fatal(err)
			}
			if !tunnel.IsValid() {
				addrs, err := b.Assign(1, handleID, attrs)
				if err != nil {
					tb.Fatal(err)
				}
				b.SequenceNumber++
				handle.Increment(c, 1)
				tunnel = addrs[0]
			}
			batch = append(batch, clientv3.OpPut(keys.Block(c), enc(b)), clientv3.OpPut(keys.Affinity(name, c), affVal))
			if len(batch) == 2*blocks {
				break
			}
		}
		batch = append(batch,
			clientv3.OpPut(keys.Handle(handleID), enc(handle)),
			clientv3.OpPut(keys.Node(name), enc(calico.NewNode(scaleNodeInfo(i, tunnel), "uid-"+name, now))))
		add(batch...)
	}
	txns <- ops
	close(txns)
	wg.Wait()
	if failed != nil {
		tb.Fatalf("writing the scale datastore: %v", failed)
	}
	return p
}

// TestScaleDatastore is BenchmarkScale's short version: on a small seeded
// datastore, what the benchmark relies on holds. A node's Source routes
// every block to its node and skips nothing; its registration writes
// nothing (the datastore is as calico-node leaves it, so watchers starting
// one after another do not make each other rebuild); and a node that joins
// reaches a watcher's cluster with its block.
func TestScaleDatastore(t *testing.T) {
	const nodes, blocks = 30, 3
	srv := etcdtest.Start(t)
	cli := ipamClient(t, srv)
	keys := calico.Keys{Prefix: config.DefaultDatastorePrefix}
	p := seedScale(t, cli, keys, nodes, blocks)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	seeded, err := cli.Get(ctx, keys.Nodes())
	if err != nil {
		t.Fatal(err)
	}

	local := scaleLocalFile(t, srv.Endpoint(), 0)
	s, err := OpenWith(local.Datastore, local, scaleNodeName(0), nil, Options{StateDir: t.TempDir(), BatchDelay: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st := s.Status(); st.Skipped != 0 {
		t.Errorf("%d entries skipped (last: %s), want none", st.Skipped, st.LastError)
	}
	if len(c.Nodes) != nodes {
		t.Fatalf("%d nodes, want %d", len(c.Nodes), nodes)
	}
	for _, n := range c.Nodes {
		if len(n.Blocks) != blocks || !slices.ContainsFunc(n.Blocks, func(b pool.Block) bool { return b.Prefix.Contains(n.TunnelAddr) }) {
			t.Errorf("node %s: blocks %v, tunnel address %s; want %d blocks, the tunnel address in one", n.Name, n.Blocks, n.TunnelAddr, blocks)
		}
	}
	for _, prefix := range []string{keys.Nodes(), keys.Blocks(), keys.Affinities(), keys.Handles()} {
		resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range resp.Kvs {
			if kv.ModRevision > seeded.Header.Revision {
				t.Errorf("%s was written by the registration of %s (revision %d, seeded by %d)", kv.Key, scaleNodeName(0), kv.ModRevision, seeded.Header.Revision)
			}
		}
	}

	applied := make(chan *config.Cluster, 10)
	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Watch(wctx, func(c *config.Cluster) { applied <- c }) }()
	defer func() { stop(); <-done }()
	j := &scaleJoiner{ipam: NewIPAM(cli, keys, nil), cli: cli, keys: keys, pools: []*calico.IPPool{p}, next: nodes}
	name := j.join(t)
	for {
		select {
		case c := <-applied:
			if n := c.Node(name); n != nil && len(n.Blocks) == 1 {
				return
			}
		case <-ctx.Done():
			t.Fatalf("no cluster with %s applied", name)
		}
	}
}
