package dataplane

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/conn"
	"github.com/overlayd/overlayd/plan"
)

func examplePlan(t testing.TB, file, node string) *plan.Plan {
	t.Helper()
	c, err := config.Load(filepath.Join("..", "examples", file))
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.Build(c, node, 1500)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func a4(s string) [4]byte { return netip.MustParseAddr(s).As4() }

func TestTableLookup(t *testing.T) {
	tb := newTable(examplePlan(t, "two-pools.toml", "node-a"), [numEncaps]conn.Transport{})
	tests := []struct {
		name      string
		dst       string
		wantKind  plan.DestKind
		wantEncap plan.Encap
		wantPeer  string
	}{
		{"own block", "192.168.0.7", plan.DestLocal, plan.EncapNone, ""},
		{"own block in the second pool", "10.1.0.9", plan.DestLocal, plan.EncapNone, ""},
		{"same subnet CrossSubnet block is direct", "192.168.0.70", plan.DestRemote, plan.EncapNone, "node-b"},
		{"IP-in-IP Always block", "10.1.0.70", plan.DestRemote, plan.EncapIPIP, "node-b"},
		{"other subnet VXLAN block", "192.168.0.130", plan.DestRemote, plan.EncapVXLAN, "node-c"},
		{"pool address in no block", "192.168.200.1", plan.DestNoBlock, plan.EncapNone, ""},
		{"outside every pool", "198.18.3.10", plan.DestOutside, plan.EncapNone, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := tb.lookup(a4(tc.dst))
			kind, encap, peerName := plan.DestOutside, plan.EncapNone, ""
			if d != nil {
				kind, encap = d.kind, d.encap
				if d.peer != nil {
					peerName = d.peer.name
				}
			}
			if kind != tc.wantKind || encap != tc.wantEncap || peerName != tc.wantPeer {
				t.Errorf("got kind %d encap %s peer %q, want %d %s %q", kind, encap, peerName, tc.wantKind, tc.wantEncap, tc.wantPeer)
			}
		})
	}
	if p := tb.peerAt(a4("198.18.2.10")); p == nil || p.name != "node-c" {
		t.Errorf("peerAt(node-c's address) = %+v", p)
	}
	if p := tb.peerAt(a4("198.18.3.10")); p != nil {
		t.Errorf("peerAt(an unknown address) = %+v, want nil", p)
	}
	if p := tb.peerAt(a4("198.18.1.10")); p != nil {
		t.Errorf("this node is not its own peer: %+v", p)
	}
	c := tb.peerAt(a4("198.18.2.10"))
	if want := config.VTEPMACFor("node-c"); string(c.mac[:]) != string(want) {
		t.Errorf("node-c's MAC %x, want %s", c.mac, want)
	}
}

// syntheticPlan has n remote /26 blocks spread over n/64+1 peers.
func syntheticPlan(n int) *plan.Plan {
	p := &plan.Plan{
		Node:    "self",
		Address: netip.MustParsePrefix("198.18.0.1/16"),
		Pools:   []plan.PoolSummary{{Name: "p", CIDR: netip.MustParsePrefix("10.0.0.0/8")}},
	}
	for i := 0; i*64 < n; i++ {
		p.Peers = append(p.Peers, plan.Peer{Name: fmt.Sprintf("peer-%d", i), Addr: netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})})
	}
	for i := range n {
		base := uint32(10)<<24 | uint32(i)<<6
		block := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(base >> 24), byte(base >> 16), byte(base >> 8), byte(base)}), 26)
		p.Routes = append(p.Routes, plan.Route{Block: block, Node: fmt.Sprintf("peer-%d", i/64), Encap: plan.EncapVXLAN})
	}
	return p
}

// addrsIn returns count addresses spread over the synthetic plan's blocks.
func addrsIn(n, count int) [][4]byte {
	out := make([][4]byte, count)
	for i := range out {
		v := uint32(10)<<24 | uint32((i*7919)%n)<<6 | 5
		out[i] = [4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
	}
	return out
}

func TestLookupAllocatesNothing(t *testing.T) {
	tb := newTable(syntheticPlan(1000), [numEncaps]conn.Transport{})
	dsts := addrsIn(1000, 64)
	allocs := testing.AllocsPerRun(100, func() {
		for _, d := range dsts {
			if tb.lookup(d) == nil {
				t.Fatal("lookup missed")
			}
		}
		_ = tb.peerAt([4]byte{198, 19, 0, 1})
	})
	if allocs != 0 {
		t.Errorf("lookup allocates %v per run, want 0", allocs)
	}
}

func BenchmarkLookup(b *testing.B) {
	for _, n := range []int{10, 1000, 100000} {
		b.Run(fmt.Sprintf("routes=%d", n), func(b *testing.B) {
			tb := newTable(syntheticPlan(n), [numEncaps]conn.Transport{})
			dsts := addrsIn(n, 1024)
			b.ReportAllocs()
			b.ResetTimer()
			i := 0
			for b.Loop() {
				if tb.lookup(dsts[i&1023]) == nil {
					b.Fatal("lookup missed")
				}
				i++
			}
		})
	}
}
