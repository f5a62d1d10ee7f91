package nat_test

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/overlayd/overlayd/internal/testbed"
	"github.com/overlayd/overlayd/nat"
)

// The hop bed: the node and the far host on two subnets, a router between
// them, so that a packet leaving the node with TTL 1 expires at the router.
var (
	hopAddr = netip.MustParseAddr("198.18.3.254") // the router, on the node's side
	farAddr = netip.MustParseAddr("198.18.4.10")
)

func newHopBed(t *testing.T) *bed {
	t.Helper()
	b := testbed.NewForTest(t, testbed.Options{})
	hosts := map[string]*testbed.Host{}
	for _, name := range []string{"node", "router", "far"} {
		h, err := b.AddHost(name)
		if err != nil {
			t.Fatal(err)
		}
		hosts[name] = h
	}
	node, router, far := hosts["node"], hosts["router"], hosts["far"]
	links := [][2]testbed.Endpoint{
		{{Host: node, Iface: "eth0", Addr: netip.PrefixFrom(nodeAddr, 24)}, {Host: router, Iface: "to-node", Addr: netip.PrefixFrom(hopAddr, 24)}},
		{{Host: router, Iface: "to-far", Addr: netip.MustParsePrefix("198.18.4.254/24")}, {Host: far, Iface: "eth0", Addr: netip.PrefixFrom(farAddr, 24)}},
	}
	for _, l := range links {
		if err := b.Link(l[0], l[1]); err != nil {
			t.Fatal(err)
		}
	}
	if err := router.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	// The router answers every probe: its per-destination limit of one
	// ICMP error a second (after a burst of 6) would drop the answers of
	// tests that follow each other within a second.
	if err := router.Sysctl("net.ipv4.icmp_ratelimit", "0"); err != nil {
		t.Fatal(err)
	}
	if err := node.IP("route", "add", "198.18.4.0/24", "via", hopAddr.String()); err != nil {
		t.Fatal(err)
	}
	if err := far.IP("route", "add", "198.18.3.0/24", "via", "198.18.4.254"); err != nil {
		t.Fatal(err)
	}
	return &bed{testbed: b, node: node, outside: far, router: router}
}

// serialize builds a workload's packet with gopacket.
func serialize(t *testing.T, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// udpProbe is a traceroute-style UDP probe from a workload.
func udpProbe(t *testing.T, src netip.AddrPort, dst netip.AddrPort, ttl, tos uint8) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: ttl, TOS: tos, Protocol: layers.IPProtocolUDP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
	udp := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	return serialize(t, ip, udp, gopacket.Payload("probe"))
}

func echoProbe(t *testing.T, src, dst netip.Addr, id, seq uint16, ttl uint8) []byte {
	t.Helper()
	return serialize(t,
		&layers.IPv4{Version: 4, TTL: ttl, Protocol: layers.IPProtocolICMPv4, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()},
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: id, Seq: seq},
		gopacket.Payload("probe"))
}

// icmpError is an ICMP error toward a workload, decoded.
type icmpError struct {
	from, to  netip.Addr
	typ, code uint8
	// quote is the quoted packet: its IPv4 header and what follows.
	quote      header.IPv4
	quoteLayer gopacket.Packet
}

func decodeICMPError(pkt []byte) icmpError {
	ip := header.IPv4(pkt)
	m := header.ICMPv4(ip.Payload())
	return icmpError{
		from: netip.AddrFrom4(ip.SourceAddress().As4()), to: netip.AddrFrom4(ip.DestinationAddress().As4()),
		typ: uint8(m.Type()), code: uint8(m.Code()),
		quote:      header.IPv4(m.Payload()),
		quoteLayer: gopacket.NewPacket(m.Payload(), layers.LayerTypeIPv4, gopacket.Default),
	}
}

func (e icmpError) quotedAddrs() (src, dst netip.Addr) {
	return netip.AddrFrom4(e.quote.SourceAddress().As4()), netip.AddrFrom4(e.quote.DestinationAddress().As4())
}

// quotedTCP reads the ports and sequence number of a quoted TCP segment:
// the 8 bytes an ICMP error quotes, which gopacket will not decode.
func (e icmpError) quotedTCP() (sport, dport uint16, seq uint32, ok bool) {
	if len(e.quote) < header.IPv4MinimumSize || e.quote.TransportProtocol() != header.TCPProtocolNumber {
		return 0, 0, 0, false
	}
	seg := header.TCP(e.quote[e.quote.HeaderLength():])
	if len(seg) < 8 {
		return 0, 0, 0, false
	}
	return seg.SourcePort(), seg.DestinationPort(), seg.SequenceNumber(), true
}

func isTimeExceeded(_ header.IPv4, m header.ICMPv4) bool {
	return m.Type() == header.ICMPv4TimeExceeded && m.Code() == header.ICMPv4TTLExceeded
}

// TestTTLExceeded: the workload's TTL goes on with its flows, so probes
// that would expire beyond the node expire there, and the router's ICMP
// time exceeded reaches the workload from the router, quoting the
// workload's own packet: traceroute through the NAT sees the hops.
func TestTTLExceeded(t *testing.T) {
	b := newHopBed(t)
	h := newHarness(t, b, nat.Config{})

	t.Run("UDP probes", func(t *testing.T) {
		src := netip.AddrPortFrom(workloadA, 40001)
		capture, err := b.outside.Capture("eth0")
		if err != nil {
			t.Fatal(err)
		}
		defer capture.Stop()
		for _, tc := range []struct {
			name          string
			ttl           uint8
			port          uint16
			from          netip.Addr
			typ, code     uint8
			wantFarTTLTOS bool
		}{
			{"TTL 1 expires at the router", 1, 33434, hopAddr, uint8(header.ICMPv4TimeExceeded), 0, false},
			{"TTL 2 reaches the closed port", 2, 33435, farAddr, uint8(header.ICMPv4DstUnreachable), uint8(header.ICMPv4PortUnreachable), true},
			{"TTL 0 expires at the node", 0, 33436, nodeAddr, uint8(header.ICMPv4TimeExceeded), 0, false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				dst := netip.AddrPortFrom(farAddr, tc.port)
				h.nat.Deliver(udpProbe(t, src, dst, tc.ttl, 0xb8))
				pkt := h.work.waitICMP(5*time.Second, func(ip header.IPv4, m header.ICMPv4) bool {
					q := header.IPv4(m.Payload())
					return len(q) >= 28 && header.UDP(q[q.HeaderLength():]).DestinationPort() == tc.port
				})
				if pkt == nil {
					t.Fatalf("no ICMP error about the probe to %s", dst)
				}
				e := decodeICMPError(pkt)
				if e.from != tc.from || e.to != workloadA || e.typ != tc.typ || e.code != tc.code {
					t.Errorf("ICMP %d/%d from %s to %s, want %d/%d from %s to %s", e.typ, e.code, e.from, e.to, tc.typ, tc.code, tc.from, workloadA)
				}
				qs, qd := e.quotedAddrs()
				u, ok := e.quoteLayer.Layer(layers.LayerTypeUDP).(*layers.UDP)
				if !ok || qs != workloadA || qd != farAddr || uint16(u.SrcPort) != src.Port() || uint16(u.DstPort) != tc.port {
					t.Errorf("the error quotes %v, want UDP %s -> %s", e.quoteLayer, src, dst)
				}
			})
		}
		// What reached the far host left the node with the TTL the
		// workload's probe had at the NAT, less the router's hop, and
		// its DSCP.
		reached := 0
		for _, p := range capture.Stop() {
			ip, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			if !ok || ip.Protocol != layers.IPProtocolUDP || !ip.DstIP.Equal(farAddr.AsSlice()) {
				continue
			}
			reached++
			if ip.TTL != 1 || ip.TOS != 0xb8 {
				t.Errorf("a probe reached the far host with TTL %d TOS %#x, want TTL 1 (2 less the router) and TOS 0xb8", ip.TTL, ip.TOS)
			}
		}
		if reached != 1 {
			t.Errorf("%d probes reached the far host, want only the one with TTL 2", reached)
		}
		if st := h.nat.Stats(); st.Ignored == 0 {
			t.Errorf("stats %+v: the TTL 0 probe was not counted as ignored", st)
		}
	})

	for _, kind := range []struct{ name, pingGroups string }{
		{"echo through a raw socket", "1 0"},
		{"echo through a ping socket", "0 2147483647"},
	} {
		t.Run(kind.name, func(t *testing.T) {
			if err := b.node.Sysctl("net.ipv4.ping_group_range", kind.pingGroups); err != nil {
				t.Fatal(err)
			}
			id := uint16(0x100 + len(kind.pingGroups))
			// One flow, each request with its own TTL, as traceroute -I
			// sends them.
			h.nat.Deliver(echoProbe(t, workloadA, farAddr, id, 1, 1))
			pkt := h.work.waitICMP(5*time.Second, isTimeExceeded)
			if pkt == nil {
				t.Fatal("no time exceeded for an echo request with TTL 1")
			}
			e := decodeICMPError(pkt)
			echo, ok := e.quoteLayer.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
			qs, qd := e.quotedAddrs()
			if e.from != hopAddr || !ok || qs != workloadA || qd != farAddr || echo.Id != id || echo.Seq != 1 {
				t.Errorf("time exceeded from %s quoting %v; want from %s quoting the echo %s -> %s id %#x seq 1", e.from, e.quoteLayer, hopAddr, workloadA, farAddr, id)
			}
			h.nat.Deliver(echoProbe(t, workloadA, farAddr, id, 2, 2))
			reply := h.work.waitICMP(5*time.Second, func(ip header.IPv4, m header.ICMPv4) bool {
				return m.Type() == header.ICMPv4EchoReply && m.Ident() == id && m.Sequence() == 2
			})
			if reply == nil {
				t.Fatal("no echo reply to the request with TTL 2 in the same flow")
			}
		})
	}

	t.Run("TCP SYN", func(t *testing.T) {
		ln := listenTCPAt(t, b.outside, netip.AddrPortFrom(farAddr, 80))
		testbed.ServeEcho(ln)
		h.work.tcpOn.Store(true)
		defer h.work.tcpOn.Store(false)
		dst := netip.AddrPortFrom(farAddr, 80)
		h.nat.Deliver(syn(t, workloadA, 41001, dst, 1))
		pkt := h.work.waitICMP(5*time.Second, isTimeExceeded)
		if pkt == nil {
			t.Fatal("no time exceeded for a SYN with TTL 1")
		}
		e := decodeICMPError(pkt)
		qs, qd := e.quotedAddrs()
		sport, dport, seq, ok := e.quotedTCP()
		if e.from != hopAddr || !ok || qs != workloadA || qd != farAddr || sport != 41001 || dport != 80 || seq != 1000 {
			t.Errorf("time exceeded from %s quoting %v; want from %s quoting the SYN %s:41001 -> %s seq 1000", e.from, e.quoteLayer, hopAddr, workloadA, dst)
		}
		// A NAT forwards the error and nothing else: no reset.
		select {
		case p := <-h.work.tcp:
			t.Errorf("the workload got %v after its SYN's time exceeded", gopacket.NewPacket(p, layers.LayerTypeIPv4, gopacket.Default))
		case <-time.After(300 * time.Millisecond):
		}
		// With a hop more the SYN reaches the server, which answers.
		h.nat.Deliver(syn(t, workloadA, 41002, dst, 2))
		deadline := time.After(5 * time.Second)
		for {
			select {
			case p := <-h.work.tcp:
				seg := header.TCP(header.IPv4(p).Payload())
				if seg.DestinationPort() == 41002 && seg.Flags()&(header.TCPFlagSyn|header.TCPFlagAck) == header.TCPFlagSyn|header.TCPFlagAck {
					return
				}
			case <-deadline:
				t.Fatal("no SYN-ACK to a SYN with TTL 2")
			}
		}
	})
}

// listenTCPAt listens on addr in a namespace of the bed.
func listenTCPAt(t *testing.T, h *testbed.Host, addr netip.AddrPort) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := h.Do(func() (err error) {
		ln, err = net.Listen("tcp4", addr.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// TestEstablishedTCPICMPError: an ICMP error about an established
// connection's segments reaches the workload quoting a segment its stack
// takes for its own; the connection lives on, as behind a real NAT, until
// the outside leg dies, when the workload is reset.
func TestEstablishedTCPICMPError(t *testing.T) {
	b := newHopBed(t)
	timeouts := shortTimeouts
	timeouts.TCPEstablished = time.Minute
	h := newHarness(t, b, nat.Config{Timeouts: timeouts})
	h.net.tcpUserTimeout = 2 * time.Second
	dst := netip.AddrPortFrom(farAddr, 7)
	testbed.ServeEcho(listenTCPAt(t, b.outside, dst))

	// The workload's highest sequence number sent, by its local port.
	var seqEnd atomic.Uint32
	var port atomic.Uint32
	track := func(pkt []byte) {
		ip := header.IPv4(pkt)
		if ip.TransportProtocol() != header.TCPProtocolNumber {
			return
		}
		seg := header.TCP(ip.Payload())
		if uint32(seg.SourcePort()) != port.Load() {
			return
		}
		end := seg.SequenceNumber() + uint32(len(seg.Payload()))
		if seg.Flags()&(header.TCPFlagSyn|header.TCPFlagFin) != 0 {
			end++
		}
		if int32(end-seqEnd.Load()) > 0 || seqEnd.Load() == 0 {
			seqEnd.Store(end)
		}
	}
	h.work.sent.Store(&track)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// unreachable makes the router answer host unreachable for the far
	// host until reachable is called or the subtest ends.
	unreachable := func(t *testing.T) {
		t.Helper()
		if err := b.router.IP("route", "add", "unreachable", farAddr.String()+"/32"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.router.IP("route", "del", "unreachable", farAddr.String()+"/32") })
	}
	reachable := func(t *testing.T) {
		t.Helper()
		if err := b.router.IP("route", "del", "unreachable", farAddr.String()+"/32"); err != nil {
			t.Fatal(err)
		}
	}
	connect := func(t *testing.T) net.Conn {
		t.Helper()
		c, err := h.work.dial(ctx, workloadA, dst)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		port.Store(uint32(c.LocalAddr().(*net.TCPAddr).Port))
		seqEnd.Store(0)
		echo(t, c, "before")
		return c
	}
	// waitUnreachable sends data the router refuses and returns the host
	// unreachable that reaches the workload.
	waitUnreachable := func(t *testing.T, c net.Conn) icmpError {
		t.Helper()
		if _, err := c.Write([]byte("during")); err != nil {
			t.Fatal(err)
		}
		pkt := h.work.waitICMP(5*time.Second, func(ip header.IPv4, m header.ICMPv4) bool {
			return m.Type() == header.ICMPv4DstUnreachable && m.Code() == header.ICMPv4HostUnreachable
		})
		if pkt == nil {
			t.Fatal("no host unreachable reached the workload")
		}
		e := decodeICMPError(pkt)
		qs, qd := e.quotedAddrs()
		sport, dport, seq, ok := e.quotedTCP()
		local := c.LocalAddr().(*net.TCPAddr)
		if !ok || qs != workloadA || qd != farAddr || int(sport) != local.Port || dport != 7 {
			t.Fatalf("host unreachable quoting %v, want the workload's connection %s -> %s", e.quoteLayer, local, dst)
		}
		// The workload has had all it sent acknowledged by the NAT's
		// netstack, so SND.UNA = SND.NXT = the end of what it sent.
		if seq != seqEnd.Load() {
			t.Errorf("the quote's sequence number is %d, want %d, within the workload's SND.UNA..SND.NXT", seq, seqEnd.Load())
		}
		return e
	}

	t.Run("a passing outage is a soft error", func(t *testing.T) {
		c := connect(t)
		unreachable(t)
		e := waitUnreachable(t, c)
		if e.from != farAddr {
			t.Errorf("host unreachable from %s, want the destination %s", e.from, farAddr)
		}
		reachable(t)
		// "during" was held by the host's TCP, which retransmits it now.
		want := "during"
		got := make([]byte, len(want))
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != want {
			t.Fatalf("after the outage the echo read %q, %v; want %q: the connection did not survive", got, err, want)
		}
		echo(t, c, "after")
	})

	t.Run("an outage that outlasts the outside leg resets the workload", func(t *testing.T) {
		c := connect(t)
		unreachable(t)
		waitUnreachable(t, c)
		// The host's TCP gives up after its user timeout (2 s).
		_ = c.SetReadDeadline(time.Now().Add(8 * time.Second))
		_, err := c.Read(make([]byte, 64))
		if err == nil || !strings.Contains(err.Error(), "reset") {
			t.Errorf("the workload read %v once the outside leg died, want a reset", err)
		}
	})
}

// echo writes msg on an echoed connection and reads it back.
func echo(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
	got := make([]byte, len(msg))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo of %q: %q, %v", msg, got, err)
	}
	_ = c.SetReadDeadline(time.Time{})
}
