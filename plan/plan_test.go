package plan

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/overlayd/overlayd/config"
)

func load(t *testing.T, name string) *config.Cluster {
	t.Helper()
	c, err := config.Load(filepath.Join("..", "examples", name))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func parse(t *testing.T, src string) *config.Cluster {
	t.Helper()
	c, err := config.Parse("test.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// routesOf renders "node:encap" for each route, in order.
func routesOf(p *Plan) string {
	var out []string
	for _, r := range p.Routes {
		out = append(out, fmt.Sprintf("%s:%s", r.Node, r.Encap))
	}
	return strings.Join(out, " ")
}

func TestExamplesFromNodeA(t *testing.T) {
	tests := []struct {
		file     string
		want     string
		wantMTU  int
		wantIPIP bool
		wantVXLN bool
	}{
		{"vxlan-cross-subnet.toml", "node-b:none node-c:vxlan", 1450, false, true},
		{"vxlan-always.toml", "node-b:vxlan node-c:vxlan", 1450, false, true},
		{"ipip-cross-subnet.toml", "node-b:none node-c:ipip", 1480, true, false},
		{"ipip-always.toml", "node-b:ipip node-c:ipip", 1480, true, false},
		{"nat-outgoing.toml", "node-b:none node-c:ipip", 1480, true, false},
		{"never.toml", "node-b:none node-c:none", 1500, false, false},
		{"two-pools.toml", "node-b:none node-b:ipip node-c:vxlan node-c:ipip", 1450, true, true},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			p, err := Build(load(t, tc.file), "node-a", 1500)
			if err != nil {
				t.Fatal(err)
			}
			if got := routesOf(p); got != tc.want {
				t.Errorf("routes %q, want %q", got, tc.want)
			}
			if p.TunnelMTU != tc.wantMTU {
				t.Errorf("tunnel MTU %d, want %d", p.TunnelMTU, tc.wantMTU)
			}
			if p.UsesIPIP != tc.wantIPIP || p.UsesVXLAN != tc.wantVXLN {
				t.Errorf("uses ipip=%t vxlan=%t, want %t %t", p.UsesIPIP, p.UsesVXLAN, tc.wantIPIP, tc.wantVXLN)
			}
		})
	}
}

func TestCrossSubnetIsFelixsTest(t *testing.T) {
	// The local address-with-prefix must contain the remote address: a
	// remote node with a wider prefix that contains us is still "other
	// subnet" when our own prefix does not contain it.
	src := `
[[pools]]
name = "p"
cidr = "192.168.0.0/16"
vxlanMode = "CrossSubnet"

[[nodes]]
name = "a"
address = "198.18.1.10/24"

[[nodes]]
name = "wide"
address = "198.18.2.10/16"

[[nodes]]
name = "near"
address = "198.18.1.200/28"
`
	c := parse(t, src)
	from := func(node string) string {
		p, err := Build(c, node, 0)
		if err != nil {
			t.Fatal(err)
		}
		return routesOf(p)
	}
	if got := from("a"); got != "wide:vxlan near:none" {
		t.Errorf("from a: %s, want wide:vxlan near:none", got)
	}
	if got := from("wide"); got != "a:none near:none" {
		t.Errorf("from wide (a /16 containing both): %s, want a:none near:none", got)
	}
	if got := from("near"); got != "a:vxlan wide:vxlan" {
		t.Errorf("from near (a /28 containing neither): %s, want a:vxlan wide:vxlan", got)
	}
}

func TestPlanDetails(t *testing.T) {
	p, err := Build(load(t, "vxlan-cross-subnet.toml"), "node-a", 9000)
	if err != nil {
		t.Fatal(err)
	}
	if p.TunnelMTU != 8950 {
		t.Errorf("MTU follows the underlay: %d, want 8950", p.TunnelMTU)
	}
	if p.TunnelAddr != netip.MustParseAddr("192.168.0.0") {
		t.Errorf("tunnel address %s", p.TunnelAddr)
	}
	if len(p.LocalBlocks) != 1 || p.LocalBlocks[0].Block.String() != "192.168.0.0/26" {
		t.Errorf("local blocks %v", p.LocalBlocks)
	}
	if len(p.NATPools) != 1 || p.NATPools[0].String() != "192.168.0.0/16" {
		t.Errorf("NAT pools %v", p.NATPools)
	}
	if len(p.Peers) != 2 || p.Peers[1].Name != "node-c" || p.Peers[1].Addr.String() != "198.18.2.10" {
		t.Errorf("peers %+v", p.Peers)
	}
	r := p.Routes[1]
	if !strings.Contains(r.Reason(), "vxlanMode CrossSubnet, other subnet: 198.18.2.10 is outside this node's subnet 198.18.1.0/24") {
		t.Errorf("reason %q", r.Reason())
	}
	if mac := p.Peers[1].VTEPMAC; mac.String() != config.VTEPMACFor("node-c").String() {
		t.Errorf("node-c's VTEP MAC %s, want %s", mac, config.VTEPMACFor("node-c"))
	}
}

func TestTunnelMTUOverride(t *testing.T) {
	c := load(t, "ipip-always.toml")
	c.Tunnel.MTU = 1400
	p, err := Build(c, "node-a", 1500)
	if err != nil {
		t.Fatal(err)
	}
	if p.TunnelMTU != 1400 || !strings.Contains(p.MTUReason, "[tunnel] mtu") {
		t.Errorf("MTU %d (%s), want 1400 from [tunnel] mtu", p.TunnelMTU, p.MTUReason)
	}
}

func TestUnknownNode(t *testing.T) {
	_, err := Build(load(t, "ipip-always.toml"), "node-z", 1500)
	if err == nil || !strings.Contains(err.Error(), "node-a") {
		t.Fatalf("error %v, want one listing the known nodes", err)
	}
}

func TestWarnings(t *testing.T) {
	p, err := Build(load(t, "never.toml"), "node-a", 1500)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Warnings) != 1 || !strings.Contains(p.Warnings[0], "outside this node's subnet") {
		t.Errorf("warnings %q, want one about the unencapsulated route to node-c", p.Warnings)
	}
}

func TestExplain(t *testing.T) {
	crossSubnet := load(t, "vxlan-cross-subnet.toml")
	excl := load(t, "vxlan-cross-subnet.toml")
	excl.NAT.Exclude = config.ExcludeIPPoolsAndHostIPs
	noNAT := load(t, "vxlan-cross-subnet.toml")
	noNAT.Pools[0].NATOutgoing = false

	tests := []struct {
		name       string
		cluster    *config.Cluster
		src, dst   string
		wantAction Action
		wantEncap  Encap
		wantNode   string
		wantReason string
	}{
		{"to a workload on this node", crossSubnet, "192.168.0.128", "192.168.0.5", ActionLocal, EncapNone, "", "this node's block 192.168.0.0/26"},
		{"to this node's tunnel address", crossSubnet, "192.168.0.64", "192.168.0.0", ActionLocal, EncapNone, "", "tunnel address"},
		{"same subnet is direct", crossSubnet, "192.168.0.5", "192.168.0.70", ActionDirect, EncapNone, "node-b", "via 198.18.1.11"},
		{"other subnet is VXLAN", crossSubnet, "192.168.0.5", "192.168.0.130", ActionEncap, EncapVXLAN, "node-c", "encapsulated in vxlan to 198.18.2.10"},
		{"pool address in no block", crossSubnet, "192.168.0.5", "192.168.9.9", ActionDrop, EncapNone, "", "in no node's block"},
		{"pool to the outside is NATed", crossSubnet, "192.168.0.5", "198.18.3.10", ActionNAT, EncapNone, "", "source-NATed to this node's address 198.18.1.10"},
		{"pool to a node address is NATed by default", crossSubnet, "192.168.0.5", "198.18.2.10", ActionNAT, EncapNone, "", "source-NATed"},
		{"IPPoolsAndHostIPs exempts node addresses", excl, "192.168.0.5", "198.18.2.10", ActionKernel, EncapNone, "", "IPPoolsAndHostIPs"},
		{"IPPoolsAndHostIPs still NATs the outside", excl, "192.168.0.5", "198.18.3.10", ActionNAT, EncapNone, "", "source-NATed"},
		{"no natOutgoing keeps the source", noNAT, "192.168.0.5", "198.18.3.10", ActionKernel, EncapNone, "", "source kept"},
		{"host to the outside is not overlay traffic", crossSubnet, "198.18.1.10", "198.18.3.10", ActionKernel, EncapNone, "", "no natOutgoing pool"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Build(tc.cluster, "node-a", 1500)
			if err != nil {
				t.Fatal(err)
			}
			d := p.Explain(netip.MustParseAddr(tc.src), netip.MustParseAddr(tc.dst))
			if d.Action != tc.wantAction || d.Encap != tc.wantEncap || d.Node != tc.wantNode {
				t.Errorf("decision %s/%s/%q, want %s/%s/%q", d.Action, d.Encap, d.Node, tc.wantAction, tc.wantEncap, tc.wantNode)
			}
			if !strings.Contains(d.Reason, tc.wantReason) {
				t.Errorf("reason %q does not contain %q", d.Reason, tc.wantReason)
			}
		})
	}
}

func TestDisabledPoolStillRoutesAndCountsAsPool(t *testing.T) {
	src := `
[[pools]]
name = "old"
cidr = "10.2.0.0/16"
ipipMode = "Always"
natOutgoing = true
disabled = true

[[pools]]
name = "new"
cidr = "192.168.0.0/16"
vxlanMode = "Always"
natOutgoing = true

[[nodes]]
name = "node-a"
address = "198.18.1.10/24"
blocks = ["10.2.0.0/26"]

[[nodes]]
name = "node-b"
address = "198.18.1.11/24"
blocks = ["10.2.0.64/26"]
`
	p, err := Build(parse(t, src), "node-a", 1500)
	if err != nil {
		t.Fatal(err)
	}
	if got := routesOf(p); got != "node-b:ipip" {
		t.Errorf("routes %q: a disabled pool's existing blocks keep their encapsulation", got)
	}
	// A workload of the new pool sending to the disabled pool: both are pools,
	// so no NAT; and the disabled pool's own traffic out is still NATed.
	if d := p.Explain(netip.MustParseAddr("192.168.0.5"), netip.MustParseAddr("10.2.9.9")); d.Action == ActionNAT {
		t.Errorf("traffic into a disabled pool was NATed: %+v", d)
	}
	if d := p.Explain(netip.MustParseAddr("10.2.0.5"), netip.MustParseAddr("198.18.3.10")); d.Action != ActionNAT {
		t.Errorf("a disabled natOutgoing pool's traffic out is %s, want nat", d.Action)
	}
}

func TestEncapTextRoundTrip(t *testing.T) {
	for _, e := range []Encap{EncapNone, EncapIPIP, EncapVXLAN} {
		b, err := e.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back Encap
		if err := back.UnmarshalText(b); err != nil || back != e {
			t.Errorf("%s -> %q -> %s (%v)", e, b, back, err)
		}
	}
	var e Encap
	if err := e.UnmarshalText([]byte("gre")); err == nil {
		t.Error("an unknown name must be an error")
	}
}
