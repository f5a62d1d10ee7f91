package dataplane

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/overlayd/overlayd/plan"
)

// TestPathMTU: the underlay path toward node B shrinks to 1300 bytes. The
// first packet over it is refused by the socket (TooBig, a send error),
// the router asks the kernel's path MTU and from then on answers DF packets
// over what fits with fragmentation needed carrying it, sends what fits,
// and sends the packets without DF marked for the kernel to fragment. When
// the path grows back, the full tunnel MTU is used again.
func TestPathMTU(t *testing.T) {
	const pathMTU = 1300
	for _, tc := range []struct {
		name     string
		src, dst string
		kind     plan.Encap
	}{
		{"VXLAN", "192.168.0.5", "192.168.0.70", plan.EncapVXLAN},
		{"IP-in-IP", "10.1.0.5", "10.1.0.70", plan.EncapIPIP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var path atomic.Int32
			a := startNode(t, nil, planFor(t, testCluster, "node-a"), nodeOpts{pathMTU: &path, pathRecheck: 10 * time.Millisecond})
			tr := a.vxlan
			if tc.kind == plan.EncapIPIP {
				tr = a.ipip
			}
			tunnelLimit := 1500 - tc.kind.Overhead()
			pathLimit := pathMTU - tc.kind.Overhead()
			send := func(size int, df bool) []byte {
				in := pkt{src: tc.src, dst: tc.dst, size: size, df: df, tcp: true}.build(t)
				a.tun.inject(in)
				return in
			}
			peerMTU := func() int { return a.r.Stats().Peers["node-b"].PathMTU }

			path.Store(pathMTU)
			send(tunnelLimit, true)
			eventually(t, func() bool { return peerMTU() == pathMTU }, func() string {
				return fmt.Sprintf("node-b's path MTU is %d, want %d", peerMTU(), pathMTU)
			})
			if got := a.r.Stats().PathMTUsLearned; got != 1 {
				t.Errorf("%d path MTUs learned, want 1", got)
			}
			waitCounts(t, a, fmt.Sprintf("drop.send_error=1 io.socket_write=1 tx.%s=1", tc.kind))

			tooBig := send(pathLimit+1, true)
			send(pathLimit, true)
			send(tunnelLimit, false)
			waitCounts(t, a, fmt.Sprintf("drop.send_error=1 drop.too_big=1 icmp_sent=1 io.socket_write=1 tx.%s=3", tc.kind))
			if replies := a.tun.written(); len(replies) != 1 {
				t.Fatalf("wrote %d packets back to the TUN, want one ICMP error", len(replies))
			} else {
				checkICMP(t, replies[0], tooBig, icmpWant{fragNeeded, "192.168.0.64", uint16(pathLimit)})
			}
			sent := tr.sentMsgs()
			if len(sent) != 2 || len(sent[0].b) > pathMTU || sent[0].fragment || (tc.kind == plan.EncapVXLAN && !sent[1].fragment) {
				t.Errorf("sent %d messages (fragment: %v), want the one that fits the path and the one without DF, marked for fragmenting over VXLAN", len(sent), fragments(sent))
			}

			// The kernel forgets the smaller MTU (its PMTU cache expires).
			path.Store(0)
			eventually(t, func() bool { return peerMTU() == 1500 }, func() string {
				return fmt.Sprintf("node-b's path MTU is %d, want 1500 again", peerMTU())
			})
			send(tunnelLimit, true)
			waitCounts(t, a, fmt.Sprintf("drop.send_error=1 drop.too_big=1 icmp_sent=1 io.socket_write=1 tx.%s=4", tc.kind))
			if sent := tr.sentMsgs(); len(sent) != 3 {
				t.Errorf("%d messages sent, want 3: the full-size packet went too", len(sent))
			}
		})
	}
}

func fragments(sent []sentMsg) []bool {
	f := make([]bool, len(sent))
	for i, m := range sent {
		f[i] = m.fragment
	}
	return f
}
