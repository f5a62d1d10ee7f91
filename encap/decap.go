package encap

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// ECN codepoints, the low two bits of the IPv4 TOS byte (RFC 3168); ECNMask
// covers them, and the DSCP is the rest of the byte.
const (
	ECNMask   = 0x03
	ecnNotECT = 0x00
	ecnECT1   = 0x01
	ecnECT0   = 0x02
	ecnCE     = 0x03
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
	if reason = DecapECN(outer[1], inner); reason != NoDrop {
		return nil, outerSrc, reason
	}
	return inner, [4]byte(outer[srcAddrOffset : srcAddrOffset+4]), NoDrop
}

// DecapVXLANPayload takes a VXLAN packet as a UDP socket delivers it, from the
// VXLAN header on, and checks the VXLAN header, the VNI and the inner packet.
// An accepted packet gives either inner, the IPv4 packet to forward (trimmed
// to its total length), or arpFrame, an Ethernet frame carrying ARP, which
// is not a drop but for the caller to answer with ARPReply; both alias
// payload. The outer source is the socket address, checked by the caller;
// the outer ECN the caller may read with IP_RECVTOS and apply with
// DecapECN. The UDP checksum was the socket's business: RFC 7348 senders
// set it to zero, and the inner packet carries its own checksums.
//
// The results are separate values rather than a struct on purpose: Go keeps
// structs over 32 bytes in memory, and copying one out of the returned
// registers stalled store forwarding and doubled the cost of decapsulation.
func DecapVXLANPayload(payload []byte, vni uint32) (inner, arpFrame []byte, reason DropReason) {
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
		inner, reason = innerIPv4(frame[header.EthernetMinimumSize:])
		return inner, nil, reason
	case header.ARPProtocolNumber:
		return nil, frame, NoDrop
	default:
		return nil, nil, BadEtherType
	}
}

// DecapECN applies the ECN field of an outer header (outerTOS) to the inner
// IPv4 packet at decapsulation, following RFC 6040 section 4.2 (the inner
// checksum is updated incrementally, RFC 1624):
//
//	inner \ outer   Not-ECT   ECT(0)    ECT(1)    CE
//	Not-ECT         Not-ECT   Not-ECT   Not-ECT   drop
//	ECT(0)          ECT(0)    ECT(0)    ECT(1)    CE
//	ECT(1)          ECT(1)    ECT(1)    ECT(1)    CE
//	CE              CE        CE        CE        CE
//
// It returns ECNNotECT for the drop, InnerTruncated if inner cannot hold an
// IPv4 header, and NoDrop otherwise.
func DecapECN(outerTOS uint8, inner []byte) DropReason {
	if len(inner) < header.IPv4MinimumSize {
		return InnerTruncated
	}
	outerECN := outerTOS & ECNMask
	if outerECN == ecnNotECT {
		return NoDrop // the common case: nothing to pass on
	}
	innerECN := inner[1] & ECNMask
	var next uint8
	switch {
	case innerECN == ecnNotECT:
		if outerECN == ecnCE {
			return ECNNotECT
		}
		return NoDrop
	case outerECN == ecnCE:
		next = ecnCE
	case outerECN == ecnECT1 && innerECN == ecnECT0:
		next = ecnECT1
	default:
		return NoDrop
	}
	if next == innerECN {
		return NoDrop
	}
	ip := header.IPv4(inner)
	// The TOS byte is the low half of the header's first 16-bit word.
	old := binary.BigEndian.Uint16(inner[0:])
	inner[1] = inner[1]&^ECNMask | next
	ip.SetChecksum(ChecksumUpdate(ip.Checksum(), old, binary.BigEndian.Uint16(inner[0:])))
	return NoDrop
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
