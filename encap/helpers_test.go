package encap

import (
	"net"
	"testing"
	"unsafe"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// Addresses of the test topology: two nodes on the underlay, a workload on
// each.
var (
	nodeA     = [4]byte{198, 18, 1, 10}
	nodeB     = [4]byte{198, 18, 1, 11}
	podA      = [4]byte{192, 168, 0, 5}
	podB      = [4]byte{192, 168, 1, 7}
	vtepMACA  = [6]byte{0x66, 0x01, 0x02, 0x03, 0x04, 0x05}
	vtepMACB  = [6]byte{0x66, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e}
	testVNI   = uint32(4096) // Calico's default
	serialize = gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
)

// refSum is the one's-complement sum of RFC 1071 done the plain way, 16 bits
// at a time, the reference the fast sums are checked against.
func refSum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// innerSpec describes an inner packet built with gopacket.
type innerSpec struct {
	proto      layers.IPProtocol
	df         bool
	tos        uint8
	payloadLen int
	srcPort    uint16
}

// buildInner serializes an inner IPv4 packet from podA to podB with gopacket.
func buildInner(tb testing.TB, s innerSpec) []byte {
	tb.Helper()
	ip := &layers.IPv4{
		Version: 4, IHL: 5, TOS: s.tos, Id: 0x1234, TTL: 63,
		Protocol: s.proto,
		SrcIP:    net.IP(podA[:]), DstIP: net.IP(podB[:]),
	}
	if s.df {
		ip.Flags = layers.IPv4DontFragment
	}
	srcPort := s.srcPort
	if srcPort == 0 {
		srcPort = 40000
	}
	payload := make([]byte, s.payloadLen)
	for i := range payload {
		payload[i] = byte(i*7 + 3)
	}
	var l4 gopacket.SerializableLayer
	switch s.proto {
	case layers.IPProtocolTCP:
		tcp := &layers.TCP{SrcPort: layers.TCPPort(srcPort), DstPort: 5201, Seq: 1000, Ack: 2000, ACK: true, PSH: true, Window: 64240}
		if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
			tb.Fatal(err)
		}
		l4 = tcp
	case layers.IPProtocolUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(srcPort), DstPort: 5201}
		if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
			tb.Fatal(err)
		}
		l4 = udp
	case layers.IPProtocolICMPv4:
		l4 = &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 7, Seq: 1}
	default:
		tb.Fatalf("buildInner: protocol %v not supported", s.proto)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, serialize, ip, l4, gopacket.Payload(payload)); err != nil {
		tb.Fatalf("serialize inner: %v", err)
	}
	return buf.Bytes()
}

// innerOfSize builds a UDP inner packet of exactly size bytes.
func innerOfSize(tb testing.TB, size int) []byte {
	tb.Helper()
	return buildInner(tb, innerSpec{proto: layers.IPProtocolUDP, df: true, payloadLen: size - 28})
}

// atHeadroom returns a fresh buffer with pkt at Headroom and the packet
// length, the way a loop's buffer holds a packet read from the TUN.
func atHeadroom(pkt []byte) ([]byte, int) {
	buf := make([]byte, Headroom+len(pkt)+16)
	copy(buf[Headroom:], pkt)
	return buf, len(pkt)
}

// newTestEncapsulator returns node A's encapsulator.
func newTestEncapsulator(tb testing.TB) *Encapsulator {
	tb.Helper()
	e, err := NewEncapsulator(Config{Local: nodeA, VTEPMAC: vtepMACA, VNI: testVNI})
	if err != nil {
		tb.Fatal(err)
	}
	return e
}

// fixOuterChecksum recomputes the checksum of the 20-byte IPv4 header at the
// start of pkt after a test changed it.
func fixOuterChecksum(pkt []byte) {
	pkt[10], pkt[11] = 0, 0
	s := ^refSum(pkt[:20])
	pkt[10], pkt[11] = byte(s>>8), byte(s)
}

// fixInnerChecksum recomputes the checksum of the IPv4 header at pkt[off:].
func fixInnerChecksum(pkt []byte, off int) {
	fixOuterChecksum(pkt[off:])
}

// offsetIn returns where sub starts in outer's memory, and whether sub lies
// wholly inside outer.
func offsetIn(sub, outer []byte) (int, bool) {
	lo := uintptr(unsafe.Pointer(unsafe.SliceData(outer)))
	p := uintptr(unsafe.Pointer(unsafe.SliceData(sub)))
	if p < lo || p+uintptr(len(sub)) > lo+uintptr(len(outer)) {
		return 0, false
	}
	return int(p - lo), true
}

// within reports whether sub lies inside outer's memory.
func within(sub, outer []byte) bool {
	if len(sub) == 0 {
		return true
	}
	_, ok := offsetIn(sub, outer)
	return ok
}
