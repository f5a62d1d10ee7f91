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

// OuterTOS is the TOS byte of the outer IPv4 header that carries inner, an
// IPv4 packet of at least 20 bytes (see IsIPv4), through either tunnel: the
// inner TOS byte, DSCP and ECN alike. That is RFC 6040's normal mode (section
// 4.1: the ECN field is copied, CE included), so congestion marks made on the
// underlay reach the inner packet at decapsulation (decapECN), and the
// uniform model of RFC 2983 for the DSCP, so the underlay treats a tunnelled
// packet as it would the bare one. IPIP writes it into the header itself;
// for VXLAN, whose outer header the kernel writes, the caller hands it to
// the UDP socket with the payload (conn.Message.TOS).
func OuterTOS(inner []byte) uint8 {
	return inner[tosOffset]
}

// decapECN applies the ECN field of an outer header (outerTOS) to the inner
// IPv4 packet at decapsulation, following RFC 6040 section 4.2 (the inner
// checksum is updated incrementally, RFC 1624). It is the one rule both
// tunnels decapsulate by (DecapIPIP, DecapVXLANPayload):
//
//	inner \ outer   Not-ECT   ECT(0)    ECT(1)    CE
//	Not-ECT         Not-ECT   Not-ECT   Not-ECT   drop
//	ECT(0)          ECT(0)    ECT(0)    ECT(1)    CE
//	ECT(1)          ECT(1)    ECT(1)    ECT(1)    CE
//	CE              CE        CE        CE        CE
//
// It returns ECNNotECT for the drop, InnerTruncated if inner cannot hold an
// IPv4 header, and NoDrop otherwise.
func decapECN(outerTOS uint8, inner []byte) DropReason {
	if len(inner) < header.IPv4MinimumSize {
		return InnerTruncated
	}
	outerECN := outerTOS & ECNMask
	if outerECN == ecnNotECT {
		return NoDrop // the common case: nothing to pass on
	}
	innerECN := inner[tosOffset] & ECNMask
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
	inner[tosOffset] = inner[tosOffset]&^ECNMask | next
	ip.SetChecksum(ChecksumUpdate(ip.Checksum(), old, binary.BigEndian.Uint16(inner[0:])))
	return NoDrop
}
