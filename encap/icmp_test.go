package encap

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

var routerAddr = [4]byte{192, 168, 0, 1}

func TestFragNeeded(t *testing.T) {
	withOptions := func(t *testing.T) []byte {
		// IHL 6: a 4-byte option (NOPs) the quote must include whole.
		p := buildInner(t, innerSpec{proto: layers.IPProtocolTCP, df: true, payloadLen: 1400})
		p = append(p[:20:20], append([]byte{1, 1, 1, 0}, p[20:]...)...)
		p[0] = 0x46
		binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
		fixInnerChecksum(p, 0)
		return p
	}
	cases := []struct {
		name      string
		packet    func(t *testing.T) []byte
		mtu       int
		wantQuote int
	}{
		{"TCP 1460", func(t *testing.T) []byte {
			return buildInner(t, innerSpec{proto: layers.IPProtocolTCP, df: true, payloadLen: 1420})
		}, 1450, 28},
		{"UDP 1500 with MTU 1430 (VXLAN on 1480)", func(t *testing.T) []byte {
			return buildInner(t, innerSpec{proto: layers.IPProtocolUDP, df: true, payloadLen: 1472})
		}, 1430, 28},
		{"ICMP echo is answered", func(t *testing.T) []byte {
			return buildInner(t, innerSpec{proto: layers.IPProtocolICMPv4, df: true, payloadLen: 1472})
		}, 1480, 28},
		{"header with options quoted whole", withOptions, 1400, 32},
		{"payload shorter than 8 bytes", func(t *testing.T) []byte {
			p := buildInner(t, innerSpec{proto: layers.IPProtocolUDP, df: true})[:25]
			binary.BigEndian.PutUint16(p[2:], 25)
			fixInnerChecksum(p, 0)
			return p
		}, 20, 25},
		{"link padding beyond total length not quoted", func(t *testing.T) []byte {
			p := buildInner(t, innerSpec{proto: layers.IPProtocolUDP, df: true})[:24]
			binary.BigEndian.PutUint16(p[2:], 24)
			fixInnerChecksum(p, 0)
			return append(p, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee)
		}, 68, 24},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tooBig := tc.packet(t)
			dst := make([]byte, MaxICMPErrorLen)
			msg := FragNeeded(dst, tooBig, routerAddr, tc.mtu)
			if msg == nil {
				t.Fatal("FragNeeded returned nil")
			}
			checkFragNeeded(t, msg, tooBig, tc.mtu, tc.wantQuote)
		})
	}
}

func checkFragNeeded(t *testing.T, msg, tooBig []byte, mtu, wantQuote int) {
	t.Helper()
	if len(msg) != 28+wantQuote {
		t.Fatalf("message is %d bytes, want %d", len(msg), 28+wantQuote)
	}
	p := gopacket.NewPacket(msg, layers.LayerTypeIPv4, gopacket.Default)
	ip, ok1 := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	icmp, ok2 := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if !ok1 || !ok2 {
		t.Fatalf("gopacket decodes %v, want IPv4 and ICMPv4", p.Layers())
	}
	if ip.SrcIP.String() != net.IP(routerAddr[:]).String() || !ip.DstIP.Equal(net.IP(tooBig[12:16])) {
		t.Errorf("%v -> %v, want %v -> %v", ip.SrcIP, ip.DstIP, net.IP(routerAddr[:]), net.IP(tooBig[12:16]))
	}
	if ip.TTL != 64 || ip.Protocol != layers.IPProtocolICMPv4 || int(ip.Length) != len(msg) || ip.IHL != 5 {
		t.Errorf("IPv4 TTL %d protocol %v length %d IHL %d, want 64 ICMPv4 %d 5", ip.TTL, ip.Protocol, ip.Length, ip.IHL, len(msg))
	}
	if s := refSum(msg[:20]); s != 0xffff {
		t.Errorf("IPv4 header checksum does not verify (sum %#x)", s)
	}
	if icmp.TypeCode != layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodeFragmentationNeeded) {
		t.Errorf("ICMP %v, want destination unreachable / fragmentation needed", icmp.TypeCode)
	}
	if _, res := icmp.VerifyChecksum(); !res.Valid {
		t.Errorf("ICMP checksum %#x does not verify (correct %#x)", res.Actual, res.Correct)
	}
	// RFC 1191: the unused word's low half carries the next-hop MTU;
	// gopacket calls those fields Id and Seq.
	if icmp.Id != 0 || int(icmp.Seq) != mtu {
		t.Errorf("unused %d next-hop MTU %d, want 0 %d", icmp.Id, icmp.Seq, mtu)
	}
	if !bytes.Equal(icmp.Payload, tooBig[:wantQuote]) {
		t.Errorf("quote %x, want %x", icmp.Payload, tooBig[:wantQuote])
	}
}

// FragNeeded can build the message in the buffer of the packet it answers,
// in front of it: the router needs no second buffer.
func TestFragNeededInPlace(t *testing.T) {
	tooBig := buildInner(t, innerSpec{proto: layers.IPProtocolTCP, df: true, payloadLen: 1420})
	want := FragNeeded(make([]byte, MaxICMPErrorLen), tooBig, routerAddr, 1450)

	buf, n := atHeadroom(tooBig)
	got := FragNeeded(buf[Headroom-28:], buf[Headroom:Headroom+n], routerAddr, 1450)
	if !bytes.Equal(got, want) {
		t.Errorf("in place:\n got %x\nwant %x", got, want)
	}
	// Overlapping the other way round, the message ahead of the packet.
	buf, n = atHeadroom(tooBig)
	got = FragNeeded(buf[Headroom+4:], buf[Headroom:Headroom+n], routerAddr, 1450)
	if !bytes.Equal(got, want) {
		t.Errorf("overlapping after the packet:\n got %x\nwant %x", got, want)
	}
}

func TestFragNeededRefuses(t *testing.T) {
	base := func(t *testing.T) []byte {
		return buildInner(t, innerSpec{proto: layers.IPProtocolTCP, df: true, payloadLen: 1420})
	}
	withSource := func(a byte) func(t *testing.T) []byte {
		return func(t *testing.T) []byte {
			p := base(t)
			p[12] = a
			return p
		}
	}
	icmpOfType := func(typ byte) func(t *testing.T) []byte {
		return func(t *testing.T) []byte {
			p := buildInner(t, innerSpec{proto: layers.IPProtocolICMPv4, df: true, payloadLen: 1420})
			p[20] = typ
			return p
		}
	}
	cases := []struct {
		name   string
		packet func(t *testing.T) []byte
		dstLen int
		mtu    int
	}{
		{"19 bytes", func(t *testing.T) []byte { return base(t)[:19] }, MaxICMPErrorLen, 1400},
		{"IPv6", func(t *testing.T) []byte { p := base(t); p[0] = 0x60; return p }, MaxICMPErrorLen, 1400},
		{"IHL 4", func(t *testing.T) []byte { p := base(t); p[0] = 0x44; return p }, MaxICMPErrorLen, 1400},
		{"IHL beyond the data", func(t *testing.T) []byte { p := base(t)[:30]; p[0] = 0x4f; return p }, MaxICMPErrorLen, 1400},
		{"non-initial fragment", func(t *testing.T) []byte { p := base(t); p[7] = 1; return p }, MaxICMPErrorLen, 1400},
		{"source 0.x", withSource(0), MaxICMPErrorLen, 1400},
		{"source loopback", withSource(127), MaxICMPErrorLen, 1400},
		{"source multicast", withSource(224), MaxICMPErrorLen, 1400},
		{"source broadcast", withSource(255), MaxICMPErrorLen, 1400},
		{"source class E", withSource(240), MaxICMPErrorLen, 1400},
		{"ICMP destination unreachable", icmpOfType(3), MaxICMPErrorLen, 1400},
		{"ICMP time exceeded", icmpOfType(11), MaxICMPErrorLen, 1400},
		{"ICMP parameter problem", icmpOfType(12), MaxICMPErrorLen, 1400},
		{"ICMP redirect", icmpOfType(5), MaxICMPErrorLen, 1400},
		{"ICMP without its type byte", func(t *testing.T) []byte {
			p := buildInner(t, innerSpec{proto: layers.IPProtocolICMPv4, df: true})[:20]
			binary.BigEndian.PutUint16(p[2:], 20)
			return p
		}, MaxICMPErrorLen, 1400},
		{"dst one byte short", base, 55, 1400},
		{"MTU -1", base, MaxICMPErrorLen, -1},
		{"MTU 65536", base, MaxICMPErrorLen, 65536},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dst := make([]byte, tc.dstLen)
			if msg := FragNeeded(dst, tc.packet(t), routerAddr, tc.mtu); msg != nil {
				t.Errorf("FragNeeded = %x, want nil", msg)
			}
		})
	}
}

func TestNetUnreachable(t *testing.T) {
	orig := buildInner(t, innerSpec{proto: layers.IPProtocolUDP, payloadLen: 100})
	dst := make([]byte, MaxICMPErrorLen)
	msg := NetUnreachable(dst, orig, routerAddr)
	if msg == nil {
		t.Fatal("NetUnreachable returned nil")
	}
	pkt := gopacket.NewPacket(msg, layers.LayerTypeIPv4, gopacket.Default)
	ip, _ := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	icmp, _ := pkt.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if ip == nil || icmp == nil {
		t.Fatalf("does not decode as IPv4/ICMPv4: %v", pkt)
	}
	if icmp.TypeCode != layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodeNet) {
		t.Errorf("type/code %v, want destination unreachable / net", icmp.TypeCode)
	}
	if !ip.DstIP.Equal(net.IP(orig[12:16])) || !ip.SrcIP.Equal(net.IP(routerAddr[:])) {
		t.Errorf("from %v to %v, want from the router to the original source", ip.SrcIP, ip.DstIP)
	}
	if got, want := msg[28:], orig[:28]; !bytes.Equal(got, want) {
		t.Errorf("quote %x, want the original header and 8 bytes %x", got, want)
	}
	if NetUnreachable(dst, orig[:10], routerAddr) != nil {
		t.Error("a truncated packet must get no answer")
	}
}

// One rule for whom an ICMP error may answer (RFC 1812 section 4.3.2.7),
// at the edges of each excluded block; link-local is a host and answered.
func TestICMPErrorSources(t *testing.T) {
	cases := []struct {
		src  [4]byte
		want bool
	}{
		{[4]byte{0, 0, 0, 0}, false},
		{[4]byte{0, 255, 255, 255}, false},
		{[4]byte{1, 0, 0, 0}, true},
		{[4]byte{126, 255, 255, 255}, true},
		{[4]byte{127, 0, 0, 1}, false},
		{[4]byte{127, 255, 255, 255}, false},
		{[4]byte{128, 0, 0, 0}, true},
		{[4]byte{169, 254, 1, 1}, true},
		{[4]byte{198, 18, 0, 1}, true},
		{[4]byte{223, 255, 255, 255}, true},
		{[4]byte{224, 0, 0, 1}, false},
		{[4]byte{239, 255, 255, 255}, false},
		{[4]byte{240, 0, 0, 1}, false},
		{[4]byte{255, 255, 255, 255}, false},
	}
	for _, tc := range cases {
		orig := buildInner(t, innerSpec{proto: layers.IPProtocolUDP, df: true, payloadLen: 30})
		copy(orig[12:16], tc.src[:])
		fixInnerChecksum(orig, 0)
		msg := ICMPError(make([]byte, MaxICMPErrorLen), orig, routerAddr, 3, 1, 0)
		if got := msg != nil; got != tc.want {
			t.Errorf("source %v: answered %v, want %v", net.IP(tc.src[:]), got, tc.want)
		}
		if msg != nil && [4]byte(msg[16:20]) != tc.src {
			t.Errorf("source %v: error sent to %v", net.IP(tc.src[:]), net.IP(msg[16:20]))
		}
	}
}

// Types other than fragmentation needed leave the word after the checksum
// zero, whatever mtu says, and every type and code is written as asked.
func TestICMPErrorTypes(t *testing.T) {
	orig := buildInner(t, innerSpec{proto: layers.IPProtocolTCP, payloadLen: 30})
	for _, tc := range []struct {
		typ, code uint8
		mtu       int
		want      uint32
	}{
		{11, 0, 1400, 0},   // time exceeded in transit
		{3, 13, 1400, 0},   // administratively prohibited
		{3, 4, 1400, 1400}, // fragmentation needed carries the MTU
		{3, 3, 0xffff, 0},  // port unreachable
	} {
		msg := ICMPError(make([]byte, MaxICMPErrorLen), orig, routerAddr, header.ICMPv4Type(tc.typ), header.ICMPv4Code(tc.code), tc.mtu)
		if msg == nil {
			t.Fatalf("type %d code %d: nil", tc.typ, tc.code)
		}
		if msg[20] != tc.typ || msg[21] != tc.code || binary.BigEndian.Uint32(msg[24:]) != tc.want {
			t.Errorf("type %d code %d: got type %d code %d word %#x, want word %#x", tc.typ, tc.code, msg[20], msg[21], binary.BigEndian.Uint32(msg[24:]), tc.want)
		}
		if refSum(msg[:20]) != 0xffff || refSum(msg[20:]) != 0xffff || msg[1] != icmpTOS || msg[8] != OuterTTL {
			t.Errorf("type %d code %d: checksums, TOS or TTL wrong: %x", tc.typ, tc.code, msg)
		}
	}
}
