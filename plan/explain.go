package plan

import (
	"fmt"
	"net/netip"
	"slices"
)

// Action is what this node does with a packet.
type Action string

// The actions Explain can decide on.
const (
	ActionLocal  Action = "local"  // delivered on this node
	ActionEncap  Action = "encap"  // encapsulated to a remote node
	ActionDirect Action = "direct" // sent unencapsulated via the remote node
	ActionNAT    Action = "nat"    // source-NATed to this node's address
	ActionKernel Action = "kernel" // not overlay traffic: the kernel's own routes
	ActionDrop   Action = "drop"   // refused, with ICMP unreachable
)

// Decision is what happens to one packet leaving or crossing this node.
type Decision struct {
	Action Action     `json:"action"`
	Encap  Encap      `json:"encap"`
	Node   string     `json:"node,omitempty"`
	Via    netip.Addr `json:"via,omitzero"`
	Reason string     `json:"reason"`
	Source string     `json:"source"`
}

// Explain decides the fate of one packet from src to dst on this node.
func (p *Plan) Explain(src, dst netip.Addr) Decision {
	d := Decision{Source: p.describeSource(src)}
	if p.TunnelAddr.IsValid() && dst == p.TunnelAddr {
		d.Action, d.Reason = ActionLocal, fmt.Sprintf("%s is this node's tunnel address", dst)
		return d
	}
	for _, b := range p.LocalBlocks {
		if b.Block.Contains(dst) {
			d.Action, d.Reason = ActionLocal, fmt.Sprintf(
				"%s is in this node's block %s (pool %q): delivered to the workload by its /32 route; an address with no workload is answered ICMP unreachable, never sent back out",
				dst, b.Block, b.Pool)
			return d
		}
	}
	for _, r := range p.Routes {
		if !r.Block.Contains(dst) {
			continue
		}
		d.Node, d.Encap = r.Node, r.Encap
		if r.Encap == EncapNone {
			d.Action, d.Via = ActionDirect, r.NodeAddr
			d.Reason = fmt.Sprintf("%s is in %s's block %s (pool %q): %s; the kernel routes it via %s, unencapsulated",
				dst, r.Node, r.Block, r.Pool, r.Reason, r.NodeAddr)
		} else {
			d.Action, d.Via = ActionEncap, r.NodeAddr
			d.Reason = fmt.Sprintf("%s is in %s's block %s (pool %q): %s; encapsulated in %s to %s (%d bytes overhead)",
				dst, r.Node, r.Block, r.Pool, r.Reason, r.Encap, r.NodeAddr, r.Encap.Overhead())
		}
		return d
	}
	if pl, ok := p.poolOf(dst); ok {
		d.Action, d.Reason = ActionDrop, fmt.Sprintf(
			"%s is in pool %q (%s) but in no node's block: no route, answered ICMP unreachable", dst, pl.Name, pl.CIDR)
		return d
	}
	// The destination is outside every pool (disabled ones included).
	natPool, fromNATPool := p.natPoolOf(src)
	switch {
	case !fromNATPool:
		d.Action, d.Reason = ActionKernel, fmt.Sprintf(
			"%s is outside every pool and the source is in no natOutgoing pool: routed by the kernel's own routes with the source kept", dst)
	case p.NATExcludeHostIPs && p.isNodeAddr(dst):
		d.Action, d.Reason = ActionKernel, fmt.Sprintf(
			"%s is a node address and [nat] exclude = \"IPPoolsAndHostIPs\": not NATed, routed by the kernel with the source kept", dst)
	default:
		d.Action, d.Via = ActionNAT, p.Address.Addr()
		d.Reason = fmt.Sprintf(
			"%s is outside every pool and the source is in natOutgoing pool %s: source-NATed to this node's address %s through overlayd's NAT table",
			dst, natPool, p.Address.Addr())
	}
	return d
}

func (p *Plan) describeSource(src netip.Addr) string {
	switch {
	case src == p.Address.Addr():
		return "this node's underlay address (host-originated)"
	case p.TunnelAddr.IsValid() && src == p.TunnelAddr:
		return "this node's tunnel address (host-originated)"
	}
	for _, b := range p.LocalBlocks {
		if b.Block.Contains(src) {
			return fmt.Sprintf("a workload of this node (block %s)", b.Block)
		}
	}
	for _, r := range p.Routes {
		if r.Block.Contains(src) {
			return fmt.Sprintf("a workload of %s (block %s): arrives from that node", r.Node, r.Block)
		}
	}
	if pl, ok := p.poolOf(src); ok {
		return fmt.Sprintf("in pool %q but in no node's block", pl.Name)
	}
	if p.isNodeAddr(src) {
		return "another node's underlay address"
	}
	return "outside every pool"
}

func (p *Plan) poolOf(a netip.Addr) (PoolSummary, bool) {
	i := slices.IndexFunc(p.Pools, func(pl PoolSummary) bool { return pl.CIDR.Contains(a) })
	if i < 0 {
		return PoolSummary{}, false
	}
	return p.Pools[i], true
}

func (p *Plan) natPoolOf(a netip.Addr) (netip.Prefix, bool) {
	i := slices.IndexFunc(p.NATPools, func(c netip.Prefix) bool { return c.Contains(a) })
	if i < 0 {
		return netip.Prefix{}, false
	}
	return p.NATPools[i], true
}

func (p *Plan) isNodeAddr(a netip.Addr) bool {
	if a == p.Address.Addr() {
		return true
	}
	return slices.ContainsFunc(p.Peers, func(peer Peer) bool { return peer.Addr == a })
}
