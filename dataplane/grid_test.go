package dataplane

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/overlayd/overlayd/conn"
	"github.com/overlayd/overlayd/plan"
)

// TestGridsAgreeWithTrie checks the block grids against the trie they stand
// in for, over random addresses and the edges of every pool and block, and
// that the table falls back to the trie where a grid cannot answer.
func TestGridsAgreeWithTrie(t *testing.T) {
	mixed := syntheticPlan(100)
	mixed.Routes = append(mixed.Routes, plan.Route{Block: netip.MustParsePrefix("10.200.0.0/24"), Node: "peer-0", Encap: plan.EncapIPIP})
	manyPools := &plan.Plan{Node: "self", Address: netip.MustParsePrefix("198.18.0.1/16")}
	for i := range maxGrids + 1 {
		manyPools.Pools = append(manyPools.Pools, plan.PoolSummary{Name: fmt.Sprint(i), CIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16)})
	}
	emptyPool := syntheticPlan(10)
	emptyPool.Pools = append(emptyPool.Pools, plan.PoolSummary{Name: "empty", CIDR: netip.MustParsePrefix("172.16.0.0/12")})
	outside := syntheticPlan(10)
	outside.Routes = append(outside.Routes, plan.Route{Block: netip.MustParsePrefix("192.168.9.0/26"), Node: "peer-0", Encap: plan.EncapVXLAN})
	hugeGrid := &plan.Plan{Node: "self", Address: netip.MustParsePrefix("198.18.0.1/16"),
		Pools:       []plan.PoolSummary{{Name: "p", CIDR: netip.MustParsePrefix("10.0.0.0/8")}},
		LocalBlocks: []plan.LocalBlock{{Block: netip.MustParsePrefix("10.0.0.1/32"), Pool: "p"}}}

	tests := []struct {
		name      string
		plan      *plan.Plan
		wantGrids bool
	}{
		{"two pools of the examples, node-a", examplePlan(t, "two-pools.toml", "node-a"), true},
		{"two pools of the examples, node-c", examplePlan(t, "two-pools.toml", "node-c"), true},
		{"1,000 remote blocks", syntheticPlan(1000), true},
		{"a pool with no block", emptyPool, true},
		{"two block sizes in one pool: trie", mixed, false},
		{"more pools than grids: trie", manyPools, false},
		{"a block outside every pool: trie", outside, false},
		{"a /8 of /32 blocks, too big a grid: trie", hugeGrid, false},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tb := newTable(tt.plan, [numEncaps]conn.Transport{})
			trie := buildTable(tt.plan, [numEncaps]conn.Transport{}, false)
			if (tb.grids != nil) != tt.wantGrids {
				t.Fatalf("grids in use: %v, want %v", tb.grids != nil, tt.wantGrids)
			}
			var addrs [][4]byte
			edges := func(p netip.Prefix) {
				first := u32(p.Masked().Addr())
				last := first | ^netmask(p.Bits())
				for _, a := range []uint32{first - 1, first, first + 1, last - 1, last, last + 1} {
					addrs = append(addrs, [4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)})
				}
			}
			for _, p := range tt.plan.Pools {
				edges(p.CIDR)
				for range 2000 {
					a := u32(p.CIDR.Addr()) | rng.Uint32()&^netmask(p.CIDR.Bits())
					addrs = append(addrs, [4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)})
				}
			}
			for _, r := range tt.plan.Routes {
				edges(r.Block)
			}
			for _, b := range tt.plan.LocalBlocks {
				edges(b.Block)
			}
			for range 2000 {
				a := rng.Uint32()
				addrs = append(addrs, [4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)})
			}
			for _, a := range addrs {
				if got, want := describe(tb.lookup(a)), describe(trie.lookup(a)); got != want {
					t.Fatalf("lookup(%s) = %s, the trie says %s", netip.AddrFrom4(a), got, want)
				}
			}
		})
	}
}

// describe is what a lookup answered, comparable across two tables.
func describe(d *dest) string {
	if d == nil {
		return "outside every pool"
	}
	peer := ""
	if d.peer != nil {
		peer = d.peer.name
	}
	return fmt.Sprintf("kind %d encap %s peer %q", d.kind, d.encap, peer)
}
