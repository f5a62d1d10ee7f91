package encap_test

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/overlayd/overlayd/conn"
	"github.com/overlayd/overlayd/encap"
	"github.com/overlayd/overlayd/internal/testbed"
)

// The kernel's VXLAN device as the peer of overlayd's VXLAN (VXLANPayload and
// encap.DecapVXLANPayload over a conn.UDPConn), on a bed of three namespaces:
//
//	krn (eth0 198.18.1.2, vxlan0 192.168.1.7) - rtr - ovl (eth0 198.18.2.2)
//
// rtr's kernel does not forward; a userspace router in the test does, and
// on the way to ovl it can mark every packet CE as a congested underlay
// router would (this kernel has no marking qdisc and no pedit action). Linux's VXLAN never sends an outer CE itself: with "tos
// inherit" the outer TOS is the inner DSCP and ECN, but ip_tunnel_ecn_encap
// (INET_ECN_encapsulate) turns an inner CE into an outer ECT(0), so an outer
// CE has to come from the underlay.
const (
	kernelVTEP = "vxlan0"
	innerPort  = 5201 // udpInner's UDP destination port
	dscpAF11   = 10 << 2
	dscpEF     = 46 << 2
)

var (
	krnUnderlay = [4]byte{198, 18, 1, 2}
	ovlUnderlay = [4]byte{198, 18, 2, 2}
)

type kernelBed struct {
	ovl, rtr, krn *testbed.Host
	// vxlan is overlayd's VXLAN socket, on ovl.
	vxlan *conn.UDPConn
	// markCE makes the router set CE on every packet it passes to ovl.
	markCE atomic.Bool
}

// The addresses and MACs of encap's own tests, for this external test
// (an internal one would import testbed, which imports encap through
// config).
var (
	podA     = [4]byte{192, 168, 0, 5}
	podB     = [4]byte{192, 168, 1, 7}
	vtepMACA = [6]byte{0x66, 0x01, 0x02, 0x03, 0x04, 0x05}
	vtepMACB = [6]byte{0x66, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e}
	testVNI  = uint32(4096) // Calico's default
)

// The ECN codepoints of RFC 3168, written out independently of encap's.
const (
	ecnNotECT = 0x00
	ecnECT1   = 0x01
	ecnECT0   = 0x02
	ecnCE     = 0x03
)

func newKernelBed(t *testing.T) *kernelBed {
	t.Helper()
	bed := testbed.NewForTest(t, testbed.Options{})
	host := func(name string) *testbed.Host {
		h, err := bed.AddHost(name)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	k := &kernelBed{ovl: host("ovl"), rtr: host("rtr"), krn: host("krn")}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	pfx := netip.MustParsePrefix
	must(bed.Link(testbed.Endpoint{Host: k.krn, Iface: "eth0", Addr: pfx("198.18.1.2/24")},
		testbed.Endpoint{Host: k.rtr, Iface: "a0", Addr: pfx("198.18.1.1/24")}))
	must(bed.Link(testbed.Endpoint{Host: k.rtr, Iface: "b0", Addr: pfx("198.18.2.1/24")},
		testbed.Endpoint{Host: k.ovl, Iface: "eth0", Addr: pfx("198.18.2.2/24")}))
	must(k.krn.IP("route", "add", "198.18.2.0/24", "via", "198.18.1.1"))
	must(k.ovl.IP("route", "add", "198.18.1.0/24", "via", "198.18.2.1"))
	// The kernel's VTEP: node B, with podB's address, overlayd's VTEP
	// (node A, podA) behind the default forwarding entry to ovl.
	for _, args := range [][]string{
		{"link", "add", kernelVTEP, "type", "vxlan", "id", "4096", "local", "198.18.1.2", "remote", "198.18.2.2",
			"dstport", "4789", "dev", "eth0", "tos", "inherit"},
		{"link", "set", kernelVTEP, "address", net.HardwareAddr(vtepMACB[:]).String(), "up"},
		{"addr", "add", "192.168.1.7/24", "dev", kernelVTEP},
		{"route", "add", "192.168.0.0/24", "dev", kernelVTEP},
		{"neigh", "add", "192.168.0.5", "lladdr", net.HardwareAddr(vtepMACA[:]).String(), "dev", kernelVTEP, "nud", "permanent"},
	} {
		must(k.krn.IP(args...))
	}
	must(k.ovl.Do(func() error {
		c, err := conn.ListenUDP(netip.AddrPortFrom(netip.AddrFrom4(ovlUnderlay), 4789))
		k.vxlan = c
		return err
	}))
	t.Cleanup(func() { k.vxlan.Close() })
	k.startRouter(t)
	return k
}

// routerPort is an AF_PACKET socket of rtr's taking and sending IPv4
// packets on one interface.
type routerPort struct{ fd, ifindex int }

func openRouterPort(iface string) (routerPort, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return routerPort{}, err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_IP)))
	if err != nil {
		return routerPort{}, err
	}
	tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
	if err := firstErr(
		unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: ifi.Index}),
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv),
	); err != nil {
		unix.Close(fd)
		return routerPort{}, err
	}
	return routerPort{fd: fd, ifindex: ifi.Index}, nil
}

// firstErr returns the first error of errs that is not nil.
func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// startRouter forwards between krn and ovl in userspace until the test
// ends, marking CE toward ovl while markCE is set.
func (k *kernelBed) startRouter(t *testing.T) {
	t.Helper()
	macOf := func(h *testbed.Host) (mac [8]byte) {
		t.Helper()
		if err := h.Do(func() error {
			ifi, err := net.InterfaceByName("eth0")
			if err == nil {
				copy(mac[:], ifi.HardwareAddr)
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return mac
	}
	krnMAC, ovlMAC := macOf(k.krn), macOf(k.ovl)
	var a, b routerPort
	if err := k.rtr.Do(func() error {
		var err error
		if a, err = openRouterPort("a0"); err != nil {
			return err
		}
		b, err = openRouterPort("b0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { forward(a, b, ovlUnderlay, ovlMAC, &k.markCE, stop) })
	wg.Go(func() { forward(b, a, krnUnderlay, krnMAC, nil, stop) })
	t.Cleanup(func() {
		close(stop)
		wg.Wait()
		unix.Close(a.fd)
		unix.Close(b.fd)
	})
}

// forward passes the IPv4 packets addressed to `to` that arrive on in out
// of out to the MAC address mac, setting CE on each while mark says so.
func forward(in, out routerPort, to [4]byte, mac [8]byte, mark *atomic.Bool, stop <-chan struct{}) {
	buf := make([]byte, 1<<16)
	dst := &unix.SockaddrLinklayer{Ifindex: out.ifindex, Protocol: htons(unix.ETH_P_IP), Halen: 6, Addr: mac}
	for {
		select {
		case <-stop:
			return
		default:
		}
		n, from, err := unix.Recvfrom(in.fd, buf, 0)
		if err != nil {
			continue // the receive timeout, to look at stop
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		pkt := buf[:n]
		if !ok || ll.Pkttype != unix.PACKET_HOST || n < 20 || pkt[0] != 0x45 || [4]byte(pkt[16:20]) != to {
			continue
		}
		if mark != nil && mark.Load() {
			pkt[1] |= ecnCE
			fixOuterChecksum(pkt)
		}
		completeUDPChecksum(pkt)
		_ = unix.Sendto(out.fd, pkt, 0, dst)
	}
}

// completeUDPChecksum computes the UDP checksum of an IPv4 packet whose
// sender left it to checksum offload (a packet socket sees the packet
// before the device would have filled it in); a zero checksum, none, stays.
func completeUDPChecksum(pkt []byte) {
	if pkt[9] != unix.IPPROTO_UDP || len(pkt) < 28 {
		return
	}
	u := pkt[20:]
	l := int(binary.BigEndian.Uint16(u[4:]))
	if u[6]|u[7] == 0 || l < 8 || l > len(u) {
		return
	}
	u[6], u[7] = 0, 0
	s := uint32(encap.RefSum(pkt[12:20])) + uint32(unix.IPPROTO_UDP) + uint32(l) + uint32(encap.RefSum(u[:l]))
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	sum := ^uint16(s)
	if sum == 0 {
		sum = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], sum)
}

// TestKernelVXLANPeerECN runs RFC 6040 across overlayd's VXLAN and the
// kernel's, both ways.
func TestKernelVXLANPeerECN(t *testing.T) {
	k := newKernelBed(t)
	t.Run("overlayd to kernel", k.testToKernel)
	t.Run("kernel to overlayd", k.testFromKernel)
}

// testToKernel sends inner packets of every ECN codepoint under several
// DSCPs through overlayd's encapsulation and the UDP socket, and checks on
// krn's wire that each outer header carries the inner TOS (what the
// kernel's VXLAN receive reads the ECN from) and that the kernel delivers
// each inner packet with its TOS. Neighbouring packets differ in TOS, so a
// GSO train joining them would show as one outer header for several.
func (k *kernelBed) testToKernel(t *testing.T) {
	tos := []uint8{0, ecnECT0, ecnECT1, ecnCE, dscpAF11 | ecnECT0, dscpEF | ecnECT1, dscpEF | ecnCE, dscpAF11, ecnECT0}
	var recv int
	if err := k.krn.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		recv = fd
		tv := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
		return firstErr(
			unix.Bind(fd, &unix.SockaddrInet4{Port: innerPort, Addr: podB}),
			unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_RECVTOS, 1),
			unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv),
		)
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(recv)
	capture, err := k.krn.Capture("eth0")
	if err != nil {
		t.Fatal(err)
	}

	e, err := encap.NewEncapsulator(encap.Config{Local: [4]byte{198, 18, 1, 10}, VTEPMAC: vtepMACA, VNI: testVNI})
	if err != nil {
		t.Fatal(err)
	}
	msgs := make([]conn.Message, len(tos))
	for i, v := range tos {
		inner := udpInner(t, v, uint16(41000+i))
		buf, n := make([]byte, encap.Headroom+len(inner)), len(inner)
		copy(buf[encap.Headroom:], inner)
		msgs[i] = conn.Message{Buf: e.VXLANPayload(buf, n, vtepMACB), Addr: krnUnderlay, Port: 4789, TOS: encap.OuterTOS(inner)}
	}
	if sent, err := k.vxlan.WriteBatch(msgs); err != nil || sent != len(msgs) {
		t.Fatalf("WriteBatch: %d of %d sent, %v", sent, len(msgs), err)
	}

	// What the kernel delivered, by inner source port.
	delivered := map[int]uint8{}
	buf, oob := make([]byte, 2048), make([]byte, 64)
	for range tos {
		_, oobn, _, from, err := unix.Recvmsg(recv, buf, oob, 0)
		if err != nil {
			t.Fatalf("the kernel delivered %d of %d inner packets: %v", len(delivered), len(tos), err)
		}
		cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			t.Fatal(err)
		}
		got := -1
		for _, c := range cmsgs {
			if c.Header.Level == unix.IPPROTO_IP && c.Header.Type == unix.IP_TOS && len(c.Data) >= 1 {
				got = int(c.Data[0])
			}
		}
		if got < 0 {
			t.Fatal("no IP_TOS control message from the kernel")
		}
		delivered[from.(*unix.SockaddrInet4).Port] = uint8(got)
	}
	for i, v := range tos {
		if got, ok := delivered[41000+i]; !ok || got != v {
			t.Errorf("inner packet %d (TOS %#02x): the kernel delivered it: %v, with TOS %#02x", i, v, ok, got)
		}
	}

	// What the kernel's VXLAN receive got on the wire.
	seen := map[int]int{}
	for _, p := range capture.Stop() {
		kind, outer, inner, vni := testbed.Carried(p)
		if pt, _ := testbed.PacketTypeOf(p); kind != testbed.CarriedVXLAN || pt != testbed.PacketHost || inner == nil || len(inner.Payload) < 2 {
			continue
		}
		i := int(binary.BigEndian.Uint16(inner.Payload)) - 41000
		if i < 0 || i >= len(tos) {
			continue
		}
		seen[i]++
		if outer.TOS != tos[i] || inner.TOS != tos[i] || vni != testVNI {
			t.Errorf("packet %d on the wire: outer TOS %#02x, inner %#02x, VNI %d; want %#02x, %#02x, %d",
				i, outer.TOS, inner.TOS, vni, tos[i], tos[i], testVNI)
		}
	}
	for i := range tos {
		if seen[i] != 1 {
			t.Errorf("packet %d (TOS %#02x) seen %d times on krn's wire with an outer header of its own, want 1", i, tos[i], seen[i])
		}
	}
}

// testFromKernel has the kernel encapsulate a packet of every ECN codepoint
// (its VXLAN device inherits the inner TOS) and checks what overlayd's
// socket reports as the outer TOS and what decapsulation makes of it: the
// inner packet unchanged when the underlay left the ECN alone, and, when
// the router marked the outer CE, the inner packet CE, or dropped as
// encap.ECNNotECT if it is not ECN-capable.
func (k *kernelBed) testFromKernel(t *testing.T) {
	var send int
	if err := k.krn.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		send = fd
		return unix.Bind(fd, &unix.SockaddrInet4{Addr: podB})
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(send)
	names := [4]string{"not-ECT", "ECT(1)", "ECT(0)", "CE"}
	for _, marked := range []bool{false, true} {
		k.markCE.Store(marked)
		for innerECN := range uint8(4) {
			name := names[innerECN]
			if marked {
				name += " marked CE on the underlay"
			}
			t.Run(name, func(t *testing.T) {
				tos := dscpAF11 | innerECN
				if err := unix.SetsockoptInt(send, unix.IPPROTO_IP, unix.IP_TOS, int(tos)); err != nil {
					t.Fatal(err)
				}
				data := []byte("kernel to overlayd: " + name)
				if err := unix.Sendto(send, data, 0, &unix.SockaddrInet4{Port: innerPort, Addr: podA}); err != nil {
					t.Fatal(err)
				}
				m := k.readOne(t)

				// The kernel's outer ECN: the inner one, but ECT(0) for CE
				// (INET_ECN_encapsulate); then the router's CE.
				wantOuter := tos
				if innerECN == ecnCE {
					wantOuter = dscpAF11 | ecnECT0
				}
				if marked {
					wantOuter |= ecnCE
				}
				if m.Addr != krnUnderlay || m.TOS != wantOuter {
					t.Errorf("from %v with outer TOS %#02x, want from %v with %#02x", m.Addr, m.TOS, krnUnderlay, wantOuter)
				}

				inner, arp, reason := encap.DecapVXLANPayload(m.Buf[:m.N], testVNI, m.TOS)
				if marked && innerECN == ecnNotECT {
					if reason != encap.ECNNotECT {
						t.Fatalf("decapsulation: %v, want %v (outer CE, inner not ECN-capable)", reason, encap.ECNNotECT)
					}
					return
				}
				if reason != encap.NoDrop || arp != nil {
					t.Fatalf("decapsulation: %v (ARP %x), want the inner packet", reason, arp)
				}
				wantInner := tos
				if marked {
					wantInner = dscpAF11 | ecnCE
				}
				if inner[1] != wantInner || encap.RefSum(inner[:20]) != 0xffff {
					t.Errorf("inner TOS %#02x (header sum %#04x), want %#02x with a valid checksum", inner[1], encap.RefSum(inner[:20]), wantInner)
				}
				if encap.IPv4Source(inner) != podB || encap.IPv4Destination(inner) != podA || string(inner[28:]) != string(data) {
					t.Errorf("inner packet %x is not the kernel's datagram from %v to %v", inner, podB, podA)
				}
			})
		}
	}
	k.markCE.Store(false)
}

// readOne receives one message from overlayd's socket, failing the test if
// none comes within 5 seconds.
func (k *kernelBed) readOne(t *testing.T) conn.Message {
	t.Helper()
	msgs := []conn.Message{{Buf: make([]byte, 2048)}}
	done := make(chan error, 1)
	go func() {
		_, err := k.vxlan.ReadBatch(msgs)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		k.vxlan.Close() // unblocks the read; the bed is done for
		<-done
		t.Fatal("nothing arrived from the kernel's VXLAN in 5 s")
	}
	return msgs[0]
}

// fixOuterChecksum recomputes the checksum of the IPv4 header pkt starts
// with.
func fixOuterChecksum(pkt []byte) {
	pkt[10], pkt[11] = 0, 0
	s := ^encap.RefSum(pkt[:int(pkt[0]&0x0f)*4])
	pkt[10], pkt[11] = byte(s>>8), byte(s)
}

// udpInner is a UDP packet from podA to podB's innerPort with DF set, the
// given TOS and 100 bytes of payload, built by gopacket.
func udpInner(t *testing.T, tos uint8, srcPort uint16) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, IHL: 5, TOS: tos, Id: 0x1234, TTL: 63, Protocol: layers.IPProtocolUDP,
		Flags: layers.IPv4DontFragment, SrcIP: net.IP(podA[:]), DstIP: net.IP(podB[:])}
	udp := &layers.UDP{SrcPort: layers.UDPPort(srcPort), DstPort: innerPort}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 100)
	for i := range payload {
		payload[i] = byte(i*7 + 3)
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, ip, udp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
