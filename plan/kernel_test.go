package plan

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestTUNSysctlsOfADottedDevice(t *testing.T) {
	for _, s := range tunSysctls("ovl.0") {
		t.Run(s.Key, func(t *testing.T) {
			if !strings.Contains(s.Key, ".ovl/0.") {
				t.Errorf("key %q: the device's dot must be a slash for sysctl(8)", s.Key)
			}
			if !strings.Contains(s.File, "/conf/ovl.0/") {
				t.Errorf("file %q: the device's directory keeps its dot", s.File)
			}
		})
	}
}

func TestNATRules(t *testing.T) {
	var (
		natPool   = netip.MustParsePrefix("10.1.0.0/16")
		natPool2  = netip.MustParsePrefix("10.2.0.0/16")
		plainPool = netip.MustParsePrefix("192.168.0.0/16")
	)
	exempt := func(src, dst string) KernelRule {
		return KernelRule{Src: netip.MustParsePrefix(src), Dst: netip.MustParsePrefix(dst), Table: MainTable, Priority: RulePriorityExempt}
	}
	steer := func(src string) KernelRule {
		return KernelRule{Src: netip.MustParsePrefix(src), Table: NATTable, Priority: RulePriorityNAT}
	}
	pools := func(cidrs ...netip.Prefix) []PoolSummary {
		var ps []PoolSummary
		for _, c := range cidrs {
			ps = append(ps, PoolSummary{Name: c.String(), CIDR: c})
		}
		return ps
	}
	nodeB := Peer{Name: "node-b", Addr: netip.MustParseAddr("198.18.1.11")}
	tests := []struct {
		name string
		plan Plan
		want []KernelRule
	}{
		{"no natOutgoing pool, no rules", Plan{Pools: pools(plainPool)}, nil},
		{"one NAT pool among two: both pools exempt",
			Plan{Pools: pools(natPool, plainPool), NATPools: []netip.Prefix{natPool}},
			[]KernelRule{exempt("10.1.0.0/16", "10.1.0.0/16"), exempt("10.1.0.0/16", "192.168.0.0/16"), steer("10.1.0.0/16")}},
		{"node addresses exempt with IPPoolsAndHostIPs, each once",
			Plan{Pools: pools(natPool), NATPools: []netip.Prefix{natPool}, NATExcludeHostIPs: true, Peers: []Peer{nodeB, nodeB}},
			[]KernelRule{exempt("10.1.0.0/16", "10.1.0.0/16"), exempt("10.1.0.0/16", "198.18.1.11/32"), steer("10.1.0.0/16")}},
		{"node addresses NATed without it",
			Plan{Pools: pools(natPool), NATPools: []netip.Prefix{natPool}, Peers: []Peer{nodeB}},
			[]KernelRule{exempt("10.1.0.0/16", "10.1.0.0/16"), steer("10.1.0.0/16")}},
		{"every NAT pool gets its own rules",
			Plan{Pools: pools(natPool, natPool2), NATPools: []netip.Prefix{natPool, natPool2}},
			[]KernelRule{exempt("10.1.0.0/16", "10.1.0.0/16"), exempt("10.1.0.0/16", "10.2.0.0/16"), steer("10.1.0.0/16"),
				exempt("10.2.0.0/16", "10.1.0.0/16"), exempt("10.2.0.0/16", "10.2.0.0/16"), steer("10.2.0.0/16")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k := kernelOf(&tc.plan, "ovl0")
			if !slices.Equal(k.Rules, tc.want) {
				t.Errorf("got  %v\nwant %v", k.Rules, tc.want)
			}
			// The NAT table's route comes with the rules that steer to it.
			hasNATRoute := slices.ContainsFunc(k.Routes, func(r KernelRoute) bool { return r.Table == NATTable })
			if hasNATRoute != (len(tc.want) > 0) {
				t.Errorf("NAT table route present %t with %d rules", hasNATRoute, len(tc.want))
			}
		})
	}
}
