package kernel

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/internal/testbed"
	"github.com/overlayd/overlayd/plan"
)

var (
	natPool  = netip.MustParsePrefix("10.1.0.0/16")
	natPool2 = netip.MustParsePrefix("10.2.0.0/16")
)

// natRules are the rules of node-a's plan when the pools natPool, natPool2
// and a plain one exist and those in nat have natOutgoing, node addresses
// exempt: what the kernel is asked to carry out.
func natRules(t *testing.T, nat ...netip.Prefix) []Rule {
	t.Helper()
	file := "[nat]\nexclude = \"IPPoolsAndHostIPs\"\n"
	for _, pool := range []netip.Prefix{natPool, natPool2, netip.MustParsePrefix("192.168.0.0/16")} {
		file += fmt.Sprintf("[[pools]]\nname = \"p%d\"\ncidr = \"%s\"\nnatOutgoing = %t\n", pool.Addr().As4()[1], pool, slices.Contains(nat, pool))
	}
	file += "[[nodes]]\nname = \"node-a\"\naddress = \"198.18.1.10/24\"\n[[nodes]]\nname = \"node-b\"\naddress = \"198.18.1.11/24\"\n"
	c, err := config.Parse("rules.toml", []byte(file))
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.Build(c, "node-a", 1500)
	if err != nil {
		t.Fatal(err)
	}
	return p.Kernel.Rules
}

// natTableRoute is the NAT table's route, which the rules steer to.
var natTableRoute = Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Kind: plan.RouteDevice, Dev: "ovl0", Table: plan.NATTable}

// ruleLines is `ip rule show` (of the kernel's own making, independent of
// netlink's parsing) with overlayd's lines only.
func ruleLines(t *testing.T, h *testbed.Host) []string {
	var out []string
	for _, l := range strings.Split(runIn(t, h, "ip", "rule", "show"), "\n") {
		if strings.Contains(l, "proto 211") {
			out = append(out, strings.Join(strings.Fields(l), " "))
		}
	}
	return out
}

func TestReconcileRules(t *testing.T) {
	b := testbed.NewStandard(t, testbed.Options{})
	a := b.Host("node-a")
	w, err := b.AddWorkload("node-a", "wa", netip.MustParseAddr("10.1.0.5"))
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"tuntap", "add", "dev", "ovl0", "mode", "tun"},
		{"link", "set", "ovl0", "up"},
		// A stale rule of an earlier run, and someone else's rule.
		{"rule", "add", "priority", "31001", "from", "10.9.0.0/16", "lookup", "211", "proto", "211"},
		{"rule", "add", "priority", "100", "from", "10.8.0.0/16", "lookup", "main"},
	} {
		if err := a.IP(args...); err != nil {
			t.Fatal(err)
		}
	}
	k := inHost(t, a)
	rules := natRules(t, natPool, natPool2)
	// What Apply does for rules, with the NAT table's route and no other.
	reconcile := func(want []Rule) (Changes, error) {
		st, err := k.removeStaleRules(want)
		var routes []Route
		if len(want) > 0 {
			routes = append(routes, natTableRoute)
		}
		rch, rerr := k.reconcileRoutes(routes)
		ch, aerr := k.addRules(want, st.kept)
		return append(append(st.removed, rch...), ch...), errors.Join(err, rerr, aerr)
	}

	t.Run("creates exactly the rules and removes stale ones", func(t *testing.T) {
		ch, err := reconcile(rules)
		if err != nil {
			t.Fatal(err)
		}
		if got := ch.Count(ObjectRoute, OpAdded); got != 1 {
			t.Errorf("%d routes added, want the NAT table's", got)
		}
		if got, want := changed(ch, OpAdded), strs(append(exemptions(rules), steering(rules)...)); !slices.Equal(got, want) {
			t.Errorf("added %v\nwant every rule, exemptions first", got)
		}
		if got := changed(ch, OpRemoved); len(got) != 1 || !strings.Contains(got[0], "from 10.9.0.0/16 ") {
			t.Errorf("removed %v, want the stale rule", got)
		}
		want := []string{
			"31000: from 10.1.0.0/16 to 10.1.0.0/16 lookup main proto 211",
			"31000: from 10.1.0.0/16 to 10.2.0.0/16 lookup main proto 211",
			"31000: from 10.1.0.0/16 to 192.168.0.0/16 lookup main proto 211",
			"31000: from 10.1.0.0/16 to 198.18.1.11 lookup main proto 211",
			"31000: from 10.2.0.0/16 to 10.1.0.0/16 lookup main proto 211",
			"31000: from 10.2.0.0/16 to 10.2.0.0/16 lookup main proto 211",
			"31000: from 10.2.0.0/16 to 192.168.0.0/16 lookup main proto 211",
			"31000: from 10.2.0.0/16 to 198.18.1.11 lookup main proto 211",
			"31001: from 10.1.0.0/16 lookup 211 proto 211",
			"31001: from 10.2.0.0/16 lookup 211 proto 211",
		}
		got := ruleLines(t, a)
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("ip rule show:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		if out := runIn(t, a, "ip", "rule", "show", "priority", "100"); !strings.Contains(out, "from 10.8.0.0/16 lookup main") {
			t.Errorf("someone else's rule is gone: %q", out)
		}
	})

	t.Run("steers only what leaves every pool", func(t *testing.T) {
		for _, c := range []struct {
			dst, want, not string
		}{
			{"198.18.3.10", "dev ovl0", ""},              // outside every pool: to the NAT
			{"192.168.0.9", "via 198.18.1.1", "ovl0"},    // another pool: the main table
			{"10.2.0.7", "via 198.18.1.1", "ovl0"},       // a pool that NATs too: still a pool
			{"198.18.1.11", "dev eth0", "ovl0"},          // an exempt node address
			{"198.18.1.10", "local 198.18.1.10", "ovl0"}, // the node itself: the local table
		} {
			out := runIn(t, a, "ip", "route", "get", c.dst, "from", "10.1.0.5", "iif", w.NodeIface)
			if !strings.Contains(out, c.want) || (c.not != "" && strings.Contains(out, c.not)) {
				t.Errorf("from the workload to %s: %q, want %q", c.dst, out, c.want)
			}
		}
		// Traffic from outside the NAT pools is not steered.
		if out := runIn(t, a, "ip", "route", "get", "198.18.3.10", "from", "198.18.1.10"); strings.Contains(out, "ovl0") {
			t.Errorf("the node's own traffic: %q, want the main table", out)
		}
	})

	t.Run("a second call changes nothing", func(t *testing.T) {
		if ch, err := reconcile(rules); err != nil || len(ch) != 0 {
			t.Errorf("changed %v (%v), want nothing", ch, err)
		}
	})

	t.Run("removing a pool removes its rules", func(t *testing.T) {
		fewer := natRules(t, natPool)
		ch, err := reconcile(fewer)
		if err != nil || len(changed(ch, OpAdded)) != 0 {
			t.Fatalf("changed %v (%v), want nothing added", ch, err)
		}
		removed := changed(ch, OpRemoved)
		if len(removed) != 5 || !strings.Contains(removed[0], "lookup 211") {
			t.Errorf("removed %v, want 10.2.0.0/16's 5 rules, its NAT rule first", removed)
		}
		for _, r := range removed {
			if !strings.Contains(r, "from 10.2.0.0/16 ") {
				t.Errorf("removed %s, which is not 10.2.0.0/16's", r)
			}
		}
		if have, err := k.Rules(); err != nil || len(have) != len(fewer) {
			t.Errorf("owned now %v (%v), want %d rules", have, err, len(fewer))
		}
	})

	t.Run("no rules on exit", func(t *testing.T) {
		ch, err := k.Clear()
		if err != nil || len(changed(ch, OpRemoved)) != 5 {
			t.Errorf("removed %v (%v), want the 5 rules left", ch, err)
		}
		if got := ruleLines(t, a); len(got) != 0 {
			t.Errorf("rules left: %v", got)
		}
		if out := runIn(t, a, "ip", "route", "show", "table", "211"); out != "" {
			t.Errorf("table 211 still has %q", out)
		}
	})
}

func exemptions(rs []Rule) []Rule {
	return slices.DeleteFunc(slices.Clone(rs), Rule.Steers)
}

func steering(rs []Rule) []Rule {
	return slices.DeleteFunc(slices.Clone(rs), func(r Rule) bool { return !r.Steers() })
}

// changed lists the rules one operation was about.
func changed(ch Changes, op Op) []string {
	var out []string
	for _, c := range ch {
		if c.Object == ObjectRule && c.Op == op {
			out = append(out, c.What)
		}
	}
	return out
}

func strs(rs []Rule) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.String()
	}
	return out
}
