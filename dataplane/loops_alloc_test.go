package dataplane

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/overlayd/overlayd/plan"
)

// The per-packet path allocates nothing (DESIGN.md, "Data path"). These
// tests hold the loops to it as they run in Router.Run: one pass of a loop
// over a batch that takes every branch, measured by testing.AllocsPerRun,
// which counts the allocations of the whole process. The in-memory device
// and transports discard what the router writes, and the loop is seen
// to be done with a batch when it asks for the next one, so nothing but
// the router allocates while a batch is measured.

// passOver returns a function that queues one batch with push and returns
// when the loop whose read calls readCalls counts has come back for more.
func passOver(t *testing.T, readCalls interface{ Load() int64 }, push func()) func() {
	// The loop must be waiting in a read before the first batch, so the
	// batch is taken whole by that read.
	eventually(t, func() bool { return readCalls.Load() > 0 }, func() string { return "the loop never read" })
	return func() {
		calls := readCalls.Load()
		push()
		deadline := time.Now().Add(waitLimit)
		for readCalls.Load() == calls {
			if time.Now().After(deadline) {
				t.Fatalf("the loop did not finish a batch within %v", waitLimit)
			}
			runtime.Gosched()
		}
	}
}

func TestSendLoopPassAllocatesNothing(t *testing.T) {
	const runs = 100
	in := []pkt{
		{src: "192.168.0.5", dst: "192.168.0.70"},                        // VXLAN
		{src: "10.1.0.5", dst: "10.1.0.70", tcp: true},                   // IP-in-IP
		{src: "192.168.0.5", dst: "192.168.0.130"},                       // VXLAN to another peer
		{src: "192.168.0.5", dst: "192.168.0.70", size: 1451, df: true},  // too big: fragmentation needed
		{src: "192.168.0.5", dst: "192.168.0.130", size: 1300, df: true}, // too big for the path to C
		{src: "192.168.0.5", dst: "192.168.0.130", size: 1300},           // the same without DF: sent, to fragment
		{src: "10.2.0.5", dst: "10.2.0.70"},                              // direct block: unreachable
		{src: "192.168.0.5", dst: "203.0.113.9"},                         // the NAT's
		{src: "10.1.0.5", dst: "203.0.113.9"},                            // not overlay
	}
	batch := make([][]byte, 0, len(in)+1)
	for _, p := range in {
		batch = append(batch, p.build(t))
	}
	batch = append(batch, []byte{0x60, 0, 0, 0, 0, 0, 17, 64}) // not IPv4
	a := startNode(t, nil, planFor(t, testCluster, "node-a"), nodeOpts{tunBatch: len(batch), discard: true})
	// As if a router toward node C had said its MTU is 1300.
	a.r.mu.Lock()
	a.r.paths[underlayC].mtu.Store(1300)
	a.r.mu.Unlock()

	pass := passOver(t, &a.tun.readCalls, func() { a.tun.inject(batch...) })
	if allocs := testing.AllocsPerRun(runs, pass); allocs != 0 {
		t.Errorf("one pass of the send loop over a batch allocates %v times, want 0", allocs)
	}

	// Every branch ran in every pass (AllocsPerRun adds a warm-up run).
	n := runs + 1
	waitCounts(t, a, fmt.Sprintf("drop.no_route=%d drop.not_ipv4=%d drop.not_overlay=%d drop.too_big=%d icmp_sent=%d nat=%d tx.ipip=%d tx.vxlan=%d",
		n, n, n, 2*n, 3*n, n, n, 3*n))
	if m := a.tun.maxRead.Load(); m != int64(len(batch)) {
		t.Errorf("the largest read took %d packets, want the whole batch, %d", m, len(batch))
	}
}

func TestReceiveLoopPassAllocatesNothing(t *testing.T) {
	const runs = 100
	macB := macOf("node-b")
	tests := []struct {
		name  string
		over  plan.Encap
		batch func(t testing.TB) []datagram
		want  string
	}{
		{"VXLAN", plan.EncapVXLAN, func(t testing.TB) []datagram {
			return []datagram{
				vxlanFrom(t, "node-a", testVNI, pkt{src: "192.168.0.5", dst: "192.168.0.70"}.build(t), macB),
				vxlanFrom(t, "node-c", testVNI, pkt{src: "192.168.0.130", dst: "192.168.0.70", tcp: true}.build(t), macB),
				arpRequest(t, "node-a", testVNI, "192.168.0.0", "192.168.0.64"),
				vxlanFrom(t, "198.18.3.10", testVNI, pkt{src: "192.168.0.5", dst: "192.168.0.70"}.build(t), macB),
				vxlanFrom(t, "node-a", testVNI+1, pkt{src: "192.168.0.5", dst: "192.168.0.70"}.build(t), macB),
				vxlanFrom(t, "node-a", testVNI, pkt{src: "192.168.0.130", dst: "192.168.0.70"}.build(t), macB),
				vxlanFrom(t, "node-a", testVNI, pkt{src: "192.168.0.5", dst: "192.168.0.130"}.build(t), macB),
			}
		}, "arp_replies=%[1]d drop.not_local=%[1]d drop.spoofed_source=%[1]d drop.unknown_peer=%[1]d drop.wrong_vni=%[1]d rx.vxlan=%[2]d"},
		{"IP-in-IP", plan.EncapIPIP, func(t testing.TB) []datagram {
			return []datagram{
				ipipFrom(t, "node-a", "node-b", pkt{src: "10.1.0.5", dst: "10.1.0.70"}.build(t)),
				ipipFrom(t, "node-c", "node-b", pkt{src: "10.1.0.130", dst: "10.1.0.70", tcp: true}.build(t)),
				ipipFrom(t, "198.18.3.10", "node-b", pkt{src: "10.1.0.5", dst: "10.1.0.70"}.build(t)),
				ipipFrom(t, "node-a", "node-b", pkt{src: "10.1.0.130", dst: "10.1.0.70"}.build(t)),
				ipipFrom(t, "node-a", "node-b", pkt{src: "10.1.0.5", dst: "10.1.0.130"}.build(t)),
			}
		}, "drop.not_local=%[1]d drop.spoofed_source=%[1]d drop.unknown_peer=%[1]d rx.ipip=%[2]d"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := startNode(t, nil, planFor(t, testCluster, "node-b"), nodeOpts{discard: true})
			tr := b.vxlan
			if tc.over == plan.EncapIPIP {
				tr = b.ipip
			}
			batch := tc.batch(t)
			pass := passOver(t, &tr.readCalls, func() { tr.inject(batch...) })
			if allocs := testing.AllocsPerRun(runs, pass); allocs != 0 {
				t.Errorf("one pass of the %s receive loop over a batch allocates %v times, want 0", tc.name, allocs)
			}
			n := runs + 1
			waitCounts(t, b, fmt.Sprintf(tc.want, n, 2*n))
		})
	}
}
