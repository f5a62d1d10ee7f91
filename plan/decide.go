package plan

import (
	"net/netip"
)

// DestKind is what a destination address is to this node.
type DestKind uint8

// The destination kinds.
const (
	DestOutside DestKind = iota // in no pool: not overlay traffic
	DestNoBlock                 // in a pool, in no node's block
	DestLocal                   // in one of this node's blocks
	DestRemote                  // in a block of another node
)

// Dest is one prefix of the forwarding table and what an address in it is.
// The data path's table indexes exactly these (the most specific prefix
// wins), and Decide answers from them, so `overlayd explain` and the packet
// loops cannot disagree.
type Dest struct {
	Prefix netip.Prefix
	Kind   DestKind
	// Pool is the pool the prefix belongs to (the prefix itself for
	// DestNoBlock).
	Pool string
	// Route indexes Plan.Routes for DestRemote, else -1.
	Route int
}

// Dests lists the forwarding table's prefixes: every pool (DestNoBlock), and
// inside them this node's blocks and the other nodes' blocks.
func (p *Plan) Dests() []Dest {
	ds := make([]Dest, 0, len(p.Pools)+len(p.LocalBlocks)+len(p.Routes))
	for _, pl := range p.Pools {
		ds = append(ds, Dest{Prefix: pl.CIDR, Kind: DestNoBlock, Pool: pl.Name, Route: -1})
	}
	for _, b := range p.LocalBlocks {
		ds = append(ds, Dest{Prefix: b.Block, Kind: DestLocal, Pool: b.Pool, Route: -1})
	}
	for i, r := range p.Routes {
		ds = append(ds, Dest{Prefix: r.Block, Kind: DestRemote, Pool: r.Pool, Route: i})
	}
	return ds
}

// Verdict is what this node does with one packet, without the words:
// Explain adds them.
type Verdict struct {
	Action Action
	// Dest is the most specific prefix holding the destination; its Kind is
	// DestOutside for a destination in no pool.
	Dest Dest
	// Encap and Node are set for ActionEncap and ActionDirect.
	Encap Encap
	Node  string
}

// Decide is the fate of a packet from src to dst on this node: the longest
// match among Dests, then, outside every pool, the natOutgoing rule.
func (p *Plan) Decide(src, dst netip.Addr) Verdict {
	best := Dest{Kind: DestOutside, Route: -1}
	for _, d := range p.Dests() {
		if d.Prefix.Contains(dst) && (best.Kind == DestOutside || d.Prefix.Bits() > best.Prefix.Bits()) {
			best = d
		}
	}
	v := Verdict{Dest: best}
	switch best.Kind {
	case DestLocal:
		v.Action = ActionLocal
	case DestNoBlock:
		v.Action = ActionDrop
	case DestRemote:
		r := p.Routes[best.Route]
		v.Encap, v.Node, v.Action = r.Encap, r.Node, ActionEncap
		if r.Encap == EncapNone {
			v.Action = ActionDirect
		}
	default:
		v.Action = ActionKernel
		if p.NATted(src, dst) {
			v.Action = ActionNAT
		}
	}
	return v
}

// NATted reports whether a packet from src to dst, a destination outside
// every pool, is natOutgoing traffic, as Felix's cali-nat-outgoing decides:
// the source is in a natOutgoing pool and, with [nat] exclude =
// "IPPoolsAndHostIPs", the destination is no node's address.
func (p *Plan) NATted(src, dst netip.Addr) bool {
	if _, ok := p.natPoolOf(src); !ok {
		return false
	}
	return !(p.NATExcludeHostIPs && p.isNodeAddr(dst))
}
