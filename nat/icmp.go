package nat

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/overlayd/overlayd/encap"
)

// echoQueueLen is how many echo requests of one flow may wait for its
// socket (a ping flood beyond that is dropped and counted).
const echoQueueLen = 64

// maxReadErrors is how many read errors in a row without a message end an
// echo flow: errors the error queue does not explain would otherwise spin.
const maxReadErrors = 64

// echoRequest is a workload's echo request waiting to be sent.
type echoRequest struct {
	seq  uint16
	data []byte
	// marks are the request's own TTL and TOS: traceroute -I sends every
	// probe of a flow with another TTL.
	marks ipMarks
}

// echoRequest takes a workload's echo request (pkt, an IPv4 packet with an
// ICMP echo after hl bytes of header). The netstack is kept out of it: with
// spoofing on it would answer every echo itself, claiming any destination
// is up. Instead the flow's host socket sends a real echo, and its reply
// comes back as the reply the workload expects.
func (n *NAT) echoRequest(pkt []byte, hl int, src, dst netip.Addr, marks ipMarks, now time.Time) {
	req := header.ICMPv4(pkt[hl:])
	ident := req.Ident()
	k := flowKey{protoICMP, netip.AddrPortFrom(src, ident), netip.AddrPortFrom(dst, ident)}
	// A flow's later requests need only the read lock.
	e := n.table.lookup(k)
	if e == nil {
		var fresh bool
		var refused string
		e, fresh, refused = n.table.addWith(k, stateNone, func(e *entry) {
			e.echoRequests = make(chan echoRequest, echoQueueLen)
		})
		if refused != "" {
			n.refuseWithICMP(pkt)
			return
		}
		if fresh {
			reqs := e.echoRequests
			if !n.goTracked(func() { n.relayEcho(e, reqs) }) {
				n.table.remove(e)
				return
			}
		}
	}
	e.countOut(len(pkt), now)
	select {
	case e.echoRequests <- echoRequest{seq: req.Sequence(), data: append([]byte(nil), req.Payload()...), marks: marks}:
	default:
		n.drops.add(dropQueueFull)
	}
}

// relayEcho serves one echo flow (a workload, an identifier, a destination)
// with one host ICMP socket, until the flow expires.
func (n *NAT) relayEcho(e *entry, reqs <-chan echoRequest) {
	conn, err := n.net.ListenICMP(n.cfg.Outside)
	if err != nil {
		n.log.Warn("nat: no host ICMP socket for an echo flow", "flow", e.key, "err", err)
		n.table.refuse(RefusedDial)
		n.table.remove(e)
		return
	}
	defer conn.Close()
	stop := context.AfterFunc(e.ctx, func() { conn.Close() })
	defer stop()
	dst := e.key.dest.Addr()
	var to net.Addr
	var ident uint16
	if ua, ping := conn.LocalAddr().(*net.UDPAddr); ping {
		// The kernel gives a ping socket its identifier and demultiplexes
		// replies by it.
		ident, to = uint16(ua.Port), &net.UDPAddr{IP: dst.AsSlice()}
		if sc, ok := conn.(syscall.Conn); ok {
			if err := withFD(sc, setRecvErr); err != nil {
				n.log.Debug("nat: echo flow without ICMP errors", "flow", e.key, "err", err)
			}
		}
	} else {
		// A raw socket sees every ICMP message: an identifier of our own
		// tells this flow's replies from other flows'.
		ident, to = uint16(n.echoIdent.Add(1)), &net.IPAddr{IP: dst.AsSlice()}
	}
	e.setOutside(netip.AddrPortFrom(n.cfg.Outside, ident))
	if !n.goTracked(func() { n.echoReplies(e, conn, ident) }) {
		return
	}
	sc, _ := conn.(syscall.Conn)
	var marks ipMarks // the socket's: its defaults
	for {
		select {
		case <-e.ctx.Done():
			return
		case r := <-reqs:
			if r.marks != marks && sc != nil {
				if err := withFD(sc, r.marks.set); err != nil {
					n.log.Debug("nat: echo without the workload's TTL and TOS", "flow", e.key, "err", err)
				}
				marks = r.marks
			}
			if _, err := conn.WriteTo(echoRequestMsg(ident, r.seq, r.data), to); err != nil {
				n.log.Debug("nat: echo send", "flow", e.key, "err", err)
				if code, ok := unreachableCode(err, false); ok {
					n.sendICMPError(header.ICMPv4DstUnreachable, code, 0, dst, e.echoQuote(r.seq, len(r.data)))
				}
			}
		}
	}
}

// echoQuote is what an ICMP error about the flow's echo request seq quotes.
func (e *entry) echoQuote(seq uint16, dataLen int) []byte {
	return echoQuote(e.key.inside.Addr(), e.key.dest.Addr(), e.key.inside.Port(), seq, dataLen)
}

// echoReplies turns what the flow's socket receives into packets for the
// workload: echo replies from the destination, and the ICMP errors about
// the flow's requests (from the error queue of a ping socket, as messages
// on a raw one).
func (n *NAT) echoReplies(e *entry, conn net.PacketConn, ident uint16) {
	bufp := n.datagramBufs.Get().(*[]byte)
	defer n.datagramBufs.Put(bufp)
	buf := *bufp
	// Messages are read where an echo reply's ICMP part goes, behind the
	// headroom and the IPv4 header, so the reply is built around the data
	// in place.
	const at = encap.Headroom + header.IPv4MinimumSize
	in := buf[at:]
	bufs := make([][]byte, 1)
	sc, canQueue := conn.(syscall.Conn)
	_, raw := conn.LocalAddr().(*net.IPAddr)
	src, dst := e.key.inside.Addr(), e.key.dest.Addr()
	errs := 0
	for {
		k, from, err := conn.ReadFrom(in)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			got := 0
			if canQueue && !raw {
				reports, qerr := readErrQueue(sc)
				if qerr != nil {
					n.log.Debug("nat: echo error queue", "flow", e.key, "err", qerr)
				}
				for _, r := range reports {
					seq := uint16(0)
					if len(r.payload) >= header.ICMPv4MinimumSize {
						seq = header.ICMPv4(r.payload).Sequence()
					}
					n.relayReport(r, e, e.echoQuote(seq, max(0, len(r.payload)-header.ICMPv4MinimumSize)))
				}
				got = len(reports)
			}
			if got == 0 {
				if errs++; errs >= maxReadErrors {
					n.log.Debug("nat: echo flow ends on read errors", "flow", e.key, "err", err)
					return
				}
			}
			continue
		}
		errs = 0
		msg := header.ICMPv4(in[:k])
		sender, ok := addrOf(from)
		if k < header.ICMPv4MinimumSize || !ok {
			continue
		}
		switch msg.Type() {
		case header.ICMPv4EchoReply:
			if sender != dst || (raw && msg.Ident() != ident) {
				continue
			}
			bufs[0] = echoReply(buf, dst, src, e.key.inside.Port(), msg.Sequence(), msg.Payload())
			e.countIn(len(bufs[0])-encap.Headroom, n.table.now())
			n.out(bufs)
		case header.ICMPv4DstUnreachable, header.ICMPv4TimeExceeded:
			if !raw {
				continue // a ping socket reports these on its error queue
			}
			if seq, ours := quotedEcho(msg.Payload(), n.cfg.Outside, dst, ident); ours {
				r := icmpReport{typ: uint8(msg.Type()), code: uint8(msg.Code()), info: uint32(msg.MTU()), offender: sender}
				n.relayReport(r, e, e.echoQuote(seq, 0))
			}
		}
	}
}

// quotedEcho says whether an ICMP error's quote is one of our echo
// requests, from outside to dst with identifier ident, and gives its
// sequence number.
func quotedEcho(quote []byte, outside, dst netip.Addr, ident uint16) (seq uint16, ok bool) {
	if len(quote) < header.IPv4MinimumSize {
		return 0, false
	}
	ip := header.IPv4(quote)
	hl := int(ip.HeaderLength())
	if hl < header.IPv4MinimumSize || len(quote) < hl+header.ICMPv4MinimumSize || ip.Protocol() != uint8(protoICMP) {
		return 0, false
	}
	if netip.AddrFrom4(ip.SourceAddress().As4()) != outside || netip.AddrFrom4(ip.DestinationAddress().As4()) != dst {
		return 0, false
	}
	m := header.ICMPv4(quote[hl:])
	if m.Type() != header.ICMPv4Echo || m.Ident() != ident {
		return 0, false
	}
	return m.Sequence(), true
}

func addrOf(a net.Addr) (netip.Addr, bool) {
	var ip net.IP
	switch v := a.(type) {
	case *net.UDPAddr:
		ip = v.IP
	case *net.IPAddr:
		ip = v.IP
	default:
		return netip.Addr{}, false
	}
	addr, ok := netip.AddrFromSlice(ip)
	return addr.Unmap(), ok
}
