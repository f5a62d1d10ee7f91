package testbed

import (
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// How a captured frame carried a workload's packet.
const (
	CarriedBare  = "none"  // the packet itself, unencapsulated
	CarriedIPIP  = "ipip"  // inside an outer IPv4 header, protocol 4
	CarriedVXLAN = "vxlan" // inside outer IPv4, UDP and VXLAN, and an inner Ethernet header
)

// Carried decodes a captured frame down to the IPv4 packet it carries:
// outer is the frame's own IPv4 header, inner the carried packet (outer
// itself when bare), and vni the VXLAN network identifier. A frame with no
// IPv4 packet gives a nil inner.
func Carried(p gopacket.Packet) (kind string, outer, inner *layers.IPv4, vni uint32) {
	outer, _ = p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if outer == nil {
		return "", nil, nil, 0
	}
	switch outer.Protocol {
	case layers.IPProtocolIPv4:
		ip, _ := gopacket.NewPacket(outer.Payload, layers.LayerTypeIPv4, gopacket.Default).Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		return CarriedIPIP, outer, ip, 0
	case layers.IPProtocolUDP:
		if vx, _ := p.Layer(layers.LayerTypeVXLAN).(*layers.VXLAN); vx != nil {
			ip, _ := gopacket.NewPacket(vx.Payload, layers.LayerTypeEthernet, gopacket.Default).Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			return CarriedVXLAN, outer, ip, vx.VNI
		}
	}
	return CarriedBare, outer, outer, 0
}
