package encap

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/gopacket/gopacket/layers"
)

// validIPIP returns a fresh IP-in-IP packet from node A to node B and its
// inner packet.
func validIPIP(t *testing.T) (pkt, inner []byte) {
	t.Helper()
	inner = buildInner(t, innerSpec{proto: layers.IPProtocolTCP, df: true, payloadLen: 40})
	buf, n := atHeadroom(inner)
	return bytes.Clone(newTestEncapsulator(t).IPIP(buf, n, nodeB)), inner
}

// validVXLANPayload returns a fresh VXLAN payload, as a UDP socket delivers
// it, and its inner packet.
func validVXLANPayload(t *testing.T) (payload, inner []byte) {
	t.Helper()
	inner = buildInner(t, innerSpec{proto: layers.IPProtocolUDP, df: true, payloadLen: 40})
	buf, n := atHeadroom(inner)
	return bytes.Clone(newTestEncapsulator(t).VXLANPayload(buf, n, vtepMACB)), inner
}

// mutation changes a valid packet; fixing says whether the outer checksum is
// recomputed afterwards, so the packet fails for the reason under test alone.
type mutation struct {
	name   string
	mutate func(p []byte) []byte
	fix    bool
	want   DropReason
	// wantLen is the inner length expected when want is NoDrop; 0 means
	// the original inner length.
	wantLen int
}

func set16(off int, v uint16) func(p []byte) []byte {
	return func(p []byte) []byte { binary.BigEndian.PutUint16(p[off:], v); return p }
}

func set8(off int, v byte) func(p []byte) []byte {
	return func(p []byte) []byte { p[off] = v; return p }
}

func cut(n int) func(p []byte) []byte {
	return func(p []byte) []byte { return p[:n] }
}

// outerMutations are the outer IPv4 faults both transports refuse. Offsets
// are from the start of the outer packet.
func outerMutations(innerLen, overhead int) []mutation {
	total := overhead + innerLen
	return []mutation{
		{name: "empty packet", mutate: cut(0), want: Truncated},
		{name: "19 bytes, less than an IPv4 header", mutate: cut(19), want: Truncated},
		{name: "version 6", mutate: set8(0, 0x65), fix: true, want: BadVersion},
		{name: "IHL 4", mutate: set8(0, 0x44), fix: true, want: BadIHL},
		{name: "IHL 0", mutate: set8(0, 0x40), fix: true, want: BadIHL},
		{name: "IHL 6, options", mutate: set8(0, 0x46), fix: true, want: OuterOptions},
		{name: "IHL 15, options beyond the data", mutate: func(p []byte) []byte { p[0] = 0x4f; return p[:20] }, fix: true, want: OuterOptions},
		{name: "total length one more than the data", mutate: set16(2, uint16(total+1)), fix: true, want: BadLength},
		{name: "total length 19", mutate: set16(2, 19), fix: true, want: BadLength},
		{name: "data cut one byte short of total length", mutate: cut(total - 1), want: BadLength},
		{name: "checksum off by one", mutate: func(p []byte) []byte { p[11]++; return p }, want: BadChecksum},
		{name: "TTL changed without checksum", mutate: set8(8, 1), want: BadChecksum},
		{name: "more fragments set", mutate: set16(6, 0x2000), fix: true, want: OuterFragment},
		{name: "fragment offset 8", mutate: set16(6, 0x0001), fix: true, want: OuterFragment},
		{name: "last fragment with DF", mutate: set16(6, 0x4001), fix: true, want: OuterFragment},
		{name: "protocol 6", mutate: set8(9, 6), fix: true, want: WrongProtocol},
		{name: "padding after total length is trimmed", mutate: func(p []byte) []byte { return append(p, 0, 0, 0, 0, 0, 0) }, want: NoDrop},
		{name: "evil bit and a TTL of 1 are fine", mutate: func(p []byte) []byte { p[6] |= 0x80; p[8] = 1; return p }, fix: true, want: NoDrop},
	}
}

// innerMutations are the inner IPv4 faults; off is where the inner packet
// starts in the outer one.
func innerMutations(off, innerLen int) []mutation {
	shrinkOuter := func(n int) func(p []byte) []byte {
		return func(p []byte) []byte {
			binary.BigEndian.PutUint16(p[2:], uint16(n))
			return p[:n]
		}
	}
	return []mutation{
		{name: "inner 19 bytes", mutate: shrinkOuter(off + 19), fix: true, want: InnerTruncated},
		{name: "inner empty", mutate: shrinkOuter(off), fix: true, want: InnerTruncated},
		{name: "inner version 6", mutate: set8(off, 0x65), want: InnerBadVersion},
		{name: "inner version 0", mutate: set8(off, 0x05), want: InnerBadVersion},
		{name: "inner IHL 4", mutate: set8(off, 0x44), want: InnerBadIHL},
		{name: "inner total length beyond the tunnel payload", mutate: set16(off+2, uint16(innerLen+1)), want: InnerBadLength},
		{name: "inner total length 0", mutate: set16(off+2, 0), want: InnerBadLength},
		{name: "inner total length below its IHL", mutate: func(p []byte) []byte { p[off] = 0x46; binary.BigEndian.PutUint16(p[off+2:], 22); return p }, want: InnerBadLength},
		{name: "inner padding after its total length is trimmed", mutate: set16(off+2, uint16(innerLen-5)), want: NoDrop, wantLen: innerLen - 5},
		{name: "inner options are fine", mutate: set8(off, 0x46), want: NoDrop},
		{name: "outer CE on a not-ECT inner packet", mutate: set8(1, ecnCE), fix: true, want: ECNNotECT},
	}
}

func applyMutation(m mutation, pkt []byte) []byte {
	p := m.mutate(pkt)
	if m.fix && len(p) >= 20 {
		fixOuterChecksum(p)
	}
	return p
}

func TestDecapIPIPDropReasons(t *testing.T) {
	pkt, inner := validIPIP(t)
	cases := append(outerMutations(len(inner), IPIPOverhead), innerMutations(IPIPOverhead, len(inner))...)
	for _, m := range cases {
		t.Run(m.name, func(t *testing.T) {
			p := applyMutation(m, bytes.Clone(pkt))
			got, src, reason := DecapIPIP(p)
			if reason != m.want {
				t.Fatalf("reason %v, want %v", reason, m.want)
			}
			if reason != NoDrop {
				if got != nil {
					t.Errorf("dropped packet returned inner %x", got)
				}
				return
			}
			wantLen := m.wantLen
			if wantLen == 0 {
				wantLen = len(inner)
			}
			if len(got) != wantLen || !within(got, p) || src != nodeA {
				t.Errorf("inner %d bytes from %v, want %d bytes from %v", len(got), src, wantLen, nodeA)
			}
		})
	}
}

func TestDecapVXLANPayloadDropReasons(t *testing.T) {
	payload, inner := validVXLANPayload(t)
	const vxOff, ethOff = 0, 8
	innerOff := VXLANPayloadLen
	cases := []mutation{
		{name: "empty", mutate: cut(0), want: Truncated},
		{name: "VXLAN header only", mutate: cut(8), want: Truncated},
		{name: "Ethernet header one byte short", mutate: cut(21), want: Truncated},
		{name: "I flag missing", mutate: set8(vxOff, 0), want: MissingIFlag},
		{name: "reserved flag bits are ignored", mutate: set8(vxOff, 0xff), want: NoDrop},
		{name: "VNI 0", mutate: func(p []byte) []byte { p[4], p[5], p[6] = 0, 0, 0; return p }, want: WrongVNI},
		{name: "VNI 4097", mutate: set8(vxOff+6, 0x11), want: WrongVNI},
		{name: "EtherType IPv6", mutate: set16(ethOff+12, 0x86dd), want: BadEtherType},
		{name: "EtherType 802.1Q", mutate: set16(ethOff+12, 0x8100), want: BadEtherType},
		{name: "inner truncated", mutate: cut(innerOff + 10), want: InnerTruncated},
		{name: "nothing after the Ethernet header", mutate: cut(innerOff), want: InnerTruncated},
		{name: "inner version 6", mutate: set8(innerOff, 0x60), want: InnerBadVersion},
		{name: "inner IHL 2", mutate: set8(innerOff, 0x42), want: InnerBadIHL},
		{name: "inner longer than the payload", mutate: cut(len(payload) - 1), want: InnerBadLength},
		{name: "Ethernet padding after the inner packet is trimmed", mutate: func(p []byte) []byte { return append(p, make([]byte, 12)...) }, want: NoDrop},
	}
	for _, m := range cases {
		t.Run(m.name, func(t *testing.T) {
			p := m.mutate(bytes.Clone(payload))
			got, arp, reason := DecapVXLANPayload(p, testVNI, 0)
			if reason != m.want {
				t.Fatalf("reason %v, want %v", reason, m.want)
			}
			if reason != NoDrop && (got != nil || arp != nil) {
				t.Errorf("dropped packet returned inner %x ARP %x", got, arp)
			}
			if reason == NoDrop && (!bytes.Equal(got, inner) || !within(got, p) || arp != nil) {
				t.Errorf("inner %x ARP %x, want inner %x", got, arp, inner)
			}
		})
	}
}

// An ARP request inside VXLAN is reported, not dropped, with the frame to
// answer.
func TestDecapVXLANReportsARP(t *testing.T) {
	req := arpRequest(t, vtepMACB, nodeB, podA)
	payload := append([]byte{VXLANFlagVNI, 0, 0, 0, 0, 0x10, 0x00, 0}, req...)
	// An outer CE does not apply to ARP, which has no ECN field.
	inner, arp, reason := DecapVXLANPayload(payload, testVNI, ecnCE)
	if reason != NoDrop || inner != nil || !bytes.Equal(arp, req) || !within(arp, payload) {
		t.Fatalf("DecapVXLANPayload(ARP) = inner %x ARP %x %v, want the ARP frame", inner, arp, reason)
	}
}

// TestDecapECN walks RFC 6040's decapsulation table (section 4.2, figure 4)
// through both tunnels.
func TestDecapECN(t *testing.T) {
	const drop = 0xff
	names := [4]string{"not-ECT", "ECT(1)", "ECT(0)", "CE"}
	// want[inner][outer] is the resulting inner ECN, or drop.
	want := [4][4]uint8{
		ecnNotECT: {ecnNotECT: ecnNotECT, ecnECT0: ecnNotECT, ecnECT1: ecnNotECT, ecnCE: drop},
		ecnECT0:   {ecnNotECT: ecnECT0, ecnECT0: ecnECT0, ecnECT1: ecnECT1, ecnCE: ecnCE},
		ecnECT1:   {ecnNotECT: ecnECT1, ecnECT0: ecnECT1, ecnECT1: ecnECT1, ecnCE: ecnCE},
		ecnCE:     {ecnNotECT: ecnCE, ecnECT0: ecnCE, ecnECT1: ecnCE, ecnCE: ecnCE},
	}
	type decapFunc func(p []byte) ([]byte, DropReason)
	tunnels := []struct {
		name  string
		build func(e *Encapsulator, buf []byte, n int) []byte
		decap decapFunc
	}{
		{"ipip", func(e *Encapsulator, buf []byte, n int) []byte { return e.IPIP(buf, n, nodeB) },
			func(p []byte) ([]byte, DropReason) { in, _, r := DecapIPIP(p); return in, r }},
		// The outer IPv4 and UDP headers a UDP socket writes and takes
		// off, kept here to carry the outer TOS that OuterTOS gives the
		// sending socket and IP_RECVTOS gives the receiving one.
		{"vxlan", func(e *Encapsulator, buf []byte, n int) []byte {
			tos := OuterTOS(buf[Headroom:])
			outer := make([]byte, OuterIPv4UDPLen)
			outer[0], outer[1] = ipv4VersionIHL5, tos
			return append(outer, e.VXLANPayload(buf, n, vtepMACB)...)
		}, func(p []byte) ([]byte, DropReason) {
			in, _, r := DecapVXLANPayload(p[OuterIPv4UDPLen:], testVNI, p[1])
			return in, r
		}},
	}
	for _, tun := range tunnels {
		for innerECN := range uint8(4) {
			for outerECN := range uint8(4) {
				t.Run(tun.name+"/inner "+names[innerECN]+"/outer "+names[outerECN], func(t *testing.T) {
					const dscp = 46 << 2 // EF: must survive untouched
					inner := buildInner(t, innerSpec{proto: layers.IPProtocolUDP, tos: dscp | innerECN, payloadLen: 20})
					buf, n := atHeadroom(inner)
					pkt := tun.build(newTestEncapsulator(t), buf, n)
					if pkt[1] != inner[1] {
						t.Fatalf("outer TOS %#x, want the inner %#x (RFC 6040 normal mode)", pkt[1], inner[1])
					}
					pkt[1] = pkt[1]&^ECNMask | outerECN // as congested underlay routers mark it
					fixOuterChecksum(pkt)
					got, reason := tun.decap(pkt)
					w := want[innerECN][outerECN]
					if w == drop {
						if reason != ECNNotECT {
							t.Fatalf("reason %v, want %v", reason, ECNNotECT)
						}
						return
					}
					if reason != NoDrop {
						t.Fatalf("dropped: %v", reason)
					}
					if got[1] != dscp|w {
						t.Errorf("inner TOS %#x, want %#x", got[1], dscp|w)
					}
					if s := refSum(got[:20]); s != 0xffff {
						t.Errorf("inner header checksum no longer verifies (sum %#x)", s)
					}
				})
			}
		}
	}
}

func TestDecapECNOnShortInner(t *testing.T) {
	if r := decapECN(ecnCE, make([]byte, 19)); r != InnerTruncated {
		t.Errorf("decapECN(19 bytes) = %v, want %v", r, InnerTruncated)
	}
}
