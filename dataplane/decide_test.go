package dataplane

import (
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/conn"
	"github.com/overlayd/overlayd/plan"
)

// verdictOf is what the data path's table does with a packet from src to
// dst, in the plan's words.
func verdictOf(t *table, src, dst netip.Addr) plan.Verdict {
	d := t.lookup(dst.As4())
	if d == nil {
		if t.natted(src.As4(), dst.As4()) {
			return plan.Verdict{Action: plan.ActionNAT}
		}
		return plan.Verdict{Action: plan.ActionKernel}
	}
	switch d.kind {
	case plan.DestLocal:
		return plan.Verdict{Action: plan.ActionLocal}
	case plan.DestRemote:
		v := plan.Verdict{Action: plan.ActionEncap, Encap: d.encap, Node: d.peer.name}
		if d.encap == plan.EncapNone {
			v.Action = plan.ActionDirect
		}
		return v
	}
	return plan.Verdict{Action: plan.ActionDrop}
}

// probes are addresses worth asking about in plan p: the edges and middle
// of every pool and block, every node's address, and outside addresses.
func probes(p *plan.Plan) []netip.Addr {
	var out []netip.Addr
	edges := func(pfx netip.Prefix) {
		first := pfx.Masked().Addr()
		size := uint32(1) << (32 - pfx.Bits())
		base := u32(first)
		for _, off := range []uint32{0, 1, size / 2, size - 1} {
			out = append(out, netip.AddrFrom4([4]byte{byte((base + off) >> 24), byte((base + off) >> 16), byte((base + off) >> 8), byte(base + off)}))
		}
	}
	for _, pl := range p.Pools {
		edges(pl.CIDR)
	}
	for _, b := range p.LocalBlocks {
		edges(b.Block)
	}
	for _, r := range p.Routes {
		edges(r.Block)
	}
	out = append(out, p.Address.Addr())
	for _, peer := range p.Peers {
		out = append(out, peer.Addr)
	}
	return append(out, netip.MustParseAddr("198.18.3.10"), netip.MustParseAddr("203.0.113.7"))
}

// TestExplainAgreesWithTheDataPath walks every example cluster and every
// node, and asks `overlayd explain`'s Decide and the data path's table
// (block grids and trie both) about packets between every probe address:
// they must agree on the action, the node and the encapsulation.
func TestExplainAgreesWithTheDataPath(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "examples", "*.toml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no example clusters (%v)", err)
	}
	for _, file := range files {
		c, err := config.Load(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, node := range c.NodeNames() {
			t.Run(filepath.Base(file)+"/"+node, func(t *testing.T) {
				p, err := plan.Build(c, node, 1500)
				if err != nil {
					t.Fatal(err)
				}
				tables := map[string]*table{
					"grids": buildTable(p, [numEncaps]conn.Transport{}, true),
					"trie":  buildTable(p, [numEncaps]conn.Transport{}, false),
				}
				addrs := probes(p)
				checked := 0
				for _, src := range addrs {
					for _, dst := range addrs {
						want := p.Decide(src, dst)
						want.Dest = plan.Dest{}
						for name, tb := range tables {
							if got := verdictOf(tb, src, dst); got != want {
								t.Errorf("%s -> %s: explain says %+v, the data path's %s %+v", src, dst, want, name, got)
							}
						}
						checked++
					}
				}
				if checked == 0 {
					t.Fatal("no packets checked")
				}
			})
		}
	}
}
