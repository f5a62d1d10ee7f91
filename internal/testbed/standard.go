package testbed

import (
	"fmt"
	"net/netip"
	"testing"
)

// The standard bed of DESIGN.md: nodes A and B share 198.18.1.0/24, node C
// is on 198.18.2.0/24 and an outside host (in no pool) on 198.18.3.0/24,
// all behind one router namespace that forwards between the three subnets.
// Every node and the outside host route by default through the router.
var standardHosts = []struct {
	name    string
	addr    string // address/prefix on the host's eth0
	gateway string // the router's address on that subnet
	bridged bool   // on the shared 198.18.1.0/24 segment
	node    bool   // a node: forwards for its workloads
}{
	{"node-a", "198.18.1.10/24", "198.18.1.1", true, true},
	{"node-b", "198.18.1.11/24", "198.18.1.1", true, true},
	{"node-c", "198.18.2.10/24", "198.18.2.1", false, true},
	{"outside", "198.18.3.10/24", "198.18.3.1", false, false},
}

// NewStandard is NewForTest with the standard bed built in it.
func NewStandard(tb testing.TB, opts Options) *Bed {
	tb.Helper()
	b := NewForTest(tb, opts)
	if err := BuildStandard(b); err != nil {
		tb.Fatalf("%v", err)
	}
	return b
}

// BuildStandard builds the standard bed in an empty bed: hosts "router",
// "node-a", "node-b", "node-c" and "outside", each with eth0 toward the
// router (A and B through a bridge in the router, as one L2 segment) and a
// default route through it. The router and the nodes forward; the outside
// host does not. Workloads are added with AddWorkload.
func BuildStandard(b *Bed) error {
	router, err := b.AddHost("router")
	if err != nil {
		return err
	}
	router.Addr = netip.MustParsePrefix("198.18.1.1/24")
	if err := router.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		return fmt.Errorf("testbed: router: %w", err)
	}
	if err := router.AddBridge("br1", router.Addr); err != nil {
		return err
	}
	for _, s := range standardHosts {
		h, err := b.AddHost(s.name)
		if err != nil {
			return err
		}
		h.Addr = netip.MustParsePrefix(s.addr)
		far := Endpoint{Host: router, Iface: "to-" + s.name}
		if s.bridged {
			far.Bridge = "br1"
		} else {
			far.Addr = netip.PrefixFrom(netip.MustParseAddr(s.gateway), h.Addr.Bits())
		}
		if err := b.Link(Endpoint{Host: h, Iface: "eth0", Addr: h.Addr}, far); err != nil {
			return err
		}
		if err := h.IP("route", "add", "default", "via", s.gateway); err != nil {
			return fmt.Errorf("testbed: %w", err)
		}
		if !s.node {
			continue
		}
		if err := h.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
			return fmt.Errorf("testbed: %s: %w", s.name, err)
		}
	}
	return nil
}
