package encap

import (
	"bytes"
	"fmt"
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// interopCase is one inner packet of the interoperability matrix.
type interopCase struct {
	name string
	spec innerSpec
}

// interopCases covers TCP, UDP and ICMP inner packets, DF on and off, and
// every ECN codepoint, under a non-zero DSCP (AF11) that must be carried.
func interopCases() []interopCase {
	var cases []interopCase
	const dscpAF11 = 10 << 2
	ecnNames := [4]string{"not-ect", "ect1", "ect0", "ce"}
	for _, proto := range []layers.IPProtocol{layers.IPProtocolTCP, layers.IPProtocolUDP, layers.IPProtocolICMPv4} {
		for _, df := range []bool{true, false} {
			for ecn := range uint8(4) {
				dfName := "df"
				if !df {
					dfName = "no-df"
				}
				cases = append(cases, interopCase{
					name: fmt.Sprintf("%v/%s/%s", proto, dfName, ecnNames[ecn]),
					spec: innerSpec{proto: proto, df: df, tos: dscpAF11 | ecn, payloadLen: 101},
				})
			}
		}
	}
	return cases
}

// decodeAll decodes pkt with gopacket from first, failing on any error.
func decodeAll(t *testing.T, pkt []byte, first gopacket.LayerType) gopacket.Packet {
	t.Helper()
	p := gopacket.NewPacket(pkt, first, gopacket.Default)
	if el := p.ErrorLayer(); el != nil {
		t.Fatalf("gopacket cannot decode: %v", el.Error())
	}
	return p
}

// checkOuterIPv4 checks the outer IPv4 header gopacket decoded against what
// encapsulation of inner must have written.
func checkOuterIPv4(t *testing.T, outer *layers.IPv4, raw, inner []byte, proto layers.IPProtocol) {
	t.Helper()
	innerFlags := layers.IPv4Flag(inner[6] >> 5)
	wantFlags := innerFlags & layers.IPv4DontFragment
	checks := []struct {
		field     string
		got, want any
	}{
		{"version", outer.Version, uint8(4)},
		{"IHL", outer.IHL, uint8(5)},
		{"TOS (DSCP and ECN copied)", outer.TOS, inner[1]},
		{"length", outer.Length, uint16(len(raw))},
		{"flags (DF copied)", outer.Flags, wantFlags},
		{"fragment offset", outer.FragOffset, uint16(0)},
		{"TTL", outer.TTL, uint8(OuterTTL)},
		{"protocol", outer.Protocol, proto},
		{"source", outer.SrcIP.String(), net.IP(nodeA[:]).String()},
		{"destination", outer.DstIP.String(), net.IP(nodeB[:]).String()},
		{"header checksum sums to 0xffff", refSum(raw[:20]), uint16(0xffff)},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("outer IPv4 %s = %v, want %v", c.field, c.got, c.want)
		}
	}
	if wantFlags != 0 && outer.Id != 0 {
		t.Errorf("outer IPv4 ID = %d with DF set, want 0", outer.Id)
	}
}

// checkInnerLayers checks that gopacket found the inner packet unchanged
// after the outer headers.
func checkInnerLayers(t *testing.T, p gopacket.Packet, innerIP *layers.IPv4, inner []byte, proto layers.IPProtocol) {
	t.Helper()
	if got := append(append([]byte{}, innerIP.Contents...), innerIP.Payload...); !bytes.Equal(got, inner) {
		t.Errorf("inner packet changed by encapsulation:\n got %x\nwant %x", got, inner)
	}
	var want gopacket.LayerType
	switch proto {
	case layers.IPProtocolTCP:
		want = layers.LayerTypeTCP
	case layers.IPProtocolUDP:
		want = layers.LayerTypeUDP
	case layers.IPProtocolICMPv4:
		want = layers.LayerTypeICMPv4
	}
	if p.Layer(want) == nil {
		t.Errorf("gopacket found no inner %v layer; layers %v", want, p.Layers())
	}
}

func TestIPIPDecodesWithGopacket(t *testing.T) {
	for _, tc := range interopCases() {
		t.Run(tc.name, func(t *testing.T) {
			inner := buildInner(t, tc.spec)
			buf, n := atHeadroom(inner)
			out := newTestEncapsulator(t).IPIP(buf, n, nodeB)
			if out == nil {
				t.Fatal("IPIP returned nil")
			}
			if !within(out, buf) || &out[IPIPOverhead] != &buf[Headroom] {
				t.Fatal("IPIP did not encapsulate in place")
			}
			p := decodeAll(t, out, layers.LayerTypeIPv4)
			ls := p.Layers()
			if len(ls) < 2 {
				t.Fatalf("layers %v, want outer and inner IPv4", ls)
			}
			outerIP, ok1 := ls[0].(*layers.IPv4)
			innerIP, ok2 := ls[1].(*layers.IPv4)
			if !ok1 || !ok2 {
				t.Fatalf("layers %v, want IPv4 in IPv4", ls)
			}
			checkOuterIPv4(t, outerIP, out, inner, layers.IPProtocolIPv4)
			checkInnerLayers(t, p, innerIP, inner, tc.spec.proto)
		})
	}
}

// checkVXLANLayers checks the VXLAN and inner Ethernet headers gopacket
// decoded.
func checkVXLANLayers(t *testing.T, p gopacket.Packet) {
	t.Helper()
	vx, ok := p.Layer(layers.LayerTypeVXLAN).(*layers.VXLAN)
	if !ok {
		t.Fatalf("no VXLAN layer in %v", p.Layers())
	}
	if !vx.ValidIDFlag || vx.VNI != testVNI {
		t.Errorf("VXLAN I flag %v VNI %d, want true %d", vx.ValidIDFlag, vx.VNI, testVNI)
	}
	if vx.Contents[0] != VXLANFlagVNI || !bytes.Equal(vx.Contents[1:4], []byte{0, 0, 0}) || vx.Contents[7] != 0 {
		t.Errorf("VXLAN header %x: reserved bits not zero", vx.Contents)
	}
	eth, ok := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	if !ok {
		t.Fatalf("no Ethernet layer in %v", p.Layers())
	}
	if !bytes.Equal(eth.SrcMAC, vtepMACA[:]) || !bytes.Equal(eth.DstMAC, vtepMACB[:]) || eth.EthernetType != layers.EthernetTypeIPv4 {
		t.Errorf("inner Ethernet %v -> %v type %v, want %x -> %x IPv4", eth.SrcMAC, eth.DstMAC, eth.EthernetType, vtepMACA, vtepMACB)
	}
}

func TestVXLANPayloadDecodesWithGopacket(t *testing.T) {
	for _, tc := range interopCases() {
		t.Run(tc.name, func(t *testing.T) {
			inner := buildInner(t, tc.spec)
			buf, n := atHeadroom(inner)
			out := newTestEncapsulator(t).VXLANPayload(buf, n, vtepMACB)
			if out == nil {
				t.Fatal("VXLANPayload returned nil")
			}
			if len(out) != VXLANPayloadLen+n || &out[VXLANPayloadLen] != &buf[Headroom] {
				t.Fatal("VXLANPayload did not encapsulate in place")
			}
			p := decodeAll(t, out, layers.LayerTypeVXLAN)
			checkVXLANLayers(t, p)
			innerIP := findInnerIPv4(t, p)
			checkInnerLayers(t, p, innerIP, inner, tc.spec.proto)
		})
	}
}

// VXLAN with a VNI other than Calico's: the payload decodes as VXLAN with
// that VNI, and only that VNI decapsulates it.
func TestVXLANOtherVNI(t *testing.T) {
	e, err := NewEncapsulator(Config{Local: nodeA, VTEPMAC: vtepMACA, VNI: 77})
	if err != nil {
		t.Fatal(err)
	}
	inner := buildInner(t, innerSpec{proto: layers.IPProtocolUDP, payloadLen: 30})
	buf, n := atHeadroom(inner)
	out := e.VXLANPayload(buf, n, vtepMACB)
	vp := gopacket.NewPacket(out, layers.LayerTypeVXLAN, gopacket.Default)
	vx, ok := vp.Layer(layers.LayerTypeVXLAN).(*layers.VXLAN)
	if !ok || vx.VNI != 77 || !vx.ValidIDFlag {
		t.Fatalf("VXLAN layer %+v, want VNI 77 with I flag", vx)
	}
	got, _, reason := DecapVXLANPayload(out, 77, 0)
	if reason != NoDrop || !bytes.Equal(got, inner) {
		t.Errorf("DecapVXLANPayload(VNI 77) = %x %v, want the inner packet back", got, reason)
	}
	if _, _, reason := DecapVXLANPayload(out, testVNI, 0); reason != WrongVNI {
		t.Errorf("DecapVXLANPayload(VNI %d) = %v, want %v", testVNI, reason, WrongVNI)
	}
}

// findInnerIPv4 returns the IPv4 layer after the Ethernet layer.
func findInnerIPv4(t *testing.T, p gopacket.Packet) *layers.IPv4 {
	t.Helper()
	ls := p.Layers()
	for i, l := range ls {
		if l.LayerType() == layers.LayerTypeEthernet && i+1 < len(ls) {
			if ip, ok := ls[i+1].(*layers.IPv4); ok {
				return ip
			}
		}
	}
	t.Fatalf("no IPv4 after Ethernet in %v", ls)
	return nil
}

// Packets serialized by gopacket, as another implementation would send them,
// decapsulate with ours to gopacket's inner packet.
func TestGopacketPacketsDecapsulate(t *testing.T) {
	for _, tc := range interopCases() {
		t.Run(tc.name, func(t *testing.T) {
			inner := buildInner(t, tc.spec)
			// RFC 6040 encapsulators copy the inner TOS, so the outer ECN
			// leaves the inner packet as it is.
			outerIP := func(proto layers.IPProtocol) *layers.IPv4 {
				return &layers.IPv4{
					Version: 4, IHL: 5, TOS: tc.spec.tos, Id: 99, TTL: 64, Protocol: proto,
					Flags: layers.IPv4DontFragment,
					SrcIP: net.IP(nodeB[:]), DstIP: net.IP(nodeA[:]),
				}
			}

			t.Run("ipip", func(t *testing.T) {
				pkt := serializeLayers(t, outerIP(layers.IPProtocolIPv4), gopacket.Payload(inner))
				got, src, reason := DecapIPIP(pkt)
				if reason != NoDrop {
					t.Fatalf("DecapIPIP dropped: %v", reason)
				}
				if src != nodeB || !bytes.Equal(got, inner) || !within(got, pkt) {
					t.Errorf("DecapIPIP = %x from %v, want %x from %v", got, src, inner, nodeB)
				}
			})

			vxlanLayers := func() []gopacket.SerializableLayer {
				return []gopacket.SerializableLayer{
					&layers.VXLAN{ValidIDFlag: true, VNI: testVNI},
					&layers.Ethernet{SrcMAC: net.HardwareAddr(vtepMACB[:]), DstMAC: net.HardwareAddr(vtepMACA[:]), EthernetType: layers.EthernetTypeIPv4},
					gopacket.Payload(inner),
				}
			}

			t.Run("vxlan-payload", func(t *testing.T) {
				pkt := serializeLayers(t, vxlanLayers()...)
				got, arp, reason := DecapVXLANPayload(pkt, testVNI, tc.spec.tos)
				checkVXLANDecap(t, got, arp, reason, pkt, inner)
			})
		})
	}
}

func checkVXLANDecap(t *testing.T, got, arp []byte, reason DropReason, pkt, inner []byte) {
	t.Helper()
	if reason != NoDrop || arp != nil {
		t.Fatalf("decapsulation: reason %v ARP %x, want the IPv4 packet", reason, arp)
	}
	if !bytes.Equal(got, inner) || !within(got, pkt) {
		t.Errorf("inner %x, want %x inside the packet", got, inner)
	}
}

func serializeLayers(t *testing.T, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, serialize, ls...); err != nil {
		t.Fatalf("gopacket serialize: %v", err)
	}
	return buf.Bytes()
}
