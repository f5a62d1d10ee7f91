// Package kernel programs the kernel's routing table and links over netlink:
// the routes that steer pool traffic into overlayd's TUN device or straight
// to a node on the same subnet, and the TUN's address and MTU. Every route it
// adds carries overlayd's routing protocol number, so it can tell its own
// routes from everyone else's, remove stale ones left by a crashed run, and
// change only what differs on reload.
package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// RouteProtocol marks the routes overlayd owns (`ip route show proto 211`).
// Linux reserves no meaning for it; Calico's Felix uses 80, BIRD 12.
const RouteProtocol netlink.RouteProtocol = 211

// Kind is what a route does with a packet.
type Kind uint8

// The route kinds overlayd programs.
const (
	// KindDevice sends the prefix out of a device (the TUN): encapsulated
	// and unallocated pool traffic.
	KindDevice Kind = iota
	// KindVia sends the prefix to a gateway on the underlay: blocks of nodes
	// on this node's subnet reached unencapsulated.
	KindVia
	// KindUnreachable answers ICMP unreachable: this node's own blocks, so a
	// packet for an address with no workload is never sent back out.
	KindUnreachable
)

// Route is one route overlayd wants in the main table.
type Route struct {
	Dst  netip.Prefix
	Kind Kind
	Dev  string     // KindDevice: the device; KindVia: optional, the kernel finds it from Via
	Via  netip.Addr // KindVia
	Src  netip.Addr // optional preferred source
}

// String renders the route as the `ip route` command that makes it, which is
// also what `overlayd check --print-routes` shows to whoever programs routes
// for overlayd.
func (r Route) String() string {
	var b strings.Builder
	switch r.Kind {
	case KindUnreachable:
		fmt.Fprintf(&b, "unreachable %s", r.Dst)
	case KindVia:
		fmt.Fprintf(&b, "%s via %s", r.Dst, r.Via)
		if r.Dev != "" {
			fmt.Fprintf(&b, " dev %s", r.Dev)
		}
	default:
		fmt.Fprintf(&b, "%s dev %s", r.Dst, r.Dev)
	}
	if r.Src.IsValid() {
		fmt.Fprintf(&b, " src %s", r.Src)
	}
	fmt.Fprintf(&b, " proto %d", RouteProtocol)
	return b.String()
}

// Changes counts what a reconciliation did.
type Changes struct {
	Added, Replaced, Removed []Route
}

// Empty reports whether nothing changed.
func (c Changes) Empty() bool {
	return len(c.Added) == 0 && len(c.Replaced) == 0 && len(c.Removed) == 0
}

// Routes programs overlayd's routes in the network namespace it was created
// in (a netlink handle keeps its namespace, whatever thread uses it later).
type Routes struct {
	h *netlink.Handle
}

// NewRoutes opens a netlink handle in the calling thread's network namespace.
func NewRoutes() (*Routes, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("opening a netlink socket: %w", err)
	}
	return &Routes{h: h}, nil
}

// Close releases the netlink handle; the routes stay.
func (k *Routes) Close() { k.h.Close() }

// List returns the routes overlayd owns now.
func (k *Routes) List() ([]Route, error) {
	nl, err := k.owned()
	if err != nil {
		return nil, err
	}
	out := make([]Route, 0, len(nl))
	for _, r := range nl {
		out = append(out, k.fromNetlink(r))
	}
	return out, nil
}

func (k *Routes) owned() ([]netlink.Route, error) {
	filter := &netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN}
	rs, err := k.h.RouteListFiltered(unix.AF_INET, filter, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("listing overlayd's routes (proto %d): %w", RouteProtocol, err)
	}
	return rs, nil
}

// Reconcile makes overlayd's routes exactly the desired ones: missing ones
// are added, differing ones replaced, and owned routes not desired (stale,
// from an earlier run or the previous plan) removed. Routes of other owners
// are never touched. It carries on past a failing route and returns every
// failure joined, so one bad route does not leave the rest unprogrammed.
func (k *Routes) Reconcile(desired []Route) (Changes, error) {
	var ch Changes
	current, err := k.owned()
	if err != nil {
		return ch, err
	}
	have := make(map[netip.Prefix]netlink.Route, len(current))
	for _, r := range current {
		if p, ok := prefixOf(r.Dst); ok {
			have[p] = r
		}
	}
	var errs []error
	want := make(map[netip.Prefix]bool, len(desired))
	for _, r := range desired {
		want[r.Dst] = true
		nr, err := k.toNetlink(r)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		old, exists := have[r.Dst]
		if exists && k.same(old, nr) {
			continue
		}
		if err := k.h.RouteReplace(nr); err != nil {
			errs = append(errs, fmt.Errorf("ip route replace %s: %w", r, explainRouteErr(r, err)))
			continue
		}
		if exists {
			ch.Replaced = append(ch.Replaced, r)
		} else {
			ch.Added = append(ch.Added, r)
		}
	}
	for p, old := range have {
		if want[p] {
			continue
		}
		if err := k.h.RouteDel(&old); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("ip route del %s: %w", p, err))
			continue
		}
		ch.Removed = append(ch.Removed, k.fromNetlink(old))
	}
	sortRoutes(ch.Added)
	sortRoutes(ch.Replaced)
	sortRoutes(ch.Removed)
	return ch, errors.Join(errs...)
}

// RemoveAll deletes every route overlayd owns: what it does on exit.
func (k *Routes) RemoveAll() ([]Route, error) {
	ch, err := k.Reconcile(nil)
	return ch.Removed, err
}

func sortRoutes(rs []Route) {
	slices.SortFunc(rs, func(a, b Route) int { return a.Dst.Addr().Compare(b.Dst.Addr()) })
}

func explainRouteErr(r Route, err error) error {
	switch {
	case r.Kind == KindVia && errors.Is(err, unix.ENETUNREACH):
		return fmt.Errorf("%w: %s is not on a subnet this node is connected to (a block sent unencapsulated needs its node on the same subnet)", err, r.Via)
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("%w: programming routes needs CAP_NET_ADMIN in this network namespace", err)
	case errors.Is(err, unix.ENODEV):
		return fmt.Errorf("%w: device %q does not exist", err, r.Dev)
	}
	return err
}

func (k *Routes) toNetlink(r Route) (*netlink.Route, error) {
	nr := &netlink.Route{
		Dst:      ipNet(r.Dst),
		Protocol: RouteProtocol,
		Table:    unix.RT_TABLE_MAIN,
		Family:   unix.AF_INET,
	}
	if r.Src.IsValid() {
		nr.Src = net.IP(r.Src.AsSlice())
	}
	switch r.Kind {
	case KindUnreachable:
		nr.Type = unix.RTN_UNREACHABLE
	case KindVia:
		gw, err := k.nextHop(r.Via)
		if err != nil {
			return nil, fmt.Errorf("route %s: %w", r, err)
		}
		nr.Gw = net.IP(gw.AsSlice())
		nr.Scope = netlink.SCOPE_UNIVERSE
	case KindDevice:
		nr.Scope = netlink.SCOPE_LINK
	}
	if r.Dev != "" {
		link, err := k.h.LinkByName(r.Dev)
		if err != nil {
			return nil, fmt.Errorf("route %s: device %q: %w", r, r.Dev, err)
		}
		nr.LinkIndex = link.Attrs().Index
	}
	return nr, nil
}

// nextHop is the gateway for a route "via addr": addr itself when it is on
// a connected subnet, else the gateway the kernel uses to reach addr. The
// second case is a node in another subnet reached without encapsulation,
// which works only where the underlay routes pool addresses (as BGP does for
// Calico): the block then follows the node's own path.
func (k *Routes) nextHop(addr netip.Addr) (netip.Addr, error) {
	rs, err := k.h.RouteGet(net.IP(addr.AsSlice()))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("no route to %s: %w", addr, err)
	}
	for _, r := range rs {
		if r.Gw != nil {
			if gw, ok := netip.AddrFromSlice(r.Gw.To4()); ok {
				return gw, nil
			}
		}
	}
	return addr, nil
}

func (k *Routes) fromNetlink(nr netlink.Route) Route {
	p, _ := prefixOf(nr.Dst)
	r := Route{Dst: p}
	if nr.Src != nil {
		r.Src, _ = netip.AddrFromSlice(nr.Src.To4())
	}
	switch {
	case nr.Type == unix.RTN_UNREACHABLE:
		r.Kind = KindUnreachable
	case nr.Gw != nil:
		r.Kind = KindVia
		r.Via, _ = netip.AddrFromSlice(nr.Gw.To4())
	default:
		r.Kind = KindDevice
	}
	if nr.LinkIndex > 0 && r.Kind != KindUnreachable {
		if link, err := k.h.LinkByIndex(nr.LinkIndex); err == nil {
			r.Dev = link.Attrs().Name
		}
	}
	return r
}

// same reports whether an existing route already does what nr asks.
func (k *Routes) same(old netlink.Route, nr *netlink.Route) bool {
	// The kernel reports a unicast route's type, which a new route leaves 0.
	typ := nr.Type
	if typ == 0 {
		typ = unix.RTN_UNICAST
	}
	if old.Type != typ || !old.Gw.Equal(nr.Gw) || !old.Src.Equal(nr.Src) {
		return false
	}
	// A via route without a device takes the one the kernel chose.
	return nr.LinkIndex == 0 || old.LinkIndex == nr.LinkIndex
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0), true
	}
	a, ok := netip.AddrFromSlice(n.IP.To4())
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a, ones), true
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), 32)}
}
