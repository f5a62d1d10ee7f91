package nat

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/overlayd/overlayd/encap"
)

// TestUDPReply: the poller's reply to a workload carries the datagram from
// the destination to the workload with valid checksums, in one packet up
// to the MTU and in fragments above it, and the packet in one piece is
// built in place without allocating.
func TestUDPReply(t *testing.T) {
	inside, dest := netip.MustParseAddrPort("10.1.0.5:40000"), netip.MustParseAddrPort("198.18.3.10:53")
	const mtu = 1500
	tests := []struct {
		name      string
		size      int
		fragments int
	}{
		{"empty", 0, 1},
		{"small", 100, 1},
		{"exactly the MTU", mtu - udpReplyHeaders, 1},
		{"one byte over the MTU", mtu - udpReplyHeaders + 1, 2},
		{"4000 bytes", 4000, 3},
		{"the largest datagram", 1<<16 - 1 - udpReplyHeaders, 45},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got [][]byte
			record := true
			n := &NAT{
				cfg: Config{MTU: mtu, Out: func(bufs [][]byte) error {
					for _, b := range bufs {
						if !record {
							continue
						}
						got = append(got, append([]byte(nil), b[encap.Headroom:]...))
					}
					return nil
				}},
				log:   slog.New(slog.DiscardHandler),
				table: newTable(context.Background(), 10, 10, Timeouts{}, time.Now),
			}
			e, _, _ := n.table.add(flowKey{protoUDP, inside, dest}, stateUnreplied)
			r := &udpReader{p: &udpPoller{n: n}, buf: make([]byte, datagramBufSize), frag: make([]byte, encap.Headroom+mtu), bufs: make([][]byte, 1)}
			payload := bytes.Repeat([]byte("0123456789abcdef"), tc.size/16+1)[:tc.size]
			copy(r.buf[encap.Headroom+udpReplyHeaders:], payload)
			r.reply(&udpSock{e: e}, tc.size)

			if len(got) != tc.fragments {
				t.Fatalf("%d packets, want %d", len(got), tc.fragments)
			}
			d := ip4Defragmenter()
			var whole *layers.IPv4
			for i, p := range got {
				if len(p) > mtu {
					t.Errorf("packet %d: %d bytes, over the MTU", i, len(p))
				}
				if !header.IPv4(p).IsChecksumValid() {
					t.Errorf("packet %d: bad IPv4 checksum", i)
				}
				ip := gopacket.NewPacket(p, layers.LayerTypeIPv4, gopacket.Default).Layer(layers.LayerTypeIPv4).(*layers.IPv4)
				out, err := d.DefragIPv4(ip)
				if err != nil {
					t.Fatalf("packet %d: %v", i, err)
				}
				if out != nil {
					whole = out
				}
			}
			if whole == nil {
				t.Fatal("the packets do not make a datagram")
			}
			if !whole.SrcIP.Equal(dest.Addr().AsSlice()) || !whole.DstIP.Equal(inside.Addr().AsSlice()) {
				t.Errorf("from %s to %s, want %s to %s", whole.SrcIP, whole.DstIP, dest.Addr(), inside.Addr())
			}
			u := header.UDP(whole.Payload)
			if u.SourcePort() != dest.Port() || u.DestinationPort() != inside.Port() || !bytes.Equal(u.Payload(), payload) {
				t.Errorf("UDP %d -> %d with %d bytes, want %d -> %d with the %d sent", u.SourcePort(), u.DestinationPort(), len(u.Payload()), dest.Port(), inside.Port(), tc.size)
			}
			if !udpChecksumValid(header.IPv4(got[0]), u) || u.Checksum() == 0 {
				t.Errorf("UDP checksum %#04x does not verify", u.Checksum())
			}
			if e.getState() != stateAssured || e.packetsIn.Load() != 1 {
				t.Errorf("flow %v with %d packets in, want ASSURED with 1", e.getState(), e.packetsIn.Load())
			}
			if tc.fragments == 1 {
				s := &udpSock{e: e}
				record = false
				if allocs := testing.AllocsPerRun(100, func() { r.reply(s, tc.size) }); allocs != 0 {
					t.Errorf("%v allocations per reply, want 0", allocs)
				}
			}
		})
	}
}

func ip4Defragmenter() *ip4Defrag { return &ip4Defrag{frags: map[uint16][]*layers.IPv4{}} }

// ip4Defrag reassembles the fragments of one source, enough for the test.
type ip4Defrag struct{ frags map[uint16][]*layers.IPv4 }

func (d *ip4Defrag) DefragIPv4(ip *layers.IPv4) (*layers.IPv4, error) {
	if ip.Flags&layers.IPv4MoreFragments == 0 && ip.FragOffset == 0 {
		return ip, nil
	}
	d.frags[ip.Id] = append(d.frags[ip.Id], ip)
	if ip.Flags&layers.IPv4MoreFragments != 0 {
		return nil, nil
	}
	var payload []byte
	for _, f := range d.frags[ip.Id] {
		if int(f.FragOffset)*8 != len(payload) {
			return nil, fmt.Errorf("fragment at %d bytes, want %d", int(f.FragOffset)*8, len(payload))
		}
		payload = append(payload, f.Payload...)
	}
	whole := *d.frags[ip.Id][0]
	whole.Payload = payload
	return &whole, nil
}

// TestUDPChecksumValid: a workload's datagram with a wrong checksum is not
// sent on; no checksum at all is IPv4's "none".
func TestUDPChecksumValid(t *testing.T) {
	good := make([]byte, udpReplyHeaders+5)
	copy(good[udpReplyHeaders:], "hello")
	putUDPReply(good, 5, netip.MustParseAddrPort("10.1.0.5:40000"), netip.MustParseAddrPort("198.18.3.10:53"), 1)
	tests := []struct {
		name  string
		edit  func(p []byte)
		valid bool
	}{
		{"as built", func([]byte) {}, true},
		{"a payload byte changed", func(p []byte) { p[len(p)-1] ^= 1 }, false},
		{"no checksum", func(p []byte) { header.UDP(p[header.IPv4MinimumSize:]).SetChecksum(0) }, true},
		{"no checksum and a byte changed", func(p []byte) {
			header.UDP(p[header.IPv4MinimumSize:]).SetChecksum(0)
			p[len(p)-1] ^= 1
		}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := append([]byte(nil), good...)
			tc.edit(p)
			if got := udpChecksumValid(header.IPv4(p), header.UDP(p[header.IPv4MinimumSize:])); got != tc.valid {
				t.Errorf("valid %v, want %v", got, tc.valid)
			}
		})
	}
}

// natAndPeer is a NAT whose replies go nowhere and a UDP socket on the
// host's address for it to send workloads' datagrams to; both are closed
// when the test ends.
func natAndPeer(t *testing.T) (*NAT, *net.UDPConn) {
	t.Helper()
	addr := hostAddr(t)
	peer, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	n, err := New(Config{Outside: addr, Out: func([][]byte) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n, peer
}

// TestLateDatagrams: a datagram that waited too long in the queue is
// dropped and counted when its flow has a socket, and sent otherwise: a
// new flow's first datagram opens its flow however late.
func TestLateDatagrams(t *testing.T) {
	n, peer := natAndPeer(t)
	dst := peer.LocalAddr().(*net.UDPAddr).AddrPort()
	pkt := make([]byte, udpReplyHeaders+1)
	tests := []struct {
		name string
		late bool
		sent bool
	}{
		{"a new flow's late first datagram opens it", true, true},
		{"a late datagram of a flow with a socket is dropped", true, false},
		{"one on time is sent", false, true},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := n.drops[dropQueueLate].Load()
			pkt[udpReplyHeaders] = byte(i)
			// A reply's builder makes the workload's datagram just as well.
			putUDPReply(pkt, 1, netip.MustParseAddrPort("10.1.0.5:40000"), dst, 1)
			n.admit(pkt, tc.late) // the inbound loop is idle: nothing is delivered
			_ = peer.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			buf := make([]byte, 16)
			k, err := peer.Read(buf)
			if sent := err == nil && k == 1 && buf[0] == byte(i); sent != tc.sent {
				t.Errorf("sent %v (read %d bytes, %v), want %v", sent, k, err, tc.sent)
			}
			if dropped := n.drops[dropQueueLate].Load() - before; dropped != map[bool]uint64{false: 1, true: 0}[tc.sent] {
				t.Errorf("%d counted late, want %d", dropped, map[bool]uint64{false: 1, true: 0}[tc.sent])
			}
		})
	}
}

// TestUDPSendAllocatesNothing: a datagram of a known flow goes from admit
// to its host socket without an allocation.
func TestUDPSendAllocatesNothing(t *testing.T) {
	addr := hostAddr(t)
	peer, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	n, err := New(Config{Outside: addr, Out: func([][]byte) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	pkt := make([]byte, udpReplyHeaders+64)
	putUDPReply(pkt, 64, netip.MustParseAddrPort("10.1.0.5:40000"), peer.LocalAddr().(*net.UDPAddr).AddrPort(), 1)
	n.admit(pkt, false) // opens the flow: that allocates
	if allocs := testing.AllocsPerRun(1000, func() { n.admit(pkt, false) }); allocs != 0 {
		t.Errorf("%v allocations per datagram, want 0", allocs)
	}
	if st := n.Stats(); st.Drops[DropSendFailed] != 0 || st.Ignored != 0 {
		t.Errorf("stats %+v: every datagram should have been sent", st)
	}
}

// TestFragmentedUDPChecksum: a workload's datagram in fragments, which the
// netstack reassembles, is sent on only if its checksum is right, as a
// whole one is: the netstack takes its packets' checksums as checked.
func TestFragmentedUDPChecksum(t *testing.T) {
	n, peer := natAndPeer(t)
	dst := peer.LocalAddr().(*net.UDPAddr).AddrPort()
	tests := []struct {
		name    string
		corrupt bool
	}{
		{"a right checksum is sent on", false},
		{"a wrong checksum is dropped and counted", true},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			const payloadLen = 32
			whole := make([]byte, udpReplyHeaders+payloadLen)
			for j := range payloadLen {
				whole[udpReplyHeaders+j] = byte(i*64 + j)
			}
			// A reply's builder makes the workload's datagram just as well.
			putUDPReply(whole, payloadLen, netip.MustParseAddrPort("10.1.0.5:40000"), dst, uint16(100+i))
			if tc.corrupt {
				whole[len(whole)-1] ^= 1
			}
			ignored := n.ignored.Load()
			for _, f := range []struct {
				from, to int // of the IPv4 payload, in multiples of 8
				more     bool
			}{{0, 16, true}, {16, 8 + payloadLen, false}} {
				frag := append(append([]byte(nil), whole[:header.IPv4MinimumSize]...), whole[header.IPv4MinimumSize+f.from:header.IPv4MinimumSize+f.to]...)
				ip := header.IPv4(frag)
				ip.SetTotalLength(uint16(len(frag)))
				var flags uint8
				if f.more {
					flags = header.IPv4FlagMoreFragments
				}
				ip.SetFlagsFragmentOffset(flags, uint16(f.from))
				ip.SetChecksum(0)
				ip.SetChecksum(^ip.CalculateChecksum())
				n.Deliver(frag)
			}
			_ = peer.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			buf := make([]byte, 64)
			k, err := peer.Read(buf)
			sent := err == nil && bytes.Equal(buf[:k], whole[udpReplyHeaders:])
			if sent == tc.corrupt {
				t.Errorf("sent on %v (read %d bytes, %v), want %v", sent, k, err, !tc.corrupt)
			}
			if tc.corrupt && n.ignored.Load() == ignored {
				t.Error("the datagram with a wrong checksum was not counted as ignored")
			}
		})
	}
}
