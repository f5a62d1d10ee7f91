package encap

// DropReason says why decapsulation refused a packet. The zero value, NoDrop,
// means the packet was accepted. Values are dense, so a counter per reason
// fits an array indexed by DropReason: [NumDropReasons]T.
type DropReason uint8

// The reasons a received packet is dropped. Outer means the headers the peer
// wrote (the IPv4 header of IP-in-IP; VXLAN's VXLAN and Ethernet headers,
// its IPv4 and UDP ones being the socket's to check); inner means the
// carried IPv4 packet.
const (
	// NoDrop: the packet was accepted.
	NoDrop DropReason = iota
	// Truncated: shorter than the outer headers it must hold.
	Truncated
	// BadVersion: the outer IP version is not 4.
	BadVersion
	// BadIHL: the outer header length is below 20 bytes.
	BadIHL
	// OuterOptions: the outer IPv4 header carries options, which no tunnel
	// endpoint of ours sends.
	OuterOptions
	// BadLength: the outer total length is shorter than its header or longer
	// than the data received.
	BadLength
	// BadChecksum: the outer IPv4 header checksum is wrong.
	BadChecksum
	// OuterFragment: the outer packet is a fragment; overlayd does not
	// reassemble, its MTU is chosen so that tunnels never fragment.
	OuterFragment
	// WrongProtocol: the outer IP protocol is not IP-in-IP's 4.
	WrongProtocol
	// MissingIFlag: the VXLAN header lacks the I flag.
	MissingIFlag
	// WrongVNI: the VXLAN network identifier is not ours.
	WrongVNI
	// BadEtherType: the inner Ethernet frame carries neither IPv4 nor ARP.
	BadEtherType
	// InnerTruncated: the inner packet is shorter than an IPv4 header.
	InnerTruncated
	// InnerBadVersion: the inner packet is not IPv4.
	InnerBadVersion
	// InnerBadIHL: the inner header length is below 20 bytes.
	InnerBadIHL
	// InnerBadLength: the inner total length is shorter than the inner
	// header or longer than the data the tunnel carried.
	InnerBadLength
	// ECNNotECT: the outer header is marked CE (congestion experienced) but
	// the inner packet is not ECN-capable, so the mark cannot be passed on;
	// RFC 6040 section 4.2 says drop.
	ECNNotECT

	// NumDropReasons is the number of DropReason values, NoDrop included.
	NumDropReasons
)

// String returns the reason's snake_case name, usable as a Prometheus label
// value; "unknown" for a value beyond NumDropReasons.
func (r DropReason) String() string {
	// A switch rather than a table keeps the names out of package state.
	switch r {
	case NoDrop:
		return "none"
	case Truncated:
		return "truncated"
	case BadVersion:
		return "bad_version"
	case BadIHL:
		return "bad_ihl"
	case OuterOptions:
		return "outer_options"
	case BadLength:
		return "bad_length"
	case BadChecksum:
		return "bad_checksum"
	case OuterFragment:
		return "outer_fragment"
	case WrongProtocol:
		return "wrong_protocol"
	case MissingIFlag:
		return "missing_i_flag"
	case WrongVNI:
		return "wrong_vni"
	case BadEtherType:
		return "bad_ethertype"
	case InnerTruncated:
		return "inner_truncated"
	case InnerBadVersion:
		return "inner_bad_version"
	case InnerBadIHL:
		return "inner_bad_ihl"
	case InnerBadLength:
		return "inner_bad_length"
	case ECNNotECT:
		return "ecn_ce_not_ect"
	}
	return "unknown"
}
