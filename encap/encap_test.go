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
		{"defaults", Config{Local: nodeA, VNI: DefaultVNI, Port: DefaultPort}, false},
		{"largest VNI", Config{VNI: MaxVNI, Port: DefaultPort}, false},
		{"VNI 0 is a VNI", Config{VNI: 0, Port: DefaultPort}, false},
		{"VNI over 24 bits", Config{VNI: MaxVNI + 1, Port: DefaultPort}, true},
		{"port 0", Config{VNI: DefaultVNI}, true},
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
		{"vxlan", func(e *Encapsulator, buf []byte, n int) []byte { return e.VXLAN(buf, n, nodeB, vtepMACB) }},
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
		{"vxlan", VXLANOverhead, func(e *Encapsulator, buf []byte, n int) []byte { return e.VXLAN(buf, n, nodeB, vtepMACB) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := 0xffff - tc.overhead
			buf := make([]byte, Headroom+n)
			buf[Headroom] = 0x45
			out := tc.do(newTestEncapsulator(t), buf, n)
			if len(out) != 0xffff || binary.BigEndian.Uint16(out[2:]) != 0xffff {
				t.Errorf("encapsulated length %d, want 65535", len(out))
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
	id := func(inner []byte, vxlan bool) uint16 {
		buf, n := atHeadroom(inner)
		var out []byte
		if vxlan {
			out = e.VXLAN(buf, n, nodeB, vtepMACB)
		} else {
			out = e.IPIP(buf, n, nodeB)
		}
		return binary.BigEndian.Uint16(out[4:])
	}
	first := id(noDF, false)
	if got := id(df, false); got != 0 {
		t.Errorf("ID with DF = %d, want 0", got)
	}
	second := id(noDF, true)
	third := id(noDF, false)
	if second != first+1 || third != first+2 {
		t.Errorf("IDs without DF %d %d %d, want consecutive (one counter per encapsulator)", first, second, third)
	}
}

func TestVXLANSourcePort(t *testing.T) {
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
			pa, pb := VXLANSourcePort(tc.a), VXLANSourcePort(tc.b)
			for _, p := range []uint16{pa, pb} {
				if p < SourcePortMin || p > SourcePortMax {
					t.Errorf("port %d outside %d..%d", p, SourcePortMin, SourcePortMax)
				}
			}
			if (pa == pb) != tc.wantSame {
				t.Errorf("ports %d and %d, want same = %v", pa, pb, tc.wantSame)
			}
		})
	}
	t.Run("short packet", func(t *testing.T) {
		if p := VXLANSourcePort(make([]byte, 3)); p != SourcePortMin {
			t.Errorf("port %d for a 3-byte packet, want %d", p, SourcePortMin)
		}
	})
}

// The mapping reaches both ends of the range and no further.
func TestPortFromHashBounds(t *testing.T) {
	cases := []struct {
		name string
		hash uint32
		want uint16
	}{
		{"smallest hash", 0, SourcePortMin},
		{"largest hash", 0xffffffff, SourcePortMax},
		{"middle", 0x80000000, SourcePortMin + (SourcePortMax-SourcePortMin+1)/2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := portFromHash(tc.hash); got != tc.want {
				t.Errorf("portFromHash(%#x) = %d, want %d", tc.hash, got, tc.want)
			}
		})
	}
}

// Flows spread over the whole range: 20000 random TCP flows reach both ends of
// it and use about as many distinct ports as uniform choice would.
func TestVXLANSourcePortSpread(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	p := buildInner(t, innerSpec{proto: layers.IPProtocolTCP, df: true})
	seen := make(map[uint16]int)
	const flows = 20000
	lo, hi := uint16(0xffff), uint16(0)
	for range flows {
		binary.BigEndian.PutUint32(p[12:], rng.Uint32()&0x0000ffff|0xc0a80000) // 192.168/16
		binary.BigEndian.PutUint16(p[20:], uint16(rng.Uint32()))
		port := VXLANSourcePort(p)
		seen[port]++
		lo, hi = min(lo, port), max(hi, port)
	}
	// Uniform choice among span ports gives span*(1-e^(-flows/span)), about
	// 14,200 distinct values; a poor hash falls far short.
	span := float64(SourcePortMax - SourcePortMin + 1)
	if want := span * (1 - math.Exp(-flows/span)); float64(len(seen)) < 0.95*want {
		t.Errorf("%d distinct ports for %d flows, want about %.0f", len(seen), flows, want)
	}
	if lo > SourcePortMin+100 || hi < SourcePortMax-100 {
		t.Errorf("ports span %d..%d, want close to %d..%d", lo, hi, SourcePortMin, SourcePortMax)
	}
}
