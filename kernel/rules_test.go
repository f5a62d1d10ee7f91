package kernel

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/overlayd/overlayd/internal/testbed"
)

var (
	natPool   = netip.MustParsePrefix("10.1.0.0/16")
	natPool2  = netip.MustParsePrefix("10.2.0.0/16")
	plainPool = netip.MustParsePrefix("192.168.0.0/16")
)

func TestNATRules(t *testing.T) {
	exempt := func(src, dst string) Rule {
		return Rule{Src: netip.MustParsePrefix(src), Dst: netip.MustParsePrefix(dst), Table: unix.RT_TABLE_MAIN, Priority: RulePriorityExempt}
	}
	steer := func(src string) Rule {
		return Rule{Src: netip.MustParsePrefix(src), Table: NATTable, Priority: RulePriorityNAT}
	}
	tests := []struct {
		name     string
		nat, all []netip.Prefix
		exempt   []netip.Addr
		want     []Rule
	}{
		{"no natOutgoing pool, no rules", nil, []netip.Prefix{plainPool}, nil, nil},
		{"one NAT pool among two: both pools exempt", []netip.Prefix{natPool}, []netip.Prefix{natPool, plainPool}, nil,
			[]Rule{exempt("10.1.0.0/16", "10.1.0.0/16"), exempt("10.1.0.0/16", "192.168.0.0/16"), steer("10.1.0.0/16")}},
		{"host addresses exempt, duplicates once", []netip.Prefix{natPool}, []netip.Prefix{natPool},
			[]netip.Addr{netip.MustParseAddr("198.18.1.11"), netip.MustParseAddr("198.18.1.11")},
			[]Rule{exempt("10.1.0.0/16", "10.1.0.0/16"), exempt("10.1.0.0/16", "198.18.1.11/32"), steer("10.1.0.0/16")}},
		{"every NAT pool gets its own rules", []netip.Prefix{natPool, natPool2}, []netip.Prefix{natPool, natPool2}, nil,
			[]Rule{exempt("10.1.0.0/16", "10.1.0.0/16"), exempt("10.1.0.0/16", "10.2.0.0/16"), steer("10.1.0.0/16"),
				exempt("10.2.0.0/16", "10.1.0.0/16"), exempt("10.2.0.0/16", "10.2.0.0/16"), steer("10.2.0.0/16")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := NATRules(tc.nat, tc.all, tc.exempt); !slices.Equal(got, tc.want) {
				t.Errorf("got  %v\nwant %v", got, tc.want)
			}
		})
	}
}

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
	nodeB := netip.MustParseAddr("198.18.1.11")
	all := []netip.Prefix{natPool, natPool2, plainPool}
	rules := NATRules([]netip.Prefix{natPool, natPool2}, all, []netip.Addr{nodeB})

	t.Run("creates exactly the rules and removes stale ones", func(t *testing.T) {
		added, removed, err := k.ReconcileRules(rules, "ovl0")
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(added, append(exemptions(rules), steering(rules)...)) {
			t.Errorf("added %v\nwant every rule, exemptions first", added)
		}
		if len(removed) != 1 || removed[0].Src != netip.MustParsePrefix("10.9.0.0/16") {
			t.Errorf("removed %v, want the stale rule", removed)
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
		if out := runIn(t, a, "ip", "route", "show", "table", "211"); !strings.Contains(out, "default dev ovl0") {
			t.Errorf("table 211: %q, want the default route into the TUN", out)
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
		added, removed, err := k.ReconcileRules(rules, "ovl0")
		if err != nil || len(added)+len(removed) != 0 {
			t.Errorf("added %v removed %v (%v), want nothing", added, removed, err)
		}
	})

	t.Run("removing a pool removes its rules", func(t *testing.T) {
		fewer := NATRules([]netip.Prefix{natPool}, all, []netip.Addr{nodeB})
		added, removed, err := k.ReconcileRules(fewer, "ovl0")
		if err != nil || len(added) != 0 {
			t.Fatalf("added %v (%v), want nothing added", added, err)
		}
		if len(removed) != 5 || !removed[0].steers() {
			t.Errorf("removed %v, want 10.2.0.0/16's 5 rules, its NAT rule first", removed)
		}
		for _, r := range removed {
			if r.Src != natPool2 {
				t.Errorf("removed %s, which is not 10.2.0.0/16's", r)
			}
		}
		if have, err := k.ListRules(); err != nil || len(have) != len(fewer) {
			t.Errorf("owned now %v (%v), want %d rules", have, err, len(fewer))
		}
	})

	t.Run("no rules on exit", func(t *testing.T) {
		_, removed, err := k.ReconcileRules(nil, "ovl0")
		if err != nil || len(removed) != 5 {
			t.Errorf("removed %v (%v), want the 5 rules left", removed, err)
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
	return slices.DeleteFunc(slices.Clone(rs), Rule.steers)
}

func steering(rs []Rule) []Rule {
	return slices.DeleteFunc(slices.Clone(rs), func(r Rule) bool { return !r.steers() })
}
