package kernel

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/overlayd/overlayd/internal/testbed"
)

// inHost opens a Routes handle inside a bed host; the handle keeps that
// namespace whatever thread uses it later.
func inHost(t *testing.T, h *testbed.Host) *Routes {
	t.Helper()
	var k *Routes
	if err := h.Do(func() (err error) { k, err = NewRoutes(); return err }); err != nil {
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
	if err := k.ConfigureLink("ovl0", 1450, netip.MustParseAddr("192.168.0.0")); err != nil {
		t.Fatal(err)
	}
	pool := Route{Dst: netip.MustParsePrefix("192.168.0.0/16"), Kind: KindDevice, Dev: "ovl0", Src: netip.MustParseAddr("192.168.0.0")}
	local := Route{Dst: netip.MustParsePrefix("192.168.0.0/26"), Kind: KindUnreachable}
	direct := Route{Dst: netip.MustParsePrefix("192.168.0.64/26"), Kind: KindVia, Via: netip.MustParseAddr("198.18.1.11")}
	// Node C is in another subnet: the block follows the path to C.
	routed := Route{Dst: netip.MustParsePrefix("192.168.0.128/26"), Kind: KindVia, Via: netip.MustParseAddr("198.18.2.10")}

	// A stale route from an earlier run, and someone else's route.
	if err := a.IP("route", "add", "10.9.0.0/24", "dev", "ovl0", "proto", "211"); err != nil {
		t.Fatal(err)
	}
	if err := a.IP("route", "add", "10.8.0.0/24", "dev", "ovl0"); err != nil {
		t.Fatal(err)
	}

	ch, err := k.Reconcile([]Route{pool, local, direct, routed})
	if err != nil {
		t.Fatal(err)
	}
	if len(ch.Added) != 4 || len(ch.Removed) != 1 || ch.Removed[0].Dst.String() != "10.9.0.0/24" {
		t.Errorf("changes %+v: want 4 added and the stale route removed", ch)
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

	ch, err = k.Reconcile([]Route{pool, local, direct, routed})
	if err != nil || !ch.Empty() {
		t.Errorf("a second reconcile changed %+v (err %v), want nothing", ch, err)
	}
	direct.Via = netip.MustParseAddr("198.18.1.12")
	ch, err = k.Reconcile([]Route{pool, local, direct})
	if err != nil || len(ch.Replaced) != 1 || len(ch.Removed) != 1 || len(ch.Added) != 0 {
		t.Errorf("changing one route and dropping one: %+v (err %v)", ch, err)
	}

	removed, err := k.RemoveAll()
	if err != nil || len(removed) != 3 {
		t.Errorf("RemoveAll removed %d (err %v), want 3", len(removed), err)
	}
	if got := showRoutes(t, a); got != "" {
		t.Errorf("routes left after RemoveAll:\n%s", got)
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
	good := Route{Dst: netip.MustParsePrefix("192.168.0.0/26"), Kind: KindUnreachable}
	bad := Route{Dst: netip.MustParsePrefix("192.168.0.64/26"), Kind: KindDevice, Dev: "nosuchdev"}
	ch, err := k.Reconcile([]Route{bad, good})
	if err == nil || !strings.Contains(err.Error(), "nosuchdev") {
		t.Errorf("error %v, want one naming the missing device", err)
	}
	if len(ch.Added) != 1 {
		t.Errorf("a failing route must not stop the others: %+v", ch)
	}
}
