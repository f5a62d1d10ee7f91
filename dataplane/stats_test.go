package dataplane

import (
	"maps"
	"testing"
)

// TestPeerRunsCountEveryPacket: a batch's packets are counted per run of
// one peer, and every packet and byte reaches its own peer's counters
// however the peers interleave.
func TestPeerRunsCountEveryPacket(t *testing.T) {
	tests := []struct {
		name  string
		order string // a peer per packet, by letter; each packet is 100 bytes
	}{
		{"one run", "aaaa"},
		{"two runs", "aabb"},
		{"interleaved", "abab"},
		{"back to the first", "aabaa"},
		{"a peer without counters between", "a-a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			peers := map[rune]*peer{'a': {counters: new(peerCounters)}, 'b': {counters: new(peerCounters)}, '-': {}}
			want := map[rune]uint64{}
			var c counters
			var tl tally
			for _, r := range tt.order {
				tl.countTx(peers[r], 100)
				tl.countRx(peers[r], 100)
				want[r]++
			}
			c.flush(&tl)
			for r, p := range peers {
				if p.counters == nil {
					continue
				}
				pc := p.counters
				if pc.txPackets.Load() != want[r] || pc.txBytes.Load() != 100*want[r] ||
					pc.rxPackets.Load() != want[r] || pc.rxBytes.Load() != 100*want[r] {
					t.Errorf("peer %c: tx %d/%d rx %d/%d, want %d packets of 100 bytes each way", r,
						pc.txPackets.Load(), pc.txBytes.Load(), pc.rxPackets.Load(), pc.rxBytes.Load(), want[r])
				}
			}
			if tl != (tally{}) {
				t.Errorf("the tally is not cleared after flush: %+v", tl)
			}
		})
	}
}

// TestStatsSocketDrops: what the kernel dropped at each transport's
// sockets is reported by encapsulation, IP-in-IP's (which has no source
// filter) as VXLAN's.
func TestStatsSocketDrops(t *testing.T) {
	n := newNode(t, nil, planFor(t, testCluster, "node-a"), nodeOpts{})
	n.vxlan.socketDrops.Store(3)
	n.ipip.socketDrops.Store(5)
	got := n.r.Stats().SocketDrops
	if want := map[string]uint64{"vxlan": 3, "ipip": 5}; !maps.Equal(got, want) {
		t.Errorf("SocketDrops %v, want %v", got, want)
	}
}
