package encap

import "gvisor.dev/gvisor/pkg/tcpip/header"

// Offsets of the IPv4 header fields read and written here that gVisor's
// header package keeps unexported, and the bits of its flags byte.
const (
	tosOffset      = 1
	flagsOffset    = 6
	protocolOffset = 9
	srcAddrOffset  = 12
	dstAddrOffset  = 16

	// ipv4VersionIHL5 is version 4 with a 20-byte header.
	ipv4VersionIHL5 = 0x45
	// ipv4FragmentMask covers the MF flag and the fragment offset of the
	// 16-bit word at flagsOffset.
	ipv4FragmentMask = 0x3fff
	// ipv4DFByte is the DF bit in the byte at flagsOffset.
	ipv4DFByte = header.IPv4FlagDontFragment << 5
)

// The accessors below read the IPv4 header fields a packet loop looks at
// before deciding where a packet goes. Like gVisor's header views they do
// not check the length: the caller checks IsIPv4 first. They return arrays,
// which cost no allocation.

// IsIPv4 reports whether pkt is long enough for an IPv4 header and says
// version 4.
func IsIPv4(pkt []byte) bool {
	return len(pkt) >= header.IPv4MinimumSize && pkt[0]>>4 == header.IPv4Version
}

// IPv4Source returns the source address of the IPv4 packet pkt.
func IPv4Source(pkt []byte) [4]byte {
	return [4]byte(pkt[srcAddrOffset : srcAddrOffset+4])
}

// IPv4Destination returns the destination address of the IPv4 packet pkt.
func IPv4Destination(pkt []byte) [4]byte {
	return [4]byte(pkt[dstAddrOffset : dstAddrOffset+4])
}

// IPv4DF reports whether the IPv4 packet pkt has DF (don't fragment) set.
func IPv4DF(pkt []byte) bool {
	return pkt[flagsOffset]&ipv4DFByte != 0
}
