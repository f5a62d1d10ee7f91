package nat_test

import (
	"net"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/overlayd/overlayd/encap"
	"github.com/overlayd/overlayd/internal/testbed"
	"github.com/overlayd/overlayd/nat"
)

// FuzzNATPacket feeds arbitrary bytes to Deliver, the NAT's entry for
// packets from workloads: two packets, so a flow's first packet can be
// followed by another of it. With fix set, the header and transport
// checksums are made right first, so the fuzzer gets past the checks that
// would otherwise refuse almost every input.
//
// The NAT opens real host sockets toward whatever destination a packet
// names, so they are opened in a namespace of their own holding nothing
// but loopback and the NAT's outside address on it: no route leads
// anywhere, and nothing a fuzzed packet asks for leaves the machine. Every
// socket the NAT makes goes through its HostNet, and a socket keeps the
// namespace it was made in, whichever thread later uses it.
//
// It checks that nothing panics, that everything the NAT sends toward the
// workloads is one well-formed IPv4 packet with valid checksums, and that
// once the NAT is closed its table accounts for every flow it admitted.
func FuzzNATPacket(f *testing.F) {
	b := testbed.NewForTest(f, testbed.Options{})
	node, err := b.AddHost("fuzz")
	if err != nil {
		f.Fatal(err)
	}
	if err := node.IP("link", "set", "lo", "up"); err != nil {
		f.Fatal(err)
	}
	if err := node.IP("addr", "add", netip.PrefixFrom(nodeAddr, 32).String(), "dev", "lo"); err != nil {
		f.Fatal(err)
	}
	hostNet := &nsNet{host: node}
	for _, s := range natFuzzSeeds(f) {
		f.Add(s[0], s[1], true)
	}
	f.Add([]byte{0x45}, []byte(nil), false)
	f.Add(make([]byte, 20), []byte(nil), true)

	f.Fuzz(func(t *testing.T, first, second []byte, fix bool) {
		var (
			mu   sync.Mutex
			sent [][]byte
		)
		goroutines := runtime.NumGoroutine()
		n, err := nat.New(nat.Config{
			Outside: nodeAddr, Net: hostNet, Timeouts: shortTimeouts,
			Out: func(bufs [][]byte) error {
				mu.Lock()
				defer mu.Unlock()
				for _, b := range bufs {
					sent = append(sent, append([]byte(nil), b[encap.Headroom:]...))
				}
				return nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, data := range [][]byte{first, second} {
			pkt := append([]byte(nil), data...)
			if fix {
				fixChecksums(pkt)
			}
			n.Deliver(pkt)
			// Long enough for the inbound loop, the netstack and a dial
			// that fails at once to act on it.
			time.Sleep(2 * time.Millisecond)
		}
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
		// Inputs run one after another in a worker: a goroutine left
		// behind by Close would pile up.
		for deadline := time.Now().Add(time.Second); runtime.NumGoroutine() > goroutines; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d goroutines before the NAT, %d after it closed", goroutines, runtime.NumGoroutine())
			}
		}
		s := n.Stats()
		live := 0
		for _, c := range s.Flows {
			live += c
		}
		if live != len(n.Flows()) {
			t.Errorf("stats count %d flows, the table lists %d", live, len(n.Flows()))
		}
		if uint64(live)+s.Ended+s.Expired != s.Created {
			t.Errorf("%d flows live, %d ended and %d expired, but %d created", live, s.Ended, s.Expired, s.Created)
		}
		mu.Lock()
		defer mu.Unlock()
		for _, p := range sent {
			if err := checkIPv4(p); err != nil {
				t.Errorf("the NAT sent toward a workload %x: %v", p, err)
			}
		}
	})
}

// checkIPv4 says what is wrong with pkt as one IPv4 packet, or nil.
func checkIPv4(pkt []byte) error {
	ip := header.IPv4(pkt)
	if len(pkt) < header.IPv4MinimumSize || !ip.IsValid(len(pkt)) {
		return errString("not a valid IPv4 packet")
	}
	if int(ip.TotalLength()) != len(pkt) {
		return errString("total length is not the packet's")
	}
	if !ip.IsChecksumValid() {
		return errString("bad header checksum")
	}
	if ip.More() || ip.FragmentOffset() != 0 {
		return nil
	}
	payload := ip.Payload()
	switch ip.TransportProtocol() {
	case header.ICMPv4ProtocolNumber:
		if len(payload) < header.ICMPv4MinimumSize || checksum.Checksum(payload, 0) != 0xffff {
			return errString("bad ICMP checksum")
		}
	case header.TCPProtocolNumber, header.UDPProtocolNumber:
		proto := ip.TransportProtocol()
		if proto == header.UDPProtocolNumber {
			if len(payload) < header.UDPMinimumSize || int(header.UDP(payload).Length()) != len(payload) {
				return errString("UDP length is not the payload's")
			}
			if header.UDP(payload).Checksum() == 0 {
				return nil
			}
		} else if len(payload) < header.TCPMinimumSize {
			return errString("truncated TCP header")
		}
		sum := header.PseudoHeaderChecksum(proto, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(payload)))
		if checksum.Checksum(payload, sum) != 0xffff {
			return errString("bad transport checksum")
		}
	}
	return nil
}

type errString string

func (e errString) Error() string { return string(e) }

// fixChecksums sets the IPv4 header checksum and, for an unfragmented TCP,
// UDP or ICMP packet whose lengths hold, the transport checksum; anything
// else is left as it is.
func fixChecksums(pkt []byte) {
	if len(pkt) < header.IPv4MinimumSize {
		return
	}
	ip := header.IPv4(pkt)
	hl, total := int(ip.HeaderLength()), int(ip.TotalLength())
	if hl < header.IPv4MinimumSize || hl > len(pkt) {
		return
	}
	ip.SetChecksum(0)
	ip.SetChecksum(^ip.CalculateChecksum())
	if total < hl || total > len(pkt) || ip.More() || ip.FragmentOffset() != 0 {
		return
	}
	payload := pkt[hl:total]
	src, dst := tcpip.AddrFrom4Slice(pkt[12:16]), tcpip.AddrFrom4Slice(pkt[16:20])
	switch tcpip.TransportProtocolNumber(ip.Protocol()) {
	case header.ICMPv4ProtocolNumber:
		if len(payload) >= header.ICMPv4MinimumSize {
			m := header.ICMPv4(payload)
			m.SetChecksum(0)
			m.SetChecksum(^checksum.Checksum(payload, 0))
		}
	case header.TCPProtocolNumber:
		if len(payload) >= header.TCPMinimumSize {
			tcp := header.TCP(payload)
			tcp.SetChecksum(0)
			tcp.SetChecksum(^checksum.Checksum(payload, header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(payload)))))
		}
	case header.UDPProtocolNumber:
		if len(payload) >= header.UDPMinimumSize {
			udp := header.UDP(payload)
			udp.SetChecksum(0)
			udp.SetChecksum(^checksum.Checksum(payload, header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, uint16(len(payload)))))
		}
	}
}

// natFuzzSeeds are pairs of packets a workload sends: flows to the
// namespace's own address (refused: nothing listens) and to addresses no
// route reaches, a TTL about to expire, a fragment, an echo request.
func natFuzzSeeds(tb testing.TB) [][2][]byte {
	tb.Helper()
	local := netip.AddrPortFrom(nodeAddr, 80)
	far := netip.MustParseAddrPort("203.0.113.7:443")
	ser := func(ls ...gopacket.SerializableLayer) []byte {
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
			tb.Fatal(err)
		}
		return buf.Bytes()
	}
	ip := func(dst netip.Addr, proto layers.IPProtocol, ttl uint8) *layers.IPv4 {
		return &layers.IPv4{Version: 4, TTL: ttl, Protocol: proto, Flags: layers.IPv4DontFragment,
			SrcIP: net.IP(workloadA.AsSlice()), DstIP: net.IP(dst.AsSlice())}
	}
	tcp := func(dst netip.AddrPort, ttl uint8, set func(*layers.TCP)) []byte {
		h := ip(dst.Addr(), layers.IPProtocolTCP, ttl)
		seg := &layers.TCP{SrcPort: 40000, DstPort: layers.TCPPort(dst.Port()), Seq: 1000, Window: 65535}
		set(seg)
		if err := seg.SetNetworkLayerForChecksum(h); err != nil {
			tb.Fatal(err)
		}
		return ser(h, seg, gopacket.Payload(nil))
	}
	udp := func(dst netip.AddrPort, ttl uint8, payload string) []byte {
		h := ip(dst.Addr(), layers.IPProtocolUDP, ttl)
		d := &layers.UDP{SrcPort: 40001, DstPort: layers.UDPPort(dst.Port())}
		if err := d.SetNetworkLayerForChecksum(h); err != nil {
			tb.Fatal(err)
		}
		return ser(h, d, gopacket.Payload(payload))
	}
	echo := func(dst netip.Addr) []byte {
		return ser(ip(dst, layers.IPProtocolICMPv4, 64),
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 7, Seq: 1},
			gopacket.Payload("ping"))
	}
	syn := func(s *layers.TCP) { s.SYN = true }
	ack := func(s *layers.TCP) { s.ACK, s.Seq, s.Ack = true, 1001, 1 }
	fin := func(s *layers.TCP) { s.FIN, s.ACK, s.Seq, s.Ack = true, true, 1001, 1 }
	rst := func(s *layers.TCP) { s.RST, s.Seq = true, 1001 }
	fragment := udp(far, 64, "fragment")
	fragment[6], fragment[7] = 0x20, 0 // more fragments
	return [][2][]byte{
		{tcp(local, 64, syn), tcp(local, 64, ack)},
		{tcp(far, 64, syn), tcp(far, 64, fin)},
		{tcp(far, 64, syn), tcp(far, 64, rst)},
		{tcp(far, 1, syn), nil},
		{udp(netip.AddrPortFrom(nodeAddr, 53), 64, "query"), udp(netip.AddrPortFrom(nodeAddr, 53), 64, "again")},
		{udp(far, 64, "datagram"), udp(far, 0, "expired")},
		{fragment, nil},
		{echo(nodeAddr), echo(far.Addr())},
	}
}
