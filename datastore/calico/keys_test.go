package calico

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestKeysBuildAndParse(t *testing.T) {
	cidr := netip.MustParsePrefix("192.168.0.0/26")
	tests := []struct {
		name  string
		keys  Keys
		build func(Keys) string
		want  string
		key   Key
	}{
		{"IPPool", Keys{}, func(k Keys) string { return k.IPPool("default-ipv4-ippool") },
			"/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool", Key{Kind: KindIPPool, Name: "default-ipv4-ippool"}},
		{"Node", Keys{}, func(k Keys) string { return k.Node("node-a") },
			"/calico/resources/v3/projectcalico.org/nodes/node-a", Key{Kind: KindNode, Name: "node-a"}},
		{"block: '/' written as '-'", Keys{}, func(k Keys) string { return k.Block(cidr) },
			"/calico/ipam/v2/assignment/ipv4/block/192.168.0.0-26", Key{Kind: KindBlock, CIDR: cidr}},
		{"affinity", Keys{}, func(k Keys) string { return k.Affinity("node-a", cidr) },
			"/calico/ipam/v2/host/node-a/ipv4/block/192.168.0.0-26", Key{Kind: KindAffinity, Name: "node-a", CIDR: cidr}},
		{"handle", Keys{}, func(k Keys) string { return k.Handle("vxlan-tunnel-addr-node-a") },
			"/calico/ipam/v2/handle/vxlan-tunnel-addr-node-a", Key{Kind: KindHandle, Name: "vxlan-tunnel-addr-node-a"}},
		{"handle with dots, as the CNI plugin names them", Keys{}, func(k Keys) string { return k.Handle("k8s-pod-network.0f3c") },
			"/calico/ipam/v2/handle/k8s-pod-network.0f3c", Key{Kind: KindHandle, Name: "k8s-pod-network.0f3c"}},
		{"liveness", Keys{}, func(k Keys) string { return k.Liveness("node-a") },
			"/calico/felix/v2/no-region/host/node-a/status", Key{Kind: KindLiveness, Name: "node-a"}},
		{"another prefix", Keys{Prefix: "/overlayd-test/"}, func(k Keys) string { return k.Node("n") },
			"/overlayd-test/resources/v3/projectcalico.org/nodes/n", Key{Kind: KindNode, Name: "n"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.build(tt.keys)
			if got != tt.want {
				t.Errorf("built %q; want %q", got, tt.want)
			}
			key, err := tt.keys.Parse(got)
			if err != nil {
				t.Fatal(err)
			}
			if key != tt.key {
				t.Errorf("Parse(%q) = %+v; want %+v", got, key, tt.key)
			}
		})
	}
}

func TestKeysListPrefixesHoldTheirKeys(t *testing.T) {
	var k Keys
	cidr := netip.MustParsePrefix("10.0.0.0/26")
	for _, c := range []struct{ prefix, key string }{
		{k.IPPools(), k.IPPool("p")},
		{k.Nodes(), k.Node("n")},
		{k.Blocks(), k.Block(cidr)},
		{k.Affinities(), k.Affinity("n", cidr)},
		{k.Handles(), k.Handle("h")},
	} {
		if !strings.HasPrefix(c.key, c.prefix) || !strings.HasSuffix(c.prefix, "/") {
			t.Errorf("list prefix %q does not hold %q", c.prefix, c.key)
		}
	}
}

func TestKeysParseRejects(t *testing.T) {
	malformed := []struct{ name, key, msg string }{
		{"empty", "", "not under the prefix"},
		{"other prefix", "/flannel/network/config", "not under the prefix"},
		{"prefix without the separator", "/calicoX/ipam/v2/handle/h", "not under the prefix"},
		{"empty pool name", "/calico/resources/v3/projectcalico.org/ippools/", "empty name"},
		{"nested name", "/calico/resources/v3/projectcalico.org/nodes/a/b", "contains '/'"},
		{"block without CIDR", "/calico/ipam/v2/assignment/ipv4/block/", "not an IPv4 CIDR"},
		{"block with '/' kept", "/calico/ipam/v2/assignment/ipv4/block/10.0.0.0/26", "not an IPv4 CIDR"},
		{"block with bad prefix length", "/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-33", "not an IPv4 CIDR"},
		{"block not a network", "/calico/ipam/v2/assignment/ipv4/block/10.0.0.1-26", "did you mean 10.0.0.0-26"},
		{"IPv6 CIDR under ipv4", "/calico/ipam/v2/assignment/ipv4/block/fd00::-122", "not an IPv4 CIDR"},
		{"block of another shape", "/calico/ipam/v2/assignment/ipv4/blocks/10.0.0.0-26", "a block key is"},
		{"affinity without block", "/calico/ipam/v2/host/node-a/ipv4/10.0.0.0-26", "an affinity key is"},
		{"affinity with empty node", "/calico/ipam/v2/host//ipv4/block/10.0.0.0-26", "empty node name"},
		{"affinity with bad CIDR", "/calico/ipam/v2/host/n/ipv4/block/10.0.0-26", "not an IPv4 CIDR"},
		{"empty handle", "/calico/ipam/v2/handle/", "empty handle ID"},
		{"liveness without status", "/calico/felix/v2/no-region/host/n/", "a liveness key is"},
		{"liveness with empty node", "/calico/felix/v2/no-region/host//status", "empty node name"},
	}
	for _, tt := range malformed {
		t.Run("malformed: "+tt.name, func(t *testing.T) {
			_, err := Keys{}.Parse(tt.key)
			if err == nil || errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("Parse(%q) = %v; want a malformed-key error containing %q", tt.key, err, tt.msg)
			}
		})
	}
	unsupported := []struct{ name, key string }{
		{"another resource kind", "/calico/resources/v3/projectcalico.org/bgppeers/p"},
		{"IPv6 block", "/calico/ipam/v2/assignment/ipv6/block/fd00::-122"},
		{"IPv6 affinity", "/calico/ipam/v2/host/n/ipv6/block/fd00::-122"},
		{"KubeVirt virtual affinity", "/calico/ipam/v2/virtual/vm1/ipv4/block/10.0.0.0-26"},
		{"IPAM config", "/calico/ipam/v2/config"},
		{"Felix status in a region", "/calico/felix/v2/region-eu/host/n/status"},
	}
	for _, tt := range unsupported {
		t.Run("not modelled: "+tt.name, func(t *testing.T) {
			if _, err := (Keys{}).Parse(tt.key); !errors.Is(err, ErrUnsupported) {
				t.Errorf("Parse(%q) = %v; want ErrUnsupported", tt.key, err)
			}
		})
	}
}
