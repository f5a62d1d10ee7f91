package etcdtest

import (
	"context"
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/overlayd/overlayd/datastore/calico"
)

// SeedNode writes, under Calico's default prefix, a node as joining leaves
// it: its Node resource, one block with the node's VXLAN tunnel address
// allocated, the confirmed affinity and the handle; and its liveness key
// when live.
func SeedNode(tb testing.TB, cli *clientv3.Client, name, addr, block string, live bool) {
	tb.Helper()
	keys := calico.Keys{}
	cidr := netip.MustParsePrefix(block)
	b, err := calico.NewBlock(cidr, name, time.Now())
	if err != nil {
		tb.Fatal(err)
	}
	handle, attrs, err := calico.TunnelAllocation(name, calico.AttrTypeVXLAN)
	if err != nil {
		tb.Fatal(err)
	}
	tunnel, err := b.Assign(1, handle, attrs)
	if err != nil {
		tb.Fatal(err)
	}
	h := calico.NewHandle()
	h.Increment(cidr, 1)
	values := map[string]any{
		keys.Node(name): calico.NewNode(calico.NodeInfo{Name: name, Address: netip.MustParsePrefix(addr), VXLANTunnelAddr: tunnel[0]},
			"uid-"+name, time.Now()),
		keys.Block(cidr):          b,
		keys.Affinity(name, cidr): calico.Affinity{State: calico.StateConfirmed},
		keys.Handle(handle):       h,
	}
	if live {
		values[keys.Liveness(name)] = calico.NewLiveness(time.Now(), time.Minute, false)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for key, v := range values {
		data, err := json.Marshal(v)
		if err != nil {
			tb.Fatal(err)
		}
		if _, err := cli.Put(ctx, key, string(data)); err != nil {
			tb.Fatalf("seeding %s: %v", key, err)
		}
	}
}
