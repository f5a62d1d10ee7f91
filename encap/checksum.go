package encap

import "encoding/binary"

// ipv4HeaderSum returns the one's-complement sum (RFC 1071) of a 20-byte IPv4
// header, the checksum field included. It verifies every received IP-in-IP
// outer header and sums the header of every ICMP error (encapsulation sums
// its outer header from the field values instead, see putOuterIPv4):
// BenchmarkHeaderChecksum shows it at about a third of gVisor's general
// checksum.Checksum for this one fixed size, which the general routine pays
// for in alignment handling.
func ipv4HeaderSum(h []byte) uint16 {
	_ = h[19] // one bounds check for the five loads
	// Summing 32-bit words and folding gives the 16-bit one's-complement sum
	// because 2^16 is 1 modulo 2^16-1.
	s := uint64(binary.BigEndian.Uint32(h[0:])) +
		uint64(binary.BigEndian.Uint32(h[4:])) +
		uint64(binary.BigEndian.Uint32(h[8:])) +
		uint64(binary.BigEndian.Uint32(h[12:])) +
		uint64(binary.BigEndian.Uint32(h[16:]))
	s = s&0xffff + s>>16 // < 2^20
	s = s&0xffff + s>>16 // < 2^16 + 2^4
	s = s&0xffff + s>>16 // <= 0xffff
	return uint16(s)
}

// foldSum folds a 32-bit accumulation of 16-bit words into their 16-bit
// one's-complement sum.
func foldSum(s uint32) uint16 {
	s = s&0xffff + s>>16
	s = s&0xffff + s>>16
	return uint16(s)
}

// ChecksumUpdate returns a checksum field updated for one 16-bit word of the
// covered data changing from old to new, without summing the data again
// (RFC 1624 equation 3: HC' = ~(~HC + ~m + m')). The word must be 16-bit
// aligned within the covered data.
func ChecksumUpdate(xsum, old, new uint16) uint16 {
	s := uint32(^xsum) + uint32(^old) + uint32(new)
	s = s&0xffff + s>>16
	s = s&0xffff + s>>16
	return ^uint16(s)
}
