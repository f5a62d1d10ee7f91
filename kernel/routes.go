package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/overlayd/overlayd/plan"
)

// Route is a route as overlayd wants it: the plan's.
type Route = plan.KernelRoute

// routeKey tells routes apart: one per destination in each table.
type routeKey struct {
	table int
	dst   netip.Prefix
}

// Routes returns the routes overlayd owns now, in the main and NAT tables.
func (k *Handle) Routes() ([]Route, error) {
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

func (k *Handle) owned() ([]netlink.Route, error) {
	var all []netlink.Route
	for _, table := range []int{plan.MainTable, plan.NATTable} {
		filter := &netlink.Route{Protocol: plan.RouteProtocol, Table: table}
		rs, err := k.h.RouteListFiltered(unix.AF_INET, filter, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, fmt.Errorf("listing overlayd's routes (proto %d, table %d): %w", plan.RouteProtocol, table, err)
		}
		all = append(all, rs...)
	}
	return all, nil
}

// reconcileRoutes makes overlayd's routes exactly the desired ones: missing
// ones are added, differing ones replaced, and owned routes not desired
// (stale, from an earlier run or the previous plan) removed. Routes of
// other owners are never touched.
func (k *Handle) reconcileRoutes(desired []Route) (Changes, error) {
	var ch Changes
	current, err := k.owned()
	if err != nil {
		return ch, err
	}
	have := make(map[routeKey]netlink.Route, len(current))
	for _, r := range current {
		if p, ok := prefixOf(r.Dst); ok {
			have[routeKey{r.Table, p}] = r
		}
	}
	var (
		errs                  []error
		added, replaced, gone []Route
	)
	want := make(map[routeKey]bool, len(desired))
	for _, r := range desired {
		key := routeKey{r.TableOrMain(), r.Dst}
		want[key] = true
		nr, err := k.toNetlink(r)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		old, exists := have[key]
		if exists && k.same(old, nr) {
			continue
		}
		if err := k.h.RouteReplace(nr); err != nil {
			errs = append(errs, fmt.Errorf("ip route replace %s: %w", r, explainRouteErr(r, err)))
			continue
		}
		if exists {
			replaced = append(replaced, r)
		} else {
			added = append(added, r)
		}
	}
	for key, old := range have {
		if want[key] {
			continue
		}
		if err := k.h.RouteDel(&old); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("ip route del %s table %d: %w", key.dst, key.table, err))
			continue
		}
		gone = append(gone, k.fromNetlink(old))
	}
	for _, set := range []struct {
		op     Op
		routes []Route
	}{{OpAdded, added}, {OpReplaced, replaced}, {OpRemoved, gone}} {
		slices.SortFunc(set.routes, func(a, b Route) int { return a.Dst.Addr().Compare(b.Dst.Addr()) })
		for _, r := range set.routes {
			ch = append(ch, Change{Object: ObjectRoute, Op: set.op, What: r.String()})
		}
	}
	return ch, errors.Join(errs...)
}

func explainRouteErr(r Route, err error) error {
	switch {
	case r.Kind == plan.RouteVia && errors.Is(err, unix.ENETUNREACH):
		return fmt.Errorf("%w: %s is not on a subnet this node is connected to (a block sent unencapsulated needs its node on the same subnet)", err, r.Via)
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("%w: programming routes needs CAP_NET_ADMIN in this network namespace", err)
	case errors.Is(err, unix.ENODEV):
		return fmt.Errorf("%w: device %q does not exist", err, r.Dev)
	}
	return err
}

func (k *Handle) toNetlink(r Route) (*netlink.Route, error) {
	nr := &netlink.Route{
		Dst:      ipNet(r.Dst),
		Protocol: plan.RouteProtocol,
		Table:    r.TableOrMain(),
		Family:   unix.AF_INET,
	}
	if r.Src.IsValid() {
		nr.Src = net.IP(r.Src.AsSlice())
	}
	switch r.Kind {
	case plan.RouteUnreachable:
		nr.Type = unix.RTN_UNREACHABLE
	case plan.RouteVia:
		gw, err := k.nextHop(r.Via)
		if err != nil {
			return nil, fmt.Errorf("route %s: %w", r, err)
		}
		nr.Gw = net.IP(gw.AsSlice())
		nr.Scope = netlink.SCOPE_UNIVERSE
	case plan.RouteDevice:
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
func (k *Handle) nextHop(addr netip.Addr) (netip.Addr, error) {
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

func (k *Handle) fromNetlink(nr netlink.Route) Route {
	p, _ := prefixOf(nr.Dst)
	r := Route{Dst: p}
	if nr.Table != plan.MainTable {
		r.Table = nr.Table
	}
	if nr.Src != nil {
		r.Src, _ = netip.AddrFromSlice(nr.Src.To4())
	}
	switch {
	case nr.Type == unix.RTN_UNREACHABLE:
		r.Kind = plan.RouteUnreachable
	case nr.Gw != nil:
		r.Kind = plan.RouteVia
		r.Via, _ = netip.AddrFromSlice(nr.Gw.To4())
	default:
		r.Kind = plan.RouteDevice
	}
	if nr.LinkIndex > 0 && r.Kind != plan.RouteUnreachable {
		if link, err := k.h.LinkByIndex(nr.LinkIndex); err == nil {
			r.Dev = link.Attrs().Name
		}
	}
	return r
}

// same reports whether an existing route already does what nr asks.
func (k *Handle) same(old netlink.Route, nr *netlink.Route) bool {
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
