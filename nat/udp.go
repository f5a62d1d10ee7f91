package nat

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// UDP does not go through the netstack: a datagram has no handshake to
// terminate and nothing to retransmit, so the NAT sends a workload's
// datagram straight from the packet it came in (the netstack only
// reassembles fragmented ones) and builds the replies' headers itself.
// A flow holds a connected host socket and nothing else: no goroutine, no
// buffer. One poller reads every flow's socket when it is readable, into
// its own buffer (see udppoll.go). A burst of new flows thus costs a
// socket each and nothing that could fill up unseen.

// udpSock is a UDP flow's host socket, connected to the flow's
// destination, so the kernel drops datagrams from anyone else (as
// conntrack would not match them to the flow) and reports the ICMP errors
// about it on its error queue (IP_RECVERR).
type udpSock struct {
	e    *entry
	conn *net.UDPConn
	raw  syscall.RawConn
	fd   int32 // the descriptor the poller watches; valid while conn is open
	// closed is set by the one closeSock that closes it: after the close
	// the descriptor's number may be another socket's.
	closed atomic.Bool
}

// openUDP opens the flow's host socket and registers it with the poller.
// Called by the inbound loop only.
func (n *NAT) openUDP(e *entry) (*udpSock, error) {
	conn, err := n.net.ListenUDP(n.cfg.Outside)
	if err != nil {
		return nil, err
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("raw socket of a UDP flow: %w", err)
	}
	s := &udpSock{e: e, conn: conn, raw: raw, fd: -1}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		s.fd = int32(fd)
		if err := setRecvErr(int(fd)); err != nil {
			n.log.Debug("nat: UDP flow without ICMP errors", "flow", e.key, "err", err)
		}
		if err := e.marks.set(int(fd)); err != nil {
			n.log.Debug("nat: UDP flow without the workload's TTL and TOS", "flow", e.key, "err", err)
		}
		dst := e.key.dest.Addr().As4()
		if err := unix.Connect(int(fd), &unix.SockaddrInet4{Port: int(e.key.dest.Port()), Addr: dst}); err != nil {
			serr = fmt.Errorf("connecting a UDP flow's socket to %s: %w", e.key.dest, err)
		}
	}); err != nil {
		serr = err
	}
	if serr != nil {
		conn.Close()
		return nil, serr
	}
	if la, ok := conn.LocalAddr().(*net.UDPAddr); ok {
		e.setOutside(la.AddrPort())
	}
	if err := n.poller.add(s); err != nil {
		conn.Close()
		return nil, err
	}
	return s, nil
}

// udpOut sends a workload's datagram (the UDP payload) on its flow,
// opening the flow's socket for its first one. Called by the inbound loop
// only, which is the only user of e.udp and n.udpTx. A flow whose socket
// cannot be opened is refused: counted, and answered with ICMP from the
// destination; a datagram the socket does not take is counted.
func (n *NAT) udpOut(e *entry, payload []byte) {
	if e.udp == nil {
		s, err := n.openUDP(e)
		if err != nil {
			n.log.Warn("nat: no host UDP socket for a flow", "flow", e.key, "err", err)
			n.table.refuse(RefusedDial)
			n.table.remove(e)
			n.sendICMPError(header.ICMPv4DstUnreachable, header.ICMPv4AdminProhibited, 0, e.key.dest.Addr(), udpQuote(e.key.inside, e.key.dest, len(payload)))
			return
		}
		e.udp = s
	}
	werr := n.udpTx.send(e.udp, payload)
	switch {
	case werr == nil:
	case errors.Is(werr, net.ErrClosed):
		// The flow expired between the lookup and now: the datagram goes
		// with it, as one that came just after would make a new flow.
		n.drops.add(dropFlowEnded)
	default:
		// EAGAIN: the socket's send buffer is full (a flood faster than
		// the node's link); anything else the host refused.
		n.drops.add(dropSendFailed)
		if code, ok := unreachableCode(werr, false); ok {
			n.sendICMPError(header.ICMPv4DstUnreachable, code, 0, e.key.dest.Addr(), udpQuote(e.key.inside, e.key.dest, len(payload)))
		}
	}
}

// udpWriter sends datagrams on flows' sockets through their RawConn,
// without waiting and without allocating: its write function is made once.
type udpWriter struct {
	write   func(fd uintptr) bool
	payload []byte
	err     error
}

func (w *udpWriter) writeFD(fd uintptr) bool {
	_, w.err = unix.Write(int(fd), w.payload)
	return true // done either way: a full socket drops, it does not wait
}

// send writes payload on s. An ICMP error about an earlier datagram is
// reported once, by the next send or read (the poller takes its details
// from the error queue): such a failed write is tried once more.
func (w *udpWriter) send(s *udpSock, payload []byte) error {
	w.payload = payload
	defer func() { w.payload = nil }()
	var err error
	for range 2 {
		if err = s.raw.Write(w.write); err == nil {
			err = w.err
		}
		if err == nil || errors.Is(err, unix.EAGAIN) || errors.Is(err, net.ErrClosed) {
			return err
		}
	}
	return err
}

// handleUDPPacket takes the datagrams the netstack reassembled from
// fragments (every other UDP datagram is sent by admit without it). It
// runs in the inbound loop, as InjectInbound's callee.
func (n *NAT) handleUDPPacket(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	// The netstack takes its packets' checksums as checked (for GRO), so
	// the reassembled datagram's is checked here, as admit checks a whole
	// one's.
	ip, u := header.IPv4(pkt.NetworkHeader().Slice()), header.UDP(pkt.TransportHeader().Slice())
	payload := pkt.Data().AsRange().ToSlice()
	if len(u) < header.UDPMinimumSize || u.Checksum() != 0 &&
		!u.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksum.Checksum(payload, 0)) {
		n.ignored.Add(1)
		return true
	}
	k := keyOf(protoUDP, id)
	e := n.table.lookup(k)
	if e == nil {
		// Reassembled from fragments whose first one came before its
		// flow expired: admit it now.
		var refused string
		if e, _, refused = n.table.add(k, stateUnreplied); refused != "" {
			n.sendICMPError(header.ICMPv4DstUnreachable, header.ICMPv4AdminProhibited, 0, k.dest.Addr(), udpQuote(k.inside, k.dest, 0))
			return true
		}
	}
	// Fragmented datagrams are rare: a copy into one slice is fine here.
	n.udpOut(e, payload)
	return true
}

// udpChecksumValid says whether a workload's UDP datagram is intact (a
// zero checksum is none, which IPv4 allows), as the netstack checked it
// before the NAT sent datagrams itself.
func udpChecksumValid(ip header.IPv4, u header.UDP) bool {
	if u.Checksum() == 0 {
		return true
	}
	return u.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksum.Checksum(u.Payload(), 0))
}

// relayUDPErrors sends the ICMP errors queued on a flow's socket on to the
// workload, from whoever sent them, and says how many there were.
func (n *NAT) relayUDPErrors(s *udpSock) int {
	reports, err := readErrQueue(s.conn)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		n.log.Debug("nat: UDP error queue", "flow", s.e.key, "err", err)
	}
	for _, r := range reports {
		n.relayReport(r, s.e, udpQuote(s.e.key.inside, s.e.key.dest, len(r.payload)))
	}
	return len(reports)
}

// relayReport sends one ICMP error the host socket got on to the workload,
// quoting its own packet; only unreachable and time exceeded are carried.
// It says whether it carried it.
func (n *NAT) relayReport(r icmpReport, e *entry, quote []byte) bool {
	typ := header.ICMPv4Type(r.typ)
	if typ != header.ICMPv4DstUnreachable && typ != header.ICMPv4TimeExceeded {
		return false
	}
	from := r.offender
	if !from.IsValid() {
		from = e.key.dest.Addr()
	}
	n.sendICMPError(typ, header.ICMPv4Code(r.code), uint16(r.info), from, quote)
	return true
}

// putUDPReply writes, in front of a reply's payload at
// b[udpReplyHeaders:], the IPv4 and UDP headers that carry it from the
// flow's destination to the workload, and returns the packet. The IPv4
// header has no DF: the reply is fragmented on the way to the workload if
// it must be, as it would have been behind a kernel NAT.
func putUDPReply(b []byte, payloadLen int, dest, inside netip.AddrPort, id uint16) []byte {
	const hl = header.IPv4MinimumSize
	total := udpReplyHeaders + payloadLen
	b = b[:total]
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(total), ID: id, TTL: replyTTL, Protocol: uint8(protoUDP),
		SrcAddr: tcpipAddr(dest.Addr()), DstAddr: tcpipAddr(inside.Addr()),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	u := header.UDP(b[hl:])
	u.SetSourcePort(dest.Port())
	u.SetDestinationPort(inside.Port())
	u.SetLength(uint16(header.UDPMinimumSize + payloadLen))
	u.SetChecksum(0)
	sum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), u.Length())
	xsum := ^u.CalculateChecksum(checksum.Checksum(u.Payload(), sum))
	if xsum == 0 {
		xsum = 0xffff // 0 would mean "no checksum"
	}
	u.SetChecksum(xsum)
	return b
}

// udpReplyHeaders is the headers in front of a reply's payload.
const udpReplyHeaders = header.IPv4MinimumSize + header.UDPMinimumSize
