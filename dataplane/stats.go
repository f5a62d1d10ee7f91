package dataplane

import (
	"sync/atomic"

	"github.com/overlayd/overlayd/encap"
	"github.com/overlayd/overlayd/plan"
)

// Drop is why the router itself refused a packet, beyond the malformed
// packets encap.DropReason covers.
type Drop uint8

// The router's drop reasons.
const (
	// DropUnknownPeer: an encapsulated packet whose outer source is no node
	// of the cluster.
	DropUnknownPeer Drop = iota
	// DropNotLocal: an inner destination that is not on this node.
	DropNotLocal
	// DropSpoofedSource: an inner source outside the sending node's blocks.
	DropSpoofedSource
	// DropNoRoute: a packet from the TUN for a pool address with no block,
	// or an unused address of a local block (answered ICMP unreachable).
	DropNoRoute
	// DropNotIPv4: a packet from the TUN that is not IPv4.
	DropNotIPv4
	// DropTooBig: a DF packet too big for the tunnel, or for the path to
	// its peer when that is smaller (answered ICMP fragmentation needed).
	DropTooBig
	// DropNotOverlay: a packet from the TUN for a destination outside every
	// pool that nothing NATs.
	DropNotOverlay
	// DropSendError: the underlay socket refused the packet.
	DropSendError

	numDrops
)

func (d Drop) String() string {
	switch d {
	case DropUnknownPeer:
		return "unknown_peer"
	case DropNotLocal:
		return "not_local"
	case DropSpoofedSource:
		return "spoofed_source"
	case DropNoRoute:
		return "no_route"
	case DropNotIPv4:
		return "not_ipv4"
	case DropTooBig:
		return "too_big"
	case DropNotOverlay:
		return "not_overlay"
	case DropSendError:
		return "send_error"
	}
	return "unknown"
}

const numEncaps = int(plan.EncapVXLAN) + 1

// tally is one loop's counts for one batch: plain integers the loop owns,
// added to the shared counters once per batch so the per-packet path has no
// atomic operation.
type tally struct {
	// txRun and rxRun count the current run of packets to or from one peer.
	txRun, rxRun       peerRun
	txPackets, txBytes [numEncaps]uint64
	rxPackets, rxBytes [numEncaps]uint64
	decapDrops         [encap.NumDropReasons]uint64
	drops              [numDrops]uint64
	arpReplies         uint64
	icmpSent           uint64
	natPackets         uint64
	ioErrors           [numIOErrors]uint64
}

// ioError is a failing system call on the data path.
type ioError uint8

const (
	errTUNRead ioError = iota
	errTUNWrite
	errSocketRead
	errSocketWrite
	numIOErrors
)

func (e ioError) String() string {
	return [...]string{"tun_read", "tun_write", "socket_read", "socket_write"}[e]
}

// peerCounters count one peer's traffic. They are kept by node name across
// plan changes, and each is written by one loop per direction, so atomic
// adds on them do not contend.
type peerCounters struct {
	txPackets, txBytes atomic.Uint64
	_                  [48]byte // keep the receive loop's counters off the send loop's cache line
	rxPackets, rxBytes atomic.Uint64
}

// counters are the router's totals since start, read by metrics and tests.
type counters struct {
	txPackets, txBytes [numEncaps]atomic.Uint64
	rxPackets, rxBytes [numEncaps]atomic.Uint64
	decapDrops         [encap.NumDropReasons]atomic.Uint64
	drops              [numDrops]atomic.Uint64
	arpReplies         atomic.Uint64
	icmpSent           atomic.Uint64
	natPackets         atomic.Uint64
	ioErrors           [numIOErrors]atomic.Uint64
	// pathMTUsLearned is written by the path MTU watcher, not a loop.
	pathMTUsLearned atomic.Uint64
}

func addAll(dst []atomic.Uint64, src []uint64) {
	for i, v := range src {
		if v != 0 {
			dst[i].Add(v)
		}
	}
}

// peerRun counts consecutive packets of a batch in one direction to or
// from one peer, and adds them to that peer's counters when the peer
// changes or the batch ends: a batch mostly goes to one peer (a TSO
// packet's segments, a GRO train), so that is one pair of atomic adds per
// run rather than per packet.
type peerRun struct {
	packets, bytes *atomic.Uint64 // the peer's counters; nil: no run
	n, size        uint64
}

func (r *peerRun) count(packets, bytes *atomic.Uint64, size int) {
	if packets != r.packets {
		r.flush()
		r.packets, r.bytes = packets, bytes
	}
	r.n++
	r.size += uint64(size)
}

func (r *peerRun) flush() {
	if r.packets != nil && r.n != 0 {
		r.packets.Add(r.n)
		r.bytes.Add(r.size)
	}
	*r = peerRun{}
}

// countTx and countRx count a packet to or from a peer; a peer of a table
// not built by a router (tests) has no counters.
func (t *tally) countTx(p *peer, size int) {
	if c := p.counters; c != nil {
		t.txRun.count(&c.txPackets, &c.txBytes, size)
	}
}

func (t *tally) countRx(p *peer, size int) {
	if c := p.counters; c != nil {
		t.rxRun.count(&c.rxPackets, &c.rxBytes, size)
	}
}

// flush adds the batch's counts to the totals and clears the tally.
func (c *counters) flush(t *tally) {
	t.txRun.flush()
	t.rxRun.flush()
	addAll(c.txPackets[:], t.txPackets[:])
	addAll(c.txBytes[:], t.txBytes[:])
	addAll(c.rxPackets[:], t.rxPackets[:])
	addAll(c.rxBytes[:], t.rxBytes[:])
	addAll(c.decapDrops[:], t.decapDrops[:])
	addAll(c.drops[:], t.drops[:])
	addAll(c.ioErrors[:], t.ioErrors[:])
	if t.arpReplies != 0 {
		c.arpReplies.Add(t.arpReplies)
	}
	if t.icmpSent != 0 {
		c.icmpSent.Add(t.icmpSent)
	}
	if t.natPackets != 0 {
		c.natPackets.Add(t.natPackets)
	}
	*t = tally{}
}

// Stats is a snapshot of the router's counters.
type Stats struct {
	TxPackets, TxBytes map[string]uint64 // by encapsulation: none, ipip, vxlan
	RxPackets, RxBytes map[string]uint64
	// Drops by reason: the router's (Drop) and malformed packets
	// (encap.DropReason), in one namespace of snake_case names.
	Drops      map[string]uint64
	ARPReplies uint64
	ICMPSent   uint64
	NATPackets uint64 // handed to the NAT
	// IOErrors by the call that failed: tun_read, tun_write, socket_read,
	// socket_write.
	IOErrors map[string]uint64
	// PathMTUsLearned counts the times the path to a peer was found
	// smaller than the underlay MTU, or smaller than it was.
	PathMTUsLearned uint64
	// Peers: packets and bytes to and from each node, by name.
	Peers map[string]PeerStats
	// SocketDrops: packets the kernel dropped at the underlay sockets, by
	// encapsulation (conn.DropCounter): refused by VXLAN's source filter
	// or for want of room in a receive buffer, which the kernel counts as
	// one.
	SocketDrops map[string]uint64
}

// PeerStats is one peer's traffic.
type PeerStats struct {
	TxPackets, TxBytes, RxPackets, RxBytes uint64
	// PathMTU is the underlay path MTU toward the peer: the underlay MTU,
	// or the kernel's smaller path MTU once a send was refused for it.
	// Zero for a node no longer in the plan.
	PathMTU int
}

func (c *counters) snapshot() Stats {
	s := Stats{
		TxPackets: map[string]uint64{}, TxBytes: map[string]uint64{},
		RxPackets: map[string]uint64{}, RxBytes: map[string]uint64{},
		Drops:      map[string]uint64{},
		IOErrors:   map[string]uint64{},
		ARPReplies: c.arpReplies.Load(),
		ICMPSent:   c.icmpSent.Load(),
		NATPackets: c.natPackets.Load(),

		PathMTUsLearned: c.pathMTUsLearned.Load(),
	}
	for e := range numEncaps {
		name := plan.Encap(e).String()
		s.TxPackets[name] = c.txPackets[e].Load()
		s.TxBytes[name] = c.txBytes[e].Load()
		s.RxPackets[name] = c.rxPackets[e].Load()
		s.RxBytes[name] = c.rxBytes[e].Load()
	}
	for r := encap.DropReason(1); r < encap.NumDropReasons; r++ {
		s.Drops[r.String()] = c.decapDrops[r].Load()
	}
	for d := range numDrops {
		s.Drops[d.String()] = c.drops[d].Load()
	}
	for e := range numIOErrors {
		s.IOErrors[e.String()] = c.ioErrors[e].Load()
	}
	return s
}
