package encap

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// ICMPErrorQuote is how much of the offending packet's payload an ICMP
// error quotes after its header: the 64 bits RFC 792 asks for, enough for the
// sender to find its transport flow.
const ICMPErrorQuote = 8

// MaxICMPErrorLen is the largest message ICMPError (and so FragNeeded and
// NetUnreachable) writes: IPv4 and ICMP headers, then an IPv4 header with
// the most options and 8 bytes of payload.
const MaxICMPErrorLen = header.IPv4MinimumSize + header.ICMPv4MinimumSize + header.IPv4MaximumHeaderSize + ICMPErrorQuote

// icmpTOS is the TOS of the ICMP errors overlayd originates: precedence 6,
// internetwork control, as Linux gives its ICMP errors.
const icmpTOS = 0xc0

// ICMPError writes into dst the ICMP error of type typ and code answering
// orig, an IPv4 packet, and returns it, dst[:length]. The message goes from
// the address from to the source of orig, TTL 64, TOS 0xc0, DF, and quotes
// orig's IP header and first 8 bytes of payload (no more than orig's total
// length holds); both checksums are set. mtu is the next-hop MTU, written
// for "fragmentation needed" (type 3 code 4) only; the other types leave
// that word zero. dst needs MaxICMPErrorLen bytes at most (28 plus the
// quote). dst may overlap orig: with dst starting 28 bytes before orig (room
// the Headroom gives), the quote stays where it is.
//
// It returns nil, and nothing should be sent, when orig is not an IPv4
// packet, when RFC 1812 section 4.3.2.7 forbids an ICMP error about it — a
// non-initial fragment, an ICMP error message, a source that names no
// single host (see unicastSource) — when mtu is outside 0..65535, or when
// dst is too short. This is the one place overlayd decides whom it may
// answer: the data path's unreachable and too-big messages and the NAT's
// relayed errors all come from here.
func ICMPError(dst, orig []byte, from [4]byte, typ header.ICMPv4Type, code header.ICMPv4Code, mtu int) []byte {
	if mtu < 0 || mtu > 0xffff || len(orig) < header.IPv4MinimumSize {
		return nil
	}
	ip := header.IPv4(orig)
	hl := int(ip.HeaderLength())
	if orig[0]>>4 != header.IPv4Version || hl < header.IPv4MinimumSize || hl > len(orig) {
		return nil
	}
	if ip.FragmentOffset() != 0 {
		return nil
	}
	origSrc := IPv4Source(orig)
	if !unicastSource(origSrc) {
		return nil
	}
	available := len(orig)
	if totalLen := int(ip.TotalLength()); totalLen >= hl && totalLen < available {
		available = totalLen
	}
	if ip.Protocol() == ipProtoICMP {
		// Without its type we cannot tell it is not an error message, so
		// stay silent as for one.
		if available < hl+1 || isICMPError(header.ICMPv4Type(orig[hl])) {
			return nil
		}
	}
	quoteLen := hl + min(ICMPErrorQuote, available-hl)
	const headers = header.IPv4MinimumSize + header.ICMPv4MinimumSize
	total := headers + quoteLen
	if len(dst) < total {
		return nil
	}
	// Quote first: everything needed from orig has been read above, so the
	// headers may then overwrite it if the buffers overlap.
	copy(dst[headers:total], orig[:quoteLen])

	out := header.IPv4(dst[:header.IPv4MinimumSize])
	out[0] = ipv4VersionIHL5
	out.SetTOS(icmpTOS, 0)
	out.SetTotalLength(uint16(total))
	// Never fragmented (at most 96 bytes), so DF with ID 0 (RFC 6864).
	out.SetID(0)
	out.SetFlagsFragmentOffset(header.IPv4FlagDontFragment, 0)
	out.SetTTL(OuterTTL)
	out[protocolOffset] = ipProtoICMP
	copy(out[srcAddrOffset:srcAddrOffset+4], from[:])
	copy(out[dstAddrOffset:dstAddrOffset+4], origSrc[:])
	out.SetChecksum(0)
	out.SetChecksum(^ipv4HeaderSum(out))

	icmp := header.ICMPv4(dst[header.IPv4MinimumSize:total])
	icmp.SetType(typ)
	icmp.SetCode(code)
	binary.BigEndian.PutUint32(icmp[4:], 0) // unused, or unused and the MTU
	if typ == header.ICMPv4DstUnreachable && code == header.ICMPv4FragmentationNeeded {
		icmp.SetMTU(uint16(mtu))
	}
	icmp.SetChecksum(0)
	icmp.SetChecksum(^checksum.Checksum(icmp, 0))
	return dst[:total]
}

// FragNeeded writes into dst the ICMP "fragmentation needed" message (type 3,
// code 4, RFC 792 and RFC 1191) answering tooBig, a packet with DF set that
// does not fit a next hop of mtu bytes, and returns it; see ICMPError for
// the message, the room dst needs and when it returns nil. Whether the
// packet may not be fragmented (DF) is the caller's decision; FragNeeded
// does not look.
func FragNeeded(dst []byte, tooBig []byte, from [4]byte, mtu int) []byte {
	return ICMPError(dst, tooBig, from, header.ICMPv4DstUnreachable, header.ICMPv4FragmentationNeeded, mtu)
}

// NetUnreachable writes into dst the ICMP "network unreachable" message
// (type 3, code 0) answering orig, a packet for an address no node has, and
// returns it; see ICMPError.
func NetUnreachable(dst []byte, orig []byte, from [4]byte) []byte {
	return ICMPError(dst, orig, from, header.ICMPv4DstUnreachable, header.ICMPv4NetUnreachable, 0)
}

// unicastSource reports whether addr, the source of a packet, names a single
// host that may get an ICMP error. RFC 1812 section 4.3.2.7 rules out a
// source that is zero ("this network", all of 0.0.0.0/8), loopback
// (127.0.0.0/8), multicast (224.0.0.0/4), class E (240.0.0.0/4) or the
// limited broadcast (255.255.255.255, inside class E). Link-local
// 169.254.0.0/16 is answered: such an address names one host on its link,
// and the error goes back into this node's kernel over the link the packet
// came in on (Calico workloads even route through 169.254.1.1); staying
// silent would black-hole path MTU discovery for it. A subnet's directed
// broadcast cannot be told from a host without knowing the subnet, which
// the builder does not.
func unicastSource(addr [4]byte) bool {
	return addr[0] != 0 && addr[0] != 127 && addr[0] < 224
}

// isICMPError reports whether an ICMP type is an error message, which never
// gets an ICMP error in reply (RFC 1122 section 3.2.2).
func isICMPError(t header.ICMPv4Type) bool {
	switch t {
	case header.ICMPv4DstUnreachable, header.ICMPv4SrcQuench, header.ICMPv4Redirect,
		header.ICMPv4TimeExceeded, header.ICMPv4ParamProblem:
		return true
	}
	return false
}
