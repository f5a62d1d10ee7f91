package etcd

import (
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/overlayd/overlayd/datastore/calico"
)

// BenchmarkBuild builds the cluster of the scale datastore (nodes × blocks
// from OVERLAYD_SCALE_NODES and OVERLAYD_SCALE_BLOCKS, as BenchmarkScale)
// from its decoded entries, all at once: what a node pays after it lists
// the datastore, without etcd.
func BenchmarkBuild(b *testing.B) {
	size := scaleSizeFromEnv(b)
	keys := calico.Keys{}
	entries := map[string]*entry{}
	put := func(key string, v any) {
		data, err := json.Marshal(v)
		if err != nil {
			b.Fatal(err)
		}
		if e := decodeEntry(keys, key, data, 1); e != nil {
			entries[key] = e
		}
	}
	p := scalePool(b)
	put(keys.IPPool(p.Metadata.Name), p)
	now := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	base := netip.MustParsePrefix(scalePoolCIDR).Addr()
	for i := range size.nodes {
		name := scaleNodeName(i)
		for j := range size.blocks {
			cidr := netip.PrefixFrom(addAddr4(base, uint32((i*size.blocks+j)<<(32-scaleBlockSize))), scaleBlockSize)
			blk, err := calico.NewBlock(cidr, name, now)
			if err != nil {
				b.Fatal(err)
			}
			put(keys.Block(cidr), blk)
			put(keys.Affinity(name, cidr), calico.Affinity{State: calico.StateConfirmed})
		}
		put(keys.Node(name), calico.NewNode(scaleNodeInfo(i, netip.Addr{}), "uid-"+name, now))
	}
	local := scaleLocalFile(b, "http://127.0.0.1:2379", 0)
	b.ResetTimer()
	for b.Loop() {
		bl, err := build(keys, local, scaleNodeName(0), entries)
		if err != nil {
			b.Fatal(err)
		}
		if len(bl.skipped) != 0 {
			b.Fatalf("%d entries skipped", len(bl.skipped))
		}
	}
	b.ReportMetric(float64(len(entries)), "keys")
}

// addAddr4 is a plus n.
func addAddr4(a netip.Addr, n uint32) netip.Addr {
	v := a.As4()
	x := uint32(v[0])<<24 | uint32(v[1])<<16 | uint32(v[2])<<8 | uint32(v[3]) + n
	return netip.AddrFrom4([4]byte{byte(x >> 24), byte(x >> 16), byte(x >> 8), byte(x)})
}
