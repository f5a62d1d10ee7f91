package kernel

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NATTable is the routing table natOutgoing traffic is steered to; its
// default route is the TUN device.
const NATTable = 211

// Rule priorities: overlayd's rules sit in a block of their own, before
// the main table's rule (32766), the "to a pool" exemptions first.
const (
	rulePriorityExempt = 31000
	rulePriorityNAT    = 31001
)

// Rule is one policy-routing rule: traffic from Src (to Dst, if set) looks
// up Table.
type Rule struct {
	Src, Dst netip.Prefix
	Table    int
	Priority int
}

func (r Rule) String() string {
	to := ""
	if r.Dst.IsValid() {
		to = " to " + r.Dst.String()
	}
	table := fmt.Sprint(r.Table)
	if r.Table == unix.RT_TABLE_MAIN {
		table = "main"
	}
	return fmt.Sprintf("priority %d from %s%s lookup %s proto %d", r.Priority, r.Src, to, table, RouteProtocol)
}

// NATRules are the rules that send traffic from each natOutgoing pool to
// destinations outside every pool into the NAT table, while destinations
// in any pool (disabled ones too) and the exempt addresses (node addresses,
// with [nat] exclude = "IPPoolsAndHostIPs") keep the main table.
func NATRules(natPools, allPools []netip.Prefix, exempt []netip.Addr) []Rule {
	var rules []Rule
	for _, src := range natPools {
		for _, dst := range allPools {
			rules = append(rules, Rule{Src: src, Dst: dst, Table: unix.RT_TABLE_MAIN, Priority: rulePriorityExempt})
		}
		for _, a := range exempt {
			rules = append(rules, Rule{Src: src, Dst: netip.PrefixFrom(a, 32), Table: unix.RT_TABLE_MAIN, Priority: rulePriorityExempt})
		}
		rules = append(rules, Rule{Src: src, Table: NATTable, Priority: rulePriorityNAT})
	}
	return rules
}

// ReconcileRules makes overlayd's rules exactly these, and the NAT table's
// default route the TUN device (none when there are no rules). Rules carry
// protocol 211, so other owners' rules are never touched.
func (k *Routes) ReconcileRules(rules []Rule, tunDev string) (added, removed []Rule, err error) {
	all, err := k.h.RuleList(unix.AF_INET)
	if err != nil {
		return nil, nil, fmt.Errorf("listing rules: %w", err)
	}
	// netlink's rule filter does not honour the protocol, so select
	// overlayd's own here: the kernel's local, main and default rules must
	// never be touched.
	var current []netlink.Rule
	for _, r := range all {
		if r.Protocol == uint8(RouteProtocol) {
			current = append(current, r)
		}
	}
	var errs []error
	have := make([]Rule, 0, len(current))
	for _, c := range current {
		have = append(have, ruleFromNetlink(c))
	}
	for i, r := range have {
		if slices.Contains(rules, r) {
			continue
		}
		if err := k.h.RuleDel(&current[i]); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("ip rule del %s: %w", r, err))
			continue
		}
		removed = append(removed, r)
	}
	for _, r := range rules {
		if slices.Contains(have, r) {
			continue
		}
		nr := netlink.NewRule()
		nr.Family = unix.AF_INET
		nr.Src = ipNet(r.Src)
		if r.Dst.IsValid() {
			nr.Dst = ipNet(r.Dst)
		}
		nr.Table, nr.Priority, nr.Protocol = r.Table, r.Priority, uint8(RouteProtocol)
		if err := k.h.RuleAdd(nr); err != nil {
			errs = append(errs, fmt.Errorf("ip rule add %s: %w", r, permHint(err)))
			continue
		}
		added = append(added, r)
	}
	if err := k.natTableRoute(len(rules) > 0, tunDev); err != nil {
		errs = append(errs, err)
	}
	return added, removed, errors.Join(errs...)
}

// natTableRoute puts (or removes) `default dev TUN` in the NAT table.
func (k *Routes) natTableRoute(want bool, tunDev string) error {
	def := &netlink.Route{Dst: ipNet(netip.MustParsePrefix("0.0.0.0/0")), Table: NATTable, Protocol: RouteProtocol,
		Scope: netlink.SCOPE_LINK, Family: unix.AF_INET}
	if !want {
		if err := k.h.RouteDel(def); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("removing the NAT table's default route: %w", err)
		}
		return nil
	}
	link, err := k.h.LinkByName(tunDev)
	if err != nil {
		return fmt.Errorf("NAT table: device %q: %w", tunDev, err)
	}
	def.LinkIndex = link.Attrs().Index
	if err := k.h.RouteReplace(def); err != nil {
		return fmt.Errorf("ip route replace default dev %s table %d: %w", tunDev, NATTable, permHint(err))
	}
	return nil
}

func ruleFromNetlink(r netlink.Rule) Rule {
	out := Rule{Table: r.Table, Priority: r.Priority}
	if p, ok := prefixOf(r.Src); ok && r.Src != nil {
		out.Src = p
	}
	if r.Dst != nil {
		if p, ok := prefixOf(r.Dst); ok {
			out.Dst = p
		}
	}
	return out
}
