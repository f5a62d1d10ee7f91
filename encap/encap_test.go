package encap

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/gopacket/gopacket/layers"
)

func TestNewEncapsulatorValidates(t *testing.T) {
	cases := []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		{"Calico's VNI", Config{Local: nodeA, VNI: testVNI}, false},
		{"largest VNI", Config{VNI: MaxVNI}, false},
		{"VNI 0 is a VNI", Config{VNI: 0}, false},
		{"VNI over 24 bits", Config{VNI: MaxVNI + 1}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e, err := NewEncapsulator(tc.cfg)
			if (err != nil) != tc.wantErr || (err == nil) != (e != nil) {
				t.Errorf("NewEncapsulator(%+v) = %v, %v; want error %v", tc.cfg, e, err, tc.wantErr)
			}
		})
	}
}

// Every encapsulation refuses what it cannot carry, without writing.
func TestEncapsulationRefuses(t *testing.T) {
	valid := buildInner(t, innerSpec{proto: layers.IPProtocolUDP, payloadLen: 10})
	cases := []struct {
		name string
		buf  func() ([]byte, int)
	}{
		{"19-byte packet", func() ([]byte, int) { b, _ := atHeadroom(valid); return b, 19 }},
		{"IPv6 packet", func() ([]byte, int) { b, n := atHeadroom(valid); b[Headroom] = 0x60; return b, n }},
		{"n beyond the buffer", func() ([]byte, int) { b, _ := atHeadroom(valid); return b, len(b) - Headroom + 1 }},
		{"negative n", func() ([]byte, int) { b, _ := atHeadroom(valid); return b, -1 }},
		{"buffer without headroom", func() ([]byte, int) { return make([]byte, 30), 30 }},
		{"packet of 65535 bytes", func() ([]byte, int) {
			b := make([]byte, Headroom+0xffff)
			copy(b[Headroom:], valid)
			return b, 0xffff
		}},
	}
	encaps := []struct {
		name string
		do   func(e *Encapsulator, buf []byte, n int) []byte
	}{
		{"ipip", func(e *Encapsulator, buf []byte, n int) []byte { return e.IPIP(buf, n, nodeB) }},
		{"vxlan-payload", func(e *Encapsulator, buf []byte, n int) []byte { return e.VXLANPayload(buf, n, vtepMACB) }},
	}
	for _, enc := range encaps {
		for _, tc := range cases {
			t.Run(enc.name+"/"+tc.name, func(t *testing.T) {
				buf, n := tc.buf()
				headroom := append([]byte(nil), buf[:min(Headroom, len(buf))]...)
				if out := enc.do(newTestEncapsulator(t), buf, n); out != nil {
					t.Fatalf("encapsulated %d bytes, want nil", len(out))
				}
				if string(headroom) != string(buf[:len(headroom)]) {
					t.Error("refused encapsulation wrote into the headroom")
				}
			})
		}
	}
}

// The largest packets that fit do get encapsulated.
func TestEncapsulationLargestPacket(t *testing.T) {
	for _, tc := range []struct {
		name     string
		overhead int
		do       func(e *Encapsulator, buf []byte, n int) []byte
	}{
		{"ipip", IPIPOverhead, func(e *Encapsulator, buf []byte, n int) []byte { return e.IPIP(buf, n, nodeB) }},
		{"vxlan-payload", VXLANPayloadLen, func(e *Encapsulator, buf []byte, n int) []byte { return e.VXLANPayload(buf, n, vtepMACB) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := 0xffff - tc.overhead
			buf := make([]byte, Headroom+n)
			buf[Headroom] = 0x45
			out := tc.do(newTestEncapsulator(t), buf, n)
			if len(out) != 0xffff {
				t.Errorf("encapsulated length %d, want 65535", len(out))
			}
			if tc.overhead == IPIPOverhead && binary.BigEndian.Uint16(out[2:]) != 0xffff {
				t.Errorf("outer total length %d, want 65535", binary.BigEndian.Uint16(out[2:]))
			}
		})
	}
}

// Outer packets without DF get IDs that change from packet to packet; DF
// ones get 0.
func TestOuterIPID(t *testing.T) {
	e := newTestEncapsulator(t)
	noDF := buildInner(t, innerSpec{proto: layers.IPProtocolUDP, df: false, payloadLen: 10})
	df := buildInner(t, innerSpec{proto: layers.IPProtocolUDP, df: true, payloadLen: 10})
	id := func(inner []byte) uint16 {
		buf, n := atHeadroom(inner)
		return binary.BigEndian.Uint16(e.IPIP(buf, n, nodeB)[4:])
	}
	first := id(noDF)
	if got := id(df); got != 0 {
		t.Errorf("ID with DF = %d, want 0", got)
	}
	second := id(noDF)
	if second != first+1 {
		t.Errorf("IDs without DF %d %d, want consecutive", first, second)
	}
}

// FlowHash keeps a flow's packets together and tells flows apart: conn picks
// a VXLAN source port by it.
func TestFlowHash(t *testing.T) {
	tcp := func(srcPort uint16) []byte {
		return buildInner(t, innerSpec{proto: layers.IPProtocolTCP, df: true, srcPort: srcPort})
	}
	udp := func(srcPort uint16) []byte {
		return buildInner(t, innerSpec{proto: layers.IPProtocolUDP, srcPort: srcPort})
	}
	icmpWith := func(id byte) []byte {
		p := buildInner(t, innerSpec{proto: layers.IPProtocolICMPv4})
		p[24] = id // the identifier, where TCP/UDP ports would be
		return p
	}
	fragment := func(srcPort uint16, offset uint16) []byte {
		p := udp(srcPort)
		binary.BigEndian.PutUint16(p[6:], 0x2000|offset) // MF
		return p
	}
	withLength := func(p []byte, n int) []byte { return p[:n] }

	cases := []struct {
		name     string
		a, b     []byte
		wantSame bool
	}{
		{"same TCP flow, same port", tcp(40000), tcp(40000), true},
		{"TCP ports differ", tcp(40000), tcp(40001), false},
		{"UDP ports differ", udp(40000), udp(40001), false},
		{"TCP and UDP differ", tcp(40000), udp(40000), false},
		{"ICMP ignores the bytes at the port offset", icmpWith(1), icmpWith(2), true},
		{"fragments hash without ports", fragment(40000, 0), fragment(40001, 0), true},
		{"later fragments match the first", fragment(40000, 0), fragment(40001, 185), true},
		{"ports missing from a truncated packet", withLength(udp(40000), 22), withLength(udp(40001), 22), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ha, hb := FlowHash(tc.a), FlowHash(tc.b)
			if (ha == hb) != tc.wantSame {
				t.Errorf("hashes %#x and %#x, want same = %v", ha, hb, tc.wantSame)
			}
		})
	}
	t.Run("short packet", func(t *testing.T) {
		if h := FlowHash(make([]byte, 3)); h != 0 {
			t.Errorf("hash %#x for a 3-byte packet, want 0", h)
		}
	})
}

// Flows spread over a range the way conn spreads them over its source ports,
// by multiply-shift, which relies on the high bits of the hash: 20000 random
// TCP flows mapped onto Linux's 28232 ephemeral ports reach both ends of the
// range and use about as many distinct ports as uniform choice would.
func TestFlowHashSpread(t *testing.T) {
	const portMin, portMax = 32768, 60999
	rng := rand.New(rand.NewPCG(5, 6))
	p := buildInner(t, innerSpec{proto: layers.IPProtocolTCP, df: true})
	seen := make(map[uint16]int)
	const flows = 20000
	lo, hi := uint16(0xffff), uint16(0)
	for range flows {
		binary.BigEndian.PutUint32(p[12:], rng.Uint32()&0x0000ffff|0xc0a80000) // 192.168/16
		binary.BigEndian.PutUint16(p[20:], uint16(rng.Uint32()))
		port := uint16(portMin + uint64(FlowHash(p))*(portMax-portMin+1)>>32)
		seen[port]++
		lo, hi = min(lo, port), max(hi, port)
	}
	// Uniform choice among span ports gives span*(1-e^(-flows/span)), about
	// 14,200 distinct values; a poor hash falls far short.
	span := float64(portMax - portMin + 1)
	if want := span * (1 - math.Exp(-flows/span)); float64(len(seen)) < 0.95*want {
		t.Errorf("%d distinct ports for %d flows, want about %.0f", len(seen), flows, want)
	}
	if lo > portMin+100 || hi < portMax-100 {
		t.Errorf("ports span %d..%d, want close to %d..%d", lo, hi, portMin, portMax)
	}
}
