package encap

import "gvisor.dev/gvisor/pkg/tcpip/header"

// ARPReply turns frame, an Ethernet frame holding an ARP request for ourIP
// (as a peer's kernel VXLAN device sends for our VTEP address), into the
// reply in place: Ethernet destination the requester, source ourMAC; ARP
// opcode 2, our MAC and IP as sender, the requester as target. The frame
// keeps its length, so the caller sends it back behind the same VXLAN
// header. It returns false, leaving frame untouched, for anything that is
// not a well-formed IPv4-over-Ethernet request for ourIP from a unicast
// sender that is not claiming ourIP itself.
func ARPReply(frame []byte, ourIP [4]byte, ourMAC [6]byte) bool {
	if len(frame) < header.EthernetMinimumSize+header.ARPSize {
		return false
	}
	if header.Ethernet(frame).Type() != header.ARPProtocolNumber {
		return false
	}
	arp := header.ARP(frame[header.EthernetMinimumSize:])
	if !arp.IsValid() || arp.Op() != header.ARPRequest {
		return false
	}
	if [4]byte(arp.ProtocolAddressTarget()) != ourIP {
		return false
	}
	senderMAC := [6]byte(arp.HardwareAddressSender())
	senderIP := [4]byte(arp.ProtocolAddressSender())
	// A group sender address cannot be answered; a sender using our address
	// is a conflict (or a gratuitous ARP), not a question.
	if senderMAC[0]&1 != 0 || senderIP == ourIP {
		return false
	}
	copy(frame[0:header.EthernetAddressSize], senderMAC[:])
	copy(frame[header.EthernetAddressSize:2*header.EthernetAddressSize], ourMAC[:])
	arp.SetOp(header.ARPReply)
	copy(arp.HardwareAddressTarget(), senderMAC[:])
	copy(arp.ProtocolAddressTarget(), senderIP[:])
	copy(arp.HardwareAddressSender(), ourMAC[:])
	copy(arp.ProtocolAddressSender(), ourIP[:])
	return true
}
