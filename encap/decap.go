package encap

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// DecapIPIP takes an IP-in-IP packet as a raw IPPROTO_IPIP socket delivers
// it, outer IPv4 header included, and returns the inner IPv4 packet (a
// sub-slice of outer, trimmed to its total length) and the outer source
// address, which the caller checks is a known node. The outer ECN is applied
// to the inner packet per RFC 6040, which may rewrite the inner TOS byte and
// checksum in place. A packet that is refused gets a reason other than NoDrop
// and a nil inner slice.
func DecapIPIP(outer []byte) (inner []byte, outerSrc [4]byte, reason DropReason) {
	payload, reason := outerIPv4(outer, ipProtoIPIP)
	if reason != NoDrop {
		return nil, outerSrc, reason
	}
	inner, reason = innerIPv4(payload)
	if reason != NoDrop {
		return nil, outerSrc, reason
	}
	if reason = decapECN(outer[tosOffset], inner); reason != NoDrop {
		return nil, outerSrc, reason
	}
	return inner, [4]byte(outer[srcAddrOffset : srcAddrOffset+4]), NoDrop
}

// DecapVXLANPayload takes a VXLAN packet as a UDP socket delivers it, from the
// VXLAN header on, with outerTOS, the TOS byte of the outer IPv4 header the
// socket took off (conn reads it with IP_RECVTOS), and checks the VXLAN
// header, the VNI and the inner packet. An accepted packet gives either
// inner, the IPv4 packet to forward (trimmed to its total length), or
// arpFrame, an Ethernet frame carrying ARP, which is not a drop but for the
// caller to answer with ARPReply; both alias payload. The outer ECN is
// applied to the inner packet per RFC 6040, as for IP-in-IP: the inner TOS
// byte and checksum may be rewritten in place, and an outer CE on a Not-ECT
// inner packet is dropped (ECNNotECT). The outer source is the socket
// address, checked by the caller. The UDP checksum was the socket's
// business: RFC 7348 senders set it to zero, and the inner packet carries
// its own checksums.
//
// The results are separate values rather than a struct on purpose: Go keeps
// structs over 32 bytes in memory, and copying one out of the returned
// registers stalled store forwarding and doubled the cost of decapsulation.
func DecapVXLANPayload(payload []byte, vni uint32, outerTOS uint8) (inner, arpFrame []byte, reason DropReason) {
	if len(payload) < VXLANPayloadLen {
		return nil, nil, Truncated
	}
	v := VXLAN(payload)
	if !v.HasVNI() {
		return nil, nil, MissingIFlag
	}
	if v.VNI() != vni {
		return nil, nil, WrongVNI
	}
	frame := v.Payload()
	switch header.Ethernet(frame).Type() {
	case header.IPv4ProtocolNumber:
		if inner, reason = innerIPv4(frame[header.EthernetMinimumSize:]); reason != NoDrop {
			return nil, nil, reason
		}
		if reason = decapECN(outerTOS, inner); reason != NoDrop {
			return nil, nil, reason
		}
		return inner, nil, NoDrop
	case header.ARPProtocolNumber:
		// ECN is about IP packets; ARP carries no mark to pass on.
		return nil, frame, NoDrop
	default:
		return nil, nil, BadEtherType
	}
}

// outerIPv4 checks an outer IPv4 header for the tunnel protocol proto and
// returns its payload, trimmed to the total length (link-layer padding beyond
// it is not an error).
func outerIPv4(pkt []byte, proto uint8) ([]byte, DropReason) {
	if len(pkt) < header.IPv4MinimumSize {
		return nil, Truncated
	}
	ip := header.IPv4(pkt)
	if pkt[0]>>4 != header.IPv4Version {
		return nil, BadVersion
	}
	switch hl := ip.HeaderLength(); {
	case hl < header.IPv4MinimumSize:
		return nil, BadIHL
	case hl > header.IPv4MinimumSize:
		return nil, OuterOptions
	}
	totalLen := int(ip.TotalLength())
	if totalLen < header.IPv4MinimumSize || totalLen > len(pkt) {
		return nil, BadLength
	}
	// A raw socket only delivers headers whose checksum the kernel
	// verified, but a packet can reach us other ways (a TUN, tests) and the
	// check costs about 2 ns (BenchmarkOuterChecksumVerify), so it stays.
	if ipv4HeaderSum(pkt) != 0xffff {
		return nil, BadChecksum
	}
	if binary.BigEndian.Uint16(pkt[flagsOffset:])&ipv4FragmentMask != 0 {
		return nil, OuterFragment
	}
	if ip.Protocol() != proto {
		return nil, WrongProtocol
	}
	return pkt[header.IPv4MinimumSize:totalLen], NoDrop
}

// innerIPv4 checks that b starts with a well-formed IPv4 packet (version,
// header length, total length) and returns it trimmed to its total length.
// The inner header checksum is left to the kernel that receives the packet
// from the TUN device.
func innerIPv4(b []byte) ([]byte, DropReason) {
	if len(b) < header.IPv4MinimumSize {
		return nil, InnerTruncated
	}
	ip := header.IPv4(b)
	if b[0]>>4 != header.IPv4Version {
		return nil, InnerBadVersion
	}
	hl := int(ip.HeaderLength())
	if hl < header.IPv4MinimumSize {
		return nil, InnerBadIHL
	}
	totalLen := int(ip.TotalLength())
	if totalLen < hl || totalLen > len(b) {
		return nil, InnerBadLength
	}
	return b[:totalLen], NoDrop
}
