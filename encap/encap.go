package encap

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Sizes of what encapsulation puts in front of a packet.
const (
	// IPIPOverhead is the outer IPv4 header of IP-in-IP.
	IPIPOverhead = header.IPv4MinimumSize
	// VXLANPayloadLen is the VXLAN header and the inner Ethernet header: what
	// goes in front of the packet when the kernel writes the outer IPv4 and
	// UDP headers (a UDP socket).
	VXLANPayloadLen = VXLANHeaderSize + header.EthernetMinimumSize
	// OuterIPv4UDPLen is the outer IPv4 and UDP headers the kernel writes
	// in front of a VXLAN payload sent through a UDP socket, and takes off
	// one it receives.
	OuterIPv4UDPLen = header.IPv4MinimumSize + header.UDPMinimumSize
	// VXLANOverhead is the whole VXLAN encapsulation on the wire: outer
	// IPv4, UDP, VXLAN and inner Ethernet.
	VXLANOverhead = OuterIPv4UDPLen + VXLANPayloadLen
)

// OuterTTL is the TTL of every IPv4 header overlayd writes.
const OuterTTL = 64

const (
	ipProtoIPIP = 4
	ipProtoTCP  = uint8(header.TCPProtocolNumber)
	ipProtoUDP  = uint8(header.UDPProtocolNumber)
	ipProtoICMP = uint8(header.ICMPv4ProtocolNumber)

	ethTypeOffset = 12
)

// Config is what an Encapsulator writes into every outer header.
type Config struct {
	// Local is this node's underlay address, the outer source.
	Local [4]byte
	// VTEPMAC is this node's VTEP MAC, the inner Ethernet source of VXLAN.
	VTEPMAC [6]byte
	// VNI is the VXLAN network identifier, at most MaxVNI.
	VNI uint32
}

// Encapsulator writes outer headers in front of packets. It holds the IP ID
// counter for outer headers without DF, so each packet loop owns its own and
// no state is shared between loops: an Encapsulator must not be used by two
// goroutines at once.
type Encapsulator struct {
	cfg Config
	// fixedSum is the one's-complement sum of the outer IPv4 fields that
	// never change: version and IHL, TTL, and the source address.
	fixedSum uint32
	nextID   uint16
}

// NewEncapsulator returns an Encapsulator writing cfg into outer headers.
func NewEncapsulator(cfg Config) (*Encapsulator, error) {
	if cfg.VNI > MaxVNI {
		return nil, fmt.Errorf("encap: VNI %d does not fit in 24 bits (max %d)", cfg.VNI, MaxVNI)
	}
	// A random start keeps the IDs of different runs and loops apart and
	// unpredictable (RFC 6864 section 4.2 warns about predictable IDs).
	fixedSum := uint32(ipv4VersionIHL5)<<8 + uint32(OuterTTL)<<8 +
		(uint32(cfg.Local[0])<<8 | uint32(cfg.Local[1])) + (uint32(cfg.Local[2])<<8 | uint32(cfg.Local[3]))
	return &Encapsulator{cfg: cfg, fixedSum: fixedSum, nextID: uint16(rand.Uint32())}, nil
}

// IPIP encapsulates the IPv4 packet at buf[Headroom:Headroom+n] in an outer
// IPv4 header to dst (protocol 4) written into the headroom, and returns the
// outer packet, buf[Headroom-IPIPOverhead:Headroom+n]. The outer header has
// TTL 64, the inner DSCP and ECN (RFC 6040 normal mode), the inner DF, and a
// correct checksum. It returns nil, writing nothing, if the packet is not
// IPv4, is shorter than an IPv4 header, does not fit in buf, or would make an
// outer packet over 65535 bytes.
func (e *Encapsulator) IPIP(buf []byte, n int, dst [4]byte) []byte {
	inner := innerAt(buf, n, IPIPOverhead)
	if inner == nil {
		return nil
	}
	pkt := buf[Headroom-IPIPOverhead : Headroom+n]
	e.putOuterIPv4(pkt[:IPIPOverhead], inner, ipProtoIPIP, dst, len(pkt))
	return pkt
}

// VXLANPayload writes the VXLAN header and the inner Ethernet header (to
// dstMAC) in front of the IPv4 packet at buf[Headroom:Headroom+n] and returns
// buf[Headroom-VXLANPayloadLen:Headroom+n]: the payload to send through a UDP
// socket, whose kernel writes the outer IPv4 and UDP headers: the socket
// picks the source port (conn spreads them by FlowHash) and sets DF by its
// path MTU discovery. It returns nil in the cases IPIP does.
func (e *Encapsulator) VXLANPayload(buf []byte, n int, dstMAC [6]byte) []byte {
	if innerAt(buf, n, VXLANPayloadLen) == nil {
		return nil
	}
	pkt := buf[Headroom-VXLANPayloadLen : Headroom+n]
	e.putVXLANPayload(pkt[:VXLANPayloadLen], dstMAC)
	return pkt
}

// innerAt returns the packet at buf[Headroom:Headroom+n] if it can be
// encapsulated with overhead bytes in front, or nil.
func innerAt(buf []byte, n, overhead int) []byte {
	if n < header.IPv4MinimumSize || n > len(buf)-Headroom || n > 0xffff-overhead {
		return nil
	}
	inner := buf[Headroom : Headroom+n]
	if inner[0]>>4 != header.IPv4Version {
		return nil
	}
	return inner
}

// putOuterIPv4 writes a 20-byte outer IPv4 header into h for the inner packet
// inner, through gVisor's header view. The checksum is summed from the field
// values rather than read back from h: loading 32-bit words just written byte
// by byte stalls store-to-load forwarding, which made the header cost 2.5
// times as much (BenchmarkOuterHeader). Three wide stores by hand save
// another nanosecond; not worth leaving the header views for.
func (e *Encapsulator) putOuterIPv4(h header.IPv4, inner header.IPv4, proto uint8, dst [4]byte, totalLen int) {
	_ = h[header.IPv4MinimumSize-1]
	tos := OuterTOS(inner)
	// DF follows the inner packet so path MTU discovery works end to end. A
	// DF packet is never fragmented, so its ID may be 0 (RFC 6864); others
	// need IDs that differ for reassembly.
	flags := inner.Flags() & header.IPv4FlagDontFragment
	var id uint16
	if flags == 0 {
		e.nextID++
		id = e.nextID
	}
	h[0] = ipv4VersionIHL5
	h.SetTOS(tos, 0)
	h.SetTotalLength(uint16(totalLen))
	h.SetID(id)
	h.SetFlagsFragmentOffset(flags, 0)
	h.SetTTL(OuterTTL)
	h[protocolOffset] = proto
	copy(h[srcAddrOffset:srcAddrOffset+4], e.cfg.Local[:])
	copy(h[dstAddrOffset:dstAddrOffset+4], dst[:])

	// Go gives | the precedence of +, hence the parentheses.
	sum := e.fixedSum + // version, IHL, TTL and source address
		uint32(tos) + uint32(totalLen) + uint32(id) + uint32(flags)<<13 + uint32(proto) +
		(uint32(dst[0])<<8 | uint32(dst[1])) + (uint32(dst[2])<<8 | uint32(dst[3]))
	h.SetChecksum(^foldSum(sum))
}

// putVXLANPayload writes the VXLAN header and the inner Ethernet header into
// b, which is VXLANPayloadLen bytes long. gVisor's Ethernet view has no field
// setters (only Encode from a struct of strings), so the addresses are copied
// in directly.
func (e *Encapsulator) putVXLANPayload(b []byte, dstMAC [6]byte) {
	_ = b[VXLANPayloadLen-1]
	VXLAN(b[:VXLANHeaderSize]).Encode(e.cfg.VNI)
	eth := b[VXLANHeaderSize:VXLANPayloadLen]
	copy(eth[0:header.EthernetAddressSize], dstMAC[:])
	copy(eth[header.EthernetAddressSize:2*header.EthernetAddressSize], e.cfg.VTEPMAC[:])
	binary.BigEndian.PutUint16(eth[ethTypeOffset:], uint16(header.IPv4ProtocolNumber))
}

// FlowHash is a hash of an inner IPv4 packet's flow: its addresses,
// protocol, and the ports of TCP and UDP packets that are not fragments.
// Packets too short to hold an IPv4 header hash to 0.
func FlowHash(inner []byte) uint32 {
	if len(inner) < header.IPv4MinimumSize {
		return 0
	}
	addrs := binary.BigEndian.Uint64(inner[srcAddrOffset:])
	proto := inner[protocolOffset]
	var ports uint32
	// Only the first fragment holds the ports, so fragments hash without
	// them and all fragments of a datagram take the same path.
	if (proto == ipProtoTCP || proto == ipProtoUDP) &&
		binary.BigEndian.Uint16(inner[flagsOffset:])&ipv4FragmentMask == 0 {
		ihl := int(inner[0]&0x0f) * 4
		if ihl >= header.IPv4MinimumSize && len(inner) >= ihl+4 {
			ports = binary.BigEndian.Uint32(inner[ihl:])
		}
	}
	return flowHash(addrs, uint64(proto)<<32|uint64(ports))
}

// flowHash mixes a flow's addresses and protocol+ports into 32 bits: a
// multiply to combine the halves, then the SplitMix64 finalizer so that a
// change in any input bit reaches the high bits.
func flowHash(addrs, protoPorts uint64) uint32 {
	h := addrs*0x9e3779b97f4a7c15 ^ protoPorts
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return uint32(h >> 32)
}
