package encap

import (
	"testing"

	"github.com/gopacket/gopacket/layers"
)

// The per-packet path allocates nothing: each encapsulation, decapsulation
// and reply, run on a loop's buffer.
func TestPerPacketPathsDoNotAllocate(t *testing.T) {
	e := newTestEncapsulator(t)
	inner := buildInner(t, innerSpec{proto: layers.IPProtocolTCP, df: false, tos: ecnECT0, payloadLen: 1000})
	buf, n := atHeadroom(inner)
	ipip := append([]byte(nil), e.IPIP(buf, n, nodeB)...)
	payload := append([]byte(nil), e.VXLANPayload(buf, n, vtepMACB)...)
	cePayload := append([]byte(nil), payload...) // marked CE by the first call
	arp := arpRequest(t, vtepMACB, nodeB, podA)
	arpScratch := make([]byte, len(arp))
	icmp := make([]byte, MaxICMPErrorLen)

	paths := []struct {
		name string
		run  func()
	}{
		{"IPIP", func() { e.IPIP(buf, n, nodeB) }},
		{"VXLANPayload", func() { e.VXLANPayload(buf, n, vtepMACB) }},
		{"FlowHash", func() { FlowHash(inner) }},
		{"DecapIPIP", func() { DecapIPIP(ipip) }},
		{"OuterTOS", func() { OuterTOS(inner) }},
		{"DecapVXLANPayload", func() { DecapVXLANPayload(payload, testVNI, ecnECT0) }},
		{"DecapVXLANPayload with a CE mark", func() { DecapVXLANPayload(cePayload, testVNI, ecnCE) }},
		{"DecapIPIP drop", func() { DecapIPIP(payload) }},
		{"FragNeeded", func() { FragNeeded(icmp, inner, routerAddr, 1400) }},
		{"ARPReply", func() { copy(arpScratch, arp); ARPReply(arpScratch, podA, vtepMACA) }},
	}
	for _, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			if allocs := testing.AllocsPerRun(200, p.run); allocs != 0 {
				t.Errorf("%v allocations per run, want 0", allocs)
			}
		})
	}
}
