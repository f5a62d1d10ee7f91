package nat

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/overlayd/overlayd/encap"
)

// The headers the NAT writes itself (its ICMP errors come from
// encap.ICMPError): TTL 64 as a host's.
const (
	replyTTL = 64
	// quotedPayload is how much past the IP header an ICMP error quotes:
	// the 64 bits RFC 792 asks for, which hold the ports (and TCP's
	// sequence number) the receiver matches on.
	quotedPayload = encap.ICMPErrorQuote
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
	// buf may hold the echo reply the host socket read, in place: its
	// checksum must not count in the new one.
	m.SetChecksum(0)
	m.SetChecksum(^checksum.Checksum(m, 0))
	return buf
}

// icmpError builds an ICMP error (destination unreachable, time exceeded)
// from `from` to the sender of the quoted packet with encap.ICMPError, the
// one builder and the one rule for whom an error may answer: quote is the
// offending packet's IP header and at least the first 8 bytes of its
// payload. info is the next-hop MTU of "fragmentation needed" (type 3 code
// 4), ignored otherwise. It returns nil where encap.ICMPError does (RFC
// 1812: a non-first fragment, an ICMP error, a source that names no single
// host). The packet is at encap.Headroom in the buffer returned, as
// Config.Out takes it.
func icmpError(typ header.ICMPv4Type, code header.ICMPv4Code, info uint16, from netip.Addr, quote []byte) []byte {
	buf := make([]byte, encap.Headroom+encap.MaxICMPErrorLen)
	msg := encap.ICMPError(buf[encap.Headroom:], quote, from.As4(), typ, code, int(info))
	if msg == nil {
		return nil
	}
	return buf[:encap.Headroom+len(msg)]
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
	// buf may hold the echo reply the host socket read, in place: its
	// checksum must not count in the new one.
	m.SetChecksum(0)
	m.SetChecksum(^checksum.Checksum(m, 0))
	return m
}

// fragHeader turns the copy of a packet's IPv4 header at the front of f,
// followed by a piece of its payload, into the header of that fragment:
// off is where the piece starts in the payload (a multiple of 8), more
// whether others follow.
func fragHeader(f []byte, off int, more bool) {
	ip := header.IPv4(f)
	ip.SetTotalLength(uint16(len(f)))
	var flags uint8
	if more {
		flags = header.IPv4FlagMoreFragments
	}
	ip.SetFlagsFragmentOffset(flags, uint16(off))
	ip.SetChecksum(0)
	ip.SetChecksum(^ip.CalculateChecksum())
}
