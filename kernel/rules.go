package kernel

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/overlayd/overlayd/plan"
)

// Rule is a policy rule as overlayd wants it: the plan's.
type Rule = plan.KernelRule

// Rules returns the rules overlayd owns now.
func (k *Handle) Rules() ([]Rule, error) {
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

// ownedRules lists the IPv4 rules overlayd owns: those of its protocol, and
// those without a protocol in its priority block, which is what its own
// look like on a kernel that does not keep a rule's protocol (before 4.17).
func (k *Handle) ownedRules() ([]netlink.Rule, error) {
	all, err := k.h.RuleList(unix.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("listing rules: %w", err)
	}
	// netlink's rule filter does not look at the protocol, so the
	// selection is made here: the kernel's local, main and default rules
	// and other owners' must never be touched.
	var owned []netlink.Rule
	for _, r := range all {
		inBlock := r.Priority >= plan.RulePriorityExempt && r.Priority <= plan.RulePriorityNAT
		if r.Protocol == plan.RouteProtocol || (r.Protocol == unix.RTPROT_UNSPEC && inBlock) {
			owned = append(owned, r)
		}
	}
	return owned, nil
}

// ruleState is what removeStaleRules left: the wanted rules already in
// place, and what it removed.
type ruleState struct {
	kept    []Rule
	removed Changes
}

// removeStaleRules removes the owned rules not in want (and duplicates),
// those that steer to the NAT first, so none outlives its exemptions.
func (k *Handle) removeStaleRules(want []Rule) (ruleState, error) {
	var st ruleState
	current, err := k.ownedRules()
	if err != nil {
		return st, err
	}
	slices.SortStableFunc(current, func(a, b netlink.Rule) int {
		return cmp.Compare(steerRank(a.Table == plan.NATTable), steerRank(b.Table == plan.NATTable))
	})
	var errs []error
	for i := range current {
		r := ruleFromNetlink(current[i])
		if slices.Contains(want, r) && !slices.Contains(st.kept, r) {
			st.kept = append(st.kept, r)
			continue
		}
		if err := k.h.RuleDel(&current[i]); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("ip rule del %s: %w", r, err))
			continue
		}
		st.removed = append(st.removed, Change{Object: ObjectRule, Op: OpRemoved, What: r.String()})
	}
	return st, errors.Join(errs...)
}

// addRules adds the rules of want not in have: exemptions first, then what
// steers to the NAT.
func (k *Handle) addRules(want, have []Rule) (Changes, error) {
	var (
		ch    Changes
		added []Rule
		errs  []error
	)
	want = slices.Clone(want)
	slices.SortStableFunc(want, func(a, b Rule) int { return -cmp.Compare(steerRank(a.Steers()), steerRank(b.Steers())) })
	for _, r := range want {
		if slices.Contains(have, r) || slices.Contains(added, r) {
			continue
		}
		if err := k.h.RuleAdd(ruleToNetlink(r)); err != nil {
			errs = append(errs, fmt.Errorf("ip rule add %s: %w", r, permHint(err)))
			continue
		}
		added = append(added, r)
		ch = append(ch, Change{Object: ObjectRule, Op: OpAdded, What: r.String()})
	}
	return ch, errors.Join(errs...)
}

// steerRank orders rules that steer to the NAT before exemptions.
func steerRank(steers bool) int {
	if steers {
		return 0
	}
	return 1
}

func ruleToNetlink(r Rule) *netlink.Rule {
	nr := netlink.NewRule()
	nr.Family = unix.AF_INET
	nr.Src = ipNet(r.Src)
	if r.Dst.IsValid() {
		nr.Dst = ipNet(r.Dst)
	}
	nr.Table, nr.Priority, nr.Protocol = r.Table, r.Priority, plan.RouteProtocol
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
