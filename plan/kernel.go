package plan

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// The kernel state overlayd owns is marked so it can tell its own from
// everyone else's: routes and rules carry protocol 211 (`ip route show
// proto 211`; Linux reserves no meaning for it; Felix uses 80, BIRD 12),
// and natOutgoing traffic is steered to routing table 211.
const (
	RouteProtocol = 211
	NATTable      = 211
	// MainTable is the kernel's main routing table (RT_TABLE_MAIN).
	MainTable = 254
)

// Rule priorities: overlayd's rules sit in a block of their own before the
// main table's rule (32766), the exemptions ("to a pool: main") before the
// rule that sends the rest to the NAT table.
const (
	RulePriorityExempt = 31000
	RulePriorityNAT    = 31001
)

// Kernel is everything this node needs in the kernel: the TUN link, its
// sysctls, the routes (main table and NAT table) and the policy rules. The
// effects layer (package kernel) makes the kernel match it by difference;
// `overlayd check --print-routes` prints it as the commands that make it.
type Kernel struct {
	Link    Link          `json:"link"`
	Sysctls []Sysctl      `json:"sysctls"`
	Routes  []KernelRoute `json:"routes"`
	Rules   []KernelRule  `json:"rules"`
}

// Link is the TUN device's settings.
type Link struct {
	Device string     `json:"device"`
	MTU    int        `json:"mtu"`
	Addr   netip.Addr `json:"address,omitzero"` // the tunnel address, as a /32; none when invalid
}

// Sysctl is one per-namespace setting the TUN device needs.
type Sysctl struct {
	Key   string `json:"key"`  // as sysctl(8) takes it
	File  string `json:"file"` // under /proc/sys
	Value string `json:"value"`
	Why   string `json:"why"`
	// Optional: things are only tidier with it, so failing to set it is
	// not worth a warning.
	Optional bool `json:"optional,omitempty"`
}

// RouteKind is what a route does with a packet.
type RouteKind uint8

// The route kinds overlayd programs.
const (
	// RouteDevice sends the prefix out of a device (the TUN): encapsulated
	// and unallocated pool traffic, and the NAT table's default route.
	RouteDevice RouteKind = iota
	// RouteVia sends the prefix to a gateway on the underlay: blocks of
	// nodes reached unencapsulated.
	RouteVia
	// RouteUnreachable answers ICMP unreachable: this node's own blocks, so
	// a packet for an address with no workload is never sent back out.
	RouteUnreachable
)

// KernelRoute is one route overlayd wants in the kernel.
type KernelRoute struct {
	Dst  netip.Prefix `json:"dst"`
	Kind RouteKind    `json:"kind"`
	Dev  string       `json:"dev,omitempty"` // RouteDevice: the device; RouteVia: optional, the kernel finds it from Via
	Via  netip.Addr   `json:"via,omitzero"`  // RouteVia
	Src  netip.Addr   `json:"src,omitzero"`  // optional preferred source
	// Table is the routing table; 0 is the main table.
	Table int `json:"table,omitempty"`
}

// TableOrMain is the route's table with 0 read as the main table.
func (r KernelRoute) TableOrMain() int {
	if r.Table == 0 {
		return MainTable
	}
	return r.Table
}

// String renders the route as the `ip route` arguments that make it, which
// is also what `overlayd check --print-routes` shows to whoever programs
// routes for overlayd.
func (r KernelRoute) String() string {
	var b strings.Builder
	switch r.Kind {
	case RouteUnreachable:
		fmt.Fprintf(&b, "unreachable %s", r.Dst)
	case RouteVia:
		fmt.Fprintf(&b, "%s via %s", r.Dst, r.Via)
		if r.Dev != "" {
			fmt.Fprintf(&b, " dev %s", r.Dev)
		}
	default:
		dst := r.Dst.String()
		if r.Dst.Bits() == 0 {
			dst = "default"
		}
		fmt.Fprintf(&b, "%s dev %s", dst, r.Dev)
		if r.Dst.Bits() == 0 {
			// A default route through a point-to-point device is link scope.
			b.WriteString(" scope link")
		}
	}
	if r.Src.IsValid() {
		fmt.Fprintf(&b, " src %s", r.Src)
	}
	if r.TableOrMain() != MainTable {
		fmt.Fprintf(&b, " table %d", r.Table)
	}
	fmt.Fprintf(&b, " proto %d", RouteProtocol)
	return b.String()
}

// KernelRule is one policy-routing rule overlayd owns: traffic from Src (to
// Dst, if valid) looks up Table.
type KernelRule struct {
	Src      netip.Prefix `json:"src"`
	Dst      netip.Prefix `json:"dst,omitzero"`
	Table    int          `json:"table"`
	Priority int          `json:"priority"`
}

// String renders the rule as the `ip rule` arguments that make it.
func (r KernelRule) String() string {
	to := ""
	if r.Dst.IsValid() {
		to = " to " + r.Dst.String()
	}
	table := fmt.Sprint(r.Table)
	if r.Table == MainTable {
		table = "main"
	}
	return fmt.Sprintf("priority %d from %s%s lookup %s proto %d", r.Priority, r.Src, to, table, RouteProtocol)
}

// Steers reports whether the rule sends traffic to the NAT (rather than
// exempting it): such a rule must never exist without its exemptions.
func (r KernelRule) Steers() bool { return r.Table == NATTable }

// kernelOf is the kernel part of plan p on TUN device dev.
func kernelOf(p *Plan, dev string) Kernel {
	k := Kernel{
		Link:    Link{Device: dev, MTU: p.TunnelMTU, Addr: p.TunnelAddr},
		Sysctls: tunSysctls(dev),
		Routes:  kernelRoutes(p, dev),
		Rules:   natRules(p),
	}
	if len(k.Rules) > 0 {
		k.Routes = append(k.Routes, KernelRoute{
			Dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), Kind: RouteDevice, Dev: dev, Table: NATTable,
		})
	}
	return k
}

// kernelRoutes are the main table's routes, as Calico programs them: every
// pool to the TUN device (sourced from the tunnel address, so
// host-originated traffic to remote workloads carries it), each remote
// block sent unencapsulated via its node on the underlay, and this node's
// own blocks unreachable, so a packet for an address with no workload
// (whose /32 route would be more specific) is answered, never sent back out.
func kernelRoutes(p *Plan, dev string) []KernelRoute {
	var rs []KernelRoute
	for _, pl := range p.Pools {
		rs = append(rs, KernelRoute{Dst: pl.CIDR, Kind: RouteDevice, Dev: dev, Src: p.TunnelAddr})
	}
	for _, b := range p.LocalBlocks {
		rs = append(rs, KernelRoute{Dst: b.Block, Kind: RouteUnreachable})
	}
	for _, r := range p.Routes {
		if r.Encap == EncapNone {
			rs = append(rs, KernelRoute{Dst: r.Block, Kind: RouteVia, Via: r.NodeAddr})
		}
	}
	return rs
}

// natRules steer natOutgoing traffic as Felix's cali-nat-outgoing decides
// it: traffic from each natOutgoing pool goes to the NAT table, except to a
// destination in any pool (disabled pools too) or to a node address with
// [nat] exclude = "IPPoolsAndHostIPs", which keeps the main table. The
// node's own addresses need no rule: the local table comes first.
// Duplicates are dropped; exemptions come before the NAT rule, pool by pool.
func natRules(p *Plan) []KernelRule {
	var rules []KernelRule
	add := func(r KernelRule) {
		if !slices.Contains(rules, r) {
			rules = append(rules, r)
		}
	}
	for _, src := range p.NATPools {
		src = src.Masked()
		for _, pl := range p.Pools {
			add(KernelRule{Src: src, Dst: pl.CIDR.Masked(), Table: MainTable, Priority: RulePriorityExempt})
		}
		if p.NATExcludeHostIPs {
			for _, peer := range p.Peers {
				add(KernelRule{Src: src, Dst: netip.PrefixFrom(peer.Addr, 32), Table: MainTable, Priority: RulePriorityExempt})
			}
		}
		add(KernelRule{Src: src, Table: NATTable, Priority: RulePriorityNAT})
	}
	return rules
}

// tunSysctls lists the TUN's sysctls. rp_filter is set whether or not a
// pool has natOutgoing now: a reload may turn it on.
func tunSysctls(dev string) []Sysctl {
	// In a sysctl(8) key dots separate levels, so a device name's own dots
	// are written as slashes (net.ipv4.conf.eth0/100.rp_filter).
	devKey := strings.ReplaceAll(dev, ".", "/")
	return []Sysctl{
		{
			Key: "net.ipv6.conf." + devKey + ".disable_ipv6", File: "net/ipv6/conf/" + dev + "/disable_ipv6", Value: "1", Optional: true,
			Why: "overlayd carries IPv4 only; otherwise the kernel's IPv6 router solicitations on the device show up as drops",
		},
		{
			Key: "net.ipv4.conf." + devKey + ".rp_filter", File: "net/ipv4/conf/" + dev + "/rp_filter", Value: "2",
			Why: "NAT replies enter through the TUN from outside addresses whose route is the underlay: strict reverse-path filtering would drop them",
		},
	}
}

// Commands are the shell commands that make k, in the order they must run:
// the link up before routes through it, the NAT table's route before the
// rules that steer to it.
func (k Kernel) Commands() []string {
	var cmds []string
	for _, s := range k.Sysctls {
		cmds = append(cmds, fmt.Sprintf("sysctl -w %s=%s", s.Key, s.Value))
	}
	cmds = append(cmds, fmt.Sprintf("ip link set dev %s mtu %d up", k.Link.Device, k.Link.MTU))
	if k.Link.Addr.IsValid() {
		cmds = append(cmds, fmt.Sprintf("ip addr replace %s/32 dev %s", k.Link.Addr, k.Link.Device))
	}
	for _, r := range k.Routes {
		cmds = append(cmds, "ip route replace "+r.String())
	}
	for _, r := range k.Rules {
		cmds = append(cmds, "ip rule add "+r.String())
	}
	return cmds
}
