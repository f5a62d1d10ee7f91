package dataplane

import (
	"os"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/overlayd/overlayd/conn"
	"github.com/overlayd/overlayd/encap"
	"github.com/overlayd/overlayd/plan"
)

const maxICMPSize = encap.MaxICMPErrorLen

// innerLimits returns the largest inner packet each encapsulation can carry
// without fragmenting on the underlay.
func innerLimits(p *plan.Plan) [numEncaps]int {
	var l [numEncaps]int
	for e := range numEncaps {
		l[e] = p.UnderlayMTU - plan.Encap(e).Overhead()
	}
	return l
}

// encapsulatorFor makes the Encapsulator of a table. Loops keep one per
// table and make a new one only when the table changes.
func encapsulatorFor(t *table) (*encap.Encapsulator, error) {
	return encap.NewEncapsulator(encap.Config{Local: t.self, VTEPMAC: t.vtepMAC, VNI: t.plan.VNI})
}

// tunLoop reads what the kernel routed into the TUN device and sends it to
// the node that owns its destination, encapsulated in place.
func (r *Router) tunLoop() error {
	size := r.tun.BatchSize()
	in := encap.NewBatch(size, r.bufSize)
	replies := &replyQueue{batch: encap.NewBatch(size, encap.Headroom+maxICMPSize), bufs: make([][]byte, 0, size)}
	vxlanMsgs := make([]conn.Message, 0, size)
	ipipMsgs := make([]conn.Message, 0, size)
	var (
		t       tally
		enc     *encap.Encapsulator
		encFor  *table
		limits  [numEncaps]int
		failing bool // the last read failed
	)
	w := r.spinWaitFor(deviceFD(r.tun))
	for {
		if w != nil {
			w.beforeRead()
		}
		n, err := r.tun.Read(in.Bufs, in.Sizes, encap.Headroom)
		if w != nil {
			w.afterRead()
		}
		if err != nil {
			if isClosed(err) {
				return err
			}
			// A malformed super-packet from the kernel spoils one read, not
			// the loop; say so once per run of failures (the count has
			// them all).
			if !failing {
				r.log.Warn("reading from the TUN device failed", "err", err)
			}
			failing = true
			t.ioErrors[errTUNRead]++
			r.stats.flush(&t)
			continue
		}
		failing = false
		tb := r.table.Load()
		if tb != encFor {
			if enc, err = encapsulatorFor(tb); err != nil {
				return err
			}
			encFor, limits = tb, innerLimits(tb.plan)
		}
		vxlanMsgs, ipipMsgs, replies.bufs = vxlanMsgs[:0], ipipMsgs[:0], replies.bufs[:0]
		for i := range n {
			buf, size := in.Bufs[i], in.Sizes[i]
			pkt := buf[encap.Headroom : encap.Headroom+size]
			if !encap.IsIPv4(pkt) {
				t.drops[DropNotIPv4]++
				continue
			}
			dst := encap.IPv4Destination(pkt)
			d := tb.lookup(dst)
			if d == nil {
				if r.nat != nil && tb.natted(encap.IPv4Source(pkt), dst) {
					r.nat(pkt)
					t.natPackets++
					continue
				}
				t.drops[DropNotOverlay]++
				continue
			}
			if d.kind != plan.DestRemote || d.encap == plan.EncapNone {
				// A pool address with no block, a local address with no
				// workload, or a direct block the kernel did not route
				// itself: no one to send it to, so the sender is told.
				t.drops[DropNoRoute]++
				if replies.add(encap.NetUnreachable(replies.slot(), pkt, dst)) {
					t.icmpSent++
				}
				continue
			}
			limit := d.peer.innerLimit(d.encap, limits[d.encap])
			if size > limit && encap.IPv4DF(pkt) {
				t.drops[DropTooBig]++
				if replies.add(encap.FragNeeded(replies.slot(), pkt, d.peer.icmpSource(dst), limit)) {
					t.icmpSent++
				}
				continue
			}
			// Router.Update refuses a plan whose encapsulations have no
			// transport, and transports are never taken away: the one
			// d.encap needs is there.
			switch d.encap {
			case plan.EncapVXLAN:
				flow := encap.FlowHash(pkt)
				out := enc.VXLANPayload(buf, size, d.peer.mac)
				vxlanMsgs = append(vxlanMsgs, conn.Message{Buf: out, Addr: d.peer.addr, Port: tb.plan.VXLANPort, Flow: flow, TOS: encap.OuterTOS(pkt), Fragment: size > limit})
				t.txPackets[plan.EncapVXLAN]++
				t.txBytes[plan.EncapVXLAN] += uint64(len(out) + encap.OuterIPv4UDPLen)
				t.countTx(d.peer, len(out)+encap.OuterIPv4UDPLen)
			case plan.EncapIPIP:
				out := enc.IPIP(buf, size, d.peer.addr)
				ipipMsgs = append(ipipMsgs, conn.Message{Buf: out, Addr: d.peer.addr})
				t.txPackets[plan.EncapIPIP]++
				t.txBytes[plan.EncapIPIP] += uint64(len(out))
				t.countTx(d.peer, len(out))
			}
		}
		if len(vxlanMsgs) > 0 {
			r.send(tb.transports[plan.EncapVXLAN], vxlanMsgs, &t)
		}
		if len(ipipMsgs) > 0 {
			r.send(tb.transports[plan.EncapIPIP], ipipMsgs, &t)
		}
		if len(replies.bufs) > 0 {
			if _, err := r.tun.Write(replies.bufs, encap.Headroom); err != nil && !isClosed(err) {
				t.ioErrors[errTUNWrite]++
				r.log.Debug("writing ICMP replies to the TUN device failed", "err", err)
			}
		}
		r.stats.flush(&t)
	}
}

// spinWaitFor makes the spinWait of a loop that reads fd, or nil when the
// spin is off or there is no descriptor to poll (fd < 0).
func (r *Router) spinWaitFor(fd int) *spinWait {
	if r.spin == 0 || fd < 0 {
		return nil
	}
	return newSpinWait(fd, r.spin)
}

// deviceFD is the descriptor of a kernel TUN device (wireguard-go's
// NativeTun has File), or -1: for a device in memory or the netstack's,
// or one closed as the loop started (its read then says so). Control,
// unlike os.File.Fd, leaves the descriptor non-blocking and under Go's
// poller, where the device's own reads expect it.
func deviceFD(dev tun.Device) int {
	f, ok := dev.(interface{ File() *os.File })
	if !ok || f.File() == nil {
		return -1
	}
	fd := -1
	if rc, err := f.File().SyscallConn(); err == nil {
		_ = rc.Control(func(d uintptr) { fd = int(d) })
	}
	return fd
}

// replyQueue collects the ICMP errors a batch answers, each built in a
// buffer of its own at Headroom, ready for one TUN write.
type replyQueue struct {
	batch *encap.Batch
	bufs  [][]byte
}

// slot is where the next reply is to be built.
func (q *replyQueue) slot() []byte { return q.batch.Bufs[len(q.bufs)][encap.Headroom:] }

// add queues a reply built in slot; nil (nothing to send) is not queued.
func (q *replyQueue) add(msg []byte) bool {
	if msg == nil {
		return false
	}
	q.bufs = append(q.bufs, q.batch.Bufs[len(q.bufs)][:encap.Headroom+len(msg)])
	return true
}

// send writes a batch to a transport; what the socket refuses is counted,
// not retried: the transport already retried partial sends.
func (r *Router) send(tr conn.Transport, msgs []conn.Message, t *tally) {
	sent, err := tr.WriteBatch(msgs)
	if err != nil && !isClosed(err) {
		t.ioErrors[errSocketWrite]++
		t.drops[DropSendError] += uint64(len(msgs) - sent)
		r.log.Debug("underlay send failed", "err", err, "unsent", len(msgs)-sent)
		r.noteTooBig(msgs)
	}
}

// icmpSource is the address an ICMP error about a packet to this peer comes
// from: the peer's tunnel address, the far end of the tunnel that is too
// small, else the packet's own destination. Never one of this node's own
// addresses: the error re-enters the kernel through the TUN, and a packet
// from a local address arriving there is dropped as a martian. Hosts act on
// the quoted header, whoever the error comes from.
func (p *peer) icmpSource(dst [4]byte) [4]byte {
	if p.tunnelAddr != [4]byte{} {
		return p.tunnelAddr
	}
	return dst
}

// underlayLoop receives encapsulated packets from one transport, accepts
// only what a known node may send to this node, and writes the inner
// packets to the TUN device.
func (r *Router) underlayLoop(tr conn.Transport, kind plan.Encap) error {
	const batch = 128
	in := encap.NewBatch(batch, r.bufSize)
	msgs := make([]conn.Message, batch)
	out := make([][]byte, 0, batch)
	arpMsgs := make([]conn.Message, 0, batch)
	// The received bytes start where the inner packet lands at Headroom
	// once the outer headers are sliced off.
	lead := encap.VXLANPayloadLen
	if kind == plan.EncapIPIP {
		lead = encap.IPIPOverhead
	}
	var t tally
	fd := -1
	pollable, _ := tr.(conn.Pollable)
	if pollable != nil {
		fd = pollable.FD()
	}
	w := r.spinWaitFor(fd)
	for {
		for i := range msgs {
			msgs[i] = conn.Message{Buf: in.Bufs[i][encap.Headroom-lead:]}
		}
		if w != nil && !pollable.Buffered() {
			w.beforeRead()
		}
		n, err := tr.ReadBatch(msgs)
		if w != nil {
			w.afterRead()
		}
		if err != nil {
			if isClosed(err) {
				return err
			}
			// A transient socket error (a pending ICMP error, memory
			// pressure) costs this read, not the loop; a persistent one is
			// logged and paced rather than spun on.
			t.ioErrors[errSocketRead]++
			r.stats.flush(&t)
			r.log.Warn("receiving from the underlay failed", "encap", kind, "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		tb := r.table.Load()
		out, arpMsgs = out[:0], arpMsgs[:0]
		for i := range n {
			m := &msgs[i]
			p := tb.peerAt(m.Addr)
			if p == nil {
				t.drops[DropUnknownPeer]++
				continue
			}
			var inner []byte
			switch kind {
			case plan.EncapVXLAN:
				var arpFrame []byte
				var reason encap.DropReason
				inner, arpFrame, reason = encap.DecapVXLANPayload(m.Buf[:m.N], tb.plan.VNI, m.TOS)
				if reason != encap.NoDrop {
					t.decapDrops[reason]++
					continue
				}
				if arpFrame != nil {
					if encap.ARPReply(arpFrame, tb.tunnelAddr, tb.vtepMAC) {
						// The reply was written in place behind the same
						// VXLAN header; it goes back to the peer's VXLAN port.
						arpMsgs = append(arpMsgs, conn.Message{Buf: m.Buf[:m.N], Addr: p.addr, Port: tb.plan.VXLANPort})
						t.arpReplies++
					}
					continue
				}
			case plan.EncapIPIP:
				var reason encap.DropReason
				if inner, _, reason = encap.DecapIPIP(m.Buf[:m.N]); reason != encap.NoDrop {
					t.decapDrops[reason]++
					continue
				}
			}
			if d := tb.lookup(encap.IPv4Destination(inner)); d == nil || d.kind != plan.DestLocal {
				t.drops[DropNotLocal]++
				continue
			}
			if d := tb.lookup(encap.IPv4Source(inner)); d == nil || d.kind != plan.DestRemote || d.peer != p {
				t.drops[DropSpoofedSource]++
				continue
			}
			// Bytes on the wire, as for sending: the UDP socket took off
			// the outer IPv4 and UDP headers, the raw socket did not.
			wire := m.N
			if kind == plan.EncapVXLAN {
				wire += encap.OuterIPv4UDPLen
			}
			t.rxPackets[kind]++
			t.rxBytes[kind] += uint64(wire)
			t.countRx(p, wire)
			out = append(out, in.Bufs[i][:encap.Headroom+len(inner)])
		}
		if len(out) > 0 {
			if _, err := r.tun.Write(out, encap.Headroom); err != nil {
				if isClosed(err) {
					return err
				}
				t.ioErrors[errTUNWrite]++
				r.log.Debug("writing to the TUN device failed", "err", err)
			}
		}
		if len(arpMsgs) > 0 {
			r.send(tr, arpMsgs, &t)
		}
		r.stats.flush(&t)
	}
}
