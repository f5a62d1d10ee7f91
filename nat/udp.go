package nat

import (
	"context"
	"errors"
	"net"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// maxReadErrors is how many read errors in a row without a datagram end a
// flow: errors the error queue does not explain would otherwise spin.
const maxReadErrors = 64

// handleUDP serves the first datagram of a UDP flow the netstack has no
// endpoint for yet. The forwarder calls it inline, in the inbound loop, so
// it only makes the endpoint; the host socket is opened by the relay.
func (n *NAT) handleUDP(r *udp.ForwarderRequest) {
	k := keyOf(protoUDP, r.ID())
	e := n.table.lookup(k)
	if e == nil {
		// Reassembled from fragments whose first one came before its
		// flow expired: admit it now.
		var refused string
		if e, _, refused = n.table.add(k, stateUnreplied); refused != "" {
			n.sendICMPError(header.ICMPv4DstUnreachable, header.ICMPv4AdminProhibited, 0, k.dest.Addr(), udpQuote(k.inside, k.dest, 0))
			return
		}
	}
	if !e.relaying.CompareAndSwap(false, true) {
		return // its relay is ending; the next datagram makes a new flow
	}
	var wq waiter.Queue
	ep, err := r.CreateEndpoint(&wq)
	if err != nil {
		n.log.Debug("nat: UDP endpoint", "flow", k, "err", err)
		n.table.remove(e)
		return
	}
	in := gonet.NewUDPConn(&wq, ep)
	if !n.goTracked(func() { n.relayUDP(e, in) }) {
		in.Close()
	}
}

// relayUDP carries one UDP flow through its own host socket until the flow
// expires: datagrams out to the destination, its replies back, and the
// ICMP errors the socket gets back as ICMP errors to the workload.
func (n *NAT) relayUDP(e *entry, in *gonet.UDPConn) {
	defer n.table.end(e)
	defer in.Close()
	out, err := n.net.ListenUDP(n.cfg.Outside)
	if err != nil {
		n.log.Warn("nat: no host UDP socket for a flow", "flow", e.key, "err", err)
		n.table.refuse(RefusedDial)
		n.sendICMPError(header.ICMPv4DstUnreachable, header.ICMPv4AdminProhibited, 0, e.key.dest.Addr(), udpQuote(e.key.inside, e.key.dest, 0))
		return
	}
	defer out.Close()
	if err := withFD(out, setRecvErr); err != nil {
		n.log.Debug("nat: UDP flow without ICMP errors", "flow", e.key, "err", err)
	}
	if err := withFD(out, e.marks.set); err != nil {
		n.log.Debug("nat: UDP flow without the workload's TTL and TOS", "flow", e.key, "err", err)
	}
	if la, ok := out.LocalAddr().(*net.UDPAddr); ok {
		e.setOutside(la.AddrPort())
	}
	stop := context.AfterFunc(e.ctx, func() { in.Close(); out.Close() })
	defer stop()
	done := make(chan struct{})
	if !n.goTracked(func() { defer close(done); n.udpReplies(e, in, out) }) {
		return
	}
	bufp := n.datagramBufs.Get().(*[]byte)
	defer n.datagramBufs.Put(bufp)
	buf := *bufp
	for {
		k, err := in.Read(buf)
		if err != nil {
			break
		}
		if _, err := out.WriteToUDPAddrPort(buf[:k], e.key.dest); err != nil {
			n.log.Debug("nat: UDP send", "flow", e.key, "err", err)
			if errors.Is(err, net.ErrClosed) {
				break
			}
		}
	}
	out.Close()
	<-done
}

// udpReplies carries the destination's datagrams back to the workload;
// datagrams from anyone else are dropped, as conntrack would not match them
// to the flow.
func (n *NAT) udpReplies(e *entry, in *gonet.UDPConn, out *net.UDPConn) {
	defer in.Close()
	bufp := n.datagramBufs.Get().(*[]byte)
	defer n.datagramBufs.Put(bufp)
	buf := *bufp
	errs := 0
	for {
		k, from, err := out.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// With IP_RECVERR an ICMP error about an earlier datagram
			// surfaces as a read error; its details are on the error queue.
			if n.relayUDPErrors(e, out) == 0 {
				if errs++; errs >= maxReadErrors {
					n.log.Debug("nat: UDP flow ends on read errors", "flow", e.key, "err", err)
					return
				}
			}
			continue
		}
		errs = 0
		if from.Addr().Unmap() != e.key.dest.Addr() || from.Port() != e.key.dest.Port() {
			continue
		}
		if _, err := in.Write(buf[:k]); err != nil {
			return
		}
	}
}

// relayUDPErrors sends the ICMP errors queued on a flow's socket on to the
// workload, from whoever sent them, and says how many there were.
func (n *NAT) relayUDPErrors(e *entry, out *net.UDPConn) int {
	reports, err := readErrQueue(out)
	if err != nil {
		n.log.Debug("nat: UDP error queue", "flow", e.key, "err", err)
	}
	for _, r := range reports {
		n.relayReport(r, e, udpQuote(e.key.inside, e.key.dest, len(r.payload)))
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
