package main

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/internal/testbed"
)

// forgedKind is one kind of forged traffic toward node C, and the drop
// reason overlayd must count each of its packets under.
type forgedKind struct {
	name   string
	floods []testbed.Forged
	reason string
	// filtered: the VXLAN socket's filter refuses the kind's VXLAN part
	// (an outer source that is no node, another VNI) before overlayd
	// reads it, and the kernel counts it in overlayd's socket drops.
	filtered bool
}

// forgedKinds are the forged floods toward node C's underlay address: from
// the outside host, which is no node; from node B with a VNI that is not
// the cluster's; from node B with an inner source of node A's block. Each
// both as VXLAN and IP-in-IP where the encapsulation can carry the lie.
func forgedKinds(t *testing.T, c *cluster) []forgedKind {
	t.Helper()
	const port = 7777
	cAddr := c.cfg.Node("node-c").Address.Addr()
	vni, vxlanPort := c.cfg.VXLAN.VNI, uint16(c.cfg.VXLAN.Port)
	mac := config.VTEPMACFor("node-c")
	must := func(b []byte, err error) []byte {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	fromB := must(testbed.ForgedUDP(c.addr["node-b"], c.addr["node-c"], port))
	spoofed := must(testbed.ForgedUDP(c.addr["node-a"], c.addr["node-c"], port))
	both := func(h *testbed.Host, vni uint32, inner []byte) []testbed.Forged {
		return []testbed.Forged{
			{From: h, To: cAddr, Port: vxlanPort, Packets: [][]byte{must(testbed.ForgedVXLAN(vni, mac, inner))}},
			{From: h, To: cAddr, Packets: [][]byte{inner}},
		}
	}
	outside, nodeB := c.bed.Host("outside"), c.bed.Host("node-b")
	return []forgedKind{
		{"unknown source, VXLAN and IP-in-IP", both(outside, vni, fromB), "unknown_peer", true},
		{"node B, wrong VNI", both(nodeB, vni+1, fromB)[:1], "wrong_vni", true},
		{"node B, spoofed inner source, VXLAN and IP-in-IP", both(nodeB, vni, spoofed), "spoofed_source", false},
	}
}

// floodAccount is what can account for a forged packet sent to node C:
// overlayd's count of the reason, what the kernel dropped at overlayd's
// sockets (its VXLAN socket's filter refuses unknown sources and other
// VNIs; the count includes overflows), node C's sockets' overflows, and
// the drops of the links on the way (the router's and node C's).
type floodAccount struct {
	reason, socket, overflow, links uint64
}

// counted is what overlayd counted of the forged packets: under the
// kind's reason, and refused by its socket's filter (its socket drops
// less the overflows among them).
func (a floodAccount) counted(t *testing.T) uint64 {
	t.Helper()
	if a.socket < a.overflow {
		t.Fatalf("overlayd's sockets dropped %d packets, fewer than the %d overflows node C's kernel counted", a.socket, a.overflow)
	}
	return a.reason + a.socket - a.overflow
}

func accountFlood(t *testing.T, c *cluster, reason string) floodAccount {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nodeC := c.bed.Host("node-c")
	var a floodAccount
	metrics := scrape(t, nodeC)
	a.reason = uint64(metrics[fmt.Sprintf(`overlayd_drops_total{reason=%q}`, reason)])
	for name, v := range metrics {
		if strings.HasPrefix(name, "overlayd_socket_drops_total{") {
			a.socket += uint64(v)
		}
	}
	udp, ipip, err := nodeC.SocketOverflows(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a.overflow = udp + ipip
	for _, h := range []*testbed.Host{c.bed.Host("router"), nodeC} {
		d, err := h.LinkDrops(ctx)
		if err != nil {
			t.Fatal(err)
		}
		a.links += d
	}
	return a
}

// TestE2EForgedFlood: on a cluster whose nodes use both encapsulations
// (so that overlayd on node C has both sockets open: where it has no
// IP-in-IP socket, the kernel drops IP-in-IP as an unknown protocol), while
// a TCP stream runs from node A's workload to node C's over VXLAN, forged VXLAN and IP-in-IP packets flood node C as
// fast as a socket in the outside host and in node B sends them, one kind
// after another. The stream arrives byte for byte, and every forged packet
// sent is accounted for: counted by overlayd under the kind's reason or
// as refused by its VXLAN socket's filter, or
// counted by node C's kernel as a socket receive-buffer overflow, or, if
// links on the way dropped packets, at most that many lost there. Where
// nothing overflowed and no link dropped, overlayd's count is exactly what
// was sent.
func TestE2EForgedFlood(t *testing.T) {
	testbed.Require(t)
	c := startCluster(t, "two-pools.toml")
	s := startStream(t, c.workload["node-a"], c.workload["node-c"], netip.AddrPortFrom(c.addr["node-c"], 5001))
	const floodFor = 2 * time.Second
	for _, kind := range forgedKinds(t, c) {
		t.Run(kind.name, func(t *testing.T) {
			before := accountFlood(t, c, kind.reason)
			ctx, cancel := context.WithTimeout(context.Background(), floodFor)
			defer cancel()
			sent := make([]uint64, len(kind.floods))
			errs := make([]error, len(kind.floods))
			var wg sync.WaitGroup
			for i, f := range kind.floods {
				wg.Add(1)
				go func() {
					defer wg.Done()
					sent[i], errs[i] = testbed.Flood(ctx, f)
				}()
			}
			wg.Wait()
			var total uint64
			for i := range kind.floods {
				if errs[i] != nil {
					t.Fatal(errs[i])
				}
				total += sent[i]
			}
			if total == 0 {
				t.Fatal("the flood sent nothing")
			}
			// Packets still in node C's socket queues are counted as
			// overlayd reads them: wait for the counts to account for
			// every packet and stop moving.
			var got, last floodAccount
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
				after := accountFlood(t, c, kind.reason)
				last, got = got, floodAccount{after.reason - before.reason, after.socket - before.socket,
					after.overflow - before.overflow, after.links - before.links}
				if got == last && got.counted(t)+got.overflow+got.links >= total || time.Now().After(deadline) {
					break
				}
			}
			counted := got.counted(t)
			t.Logf("sent %d (%v) in %v: overlayd counted %d (%d as %s, %d refused by its socket's filter), %d overflowed node C's sockets, links on the way dropped %d",
				total, sent, floodFor, counted, got.reason, kind.reason, counted-got.reason, got.overflow, got.links)
			// overlayd counts no more than were sent; an overflow may
			// also be the genuine stream's, so only together with the
			// links does it bound what is missing.
			if counted > total || counted+got.overflow+got.links < total {
				t.Errorf("sent %d forged packets; overlayd counted %d (%d as %s, %d refused by its socket's filter), node C's sockets overflowed %d times, links on the way dropped %d",
					total, counted, got.reason, kind.reason, counted-got.reason, got.overflow, got.links)
			}
			if kind.filtered && counted-got.reason == 0 {
				t.Errorf("the VXLAN socket's filter refused none of the %d forged packets", total)
			}
		})
	}
	s.finish(t, "the forged flood")
}
