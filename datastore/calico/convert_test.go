package calico

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/pool"
)

func TestIPPoolValidatedWithCalicosRules(t *testing.T) {
	tests := []struct {
		name string
		spec string
		msg  string
	}{
		{"both encapsulations", `"cidr":"10.0.0.0/16","ipipMode":"Always","vxlanMode":"Always"`, "ipipMode and vxlanMode cannot both be enabled"},
		{"not strictly masked", `"cidr":"10.0.0.1/16"`, "IPPool CIDR is not strictly masked"},
		{"link local", `"cidr":"169.254.0.0/16"`, "IPPool CIDR overlaps with IPv4 link local range"},
		{"block size", `"cidr":"10.0.0.0/16","blockSize":19`, "blockSize must be between 20 and 32 for IPv4 pools"},
		{"mode in the wrong case", `"cidr":"10.0.0.0/16","vxlanMode":"always"`, "case-sensitive"},
		{"global() selector", `"cidr":"10.0.0.0/16","nodeSelector":"global()"`, "global() selector is not valid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := DecodeIPPool([]byte(`{"kind":"IPPool","metadata":{"name":"p"},"spec":{` + tt.spec + `}}`))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := p.Pool(); err == nil || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("Pool() = %v; want an error containing %q", err, tt.msg)
			}
		})
	}
	t.Run("NewIPPool refuses what pool.New refuses", func(t *testing.T) {
		if _, err := NewIPPool(pool.Spec{Name: "p", CIDR: "10.0.0.0/16", IPIPMode: "Always", VXLANMode: "Always"}, testUID, testNow); err == nil {
			t.Error("NewIPPool wrote a pool with both encapsulations on")
		}
	})
	t.Run("what NewIPPool writes reads back as the same pool", func(t *testing.T) {
		spec := pool.Spec{Name: "p", CIDR: "10.1.0.0/16", IPIPMode: "CrossSubnet", NATOutgoing: true, Disabled: true, NodeSelector: "rack == 'r1'", BlockSize: 28}
		p, err := NewIPPool(spec, testUID, testNow)
		if err != nil {
			t.Fatal(err)
		}
		got := p.PoolSpec()
		spec.VXLANMode = "Never" // written out, as calicoctl does
		if got != spec {
			t.Errorf("PoolSpec() = %+v\nwant        %+v", got, spec)
		}
	})
}

func TestNodeInfoNamesTheBadMember(t *testing.T) {
	tests := []struct {
		name string
		spec string
		msg  string
	}{
		{"address not a CIDR", `"bgp":{"ipv4Address":"10.0.0.300/24"}`, `spec.bgp.ipv4Address "10.0.0.300/24"`},
		{"IPv6 address as ipv4Address", `"bgp":{"ipv4Address":"fd00::1/64"}`, "spec.bgp.ipv4Address"},
		{"IPIP tunnel address with a prefix", `"bgp":{"ipv4IPIPTunnelAddr":"10.244.0.1/32"}`, "spec.bgp.ipv4IPIPTunnelAddr"},
		{"VXLAN tunnel address IPv6", `"ipv4VXLANTunnelAddr":"fd00::1"`, "spec.ipv4VXLANTunnelAddr"},
		{"MAC too long", `"vxlanTunnelMACAddr":"00:00:5e:00:53:01:02:03"`, "spec.vxlanTunnelMACAddr"},
		{"MAC not a MAC", `"vxlanTunnelMACAddr":"66-zz"`, "spec.vxlanTunnelMACAddr"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := DecodeNode([]byte(`{"kind":"Node","metadata":{"name":"n"},"spec":{` + tt.spec + `}}`))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := n.Info(); err == nil || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("Info() = %v; want an error containing %q", err, tt.msg)
			}
		})
	}
}

func TestNodeInfoDefaults(t *testing.T) {
	t.Run("a bare ipv4Address is a /32, as Felix's ParseCIDROrIP reads it", func(t *testing.T) {
		n, _ := DecodeNode([]byte(`{"metadata":{"name":"n"},"spec":{"bgp":{"ipv4Address":"198.18.1.5"}}}`))
		info, err := n.Info()
		if err != nil || info.Address != netip.MustParsePrefix("198.18.1.5/32") {
			t.Errorf("Info() = %+v, %v", info, err)
		}
	})
	t.Run("without vxlanTunnelMACAddr the MAC is Felix's: 0x66 and SHA-1 of the name", func(t *testing.T) {
		n, _ := DecodeNode([]byte(`{"metadata":{"name":"kube-node-1"},"spec":{}}`))
		info, err := n.Info()
		if err != nil {
			t.Fatal(err)
		}
		if info.VTEPMAC.String() != config.VTEPMACFor("kube-node-1").String() || info.VTEPMAC[0] != 0x66 {
			t.Errorf("VTEPMAC = %s; want %s", info.VTEPMAC, config.VTEPMACFor("kube-node-1"))
		}
	})
	t.Run("a node without BGP has no address and no error", func(t *testing.T) {
		n, _ := DecodeNode([]byte(`{"metadata":{"name":"n"},"spec":{},"status":{}}`))
		info, err := n.Info()
		if err != nil || info.Address.IsValid() || info.IPIPTunnelAddr.IsValid() {
			t.Errorf("Info() = %+v, %v", info, err)
		}
	})
}

func TestIPPoolUsesAndAssignmentMode(t *testing.T) {
	tests := []struct {
		name                       string
		spec                       string
		workload, tunnel, lb, auto bool
	}{
		{"defaults: workloads and tunnels, automatic", `"cidr":"10.0.0.0/16"`, true, true, false, true},
		{"as calicoctl stores them", `"cidr":"10.0.0.0/16","allowedUses":["Workload","Tunnel"],"assignmentMode":"Automatic"`, true, true, false, true},
		{"workloads only", `"cidr":"10.0.0.0/16","allowedUses":["Workload"]`, true, false, false, true},
		{"load balancer, manual", `"cidr":"10.0.0.0/16","allowedUses":["LoadBalancer"],"assignmentMode":"Manual"`, false, false, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := DecodeIPPool([]byte(`{"spec":{` + tt.spec + `}}`))
			if err != nil {
				t.Fatal(err)
			}
			got := [4]bool{p.Allows(AllowedUseWorkload), p.Allows(AllowedUseTunnel), p.Allows(AllowedUseLoadBalancer), p.AutoAssign()}
			if want := [4]bool{tt.workload, tt.tunnel, tt.lb, tt.auto}; got != want {
				t.Errorf("workload, tunnel, load balancer, auto = %v; want %v", got, want)
			}
		})
	}
}
