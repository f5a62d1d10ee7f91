package encap

import (
	"bytes"
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// arpRequest builds, with gopacket, an Ethernet frame holding an ARP request
// from (senderMAC, senderIP) for target.
func arpRequest(t *testing.T, senderMAC [6]byte, senderIP, target [4]byte) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr(senderMAC[:]), DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP}
	arp := &layers.ARP{
		AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
		HwAddressSize: 6, ProtAddressSize: 4, Operation: layers.ARPRequest,
		SourceHwAddress: senderMAC[:], SourceProtAddress: senderIP[:],
		DstHwAddress: make([]byte, 6), DstProtAddress: target[:],
	}
	return serializeLayers(t, eth, arp)
}

func TestARPReply(t *testing.T) {
	frame := arpRequest(t, vtepMACB, nodeB, podA)
	wantLen := len(frame)
	if !ARPReply(frame, podA, vtepMACA) {
		t.Fatal("ARPReply refused a request for our address")
	}
	if len(frame) != wantLen {
		t.Fatalf("frame length changed to %d", len(frame))
	}
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	eth, ok1 := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	arp, ok2 := p.Layer(layers.LayerTypeARP).(*layers.ARP)
	if !ok1 || !ok2 {
		t.Fatalf("gopacket decodes %v, want Ethernet and ARP", p.Layers())
	}
	checks := []struct {
		field     string
		got, want []byte
	}{
		{"Ethernet destination", eth.DstMAC, vtepMACB[:]},
		{"Ethernet source", eth.SrcMAC, vtepMACA[:]},
		{"ARP sender MAC", arp.SourceHwAddress, vtepMACA[:]},
		{"ARP sender IP", arp.SourceProtAddress, podA[:]},
		{"ARP target MAC", arp.DstHwAddress, vtepMACB[:]},
		{"ARP target IP", arp.DstProtAddress, nodeB[:]},
	}
	for _, c := range checks {
		if !bytes.Equal(c.got, c.want) {
			t.Errorf("%s = %x, want %x", c.field, c.got, c.want)
		}
	}
	if arp.Operation != layers.ARPReply || eth.EthernetType != layers.EthernetTypeARP {
		t.Errorf("operation %d type %v, want reply (2) ARP", arp.Operation, eth.EthernetType)
	}
}

func TestARPReplyRefuses(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(f []byte) []byte
	}{
		{"request for another address", func(f []byte) []byte { f[14+27] = 99; return f }},
		{"a reply, not a request", func(f []byte) []byte { f[14+7] = 2; return f }},
		{"opcode 3 (RARP)", func(f []byte) []byte { f[14+7] = 3; return f }},
		{"EtherType IPv4", func(f []byte) []byte { f[12], f[13] = 0x08, 0x00; return f }},
		{"hardware type 6", func(f []byte) []byte { f[14+1] = 6; return f }},
		{"protocol IPv6", func(f []byte) []byte { f[14+2], f[14+3] = 0x86, 0xdd; return f }},
		{"hardware address size 8", func(f []byte) []byte { f[14+4] = 8; return f }},
		{"protocol address size 16", func(f []byte) []byte { f[14+5] = 16; return f }},
		{"ARP cut one byte short", func(f []byte) []byte { return f[:14+27] }},
		{"Ethernet header only", func(f []byte) []byte { return f[:14] }},
		{"empty", func(f []byte) []byte { return f[:0] }},
		{"multicast sender MAC", func(f []byte) []byte { f[14+8] |= 1; return f }},
		{"sender claims our address", func(f []byte) []byte { copy(f[14+14:14+18], podA[:]); return f }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			frame := tc.mutate(arpRequest(t, vtepMACB, nodeB, podA))
			before := bytes.Clone(frame)
			if ARPReply(frame, podA, vtepMACA) {
				t.Fatal("ARPReply answered")
			}
			if !bytes.Equal(frame, before) {
				t.Errorf("refused frame was changed:\n got %x\nwant %x", frame, before)
			}
		})
	}
}

// An ARP probe (RFC 5227, sender address 0.0.0.0) for our address is
// answered: that is how the prober learns the address is taken.
func TestARPReplyAnswersProbe(t *testing.T) {
	frame := arpRequest(t, vtepMACB, [4]byte{}, podA)
	if !ARPReply(frame, podA, vtepMACA) {
		t.Fatal("ARPReply refused a probe for our address")
	}
}
