package encap

import "encoding/binary"

// VXLAN is a VXLAN header (RFC 7348 section 5) stored in a byte slice, in the
// style of gVisor's header package: the accessors do not check the length, so
// the caller makes sure the slice holds VXLANHeaderSize bytes first.
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|R|R|R|R|I|R|R|R|            Reserved                           |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                VXLAN Network Identifier (VNI) |   Reserved    |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
type VXLAN []byte

const (
	// VXLANHeaderSize is the size of a VXLAN header.
	VXLANHeaderSize = 8

	// VXLANFlagVNI is the I flag: the VNI field is valid. RFC 7348 requires
	// it on every packet.
	VXLANFlagVNI = 0x08

	// MaxVNI is the largest VXLAN network identifier (24 bits).
	MaxVNI = 1<<24 - 1

	vxlanFlags = 0
	vxlanVNI   = 4
)

// Flags returns the flags byte.
func (b VXLAN) Flags() uint8 {
	return b[vxlanFlags]
}

// HasVNI reports whether the I flag is set, that is whether the VNI is valid.
func (b VXLAN) HasVNI() bool {
	return b[vxlanFlags]&VXLANFlagVNI != 0
}

// VNI returns the VXLAN network identifier.
func (b VXLAN) VNI() uint32 {
	return binary.BigEndian.Uint32(b[vxlanVNI:]) >> 8
}

// Payload returns the encapsulated Ethernet frame.
func (b VXLAN) Payload() []byte {
	return b[VXLANHeaderSize:]
}

// Encode writes a header with the I flag and the given VNI and every reserved
// field zero, as RFC 7348 requires of a sender. Bits of vni above 24 are
// dropped.
func (b VXLAN) Encode(vni uint32) {
	binary.BigEndian.PutUint32(b[vxlanFlags:], VXLANFlagVNI<<24)
	binary.BigEndian.PutUint32(b[vxlanVNI:], vni<<8)
}
