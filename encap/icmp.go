package encap

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// fragNeededQuote is how much of the offending packet's payload the message
// quotes after its header: the 64 bits RFC 792 asks for, enough for the
// sender to find its transport flow.
const fragNeededQuote = 8

// MaxFragNeededLen is the largest message FragNeeded writes: IPv4 and ICMP
// headers, then an IPv4 header with the most options and 8 bytes of payload.
const MaxFragNeededLen = header.IPv4MinimumSize + header.ICMPv4MinimumSize + header.IPv4MaximumHeaderSize + fragNeededQuote

// icmpTOS is the TOS of the messages the router originates: precedence 6,
// internetwork control, as Linux gives its ICMP errors.
const icmpTOS = 0xc0

// FragNeeded writes into dst the ICMP "fragmentation needed" message (type 3,
// code 4, RFC 792 and RFC 1191) answering tooBig, a packet with DF set that
// does not fit a next hop of mtu bytes, and returns it, dst[:length]. The
// message goes from the router address from to the source of tooBig, TTL 64,
// and quotes tooBig's IP header and first 8 bytes of payload; both checksums
// are set. dst needs MaxFragNeededLen bytes at most (28 plus the quote). dst
// may overlap tooBig: with dst starting 28 bytes before tooBig (room the
// Headroom gives), the quote stays where it is. Whether the packet may not
// be fragmented (DF) is the caller's decision; FragNeeded does not look.
//
// It returns nil, and nothing should be sent, when tooBig is not an IPv4
// packet, when RFC 1812 (section 4.3.2.7) forbids an ICMP error for it — a
// non-initial fragment, an ICMP error message, a source that is unspecified,
// loopback, multicast or broadcast — when mtu is outside 0..65535, or when dst
// is too short.
func FragNeeded(dst []byte, tooBig []byte, from [4]byte, mtu int) []byte {
	return destUnreachable(dst, tooBig, from, header.ICMPv4FragmentationNeeded, mtu)
}

// NetUnreachable writes into dst the ICMP "network unreachable" message
// (type 3, code 0) answering orig, a packet for an address no node has, and
// returns it; otherwise it is FragNeeded with no MTU: same source, quote,
// checksums, and the same cases where nothing may be sent (nil).
func NetUnreachable(dst []byte, orig []byte, from [4]byte) []byte {
	return destUnreachable(dst, orig, from, header.ICMPv4NetUnreachable, 0)
}

// Prohibited writes into dst the ICMP "communication administratively
// prohibited" message (type 3, code 13, RFC 1812) answering orig, a packet
// refused by policy, such as a NAT flow over its limit; otherwise it is
// NetUnreachable.
func Prohibited(dst []byte, orig []byte, from [4]byte) []byte {
	return destUnreachable(dst, orig, from, header.ICMPv4AdminProhibited, 0)
}

// destUnreachable builds an ICMP destination unreachable of the given code;
// mtu is the next-hop MTU field, meaningful for fragmentation needed only.
func destUnreachable(dst []byte, tooBig []byte, from [4]byte, code header.ICMPv4Code, mtu int) []byte {
	if mtu < 0 || mtu > 0xffff || len(tooBig) < header.IPv4MinimumSize {
		return nil
	}
	orig := header.IPv4(tooBig)
	hl := int(orig.HeaderLength())
	if tooBig[0]>>4 != header.IPv4Version || hl < header.IPv4MinimumSize || hl > len(tooBig) {
		return nil
	}
	if orig.FragmentOffset() != 0 {
		return nil
	}
	origSrc := [4]byte(tooBig[srcAddrOffset : srcAddrOffset+4])
	if !unicastSource(origSrc) {
		return nil
	}
	available := len(tooBig)
	if totalLen := int(orig.TotalLength()); totalLen >= hl && totalLen < available {
		available = totalLen
	}
	if orig.Protocol() == ipProtoICMP {
		// Without its type we cannot tell it is not an error message, so
		// stay silent as for one.
		if available < hl+1 || isICMPError(header.ICMPv4Type(tooBig[hl])) {
			return nil
		}
	}
	quoteLen := hl + min(fragNeededQuote, available-hl)
	const headers = header.IPv4MinimumSize + header.ICMPv4MinimumSize
	total := headers + quoteLen
	if len(dst) < total {
		return nil
	}
	// Quote first: everything needed from tooBig has been read above, so
	// the headers may then overwrite it if the buffers overlap.
	copy(dst[headers:total], tooBig[:quoteLen])

	ip := header.IPv4(dst[:header.IPv4MinimumSize])
	ip[0] = ipv4VersionIHL5
	ip.SetTOS(icmpTOS, 0)
	ip.SetTotalLength(uint16(total))
	// Never fragmented (at most 96 bytes), so DF with ID 0 (RFC 6864).
	ip.SetID(0)
	ip.SetFlagsFragmentOffset(header.IPv4FlagDontFragment, 0)
	ip.SetTTL(OuterTTL)
	ip[protocolOffset] = ipProtoICMP
	copy(ip[srcAddrOffset:srcAddrOffset+4], from[:])
	copy(ip[dstAddrOffset:dstAddrOffset+4], origSrc[:])
	ip.SetChecksum(0)
	ip.SetChecksum(^ipv4HeaderSum(ip))

	icmp := header.ICMPv4(dst[header.IPv4MinimumSize:total])
	icmp.SetType(header.ICMPv4DstUnreachable)
	icmp.SetCode(code)
	binary.BigEndian.PutUint16(icmp[4:], 0) // unused
	icmp.SetMTU(uint16(mtu))
	icmp.SetChecksum(0)
	icmp.SetChecksum(^checksum.Checksum(icmp, 0))
	return dst[:total]
}

// unicastSource reports whether an ICMP error may be sent to addr: not
// 0.0.0.0/8, not loopback, not multicast, broadcast or reserved (224/3).
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
