package encap

import (
	"bytes"
	"crypto/sha256"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

var writeFuzzSeeds = flag.Bool("write-fuzz-seeds", false, "write the gopacket-built seeds into testdata/fuzz")

// fuzzSeedInners are the inner packets the seeds carry.
func fuzzSeedInners(tb testing.TB) [][]byte {
	var inners [][]byte
	for _, proto := range []layers.IPProtocol{layers.IPProtocolTCP, layers.IPProtocolUDP, layers.IPProtocolICMPv4} {
		for _, tos := range []uint8{0, ecnECT0, 46<<2 | ecnCE} {
			inners = append(inners, buildInnerTB(tb, innerSpec{proto: proto, df: tos == 0, tos: tos, payloadLen: 17}))
		}
	}
	return inners
}

// buildInnerTB is buildInner for fuzz targets, which have a testing.F.
func buildInnerTB(tb testing.TB, s innerSpec) []byte { return buildInner(tb, s) }

// gopacketOuterIPv4 is the outer header a gopacket-built tunnel packet gets.
func gopacketOuterIPv4(proto layers.IPProtocol, tos uint8) *layers.IPv4 {
	return &layers.IPv4{
		Version: 4, IHL: 5, TOS: tos, Id: 7, TTL: 64, Protocol: proto, Flags: layers.IPv4DontFragment,
		SrcIP: net.IP(nodeB[:]), DstIP: net.IP(nodeA[:]),
	}
}

func serializeTB(tb testing.TB, ls ...gopacket.SerializableLayer) []byte {
	tb.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, serialize, ls...); err != nil {
		tb.Fatalf("gopacket serialize: %v", err)
	}
	return buf.Bytes()
}

// ipipSeeds are IP-in-IP packets built by gopacket, plus an outer CE mark and
// a header with options to start the fuzzer near the interesting branches.
func ipipSeeds(tb testing.TB) [][]byte {
	var seeds [][]byte
	for _, inner := range fuzzSeedInners(tb) {
		seeds = append(seeds, serializeTB(tb, gopacketOuterIPv4(layers.IPProtocolIPv4, inner[1]), gopacket.Payload(inner)))
	}
	withOptions := gopacketOuterIPv4(layers.IPProtocolIPv4, ecnCE)
	withOptions.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}
	seeds = append(seeds, serializeTB(tb, withOptions, gopacket.Payload(fuzzSeedInners(tb)[0])))
	return seeds
}

// vxlanPayloadSeeds are VXLAN payloads (from the VXLAN header on) built by
// gopacket: IPv4 inner packets and an ARP request.
func vxlanPayloadSeeds(tb testing.TB) [][]byte {
	vx := func() *layers.VXLAN { return &layers.VXLAN{ValidIDFlag: true, VNI: testVNI} }
	eth := func(t layers.EthernetType) *layers.Ethernet {
		return &layers.Ethernet{SrcMAC: net.HardwareAddr(vtepMACB[:]), DstMAC: net.HardwareAddr(vtepMACA[:]), EthernetType: t}
	}
	var seeds [][]byte
	for _, inner := range fuzzSeedInners(tb) {
		seeds = append(seeds, serializeTB(tb, vx(), eth(layers.EthernetTypeIPv4), gopacket.Payload(inner)))
	}
	arp := &layers.ARP{
		AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
		HwAddressSize: 6, ProtAddressSize: 4, Operation: layers.ARPRequest,
		SourceHwAddress: vtepMACB[:], SourceProtAddress: podB[:],
		DstHwAddress: make([]byte, 6), DstProtAddress: podA[:],
	}
	seeds = append(seeds, serializeTB(tb, vx(), eth(layers.EthernetTypeARP), arp))
	return seeds
}

// checkAcceptedInner checks what every accepted inner packet must be: inside
// the input and a well-formed IPv4 packet exactly its total length long.
func checkAcceptedInner(t *testing.T, inner, pkt []byte) {
	t.Helper()
	if !within(inner, pkt) {
		t.Fatalf("inner packet lies outside the input")
	}
	if len(inner) < 20 || inner[0]>>4 != 4 || int(inner[0]&0xf)*4 < 20 ||
		int(inner[2])<<8|int(inner[3]) != len(inner) || int(inner[0]&0xf)*4 > len(inner) {
		t.Fatalf("accepted an invalid inner packet %x", inner)
	}
}

// checkOnlyECNChanged checks that decapsulation changed nothing in the input
// but, on acceptance, the inner ECN bits and header checksum, keeping a valid
// inner checksum valid.
func checkOnlyECNChanged(t *testing.T, before, after, inner []byte, accepted bool) {
	t.Helper()
	if !accepted || inner == nil {
		if !bytes.Equal(before, after) {
			t.Fatalf("a refused packet was modified")
		}
		return
	}
	start, _ := offsetIn(inner, after)
	b := bytes.Clone(before)
	wasValid := refSum(b[start:start+int(inner[0]&0xf)*4]) == 0xffff
	b[start+1] = after[start+1]
	b[start+10], b[start+11] = after[start+10], after[start+11]
	if !bytes.Equal(b, after) {
		t.Fatalf("decapsulation changed more than the inner ECN and checksum")
	}
	if before[start+1]&^ECNMask != after[start+1]&^ECNMask {
		t.Fatalf("decapsulation changed the inner DSCP")
	}
	if wasValid && refSum(inner[:int(inner[0]&0xf)*4]) != 0xffff {
		t.Fatalf("the ECN update broke a valid inner checksum")
	}
}

func FuzzDecapIPIP(f *testing.F) {
	for _, s := range ipipSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		pkt := bytes.Clone(data)
		inner, src, reason := DecapIPIP(pkt)
		if reason >= NumDropReasons {
			t.Fatalf("reason %d out of range", reason)
		}
		if (reason == NoDrop) != (inner != nil) {
			t.Fatalf("reason %v with inner %x", reason, inner)
		}
		if reason == NoDrop {
			checkAcceptedInner(t, inner, pkt)
			if src != [4]byte(pkt[12:16]) {
				t.Fatalf("outer source %v, header says %v", src, pkt[12:16])
			}
		}
		checkOnlyECNChanged(t, data, pkt, inner, reason == NoDrop)
	})
}

func FuzzDecapVXLANPayload(f *testing.F) {
	for _, s := range vxlanPayloadSeeds(f) {
		f.Add(s, vxlanSeedTOS(s))
	}
	f.Fuzz(func(t *testing.T, data []byte, outerTOS byte) {
		pkt := bytes.Clone(data)
		inner, arp, reason := DecapVXLANPayload(pkt, testVNI, outerTOS)
		checkVXLANOutcome(t, pkt, inner, arp, reason)
		checkOnlyECNChanged(t, data, pkt, inner, reason == NoDrop)
	})
}

// vxlanSeedTOS is the outer TOS a seed payload comes with: an RFC 6040
// encapsulator copies its inner packet's, and an ARP frame has none.
func vxlanSeedTOS(payload []byte) byte {
	if len(payload) > VXLANPayloadLen+tosOffset && payload[VXLANHeaderSize+12] == 0x08 && payload[VXLANHeaderSize+13] == 0x00 {
		return payload[VXLANPayloadLen+tosOffset]
	}
	return 0
}

// checkVXLANOutcome checks the invariants of a VXLAN decapsulation result.
func checkVXLANOutcome(t *testing.T, pkt, inner, arp []byte, reason DropReason) {
	t.Helper()
	if reason >= NumDropReasons {
		t.Fatalf("reason %d out of range", reason)
	}
	switch {
	case reason != NoDrop:
		if inner != nil || arp != nil {
			t.Fatalf("dropped (%v) with inner %x ARP %x", reason, inner, arp)
		}
	case inner != nil && arp == nil:
		checkAcceptedInner(t, inner, pkt)
	case inner == nil && arp != nil:
		if !within(arp, pkt) || len(arp) < 14 || arp[12] != 0x08 || arp[13] != 0x06 {
			t.Fatalf("ARP frame %x is not an ARP frame inside the input", arp)
		}
	default:
		t.Fatalf("accepted with inner %x and ARP %x: want exactly one", inner, arp)
	}
}

// TestWriteFuzzSeeds writes the gopacket-built seeds as corpus files under
// testdata/fuzz, so the committed corpus holds them next to what fuzzing
// found: go test -run TestWriteFuzzSeeds ./encap/ -args -write-fuzz-seeds
func TestWriteFuzzSeeds(t *testing.T) {
	if !*writeFuzzSeeds {
		t.Skip("run with -args -write-fuzz-seeds to rewrite the seed corpus")
	}
	targets := map[string][][]byte{
		"FuzzDecapIPIP":         ipipSeeds(t),
		"FuzzDecapVXLANPayload": vxlanPayloadSeeds(t),
	}
	for name, seeds := range targets {
		dir := filepath.Join("testdata", "fuzz", name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, s := range seeds {
			sum := sha256.Sum256(s)
			file := filepath.Join(dir, fmt.Sprintf("seed-%x", sum[:8]))
			content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
			if name == "FuzzDecapVXLANPayload" {
				content += fmt.Sprintf("byte(%q)\n", vxlanSeedTOS(s))
			}
			if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// The seeds start the fuzzer on the accepting paths: all but the deliberate
// outer-options one are accepted.
func TestFuzzSeedsAreAccepted(t *testing.T) {
	ipip := ipipSeeds(t)
	for i, s := range ipip {
		want := NoDrop
		if i == len(ipip)-1 {
			want = OuterOptions
		}
		if _, _, r := DecapIPIP(bytes.Clone(s)); r != want {
			t.Errorf("IP-in-IP seed %d: %v, want %v", i, r, want)
		}
	}
	for i, s := range vxlanPayloadSeeds(t) {
		if _, _, r := DecapVXLANPayload(bytes.Clone(s), testVNI, vxlanSeedTOS(s)); r != NoDrop {
			t.Errorf("VXLAN payload seed %d: %v", i, r)
		}
	}
}
