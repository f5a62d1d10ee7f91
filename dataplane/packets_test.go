package dataplane

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/encap"
)

// testCluster is the cluster the loop tests run: a VXLAN pool with
// natOutgoing, an IP-in-IP pool and a pool routed directly (Never), nodes A
// and B on one underlay subnet and C on another. Each node's tunnel address
// is the first address of its block in pool-vxlan (192.168.0.0, .64, .128).
const testCluster = `
[vxlan]
vni = 4096
port = 4789

[[pools]]
name = "pool-vxlan"
cidr = "192.168.0.0/16"
vxlanMode = "Always"
natOutgoing = true

[[pools]]
name = "pool-ipip"
cidr = "10.1.0.0/16"
ipipMode = "Always"

[[pools]]
name = "pool-direct"
cidr = "10.2.0.0/16"

[[nodes]]
name = "node-a"
address = "198.18.1.10/24"
blocks = ["192.168.0.0/26", "10.1.0.0/26", "10.2.0.0/26"]

[[nodes]]
name = "node-b"
address = "198.18.1.11/24"
blocks = ["192.168.0.64/26", "10.1.0.64/26", "10.2.0.64/26"]

[[nodes]]
name = "node-c"
address = "198.18.2.10/24"
blocks = ["192.168.0.128/26", "10.1.0.128/26"]
`

// Underlay addresses of testCluster's nodes.
var (
	underlayA = a4("198.18.1.10")
	underlayB = a4("198.18.1.11")
	underlayC = a4("198.18.2.10")
)

const testVNI = 4096

// macOf is a node's VTEP MAC as the cluster derives it.
func macOf(node string) [6]byte { return [6]byte(config.VTEPMACFor(node)) }

// pkt describes an inner IPv4 packet for gopacket to build: UDP unless tcp,
// size bytes in all (0: 100), with seq at the start of the payload so the
// tests can tell packets apart.
type pkt struct {
	src, dst string
	size     int
	df       bool
	tos      uint8
	tcp      bool
	seq      uint32
}

func (s pkt) build(t testing.TB) []byte {
	t.Helper()
	size := s.size
	if size == 0 {
		size = 100
	}
	ip := &layers.IPv4{
		Version: 4, IHL: 5, TOS: s.tos, Id: uint16(s.seq), TTL: 63,
		SrcIP: net.IP(a4s(s.src)), DstIP: net.IP(a4s(s.dst)),
	}
	if s.df {
		ip.Flags = layers.IPv4DontFragment
	}
	var l4 interface {
		gopacket.SerializableLayer
		SetNetworkLayerForChecksum(gopacket.NetworkLayer) error
	}
	headers := 20 + 8
	if s.tcp {
		ip.Protocol = layers.IPProtocolTCP
		l4 = &layers.TCP{SrcPort: 40000, DstPort: 5201, Seq: s.seq, ACK: true, Window: 64240}
		headers = 20 + 20
	} else {
		ip.Protocol = layers.IPProtocolUDP
		l4 = &layers.UDP{SrcPort: 40000, DstPort: 5201}
	}
	if err := l4.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	if size < headers+4 {
		t.Fatalf("a %d-byte packet cannot hold its headers and a sequence number", size)
	}
	payload := make([]byte, size-headers)
	for i := range payload {
		payload[i] = byte(i*7 + 3)
	}
	binary.BigEndian.PutUint32(payload, s.seq)
	return serialize(t, ip, l4, gopacket.Payload(payload))
}

func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// seqOf reads back the sequence number pkt.build put in a UDP or TCP
// packet without options.
func seqOf(b []byte) uint32 {
	l4 := 20 + 8
	if b[9] == uint8(layers.IPProtocolTCP) {
		l4 = 20 + 20
	}
	return binary.BigEndian.Uint32(b[l4:])
}

func a4s(s string) []byte {
	a := a4(s)
	return a[:]
}

// vxlanFrom is what node from's UDP socket would deliver for inner sent
// over VXLAN with network identifier vni: the VXLAN header on, built with
// encap's Encapsulator.
func vxlanFrom(t testing.TB, from string, vni uint32, inner []byte, dstMAC [6]byte) datagram {
	t.Helper()
	e, err := encap.NewEncapsulator(encap.Config{Local: underlayOf(t, from), VTEPMAC: macOf(from), VNI: vni})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, encap.Headroom+len(inner))
	copy(buf[encap.Headroom:], inner)
	b := e.VXLANPayload(buf, len(inner), dstMAC)
	if b == nil {
		t.Fatal("VXLANPayload refused the packet")
	}
	return datagram{b: b, from: underlayOf(t, from), port: 49152 + uint16(encap.FlowHash(inner)%16384)}
}

// ipipFrom is what a raw IP-in-IP socket would deliver for inner sent by
// node from to node to, outer IPv4 header included.
func ipipFrom(t testing.TB, from, to string, inner []byte) datagram {
	t.Helper()
	e, err := encap.NewEncapsulator(encap.Config{Local: underlayOf(t, from), VNI: testVNI})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, encap.Headroom+len(inner))
	copy(buf[encap.Headroom:], inner)
	b := e.IPIP(buf, len(inner), underlayOf(t, to))
	if b == nil {
		t.Fatal("IPIP refused the packet")
	}
	return datagram{b: b, from: underlayOf(t, from)}
}

// underlayOf maps a node name, or an underlay address in text, to the
// address.
func underlayOf(t testing.TB, node string) [4]byte {
	switch node {
	case "node-a":
		return underlayA
	case "node-b":
		return underlayB
	case "node-c":
		return underlayC
	}
	a, err := netip.ParseAddr(node)
	if err != nil {
		t.Fatalf("%q is neither a test node nor an address", node)
	}
	return a.As4()
}

// arpRequest is a VXLAN payload carrying an ARP request from node from
// (sender address senderIP) asking who has target, as a peer's kernel VXLAN
// device broadcasts it.
func arpRequest(t testing.TB, from string, vni uint32, senderIP, target string) datagram {
	t.Helper()
	mac := macOf(from)
	b := serialize(t,
		&layers.VXLAN{ValidIDFlag: true, VNI: vni},
		&layers.Ethernet{SrcMAC: mac[:], DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{
			AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: layers.ARPRequest, SourceHwAddress: mac[:], SourceProtAddress: a4s(senderIP),
			DstHwAddress: make([]byte, 6), DstProtAddress: a4s(target),
		})
	return datagram{b: b, from: underlayOf(t, from), port: config.DefaultVXLANPort}
}

// onesSum is the RFC 1071 sum of b; a header with a correct checksum sums
// to 0xffff.
func onesSum(b []byte) uint16 {
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

// icmpWant is the ICMP error a test expects at the TUN device.
type icmpWant struct {
	code layers.ICMPv4TypeCode
	from string
	mtu  uint16 // next-hop MTU, for fragmentation needed
}

// checkICMP checks that got is the ICMP error want answering orig: from
// the right address to orig's source, TTL 64, both checksums right, the
// type, code and next-hop MTU, and a quote of orig's header and first 8
// bytes of payload.
func checkICMP(t testing.TB, got, orig []byte, want icmpWant) {
	t.Helper()
	p := gopacket.NewPacket(got, layers.LayerTypeIPv4, gopacket.Default)
	ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	icmp, _ := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if ip == nil || icmp == nil {
		t.Fatalf("the reply is not IPv4 and ICMP: %v", p)
	}
	origSrc := net.IP(orig[12:16])
	if !ip.SrcIP.Equal(net.IP(a4s(want.from))) || !ip.DstIP.Equal(origSrc) {
		t.Errorf("ICMP from %v to %v, want from %s to %v", ip.SrcIP, ip.DstIP, want.from, origSrc)
	}
	if ip.TTL != encap.OuterTTL || int(ip.Length) != len(got) {
		t.Errorf("ICMP's IPv4 header: TTL %d length %d, want TTL %d length %d", ip.TTL, ip.Length, encap.OuterTTL, len(got))
	}
	if s := onesSum(got[:20]); s != 0xffff {
		t.Errorf("ICMP's IPv4 header checksum is wrong (sum %#04x)", s)
	}
	if s := onesSum(got[20:]); s != 0xffff {
		t.Errorf("ICMP checksum is wrong (sum %#04x)", s)
	}
	if icmp.TypeCode != want.code {
		t.Errorf("ICMP %v, want %v", icmp.TypeCode, want.code)
	}
	// The next-hop MTU is the low 16 bits of the word gopacket calls Id
	// and Seq (RFC 1191).
	if icmp.Seq != want.mtu {
		t.Errorf("next-hop MTU %d, want %d", icmp.Seq, want.mtu)
	}
	if quote := orig[:20+8]; !slices.Equal(icmp.Payload, quote) {
		t.Errorf("ICMP quotes\n%x\nwant the original header and 8 bytes\n%x", icmp.Payload, quote)
	}
}

// counts renders the counters of a Stats that are not zero, byte counts
// and per-peer counters left out, sorted, as "drop.too_big=1 icmp_sent=1":
// the tests compare what happened with one string a reader can check.
func counts(s Stats) string {
	var parts []string
	add := func(name string, v uint64) {
		if v != 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", name, v))
		}
	}
	for k, v := range s.Drops {
		add("drop."+k, v)
	}
	for k, v := range s.TxPackets {
		add("tx."+k, v)
	}
	for k, v := range s.RxPackets {
		add("rx."+k, v)
	}
	for k, v := range s.IOErrors {
		add("io."+k, v)
	}
	add("arp_replies", s.ARPReplies)
	add("icmp_sent", s.ICMPSent)
	add("nat", s.NATPackets)
	slices.Sort(parts)
	return strings.Join(parts, " ")
}

// waitCounts waits until the router's counters are want, which the loops
// publish at the end of a batch, after its writes and sends: once they
// match, everything the batch did is visible.
func waitCounts(t testing.TB, n *testNode, want string) {
	t.Helper()
	eventually(t, func() bool { return counts(n.r.Stats()) == want },
		func() string { return fmt.Sprintf("%s's counters are %q, want %q", n.name, counts(n.r.Stats()), want) })
}
