package plan

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/pool"
)

// scaleCluster is a cluster of nodes × blocksPerNode /26 blocks in one
// 10.0.0.0/8 VXLAN CrossSubnet pool, nodes 250 to a /24 of the underlay.
func scaleCluster(tb testing.TB, nodes, blocksPerNode int) *config.Cluster {
	tb.Helper()
	pl, err := pool.New(pool.Spec{Name: "big", CIDR: "10.0.0.0/8", VXLANMode: "CrossSubnet", NATOutgoing: true})
	if err != nil {
		tb.Fatal(err)
	}
	c := &config.Cluster{Source: "scale", Tunnel: config.Tunnel{Device: "ovl0"},
		VXLAN: config.VXLAN{VNI: config.DefaultVNI, Port: config.DefaultVXLANPort}, Pools: []*pool.IPPool{pl}}
	block := uint32(10) << 24
	for i := range nodes {
		n := &config.Node{
			Name:    fmt.Sprintf("node-%d", i),
			Address: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i / 250), byte(10 + i%250)}), 24),
			VTEPMAC: config.VTEPMACFor(fmt.Sprintf("node-%d", i)),
		}
		for range blocksPerNode {
			b := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(block >> 24), byte(block >> 16), byte(block >> 8), byte(block)}), 26)
			n.Blocks = append(n.Blocks, pool.Block{Prefix: b, Pool: pl})
			block += 64
		}
		n.TunnelAddr = n.Blocks[0].Prefix.Addr()
		c.Nodes = append(c.Nodes, n)
	}
	return c
}

// BenchmarkBuildScale is one node's plan in a cluster of 5,000 nodes with 20
// blocks each (100,000 blocks): the figure a datastore watch pays on every
// change. It reports the heap the plan keeps (MB/plan).
func BenchmarkBuildScale(b *testing.B) {
	c := scaleCluster(b, 5000, 20)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	p, err := Build(c, "node-0", 1500)
	if err != nil {
		b.Fatal(err)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(p)
	for b.Loop() {
		if _, err := Build(c, "node-0", 1500); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/1e6, "MB/plan")
}
