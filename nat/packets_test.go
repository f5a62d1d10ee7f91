package nat

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"unsafe"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/overlayd/overlayd/encap"
)

// decode parses an IPv4 packet with gopacket, independently of the
// builders, and fails the test unless both IPv4 and ICMPv4 decode.
func decode(t *testing.T, pkt []byte) (*layers.IPv4, *layers.ICMPv4) {
	t.Helper()
	p := gopacket.NewPacket(pkt, layers.LayerTypeIPv4, gopacket.Default)
	if el := p.ErrorLayer(); el != nil {
		t.Fatalf("does not decode: %v", el.Error())
	}
	ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	icmp, _ := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if ip == nil || icmp == nil {
		t.Fatalf("no IPv4 and ICMPv4 layers in %v", p)
	}
	return ip, icmp
}

// checksumsVerify reports whether pkt's IPv4 header and ICMP message sum to
// zero with their checksums in, as a receiver checks them.
func checksumsVerify(pkt []byte) bool {
	ip := header.IPv4(pkt)
	hl := int(ip.HeaderLength())
	return ip.IsChecksumValid() && onesSum(pkt[hl:ip.TotalLength()]) == 0xffff
}

func onesSum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

func ipEq(a net.IP, b string) bool { return a.Equal(net.ParseIP(b)) }

// packetOf is the packet in a buffer as Config.Out takes it, at
// encap.Headroom; nil for nil.
func packetOf(buf []byte) []byte {
	if buf == nil {
		return nil
	}
	return buf[encap.Headroom:]
}

func TestEchoReply(t *testing.T) {
	tests := []struct {
		name string
		data []byte
		// inPlace: the reply is built where the host socket's own echo
		// reply (another identifier, its checksum set) was read, as
		// echoReplies does.
		inPlace bool
	}{
		{"with a payload", []byte("payload of a ping, odd length"), false},
		{"empty", nil, false},
		{"over the host's reply", []byte("payload of a ping, odd length"), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf []byte
			data := tc.data
			if tc.inPlace {
				buf = make([]byte, encap.Headroom+header.IPv4MinimumSize+header.ICMPv4MinimumSize+len(tc.data))
				host := header.ICMPv4(buf[encap.Headroom+header.IPv4MinimumSize:])
				host.SetType(header.ICMPv4EchoReply)
				host.SetIdent(0x9999)
				host.SetSequence(7)
				data = host.Payload()
				copy(data, tc.data)
				host.SetChecksum(^checksum.Checksum(host, 0))
			}
			pkt := packetOf(echoReply(buf, netip.MustParseAddr("198.18.3.10"), netip.MustParseAddr("10.1.0.5"), 0x1234, 7, data))
			ip, icmp := decode(t, pkt)
			if !ipEq(ip.SrcIP, "198.18.3.10") || !ipEq(ip.DstIP, "10.1.0.5") || ip.Protocol != layers.IPProtocolICMPv4 {
				t.Errorf("IP %s -> %s proto %v, want 198.18.3.10 -> 10.1.0.5 ICMP", ip.SrcIP, ip.DstIP, ip.Protocol)
			}
			if icmp.TypeCode != layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoReply, 0) || icmp.Id != 0x1234 || icmp.Seq != 7 {
				t.Errorf("ICMP %v id %#x seq %d, want echo reply id 0x1234 seq 7", icmp.TypeCode, icmp.Id, icmp.Seq)
			}
			if !bytes.Equal(icmp.Payload, tc.data) {
				t.Errorf("payload %q, want %q", icmp.Payload, tc.data)
			}
			if !checksumsVerify(pkt) {
				t.Error("checksums do not verify")
			}
		})
	}
}

func TestICMPError(t *testing.T) {
	inside, dest := netip.MustParseAddrPort("10.1.0.5:40000"), netip.MustParseAddrPort("198.18.3.10:53")
	udp := udpQuote(inside, dest, 100)
	tests := []struct {
		name     string
		typ      header.ICMPv4Type
		code     header.ICMPv4Code
		mtu      uint16
		from     string
		quote    []byte
		wantNone bool
	}{
		{"port unreachable about a UDP datagram", header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, 0, "198.18.3.10", udp, false},
		{"admin prohibited for a refused flow", header.ICMPv4DstUnreachable, header.ICMPv4AdminProhibited, 0, "198.18.3.10", udp, false},
		{"time exceeded from a router on the way", header.ICMPv4TimeExceeded, header.ICMPv4TTLExceeded, 0, "198.18.3.254", udp, false},
		{"fragmentation needed carries the MTU", header.ICMPv4DstUnreachable, header.ICMPv4FragmentationNeeded, 1400, "198.18.3.254", udp, false},
		{"about an echo request", header.ICMPv4DstUnreachable, header.ICMPv4HostUnreachable, 0, "198.18.3.10",
			echoQuote(inside.Addr(), dest.Addr(), 9, 3, 56), false},
		{"never about an ICMP error", header.ICMPv4DstUnreachable, header.ICMPv4HostUnreachable, 0, "198.18.3.10",
			packetOf(icmpError(header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, 0, dest.Addr(), udp))[:28+8], true},
		{"never to an unspecified source", header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, 0, "198.18.3.10",
			udpQuote(netip.MustParseAddrPort("0.0.0.0:68"), dest, 10), true},
		{"never to a class E source", header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, 0, "198.18.3.10",
			udpQuote(netip.MustParseAddrPort("240.0.0.1:68"), dest, 10), true},
		{"nothing for a short quote", header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, 0, "198.18.3.10", udp[:10], true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pkt := packetOf(icmpError(tc.typ, tc.code, tc.mtu, netip.MustParseAddr(tc.from), tc.quote))
			if tc.wantNone {
				if pkt != nil {
					t.Errorf("built %x, want nothing", pkt)
				}
				return
			}
			ip, icmp := decode(t, pkt)
			if !ipEq(ip.SrcIP, tc.from) || !ipEq(ip.DstIP, "10.1.0.5") || ip.TTL != 64 {
				t.Errorf("IP %s -> %s TTL %d, want %s -> 10.1.0.5 TTL 64", ip.SrcIP, ip.DstIP, ip.TTL, tc.from)
			}
			if icmp.TypeCode != layers.CreateICMPv4TypeCode(uint8(tc.typ), uint8(tc.code)) {
				t.Errorf("type/code %v, want %d/%d", icmp.TypeCode, tc.typ, tc.code)
			}
			if tc.mtu != 0 && icmp.Seq != tc.mtu { // gopacket reads the MTU field as Seq
				t.Errorf("next-hop MTU %d, want %d", icmp.Seq, tc.mtu)
			}
			if want := tc.quote[:28]; !bytes.Equal(icmp.Payload, want) {
				t.Errorf("quote %x, want the IP header and 8 bytes %x", icmp.Payload, want)
			}
			if !checksumsVerify(pkt) {
				t.Error("checksums do not verify")
			}
		})
	}
}

func TestQuotesDecode(t *testing.T) {
	inside, dest := netip.MustParseAddrPort("10.1.0.5:40000"), netip.MustParseAddrPort("198.18.3.10:53")
	p := gopacket.NewPacket(udpQuote(inside, dest, 100), layers.LayerTypeIPv4, gopacket.Lazy)
	ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	u, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if ip == nil || u == nil {
		t.Fatalf("UDP quote does not decode: %v", p)
	}
	if ip.Length != 128 || u.Length != 108 || u.SrcPort != 40000 || u.DstPort != 53 || !ipEq(ip.DstIP, "198.18.3.10") {
		t.Errorf("UDP quote: IP length %d, UDP %d->%d length %d", ip.Length, u.SrcPort, u.DstPort, u.Length)
	}
	if !header.IPv4(udpQuote(inside, dest, 0)).IsChecksumValid() {
		t.Error("UDP quote: IP checksum does not verify")
	}
	e := echoQuote(inside.Addr(), dest.Addr(), 9, 3, 56)
	if seq, ok := quotedEcho(e, inside.Addr(), dest.Addr(), 9); !ok || seq != 3 {
		t.Errorf("quotedEcho of an echo quote: seq %d ok %v, want 3 true", seq, ok)
	}
	if _, ok := quotedEcho(e, inside.Addr(), dest.Addr(), 10); ok {
		t.Error("quotedEcho matched another identifier")
	}
}

func TestEchoRequestMsg(t *testing.T) {
	msg := echoRequestMsg(0x4242, 9, []byte("abc"))
	p := gopacket.NewPacket(msg, layers.LayerTypeICMPv4, gopacket.Default)
	icmp, _ := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if icmp == nil || icmp.TypeCode.Type() != layers.ICMPv4TypeEchoRequest || icmp.Id != 0x4242 || icmp.Seq != 9 || string(icmp.Payload) != "abc" {
		t.Fatalf("echo request %+v", icmp)
	}
	if onesSum(msg) != 0xffff {
		t.Error("checksum does not verify")
	}
}

func TestParseRecvErr(t *testing.T) {
	// A control message as the kernel writes it for an ICMP port
	// unreachable from 198.18.3.10.
	data := make([]byte, 16+unix.SizeofSockaddrInet4)
	binary.NativeEndian.PutUint32(data[0:], uint32(unix.ECONNREFUSED))
	data[4], data[5], data[6] = unix.SO_EE_ORIGIN_ICMP, 3, 3
	binary.NativeEndian.PutUint16(data[16:], unix.AF_INET)
	copy(data[20:24], []byte{198, 18, 3, 10})
	oob := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.IPPROTO_IP, unix.IP_RECVERR
	h.SetLen(unix.CmsgLen(len(data)))
	copy(oob[unix.CmsgLen(0):], data)

	r, ok := parseRecvErr(oob)
	if !ok || r.typ != 3 || r.code != 3 || r.offender != netip.MustParseAddr("198.18.3.10") {
		t.Errorf("parsed %+v ok %v, want type 3 code 3 from 198.18.3.10", r, ok)
	}
	data[4] = unix.SO_EE_ORIGIN_LOCAL
	copy(oob[unix.CmsgLen(0):], data)
	if _, ok := parseRecvErr(oob); ok {
		t.Error("a local error was taken for an ICMP one")
	}
}
