package kernel

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/overlayd/overlayd/internal/testbed"
)

func TestReconcileRules(t *testing.T) {
	b := testbed.NewStandard(t, testbed.Options{})
	a := b.Host("node-a")
	if err := a.IP("tuntap", "add", "dev", "ovl0", "mode", "tun"); err != nil {
		t.Fatal(err)
	}
	if err := a.IP("link", "set", "ovl0", "up"); err != nil {
		t.Fatal(err)
	}
	k := inHost(t, a)
	before := runRules(t, a)
	natPool, other := netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("192.168.0.0/16")
	rules := NATRules([]netip.Prefix{natPool}, []netip.Prefix{natPool, other}, []netip.Addr{netip.MustParseAddr("198.18.2.10")})
	added, removed, err := k.ReconcileRules(rules, "ovl0")
	if err != nil || len(added) != 4 || len(removed) != 0 {
		t.Fatalf("added %v removed %v err %v, want the 4 rules", added, removed, err)
	}
	for _, c := range []struct{ dst, want string }{
		{"198.18.3.10", "dev ovl0"},       // outside every pool: to the NAT
		{"192.168.0.9", "via 198.18.1.1"}, // another pool: main table
		{"198.18.2.10", "via 198.18.1.1"}, // an exempt node address
	} {
		out := runIn(t, a, "ip", "route", "get", c.dst, "from", "10.1.0.5", "iif", "eth0")
		if !strings.Contains(out, c.want) {
			t.Errorf("from 10.1.0.5 to %s: %q, want %q", c.dst, out, c.want)
		}
	}
	if added, removed, err := k.ReconcileRules(rules, "ovl0"); err != nil || len(added)+len(removed) != 0 {
		t.Errorf("a second reconcile changed %v/%v (%v)", added, removed, err)
	}
	if _, removed, err := k.ReconcileRules(nil, "ovl0"); err != nil || len(removed) != 4 {
		t.Errorf("removing: %v, %v", removed, err)
	}
	if after := runRules(t, a); after != before {
		t.Errorf("the namespace's own rules changed:\n%s\n->\n%s", before, after)
	}
}

func runRules(t *testing.T, h *testbed.Host) string { return runIn(t, h, "ip", "rule", "show") }
