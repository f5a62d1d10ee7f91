package main

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/overlayd/overlayd/internal/testbed"
)

// TestE2EImpairedUnderlay (issue 17's third fault): node A's underlay link
// loses 1 % of its frames, reorders 1 % and duplicates 1 %, each way; TCP
// transfers from A's workload cross it byte-exact on every path overlayd
// has: VXLAN and IP-in-IP to node C, bare to node B on the shared subnet,
// and through the NAT to the outside host. A capture on the link proves
// the path, the relay's counts that the impairment struck.
func TestE2EImpairedUnderlay(t *testing.T) {
	testbed.Require(t)
	paths := []struct {
		name   string
		file   string
		server string // the node whose workload serves, or "outside"
		wire   string // how the transfer's packets cross node A's link
	}{
		{"VXLAN to node C", "vxlan-cross-subnet.toml", "node-c", testbed.CarriedVXLAN},
		{"IP-in-IP to node C", "ipip-cross-subnet.toml", "node-c", testbed.CarriedIPIP},
		{"direct to node B on the shared subnet", "ipip-cross-subnet.toml", "node-b", testbed.CarriedBare},
		{"through the NAT to the outside host", "nat-outgoing.toml", "outside", testbed.CarriedBare},
	}
	for i, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			c := startClusterNodes(t, p.file)
			link, err := c.bed.Impair(c.bed.Host("router"), "to-node-a",
				testbed.Impairment{Loss: 0.01, Reorder: 0.01, Duplicate: 0.01, Seed: uint64(i + 1)})
			if err != nil {
				t.Fatal(err)
			}
			c.start("node-a")
			server, addr := c.bed.Host("outside"), c.bed.Host("outside").Addr.Addr()
			// Through the NAT, the outside sees node A; on the overlay, the
			// workload itself.
			from, to := c.bed.Host("node-a").Addr.Addr(), addr
			if p.server != "outside" {
				c.start(p.server)
				server, addr = c.workload[p.server], c.addr[p.server]
				from, to = c.addr["node-a"], addr
			}
			capture, err := c.bed.Host("router").Capture("to-node-a")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			res, err := testbed.TCPTransfer(ctx, c.workload["node-a"], server, netip.AddrPortFrom(addr, 7201), 2<<20)
			if err != nil {
				t.Fatalf("TCP transfer over the impaired link: %v", err)
			}
			toA, fromA := link.Stats()
			t.Logf("%v; to node A: %v; from node A: %v", res, toA, fromA)

			if kinds := wireKinds(capture.Stop(), from, to, c.cfg.VXLAN.VNI); kinds[p.wire] == 0 || len(kinds) != 1 {
				t.Errorf("%s <-> %s on node A's link: %v, want only %q", from, to, kinds, p.wire)
			}
			all := toA.Plus(fromA)
			if all.Dropped == 0 || all.Duplicated == 0 || all.Reordered == 0 {
				t.Errorf("the transfer crossed the link unimpaired: %v", all)
			}
		})
	}
}
