// Package plan is overlayd's pure layer: Build turns a cluster and the name
// of this node into everything the node must be, with no I/O. The plan
// holds the forwarding decisions (every block of every other node, how
// traffic to it is carried and why; Dests and Decide, which the data
// path's table and `overlayd explain` share), the peers, the tunnel MTU,
// and the kernel state (Kernel: link, sysctls, routes, rules) that package
// kernel applies and `overlayd check --print-routes` prints. `overlayd run`,
// `check` and `explain` all render or apply this one value.
package plan

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/encap"
	"github.com/overlayd/overlayd/pool"
)

// Encap is how traffic to a remote block is carried.
type Encap uint8

// The encapsulations.
const (
	EncapNone  Encap = iota // unencapsulated, routed by the kernel via the remote node
	EncapIPIP               // IPv4-in-IPv4, IP protocol 4
	EncapVXLAN              // VXLAN over UDP
)

func (e Encap) String() string {
	switch e {
	case EncapNone:
		return "none"
	case EncapIPIP:
		return "ipip"
	case EncapVXLAN:
		return "vxlan"
	}
	return fmt.Sprintf("encap(%d)", uint8(e))
}

// MarshalText renders the encapsulation by name in JSON.
func (e Encap) MarshalText() ([]byte, error) { return []byte(e.String()), nil }

// UnmarshalText reads the name back, so clients of the admin API decode it.
func (e *Encap) UnmarshalText(b []byte) error {
	for c := EncapNone; c <= EncapVXLAN; c++ {
		if string(b) == c.String() {
			*e = c
			return nil
		}
	}
	return fmt.Errorf("unknown encapsulation %q: want none, ipip or vxlan", b)
}

// Overhead is the bytes an encapsulation adds on the wire.
func (e Encap) Overhead() int {
	switch e {
	case EncapIPIP:
		return encap.IPIPOverhead
	case EncapVXLAN:
		return encap.VXLANOverhead
	}
	return 0
}

// DefaultUnderlayMTU is assumed when the underlay's MTU is not given.
const DefaultUnderlayMTU = 1500

// Route is one remote block and how this node reaches it.
type Route struct {
	Block      netip.Prefix `json:"block"`
	Pool       string       `json:"pool"`
	Node       string       `json:"node"`
	NodeAddr   netip.Addr   `json:"nodeAddress"`
	TunnelAddr netip.Addr   `json:"tunnelAddress,omitzero"`
	Encap      Encap        `json:"encap"`
	SameSubnet bool         `json:"sameSubnet"`

	// The decision's inputs, kept so its reason is put in words only when
	// someone reads it: a plan of 100,000 routes would otherwise format
	// 100,000 strings on every datastore change.
	decidedBy pool.EncapMode // the mode that decided; ModeNever when both are
	modeKey   string         // "ipipMode" or "vxlanMode"; "" when both are Never
	subnet    netip.Prefix   // this node's subnet
	reason    string         // as decoded from JSON
}

// Reason says in words why the block is reached the way it is.
func (r Route) Reason() string {
	if r.reason != "" || !r.subnet.IsValid() {
		return r.reason
	}
	subnet := fmt.Sprintf("%s is in this node's subnet %s", r.NodeAddr, r.subnet)
	if !r.SameSubnet {
		subnet = fmt.Sprintf("%s is outside this node's subnet %s", r.NodeAddr, r.subnet)
	}
	switch r.decidedBy {
	case pool.ModeAlways:
		return r.modeKey + " Always"
	case pool.ModeCrossSubnet:
		if r.SameSubnet {
			return fmt.Sprintf("%s CrossSubnet, same subnet: %s", r.modeKey, subnet)
		}
		return fmt.Sprintf("%s CrossSubnet, other subnet: %s", r.modeKey, subnet)
	}
	return "ipipMode and vxlanMode Never: " + subnet
}

// routeJSON is Route on the wire, with its reason in words.
type routeJSON struct {
	Block      netip.Prefix `json:"block"`
	Pool       string       `json:"pool"`
	Node       string       `json:"node"`
	NodeAddr   netip.Addr   `json:"nodeAddress"`
	TunnelAddr netip.Addr   `json:"tunnelAddress,omitzero"`
	Encap      Encap        `json:"encap"`
	SameSubnet bool         `json:"sameSubnet"`
	Reason     string       `json:"reason"`
}

// MarshalJSON writes the route with its reason.
func (r Route) MarshalJSON() ([]byte, error) {
	return json.Marshal(routeJSON{r.Block, r.Pool, r.Node, r.NodeAddr, r.TunnelAddr, r.Encap, r.SameSubnet, r.Reason()})
}

// UnmarshalJSON reads a route written by MarshalJSON, its reason as words.
func (r *Route) UnmarshalJSON(b []byte) error {
	var j routeJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*r = Route{Block: j.Block, Pool: j.Pool, Node: j.Node, NodeAddr: j.NodeAddr, TunnelAddr: j.TunnelAddr,
		Encap: j.Encap, SameSubnet: j.SameSubnet, reason: j.Reason}
	return nil
}

// Peer is another node: what the receive side needs to accept its packets.
type Peer struct {
	Name       string           `json:"name"`
	Addr       netip.Addr       `json:"address"`
	TunnelAddr netip.Addr       `json:"tunnelAddress,omitzero"`
	VTEPMAC    net.HardwareAddr `json:"-"`
	Blocks     []netip.Prefix   `json:"blocks"`
}

// PoolSummary is a pool as the plan uses it.
type PoolSummary struct {
	Name        string         `json:"name"`
	CIDR        netip.Prefix   `json:"cidr"`
	IPIPMode    pool.EncapMode `json:"ipipMode"`
	VXLANMode   pool.EncapMode `json:"vxlanMode"`
	NATOutgoing bool           `json:"natOutgoing"`
	Disabled    bool           `json:"disabled"`
}

// Plan is everything this node does for the overlay.
type Plan struct {
	Node        string           `json:"node"`
	Address     netip.Prefix     `json:"address"`
	TunnelAddr  netip.Addr       `json:"tunnelAddress,omitzero"`
	VTEPMAC     net.HardwareAddr `json:"-"`
	LocalBlocks []LocalBlock     `json:"localBlocks"`
	Routes      []Route          `json:"routes"`
	Peers       []Peer           `json:"peers"`
	Pools       []PoolSummary    `json:"pools"`
	// NATPools are the CIDRs whose traffic to destinations outside every
	// pool is source-NATed (natOutgoing, disabled ones included).
	NATPools []netip.Prefix `json:"natPools"`
	// NATExcludeHostIPs also exempts node addresses from NAT.
	NATExcludeHostIPs bool `json:"natExcludeHostIPs"`
	// NAT is the [nat] section: the NAT table's limits and timeouts.
	NAT         config.NAT `json:"nat"`
	UnderlayMTU int        `json:"underlayMTU"`
	TunnelMTU   int        `json:"tunnelMTU"`
	MTUReason   string     `json:"mtuReason"`
	// UsesIPIP and UsesVXLAN say whether some pool enables the encapsulation,
	// so the transport for it must be opened (the receive side accepts every
	// enabled encapsulation from known nodes, whatever a route uses now).
	UsesIPIP  bool   `json:"usesIPIP"`
	UsesVXLAN bool   `json:"usesVXLAN"`
	VNI       uint32 `json:"vni"`
	VXLANPort uint16 `json:"vxlanPort"`
	// Kernel is what this node needs in the kernel, on the TUN device
	// named by the cluster's [tunnel] device.
	Kernel   Kernel   `json:"kernel"`
	Warnings []string `json:"warnings,omitempty"`
}

// LocalBlock is one of this node's blocks.
type LocalBlock struct {
	Block netip.Prefix `json:"block"`
	Pool  string       `json:"pool"`
}

// Build makes the plan of node `self` in cluster c. underlayMTU is the MTU of
// this node's underlay interface (0: DefaultUnderlayMTU). The kernel part is
// for the TUN device c.Tunnel.Device: a caller that overrides the device (a
// flag, a handed-over TUN) sets it there first.
func Build(c *config.Cluster, self string, underlayMTU int) (*Plan, error) {
	me := c.Node(self)
	if me == nil {
		return nil, fmt.Errorf("node %q is not in %s (its nodes: %v)", self, c.Source, c.NodeNames())
	}
	if underlayMTU == 0 {
		underlayMTU = DefaultUnderlayMTU
	}
	p := &Plan{
		Node:              me.Name,
		Address:           me.Address,
		TunnelAddr:        me.TunnelAddr,
		VTEPMAC:           me.VTEPMAC,
		NATExcludeHostIPs: c.NAT.Exclude == config.ExcludeIPPoolsAndHostIPs,
		NAT:               c.NAT,
		UnderlayMTU:       underlayMTU,
		VNI:               c.VXLAN.VNI,
		VXLANPort:         c.VXLAN.Port,
	}
	for _, pl := range c.Pools {
		p.Pools = append(p.Pools, PoolSummary{
			Name: pl.Name, CIDR: pl.CIDR, IPIPMode: pl.IPIPMode, VXLANMode: pl.VXLANMode,
			NATOutgoing: pl.NATOutgoing, Disabled: pl.Disabled,
		})
		if pl.NATOutgoing {
			p.NATPools = append(p.NATPools, pl.CIDR)
		}
		p.UsesIPIP = p.UsesIPIP || pl.IPIPMode != pool.ModeNever
		p.UsesVXLAN = p.UsesVXLAN || pl.VXLANMode != pool.ModeNever
	}
	for _, b := range me.Blocks {
		p.LocalBlocks = append(p.LocalBlocks, LocalBlock{Block: b.Prefix, Pool: b.Pool.Name})
	}
	if len(me.Blocks) == 0 {
		p.Warnings = append(p.Warnings, "this node has no blocks: no enabled pool's nodeSelector selects it, so it hosts no workloads")
	}
	if !me.TunnelAddr.IsValid() && (p.UsesIPIP || p.UsesVXLAN) {
		p.Warnings = append(p.Warnings, "this node has no tunnel address (no block in an enabled pool with IP-in-IP or VXLAN): traffic from the host itself to remote workloads is not encapsulated")
	}

	remote := 0
	for _, n := range c.Nodes {
		remote += len(n.Blocks)
	}
	p.Routes = make([]Route, 0, remote)
	p.Peers = make([]Peer, 0, len(c.Nodes))
	for _, n := range c.Nodes {
		if n.Name == me.Name {
			continue
		}
		peer := Peer{Name: n.Name, Addr: n.Address.Addr(), TunnelAddr: n.TunnelAddr, VTEPMAC: n.VTEPMAC,
			Blocks: make([]netip.Prefix, 0, len(n.Blocks))}
		for _, b := range n.Blocks {
			peer.Blocks = append(peer.Blocks, b.Prefix)
			r := routeTo(me, n, b)
			if r.UnderlayRouted() {
				p.Warnings = append(p.Warnings, fmt.Sprintf(
					"%s on %s is sent unencapsulated to %s, outside this node's subnet %s: the underlay's routers must know the pool's routes, or set ipipMode/vxlanMode",
					b.Prefix, n.Name, n.Address.Addr(), me.Address.Masked()))
			}
			p.Routes = append(p.Routes, r)
		}
		p.Peers = append(p.Peers, peer)
	}

	p.TunnelMTU, p.MTUReason = TunnelMTU(c, underlayMTU)
	p.Kernel = kernelOf(p, c.Tunnel.Device)
	return p, nil
}

// UnderlayRouted reports whether the route leaves unencapsulated for a node
// outside this node's subnet: the underlay's routers must then know the
// block (in Calico, from BGP).
func (r Route) UnderlayRouted() bool { return r.Encap == EncapNone && !r.SameSubnet }

// routeTo decides, as Felix does, how block b of remote node n is reached
// from node me.
func routeTo(me, n *config.Node, b pool.Block) Route {
	r := Route{
		Block: b.Prefix, Pool: b.Pool.Name, Node: n.Name, NodeAddr: n.Address.Addr(),
		TunnelAddr: n.TunnelAddr, subnet: me.Address.Masked(),
		// Felix's nodeInOurSubnet: the local address-with-prefix contains
		// the remote address.
		SameSubnet: me.Address.Contains(n.Address.Addr()),
		decidedBy:  pool.ModeNever,
	}
	for _, c := range []struct {
		mode pool.EncapMode
		e    Encap
		key  string
	}{{b.Pool.IPIPMode, EncapIPIP, "ipipMode"}, {b.Pool.VXLANMode, EncapVXLAN, "vxlanMode"}} {
		if c.mode == pool.ModeAlways || c.mode == pool.ModeCrossSubnet {
			r.decidedBy, r.modeKey = c.mode, c.key
			if c.mode == pool.ModeAlways || !r.SameSubnet {
				r.Encap = c.e
			}
			return r
		}
	}
	return r
}

// TunnelMTU is the underlay MTU less the largest overhead any pool can put
// on the wire, so a mode switch never needs a smaller MTU than configured;
// and why. It is the TUN device's MTU and the workloads' (package cni),
// which depends on the pools alone, not on the nodes.
func TunnelMTU(c *config.Cluster, underlayMTU int) (int, string) {
	if c.Tunnel.MTU != 0 {
		return c.Tunnel.MTU, "set by [tunnel] mtu"
	}
	largest, by := EncapNone, ""
	for _, pl := range c.Pools {
		for _, cand := range []struct {
			mode pool.EncapMode
			e    Encap
		}{{pl.IPIPMode, EncapIPIP}, {pl.VXLANMode, EncapVXLAN}} {
			if cand.mode != pool.ModeNever && cand.e.Overhead() > largest.Overhead() {
				largest, by = cand.e, pl.Name
			}
		}
	}
	if largest == EncapNone {
		return underlayMTU, fmt.Sprintf("underlay MTU %d: no pool encapsulates", underlayMTU)
	}
	return underlayMTU - largest.Overhead(), fmt.Sprintf("underlay MTU %d - %d for %s (pool %q)",
		underlayMTU, largest.Overhead(), largest, by)
}
