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

// Explain is Decide with the reasons: what happens to one packet from src
// to dst on this node, and why.
func (p *Plan) Explain(src, dst netip.Addr) Decision {
	v := p.Decide(src, dst)
	d := Decision{Action: v.Action, Encap: v.Encap, Node: v.Node, Source: p.describeSource(src)}
	switch v.Dest.Kind {
	case DestLocal:
		if p.TunnelAddr.IsValid() && dst == p.TunnelAddr {
			d.Reason = fmt.Sprintf("%s is this node's tunnel address (in its block %s)", dst, v.Dest.Prefix)
			break
		}
		d.Reason = fmt.Sprintf(
			"%s is in this node's block %s (pool %q): delivered to the workload by its /32 route; an address with no workload is answered ICMP unreachable, never sent back out",
			dst, v.Dest.Prefix, v.Dest.Pool)
	case DestRemote:
		r := p.Routes[v.Dest.Route]
		d.Via = r.NodeAddr
		if r.Encap == EncapNone {
			d.Reason = fmt.Sprintf("%s is in %s's block %s (pool %q): %s; the kernel routes it via %s, unencapsulated",
				dst, r.Node, r.Block, r.Pool, r.Reason(), r.NodeAddr)
		} else {
			d.Reason = fmt.Sprintf("%s is in %s's block %s (pool %q): %s; encapsulated in %s to %s (%d bytes overhead)",
				dst, r.Node, r.Block, r.Pool, r.Reason(), r.Encap, r.NodeAddr, r.Encap.Overhead())
		}
	case DestNoBlock:
		d.Reason = fmt.Sprintf("%s is in pool %q (%s) but in no node's block: no route, answered ICMP unreachable", dst, v.Dest.Pool, v.Dest.Prefix)
	default:
		natPool, fromNATPool := p.natPoolOf(src)
		switch {
		case v.Action == ActionNAT:
			d.Via = p.Address.Addr()
			d.Reason = fmt.Sprintf(
				"%s is outside every pool and the source is in natOutgoing pool %s: source-NATed to this node's address %s through overlayd's NAT table",
				dst, natPool, p.Address.Addr())
		case fromNATPool:
			d.Reason = fmt.Sprintf(
				"%s is a node address and [nat] exclude = \"IPPoolsAndHostIPs\": not NATed, routed by the kernel with the source kept", dst)
		default:
			d.Reason = fmt.Sprintf(
				"%s is outside every pool and the source is in no natOutgoing pool: routed by the kernel's own routes with the source kept", dst)
		}
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
	switch d := p.Decide(src, src).Dest; d.Kind {
	case DestLocal:
		return fmt.Sprintf("a workload of this node (block %s)", d.Prefix)
	case DestRemote:
		return fmt.Sprintf("a workload of %s (block %s): arrives from that node", p.Routes[d.Route].Node, d.Prefix)
	case DestNoBlock:
		return fmt.Sprintf("in pool %q but in no node's block", d.Pool)
	}
	if p.isNodeAddr(src) {
		return "another node's underlay address"
	}
	return "outside every pool"
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
