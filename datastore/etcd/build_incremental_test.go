package etcd

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/overlayd/overlayd/datastore/calico"
	"github.com/overlayd/overlayd/pool"
)

// universe is every key a random datastore may hold, each with the values
// it may take: pools that overlap or not, nodes whose addresses collide or
// lie in a pool, blocks of three sizes nesting in each other, affinities in
// every state, and malformed values of each kind.
func universe(t *testing.T) map[string][]string {
	keys := calico.Keys{}
	u := map[string][]string{}
	add := func(l *layout) {
		for k, v := range l.kv {
			if !slices.Contains(u[k], v) {
				u[k] = append(u[k], v)
			}
		}
	}
	for _, p := range []pool.Spec{
		{Name: "wide", CIDR: "192.168.0.0/16", VXLANMode: "CrossSubnet"},
		{Name: "wide", CIDR: "192.168.0.0/16", IPIPMode: "Always"},
		{Name: "narrow", CIDR: "192.168.0.0/24", VXLANMode: "Always", BlockSize: 28},
		{Name: "other", CIDR: "10.1.0.0/16", IPIPMode: "Always"},
		{Name: "other", CIDR: "10.1.0.0/16", Disabled: true},
	} {
		add(newLayout(t).pool(p))
	}
	add(newLayout(t).raw(keys.IPPool("other"), `{"kind":"IPPool",`))
	for _, n := range []struct{ name, addr, tunnel string }{
		{"node-a", "198.18.1.10/24", "192.168.0.1"},
		{"node-a", "198.18.1.10/24", ""},
		{"node-b", "198.18.1.11/24", "192.168.0.65"},
		{"node-b", "198.18.1.10/24", ""}, // node-a's address
		{"node-c", "198.18.2.10/24", ""},
		{"node-c", "192.168.200.1/24", ""}, // in a pool
		{"node-d", "198.18.2.11/24", "10.1.0.1"},
		{"node-d", "198.18.1.11/24", ""}, // node-b's first address
	} {
		add(newLayout(t).node(n.name, n.addr, n.tunnel))
	}
	add(newLayout(t).raw(keys.Node("node-c"), `{"kind":"Node",`))
	hosts := []string{"node-a", "node-b", "node-c", "node-d", "node-gone"}
	for _, cidr := range []string{"192.168.0.0/24", "192.168.0.0/26", "192.168.0.64/26", "192.168.0.0/28", "192.168.0.16/28", "192.168.0.80/28", "10.1.0.0/26", "10.9.0.0/26"} {
		prefix := netip.MustParsePrefix(cidr)
		for _, h := range hosts {
			add(newLayout(t).blockOnly(cidr, h))
			for _, state := range []string{calico.StateConfirmed, calico.StatePending} {
				add(newLayout(t).affinity(h, cidr, state))
			}
			u[keys.Affinity(h, prefix)] = append(u[keys.Affinity(h, prefix)], `{"state":`)
		}
		b, err := calico.NewBlock(prefix, "node-b", newLayout(t).now)
		if err != nil {
			t.Fatal(err)
		}
		b.Deleted = true
		add(newLayout(t).raw(keys.Block(prefix), newLayout(t).encode(b)))
		b.Deleted, b.Affinity = false, nil
		add(newLayout(t).raw(keys.Block(prefix), newLayout(t).encode(b)))
		u[keys.Block(prefix)] = append(u[keys.Block(prefix)], fmt.Sprintf(`{"cidr":%q}`, cidr))
	}
	u[keys.Blocks()+"192.168.1.1-26"] = []string{`{}`}
	return u
}

// describe renders what a build routes and skips, to compare two builds.
func describe(b built) string {
	var s strings.Builder
	for _, p := range b.cluster.Pools {
		fmt.Fprintf(&s, "pool %s %s %s/%s\n", p.Name, p.CIDR, p.IPIPMode, p.VXLANMode)
	}
	for _, n := range b.cluster.Nodes {
		fmt.Fprintf(&s, "node %s %s %s:", n.Name, n.Address, n.TunnelAddr)
		for _, blk := range n.Blocks {
			fmt.Fprintf(&s, " %s@%s", blk.Prefix, blk.Pool.Name)
		}
		s.WriteByte('\n')
	}
	for _, k := range slices.Sorted(maps.Keys(b.skipped)) {
		fmt.Fprintf(&s, "skip %s: %s\n", k, b.skipped[k])
	}
	for _, p := range b.claimPools {
		fmt.Fprintf(&s, "claim %s\n", p.Metadata.Name)
	}
	return s.String()
}

// TestIndexBuildsAsFromScratch changes a datastore at random, a batch at a
// time, and checks that the index, built after each batch from what
// changed, says exactly what a build of all the entries says, and what the
// reference build (every key sorted, every block routed in order) says.
func TestIndexBuildsAsFromScratch(t *testing.T) {
	u := universe(t)
	all := slices.Sorted(maps.Keys(u))
	keys := calico.Keys{}
	for seed := range uint64(8) {
		t.Run(fmt.Sprintf("seed %d", seed), func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(seed, 14))
			local := localFile(t, "http://127.0.0.1:2379", "node-a", "198.18.1.10/24")
			ix := newIndex(keys, local, "node-a")
			for step := range 300 {
				var did []string
				for range 1 + rnd.IntN(4) {
					k := all[rnd.IntN(len(all))]
					if rnd.IntN(4) == 0 {
						ix.remove(k)
						did = append(did, "delete "+k)
						continue
					}
					v := u[k][rnd.IntN(len(u[k]))]
					if e := decodeEntry(keys, k, []byte(v), int64(step)); e != nil {
						ix.put(k, e)
					}
					did = append(did, "put "+k+" "+v)
				}
				if step%50 == 49 {
					// A reload: the same file read again.
					ix.setLocal(localFile(t, "http://127.0.0.1:2379", "node-a", "198.18.1.10/24"))
					did = append(did, "reload")
				}
				got, err := ix.build()
				if err != nil {
					t.Fatal(err)
				}
				want, err := build(keys, ix.local, "node-a", ix.all())
				if err != nil {
					t.Fatal(err)
				}
				if g, w := describe(got), describe(want); g != w {
					t.Fatalf("step %d, after\n  %s\nthe index builds\n%s\nfrom scratch\n%s", step, strings.Join(did, "\n  "), g, w)
				}
				ref, err := referenceBuild(keys, ix.local, "node-a", ix.all())
				if err != nil {
					t.Fatal(err)
				}
				if g, w := describe(got), describe(ref); g != w {
					t.Fatalf("step %d, after\n  %s\nthe index builds\n%s\nthe reference\n%s", step, strings.Join(did, "\n  "), g, w)
				}
			}
		})
	}
}

// TestIndexSharesWhatABatchDidNotChange: a new block of one node makes a
// cluster whose other nodes are the last cluster's, unchanged, so that the
// last one handed out is never written to and comparing them is cheap.
func TestIndexSharesWhatABatchDidNotChange(t *testing.T) {
	l := cluster(t)
	keys := l.keys
	ix := newIndex(keys, localFile(t, "http://127.0.0.1:2379", "node-a", "198.18.1.10/24"), "node-a")
	for k, e := range l.entries() {
		ix.put(k, e)
	}
	before, err := ix.build()
	if err != nil {
		t.Fatal(err)
	}
	was := blocksOf(before.cluster)
	next := newLayout(t).block("192.168.1.0/26", "node-c")
	for k, e := range next.entries() {
		ix.put(k, e)
	}
	after, err := ix.build()
	if err != nil {
		t.Fatal(err)
	}
	if got := blocksOf(before.cluster); got != was {
		t.Errorf("the cluster handed out before changed: %s, was %s", got, was)
	}
	if got, want := blocksOf(after.cluster), was+" node-c:192.168.1.0/26"; got != want {
		t.Errorf("blocks %s\nwant   %s", got, want)
	}
	for i, n := range after.cluster.Nodes {
		if shared := n == before.cluster.Nodes[i]; shared != (n.Name != "node-c") {
			t.Errorf("node %s shared with the last cluster: %v, want %v", n.Name, shared, n.Name != "node-c")
		}
	}
	if sameRouting(before.cluster, after.cluster) {
		t.Error("sameRouting says the clusters route alike")
	}
}
