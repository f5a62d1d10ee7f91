package kernel

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/overlayd/overlayd/internal/testbed"
	"github.com/overlayd/overlayd/plan"
)

// inHost opens a Handle inside a bed host; the handle keeps that
// namespace whatever thread uses it later.
func inHost(t *testing.T, h *testbed.Host) *Handle {
	t.Helper()
	var k *Handle
	if err := h.Do(func() (err error) { k, err = Open(); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	return k
}

func showRoutes(t *testing.T, h *testbed.Host) string {
	return runIn(t, h, "ip", "route", "show", "proto", "211")
}

func runIn(t *testing.T, h *testbed.Host, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := h.Run(ctx, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

func TestReconcile(t *testing.T) {
	b := testbed.NewStandard(t, testbed.Options{})
	a := b.Host("node-a")
	if err := a.IP("tuntap", "add", "dev", "ovl0", "mode", "tun"); err != nil {
		t.Fatal(err)
	}
	k := inHost(t, a)
	if _, err := k.applyLink(plan.Link{Device: "ovl0", MTU: 1450, Addr: netip.MustParseAddr("192.168.0.0")}); err != nil {
		t.Fatal(err)
	}
	pool := Route{Dst: netip.MustParsePrefix("192.168.0.0/16"), Kind: plan.RouteDevice, Dev: "ovl0", Src: netip.MustParseAddr("192.168.0.0")}
	local := Route{Dst: netip.MustParsePrefix("192.168.0.0/26"), Kind: plan.RouteUnreachable}
	direct := Route{Dst: netip.MustParsePrefix("192.168.0.64/26"), Kind: plan.RouteVia, Via: netip.MustParseAddr("198.18.1.11")}
	// Node C is in another subnet: the block follows the path to C.
	routed := Route{Dst: netip.MustParsePrefix("192.168.0.128/26"), Kind: plan.RouteVia, Via: netip.MustParseAddr("198.18.2.10")}
	// The NAT table's route: same destination kind, another table.
	natDefault := Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Kind: plan.RouteDevice, Dev: "ovl0", Table: plan.NATTable}

	// A stale route from an earlier run, and someone else's route.
	if err := a.IP("route", "add", "10.9.0.0/24", "dev", "ovl0", "proto", "211"); err != nil {
		t.Fatal(err)
	}
	if err := a.IP("route", "add", "10.8.0.0/24", "dev", "ovl0"); err != nil {
		t.Fatal(err)
	}

	ch, err := k.reconcileRoutes([]Route{pool, local, direct, routed, natDefault})
	if err != nil {
		t.Fatal(err)
	}
	if ch.Count(ObjectRoute, OpAdded) != 5 || ch.Count(ObjectRoute, OpRemoved) != 1 || !strings.HasPrefix(ch[len(ch)-1].What, "10.9.0.0/24") {
		t.Errorf("changes %v: want 5 added and the stale route removed", ch)
	}
	got := showRoutes(t, a)
	for _, want := range []string{
		"192.168.0.0/16 dev ovl0 scope link src 192.168.0.0",
		"unreachable 192.168.0.0/26",
		"192.168.0.64/26 via 198.18.1.11 dev eth0",
		"192.168.0.128/26 via 198.18.1.1 dev eth0",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("kernel routes lack %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "10.9.0.0") {
		t.Errorf("the stale route survived:\n%s", got)
	}
	if got := runIn(t, a, "ip", "route", "show", "table", "211"); !strings.Contains(got, "default dev ovl0") {
		t.Errorf("table 211: %q, want the default route into the TUN", got)
	}

	ch, err = k.reconcileRoutes([]Route{pool, local, direct, routed, natDefault})
	if err != nil || len(ch) != 0 {
		t.Errorf("a second reconcile changed %v (err %v), want nothing", ch, err)
	}
	direct.Via = netip.MustParseAddr("198.18.1.12")
	ch, err = k.reconcileRoutes([]Route{pool, local, direct, natDefault})
	if err != nil || ch.Count(ObjectRoute, OpReplaced) != 1 || ch.Count(ObjectRoute, OpRemoved) != 1 || len(ch) != 2 {
		t.Errorf("changing one route and dropping one: %v (err %v)", ch, err)
	}

	removed, err := k.Clear()
	if err != nil || removed.Count(ObjectRoute, OpRemoved) != 4 {
		t.Errorf("Clear removed %v (err %v), want 4 routes", removed, err)
	}
	if got := showRoutes(t, a) + runIn(t, a, "ip", "route", "show", "table", "211"); got != "" {
		t.Errorf("routes left after Clear:\n%s", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, _ := a.Run(ctx, "ip", "route", "show", "10.8.0.0/24"); !strings.Contains(string(out), "10.8.0.0/24") {
		t.Error("another owner's route was removed")
	}
}

func TestReconcileReportsWhatFails(t *testing.T) {
	b := testbed.NewStandard(t, testbed.Options{})
	k := inHost(t, b.Host("node-a"))
	good := Route{Dst: netip.MustParsePrefix("192.168.0.0/26"), Kind: plan.RouteUnreachable}
	bad := Route{Dst: netip.MustParsePrefix("192.168.0.64/26"), Kind: plan.RouteDevice, Dev: "nosuchdev"}
	ch, err := k.reconcileRoutes([]Route{bad, good})
	if err == nil || !strings.Contains(err.Error(), "nosuchdev") {
		t.Errorf("error %v, want one naming the missing device", err)
	}
	if ch.Count(ObjectRoute, OpAdded) != 1 {
		t.Errorf("a failing route must not stop the others: %v", ch)
	}
}
