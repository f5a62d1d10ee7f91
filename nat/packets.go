package nat

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/overlayd/overlayd/encap"
)

// The headers the NAT writes itself: TTL 64 as a host's, and for ICMP
// errors TOS 0xc0 (internetwork control), as Linux sends them.
const (
	replyTTL = 64
	errorTOS = 0xc0
	// quotedPayload is how much past the IP header an ICMP error quotes:
	// the 64 bits RFC 792 asks for, which hold the ports (and TCP's
	// sequence number) the receiver matches on.
	quotedPayload = 8
)

func tcpipAddr(a netip.Addr) tcpip.Address { return tcpip.AddrFrom4(a.As4()) }

// putIPv4 writes a 20-byte IPv4 header with its checksum into b.
func putIPv4(b []byte, tos uint8, total int, p proto, src, dst netip.Addr) {
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TOS: tos, TotalLength: uint16(total), TTL: replyTTL, Protocol: uint8(p),
		Flags: header.IPv4FlagDontFragment, SrcAddr: tcpipAddr(src), DstAddr: tcpipAddr(dst),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
}

// echoReply builds the IPv4 packet a workload expects back for its echo
// request: an echo reply from the destination dst to the workload, with the
// workload's identifier and the reply's sequence number and data. It builds
// it in buf at encap.Headroom, as Config.Out takes it, and returns
// buf[:encap.Headroom+the packet's length]; a buf too small is replaced by a
// new one. data may already be where the reply's data goes in buf (an echo
// read in place), but may not overlap it otherwise.
func echoReply(buf []byte, dst, workload netip.Addr, ident, seq uint16, data []byte) []byte {
	const hl = header.IPv4MinimumSize
	size := encap.Headroom + hl + header.ICMPv4MinimumSize + len(data)
	if len(buf) < size {
		buf = make([]byte, size)
	}
	buf = buf[:size]
	b := buf[encap.Headroom:]
	putIPv4(b, 0, len(b), protoICMP, dst, workload)
	m := header.ICMPv4(b[hl:])
	m.SetType(header.ICMPv4EchoReply)
	m.SetCode(0)
	m.SetIdent(ident)
	m.SetSequence(seq)
	copy(m.Payload(), data)
	m.SetChecksum(^checksum.Checksum(m, 0))
	return buf
}

// icmpError builds an ICMP error (destination unreachable, time exceeded)
// from `from` to the sender of the quoted packet. quote is the offending
// packet's IP header and at least the first 8 bytes of its payload; it is
// cut to that. info is the next-hop MTU of "fragmentation needed" (type 3
// code 4), else 0. It returns nil where RFC 1122 forbids an error: for a
// non-first fragment, for an ICMP error, for a source that is not unicast.
// The packet is at encap.Headroom in the buffer returned, as Config.Out
// takes it.
func icmpError(typ header.ICMPv4Type, code header.ICMPv4Code, info uint16, from netip.Addr, quote []byte) []byte {
	if len(quote) < header.IPv4MinimumSize {
		return nil
	}
	orig := header.IPv4(quote)
	hl := int(orig.HeaderLength())
	if orig[0]>>4 != 4 || hl < header.IPv4MinimumSize || len(quote) < hl || orig.FragmentOffset() != 0 {
		return nil
	}
	to := netip.AddrFrom4(orig.SourceAddress().As4())
	if !to.IsGlobalUnicast() {
		return nil
	}
	quote = quote[:min(len(quote), hl+quotedPayload)]
	if orig.TransportProtocol() == header.ICMPv4ProtocolNumber {
		if len(quote) <= hl || header.ICMPv4(quote[hl:]).Type() != header.ICMPv4Echo {
			return nil // only echo requests are ours to answer about
		}
	}
	const headers = header.IPv4MinimumSize + header.ICMPv4MinimumSize
	buf := make([]byte, encap.Headroom+headers+len(quote))
	b := buf[encap.Headroom:]
	putIPv4(b, errorTOS, len(b), protoICMP, from, to)
	m := header.ICMPv4(b[header.IPv4MinimumSize:])
	m.SetType(typ)
	m.SetCode(code)
	if typ == header.ICMPv4DstUnreachable && code == header.ICMPv4FragmentationNeeded {
		m.SetMTU(info)
	}
	copy(b[headers:], quote)
	m.SetChecksum(^checksum.Checksum(m, 0))
	return buf
}

// udpQuote is what an ICMP error about one of a UDP flow's datagrams
// quotes: the datagram's IPv4 and UDP headers as the workload sent them
// (its payload of n bytes not included). The workload's stack matches the
// error to its socket by these addresses and ports.
func udpQuote(inside, dest netip.AddrPort, n int) []byte {
	const hl = header.IPv4MinimumSize
	b := make([]byte, hl+header.UDPMinimumSize)
	putIPv4(b, 0, hl+header.UDPMinimumSize+n, protoUDP, inside.Addr(), dest.Addr())
	u := header.UDP(b[hl:])
	u.SetSourcePort(inside.Port())
	u.SetDestinationPort(dest.Port())
	u.SetLength(uint16(header.UDPMinimumSize + n))
	return b
}

// echoQuote is what an ICMP error about a workload's echo request quotes:
// its IPv4 header and the echo header with the workload's identifier.
func echoQuote(src, dst netip.Addr, ident, seq uint16, n int) []byte {
	const hl = header.IPv4MinimumSize
	b := make([]byte, hl+header.ICMPv4MinimumSize)
	putIPv4(b, 0, len(b)+n, protoICMP, src, dst)
	m := header.ICMPv4(b[hl:])
	m.SetType(header.ICMPv4Echo)
	m.SetIdent(ident)
	m.SetSequence(seq)
	return b
}

// echoRequestMsg is an ICMP echo request message (no IP header) with its
// checksum, for a host socket. A ping socket replaces the identifier with
// its own and recomputes the checksum; a raw socket sends it as it is.
func echoRequestMsg(ident, seq uint16, data []byte) []byte {
	m := header.ICMPv4(make([]byte, header.ICMPv4MinimumSize+len(data)))
	m.SetType(header.ICMPv4Echo)
	m.SetIdent(ident)
	m.SetSequence(seq)
	copy(m.Payload(), data)
	m.SetChecksum(^checksum.Checksum(m, 0))
	return m
}
