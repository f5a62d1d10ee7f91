package etcd

import (
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/datastore/calico"
	"github.com/overlayd/overlayd/plan"
	"github.com/overlayd/overlayd/pool"
)

// cluster is the layout node-a sees: node-a (198.18.1.10/24, from its file)
// with one block, node-b in its subnet with two, node-c in another subnet
// with one, in a VXLAN CrossSubnet pool and an IP-in-IP Always pool.
func cluster(t *testing.T) *layout {
	return newLayout(t).
		pool(pool.Spec{Name: "vxlan-cs", CIDR: "192.168.0.0/16", VXLANMode: "CrossSubnet"}).
		pool(pool.Spec{Name: "ipip", CIDR: "10.1.0.0/16", IPIPMode: "Always"}).
		node("node-a", "198.18.1.10/24", "192.168.0.1").
		node("node-b", "198.18.1.11/24", "192.168.0.65").
		node("node-c", "198.18.2.10/24", "").
		block("192.168.0.0/26", "node-a").
		block("192.168.0.64/26", "node-b").
		block("10.1.0.0/26", "node-b").
		block("192.168.0.128/26", "node-c")
}

func mustBuild(t *testing.T, l *layout) built {
	t.Helper()
	b, err := build(l.keys, localFile(t, "http://127.0.0.1:2379", "node-a", "198.18.1.10/24"), "node-a", l.entries())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBuildRoutesEachBlockToItsNode(t *testing.T) {
	b := mustBuild(t, cluster(t))
	if len(b.skipped) != 0 {
		t.Errorf("skipped %v, want nothing", b.skipped)
	}
	c := b.cluster
	if got, want := blocksOf(c), "node-a:192.168.0.0/26 node-b:10.1.0.0/26 node-b:192.168.0.64/26 node-c:192.168.0.128/26"; got != want {
		t.Errorf("blocks %s\nwant   %s", got, want)
	}
	a := c.Node("node-a")
	if a.Labels["zone"] != "a" || a.TunnelAddr != netip.MustParseAddr("192.168.0.1") || a.VTEPMAC.String() != config.VTEPMACFor("node-a").String() {
		t.Errorf("node-a %+v: want the file's labels, its tunnel address from its Node, the derived MAC", a)
	}
	p, err := plan.Build(c, "node-a", 1500)
	if err != nil {
		t.Fatalf("plan.Build: %v", err)
	}
	var routes []string
	for _, r := range p.Routes {
		routes = append(routes, r.Block.String()+"@"+r.Node+":"+r.Encap.String())
	}
	want := "10.1.0.0/26@node-b:ipip 192.168.0.64/26@node-b:none 192.168.0.128/26@node-c:vxlan"
	if got := strings.Join(routes, " "); got != want {
		t.Errorf("routes %s\nwant   %s", got, want)
	}
	if len(p.LocalBlocks) != 1 || p.TunnelAddr != netip.MustParseAddr("192.168.0.1") {
		t.Errorf("local blocks %v, tunnel %s: want 192.168.0.0/26 and 192.168.0.1", p.LocalBlocks, p.TunnelAddr)
	}
}

func TestBuildSkipsWhatItCannotUse(t *testing.T) {
	keys := calico.Keys{}
	tests := []struct {
		name   string
		mutate func(l *layout)
		// skipped are the keys left out; the rest of cluster must stay.
		skipped []string
		blocks  string
	}{
		{"a Node that is not JSON", func(l *layout) { l.raw(keys.Node("node-x"), `{"kind":"Node",`) },
			[]string{keys.Node("node-x")}, ""},
		{"a pool whose CIDR is not masked", func(l *layout) {
			l.raw(keys.IPPool("sloppy"), `{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"sloppy"},"spec":{"cidr":"10.2.0.1/16"}}`)
		}, []string{keys.IPPool("sloppy")}, ""},
		{"a pool overlapping an older one", func(l *layout) {
			l.pool(pool.Spec{Name: "aaa-younger", CIDR: "192.168.128.0/17"})
		}, []string{keys.IPPool("aaa-younger")}, ""},
		{"a block without its affinity", func(l *layout) { l.blockOnly("192.168.1.0/26", "node-c") },
			[]string{keys.Block(netip.MustParsePrefix("192.168.1.0/26"))}, ""},
		{"a block whose affinity is pending", func(l *layout) {
			l.blockOnly("192.168.1.0/26", "node-c").affinity("node-c", "192.168.1.0/26", calico.StatePending)
		}, []string{keys.Block(netip.MustParsePrefix("192.168.1.0/26"))}, ""},
		{"an affinity without its block", func(l *layout) {
			l.affinity("node-c", "192.168.1.0/26", calico.StateConfirmed)
		}, []string{keys.Affinity("node-c", netip.MustParsePrefix("192.168.1.0/26"))}, ""},
		{"an affinity for a block another host holds", func(l *layout) {
			l.affinity("node-c", "192.168.0.64/26", calico.StateConfirmed)
		}, []string{keys.Affinity("node-c", netip.MustParsePrefix("192.168.0.64/26"))}, ""},
		{"a block outside every pool", func(l *layout) { l.block("10.9.0.0/26", "node-c") },
			[]string{keys.Block(netip.MustParsePrefix("10.9.0.0/26"))}, ""},
		{"a block of a node that is not there", func(l *layout) { l.block("192.168.1.0/26", "node-gone") },
			[]string{keys.Block(netip.MustParsePrefix("192.168.1.0/26"))}, ""},
		{"a node whose address is in a pool", func(l *layout) { l.node("node-x", "192.168.200.1/24", "") },
			[]string{keys.Node("node-x")}, ""},
		{"a node with another node's address", func(l *layout) { l.node("node-x", "198.18.1.11/24", "") },
			[]string{keys.Node("node-x")}, ""},
		{"a malformed block value", func(l *layout) {
			l.raw(keys.Block(netip.MustParsePrefix("192.168.1.0/26")), `{"cidr":"192.168.1.0/26","affinity":"host:node-c"}`).
				affinity("node-c", "192.168.1.0/26", calico.StateConfirmed)
		}, []string{keys.Block(netip.MustParsePrefix("192.168.1.0/26"))}, ""},
		{"a block key that is not a network", func(l *layout) { l.raw(keys.Blocks()+"192.168.1.1-26", `{}`) },
			[]string{keys.Blocks() + "192.168.1.1-26"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := cluster(t)
			tc.mutate(l)
			b := mustBuild(t, l)
			if got := slices.Sorted(maps.Keys(b.skipped)); !slices.Equal(got, tc.skipped) {
				t.Errorf("skipped %v (%v)\nwant    %v", got, b.skipped, tc.skipped)
			}
			want := mustBuild(t, cluster(t)).cluster
			if !sameRouting(b.cluster, want) {
				t.Errorf("blocks %s\nwant   %s: the rest of the datastore must stay", blocksOf(b.cluster), blocksOf(want))
			}
			if _, err := plan.Build(b.cluster, "node-a", 1500); err != nil {
				t.Errorf("plan.Build: %v", err)
			}
		})
	}
}

func TestBuildKeepsTheOlderOfOverlappingPools(t *testing.T) {
	// "zzz-older" is older than "aaa-younger": age wins over name.
	l := newLayout(t).
		pool(pool.Spec{Name: "zzz-older", CIDR: "192.168.0.0/16"}).
		pool(pool.Spec{Name: "aaa-younger", CIDR: "192.168.0.0/17"}).
		node("node-a", "198.18.1.10/24", "")
	b := mustBuild(t, l)
	if len(b.cluster.Pools) != 1 || b.cluster.Pools[0].Name != "zzz-older" {
		t.Errorf("pools %v, want zzz-older only", b.cluster.Pools)
	}
	if why := b.skipped[l.keys.IPPool("aaa-younger")]; !strings.Contains(why, "overlaps") {
		t.Errorf("aaa-younger skipped for %q, want the overlap", why)
	}
}

func TestBuildClaimsFromUsablePoolsOnly(t *testing.T) {
	l := newLayout(t).
		pool(pool.Spec{Name: "enabled", CIDR: "192.168.0.0/16"}).
		pool(pool.Spec{Name: "disabled", CIDR: "10.1.0.0/16", Disabled: true}).
		raw(calico.Keys{}.IPPool("manual"), `{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"manual"},"spec":{"cidr":"10.2.0.0/16","assignmentMode":"Manual"}}`).
		raw(calico.Keys{}.IPPool("lb"), `{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"lb"},"spec":{"cidr":"10.3.0.0/16","allowedUses":["LoadBalancer"]}}`)
	b := mustBuild(t, l)
	var names []string
	for _, p := range b.claimPools {
		names = append(names, p.Metadata.Name)
	}
	if !slices.Equal(names, []string{"enabled"}) {
		t.Errorf("claim pools %v, want [enabled]", names)
	}
	if len(b.cluster.Pools) != 4 {
		t.Errorf("%d pools in the cluster, want all 4: disabled and manual pools still route", len(b.cluster.Pools))
	}
}
