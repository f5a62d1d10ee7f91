package nat

import (
	"encoding/binary"
	"net"
	"net/netip"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/overlayd/overlayd/encap"
)

// echoWait is how long an echo request waits for the destination's reply.
const echoWait = 5 * time.Second

// echo answers a workload's ICMP echo request with the real destination's
// answer: the netstack would answer it itself, lying about reachability. It
// sends the echo from a host ping socket and, when the reply comes, builds
// the echo reply the workload expects, from the destination.
func (n *NAT) echo(pkt []byte) {
	ip := header.IPv4(pkt)
	hl := int(ip.HeaderLength())
	if len(pkt) < hl+header.ICMPv4MinimumSize || int(ip.TotalLength()) > len(pkt) {
		return
	}
	pkt = pkt[:ip.TotalLength()]
	req := header.ICMPv4(pkt[hl:])
	if req.Type() != header.ICMPv4Echo {
		return // other ICMP from a workload is not forwarded
	}
	src, dst := netip.AddrFrom4([4]byte(pkt[12:16])), netip.AddrFrom4([4]byte(pkt[16:20]))
	key := flowKey{proto: "icmp", inside: netip.AddrPortFrom(src, req.Ident()), dest: netip.AddrPortFrom(dst, req.Ident())}
	e, refused := n.table.add(key, "")
	if refused != "" {
		n.reply(encap.Prohibited, pkt)
		return
	}
	e.countOut(len(pkt))
	ident, seq, payload := req.Ident(), req.Sequence(), append([]byte(nil), req.Payload()...)
	n.wg.Go(func() {
		defer time.AfterFunc(n.table.timeout(e), func() {
			if time.Since(time.Unix(0, e.lastSeen.Load())) >= n.table.timeout(e) {
				n.table.remove(e, true)
			}
		})
		conn, err := n.pingSocket()
		if err != nil {
			n.log.Debug("nat: no ICMP socket for echo", "err", err)
			return
		}
		defer conn.Close()
		if local, ok := conn.LocalAddr().(*net.UDPAddr); ok {
			o := netip.AddrPortFrom(n.cfg.Outside, uint16(local.Port))
			e.outside.Store(&o)
		}
		msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: int(ident), Seq: int(seq), Data: payload}}
		wire, err := msg.Marshal(nil)
		if err != nil {
			return
		}
		to := net.Addr(&net.UDPAddr{IP: dst.AsSlice()})
		if _, raw := conn.LocalAddr().(*net.IPAddr); raw {
			to = &net.IPAddr{IP: dst.AsSlice()}
		}
		if _, err := conn.WriteTo(wire, to); err != nil {
			return
		}
		deadline := time.Now().Add(echoWait)
		buf := make([]byte, 65536)
		for {
			if conn.SetReadDeadline(deadline) != nil {
				return
			}
			k, from, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			if !sameAddr(from, dst) {
				continue
			}
			got, err := icmp.ParseMessage(1, buf[:k])
			if err != nil || got.Type != ipv4.ICMPTypeEchoReply {
				continue
			}
			body, ok := got.Body.(*icmp.Echo)
			if !ok || body.Seq != int(seq) {
				continue
			}
			reply := echoReply(dst, src, ident, seq, body.Data)
			e.countIn(len(reply))
			_ = n.cfg.Out(reply)
			return
		}
	})
}

// pingSocket opens an unprivileged ping socket from the outside address,
// or a raw ICMP socket where the ping group range does not allow that.
func (n *NAT) pingSocket() (net.PacketConn, error) {
	if c, err := icmp.ListenPacket("udp4", n.cfg.Outside.String()); err == nil {
		return c, nil
	}
	return icmp.ListenPacket("ip4:icmp", n.cfg.Outside.String())
}

func sameAddr(a net.Addr, want netip.Addr) bool {
	switch v := a.(type) {
	case *net.UDPAddr:
		return v.IP.Equal(want.AsSlice())
	case *net.IPAddr:
		return v.IP.Equal(want.AsSlice())
	}
	return false
}

// echoReply builds the IPv4 echo reply from src to dst.
func echoReply(src, dst netip.Addr, ident, seq uint16, data []byte) []byte {
	const hl = header.IPv4MinimumSize
	b := make([]byte, hl+header.ICMPv4MinimumSize+len(data))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.ICMPv4ProtocolNumber),
		SrcAddr: tcpipAddr(src), DstAddr: tcpipAddr(dst),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	m := header.ICMPv4(b[hl:])
	m.SetType(header.ICMPv4EchoReply)
	m.SetCode(0)
	binary.BigEndian.PutUint16(m[4:], ident)
	binary.BigEndian.PutUint16(m[6:], seq)
	copy(m[header.ICMPv4MinimumSize:], data)
	m.SetChecksum(0)
	m.SetChecksum(^checksum.Checksum(m, 0))
	return b
}

func tcpipAddr(a netip.Addr) tcpip.Address { return tcpip.AddrFrom4(a.As4()) }
