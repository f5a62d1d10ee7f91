package kernel

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NATTable is the routing table natOutgoing traffic is steered to; its only
// route is the default route into the TUN device.
const NATTable = 211

// Rule priorities: overlayd's rules sit in a block of their own before the
// main table's rule (32766), the exemptions ("to a pool: main") before the
// rule that sends the rest to the NAT table. Rules in this block without a
// protocol are taken for overlayd's too (see owned).
const (
	RulePriorityExempt = 31000
	RulePriorityNAT    = 31001
)

// Rule is one policy-routing rule overlayd owns: traffic from Src (to Dst,
// if valid) looks up Table.
type Rule struct {
	Src, Dst netip.Prefix
	Table    int
	Priority int
}

// String renders the rule as the `ip rule` command that makes it.
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

// steers reports whether the rule sends traffic to the NAT (rather than
// exempting it): such a rule must never exist without its exemptions.
func (r Rule) steers() bool { return r.Table == NATTable }

// NATRules are the rules for natOutgoing, as Felix's cali-nat-outgoing
// decides it: traffic from each natOutgoing pool goes to the NAT table,
// except to a destination in any pool (allPools: disabled pools too) or to
// an exempt address (the node addresses, with [nat] exclude =
// "IPPoolsAndHostIPs"), which keeps the main table. The node's own
// addresses need no rule: the local table comes first. Duplicates are
// dropped; the order is exemptions before the NAT rule, pool by pool.
func NATRules(natPools, allPools []netip.Prefix, exempt []netip.Addr) []Rule {
	var rules []Rule
	add := func(r Rule) {
		if !slices.Contains(rules, r) {
			rules = append(rules, r)
		}
	}
	for _, src := range natPools {
		src = src.Masked()
		for _, dst := range allPools {
			add(Rule{Src: src, Dst: dst.Masked(), Table: unix.RT_TABLE_MAIN, Priority: RulePriorityExempt})
		}
		for _, a := range exempt {
			if a.Is4() {
				add(Rule{Src: src, Dst: netip.PrefixFrom(a, 32), Table: unix.RT_TABLE_MAIN, Priority: RulePriorityExempt})
			}
		}
		add(Rule{Src: src, Table: NATTable, Priority: RulePriorityNAT})
	}
	return rules
}

// ListRules returns the rules overlayd owns now.
func (k *Routes) ListRules() ([]Rule, error) {
	nl, err := k.ownedRules()
	if err != nil {
		return nil, err
	}
	out := make([]Rule, 0, len(nl))
	for _, r := range nl {
		out = append(out, ruleFromNetlink(r))
	}
	return out, nil
}

// ownedRules lists the IPv4 rules overlayd owns: those of protocol 211, and
// those without a protocol in its priority block, which is what its own
// look like on a kernel that does not keep a rule's protocol (before 4.17).
func (k *Routes) ownedRules() ([]netlink.Rule, error) {
	all, err := k.h.RuleList(unix.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("listing rules: %w", err)
	}
	// netlink's rule filter does not look at the protocol, so the
	// selection is made here: the kernel's local, main and default rules
	// and other owners' must never be touched.
	var owned []netlink.Rule
	for _, r := range all {
		inBlock := r.Priority >= RulePriorityExempt && r.Priority <= RulePriorityNAT
		if r.Protocol == uint8(RouteProtocol) || (r.Protocol == unix.RTPROT_UNSPEC && inBlock) {
			owned = append(owned, r)
		}
	}
	return owned, nil
}

// ReconcileRules makes overlayd's rules exactly these (stale ones from an
// earlier run or plan are removed, missing ones added) and puts the NAT
// table's default route on tunDev, or removes it when there are no rules.
// A pool's NAT rule is never in place without its exemptions: rules that
// steer to the NAT are removed first and added last. It carries on past a
// failing rule and returns every failure joined; added and removed say what
// changed.
func (k *Routes) ReconcileRules(rules []Rule, tunDev string) (added, removed []Rule, err error) {
	current, err := k.ownedRules()
	if err != nil {
		return nil, nil, err
	}
	var errs []error
	// A steering rule first, so none outlives its exemptions.
	slices.SortStableFunc(current, func(a, b netlink.Rule) int {
		return cmp.Compare(steerRank(a.Table == NATTable), steerRank(b.Table == NATTable))
	})
	var have []Rule
	for i := range current {
		r := ruleFromNetlink(current[i])
		if slices.Contains(rules, r) && !slices.Contains(have, r) {
			have = append(have, r)
			continue
		}
		if err := k.h.RuleDel(&current[i]); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("ip rule del %s: %w", r, err))
			continue
		}
		removed = append(removed, r)
	}
	if err := k.natTableRoute(len(rules) > 0, tunDev); err != nil {
		errs = append(errs, err)
	}
	// Exemptions first, then what steers to the NAT.
	want := slices.Clone(rules)
	slices.SortStableFunc(want, func(a, b Rule) int { return -cmp.Compare(steerRank(a.steers()), steerRank(b.steers())) })
	for _, r := range want {
		if slices.Contains(have, r) || slices.Contains(added, r) {
			continue
		}
		if err := k.h.RuleAdd(r.toNetlink()); err != nil {
			errs = append(errs, fmt.Errorf("ip rule add %s: %w", r, permHint(err)))
			continue
		}
		added = append(added, r)
	}
	return added, removed, errors.Join(errs...)
}

// steerRank orders rules that steer to the NAT before exemptions.
func steerRank(steers bool) int {
	if steers {
		return 0
	}
	return 1
}

// NATTableRoute is, in `ip route` form, the route natTableRoute programs:
// what `overlayd check --print-routes` tells whoever programs the kernel.
func NATTableRoute(tunDev string) string {
	return fmt.Sprintf("default dev %s scope link table %d proto %d", tunDev, NATTable, RouteProtocol)
}

// natTableRoute puts (or removes) NATTableRoute in the NAT table.
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
		return fmt.Errorf("ip route replace %s: %w", NATTableRoute(tunDev), permHint(err))
	}
	return nil
}

func (r Rule) toNetlink() *netlink.Rule {
	nr := netlink.NewRule()
	nr.Family = unix.AF_INET
	nr.Src = ipNet(r.Src)
	if r.Dst.IsValid() {
		nr.Dst = ipNet(r.Dst)
	}
	nr.Table, nr.Priority, nr.Protocol = r.Table, r.Priority, uint8(RouteProtocol)
	return nr
}

func ruleFromNetlink(r netlink.Rule) Rule {
	out := Rule{Table: r.Table, Priority: r.Priority}
	if p, ok := prefixOf(r.Src); ok {
		out.Src = p
	}
	if r.Dst != nil {
		if p, ok := prefixOf(r.Dst); ok {
			out.Dst = p
		}
	}
	return out
}
