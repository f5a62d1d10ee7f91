package nat_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/overlayd/overlayd/internal/testbed"
	"github.com/overlayd/overlayd/nat"
)

// TestTCPTransfer moves 10 MB each way between a workload and a server
// outside, half-closing in turn, and checks every byte, the address the
// server sees and the table entry.
func TestTCPTransfer(t *testing.T) {
	b := newBed(t)
	h := newHarness(t, b, nat.Config{})
	const size = 10 << 20
	dst := netip.AddrPortFrom(outsideAddr, 8001)
	var (
		local netip.AddrPort // the workload's end
		flows []nat.Flow     // the table after the upload
	)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := testbed.Transfer{
		Listener: listenTCP(t, b.outside, dst.Port()),
		Dial: func(ctx context.Context) (net.Conn, error) {
			c, err := h.work.dial(ctx, workloadA, dst)
			if err != nil {
				return nil, err
			}
			return c, nil
		},
		Size: size,
		Uploaded: func(c net.Conn) {
			local = c.LocalAddr().(*net.TCPAddr).AddrPort()
			flows = h.nat.Flows()
		},
	}.Run(ctx)
	if err != nil {
		t.Fatalf("through the NAT: %v", err)
	}
	netstackPackets := h.nat.NetstackPackets()
	t.Logf("through the NAT: %v; the netstack took %d packets", res, netstackPackets)
	// The upload alone is over 7,000 full-sized segments; GRO joins those
	// that come in one batch, so the netstack takes far fewer packets.
	if segments := uint64(size / 1460); netstackPackets > segments/2 {
		t.Errorf("the netstack took %d packets for an upload of %d segments and its acknowledgments: GRO joined next to nothing", netstackPackets, segments)
	}

	if res.ClientSeenAs.Addr() != nodeAddr {
		t.Errorf("the server saw %s, want the node's address %s", res.ClientSeenAs, nodeAddr)
	}
	if len(flows) != 1 {
		t.Fatalf("mid-transfer the table holds %d flows, want 1:%s", len(flows), describe(flows))
	}
	f := flows[0]
	if f.Proto != "tcp" || f.Inside != local || f.Dest != dst || f.Outside != res.ClientSeenAs {
		t.Errorf("flow %+v, want tcp %s -> %s via %s", f, local, dst, res.ClientSeenAs)
	}
	// The workload's FIN is through, the server's not yet.
	if f.State != "FIN_WAIT" || f.BytesOut < size || f.PacketsIn == 0 {
		t.Errorf("flow after the upload: %s, %d bytes out, %d packets in; want FIN_WAIT, over %d bytes out", f.State, f.BytesOut, f.PacketsIn, size)
	}
	h.waitFlows(t, 0, 5*time.Second)
	if st := h.nat.Stats(); st.Created != 1 || st.Ended != 1 || st.Expired != 0 {
		t.Errorf("stats %+v: want 1 flow created and ended, none expired", st)
	}
}

// TestUDP: a request and its reply; only the destination may answer; a
// closed port answers ICMP port unreachable, carried to the workload.
func TestUDP(t *testing.T) {
	b := newBed(t)
	h := newHarness(t, b, nat.Config{})
	srv := listenUDP(t, b.outside, 8053)
	seen := make(chan netip.AddrPort, 4)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := srv.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			seen <- from
			_, _ = srv.WriteToUDPAddrPort(append([]byte("re:"), buf[:n]...), from)
		}
	}()
	c, err := h.work.dialUDP(workloadA, netip.AddrPortFrom(outsideAddr, 8053))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	read := func(d time.Duration) (string, error) {
		_ = c.SetReadDeadline(time.Now().Add(d))
		buf := make([]byte, 2048)
		n, err := c.Read(buf)
		return string(buf[:n]), err
	}

	t.Run("request and reply", func(t *testing.T) {
		if _, err := c.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		if got, err := read(5 * time.Second); err != nil || got != "re:hello" {
			t.Fatalf("reply %q, %v; want re:hello", got, err)
		}
		from := <-seen
		if from.Addr() != nodeAddr {
			t.Errorf("the server saw %s, want the node's address", from)
		}
		flows := flowsOf(h.nat.Flows(), "udp")
		if len(flows) != 1 || flows[0].State != "ASSURED" || flows[0].Outside != from || flows[0].PacketsIn != 1 {
			t.Errorf("flows:%s\nwant one ASSURED flow via %s with 1 packet in", describe(flows), from)
		}
	})

	t.Run("only the destination can answer", func(t *testing.T) {
		flows := flowsOf(h.nat.Flows(), "udp")
		if len(flows) != 1 {
			t.Fatalf("flows:%s", describe(flows))
		}
		stranger := listenUDP(t, b.outside, 8054)
		if _, err := stranger.WriteToUDPAddrPort([]byte("stray"), flows[0].Outside); err != nil {
			t.Fatal(err)
		}
		if got, err := read(500 * time.Millisecond); err == nil {
			t.Errorf("the workload got %q from another port of the outside host", got)
		}
	})

	t.Run("a closed port answers port unreachable", func(t *testing.T) {
		closed, err := h.work.dialUDP(workloadA, netip.AddrPortFrom(outsideAddr, 9))
		if err != nil {
			t.Fatal(err)
		}
		defer closed.Close()
		if _, err := closed.Write([]byte("anyone?")); err != nil {
			t.Fatal(err)
		}
		local := closed.LocalAddr().(*net.UDPAddr)
		pkt := h.work.waitICMP(5*time.Second, func(ip header.IPv4, m header.ICMPv4) bool {
			return m.Type() == header.ICMPv4DstUnreachable && m.Code() == header.ICMPv4PortUnreachable
		})
		if pkt == nil {
			t.Fatal("no ICMP port unreachable reached the workload")
		}
		p := gopacket.NewPacket(pkt, layers.LayerTypeIPv4, gopacket.Default)
		ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		icmp := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
		quote := gopacket.NewPacket(icmp.Payload, layers.LayerTypeIPv4, gopacket.Default)
		inner, ok := quote.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if !ok || !ip.SrcIP.Equal(outsideAddr.AsSlice()) || !ip.DstIP.Equal(workloadA.AsSlice()) ||
			int(inner.SrcPort) != local.Port || inner.DstPort != 9 {
			t.Errorf("ICMP error %v quoting %v: want from %s to %s quoting UDP %d -> 9", p, quote, outsideAddr, workloadA, local.Port)
		}
	})

	t.Run("idle flows expire", func(t *testing.T) {
		h.waitFlows(t, 0, shortTimeouts.UDPAssured+2*time.Second)
		if st := h.nat.Stats(); st.Expired != 2 {
			t.Errorf("stats %+v: want both UDP flows expired", st)
		}
	})
}

// echoRequest builds a workload's echo request with gopacket.
func echoRequest(t *testing.T, src, dst netip.Addr, id, seq uint16, payload []byte) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true},
		&layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()},
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: id, Seq: seq},
		gopacket.Payload(payload))
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestPing: echo requests get the destination's real replies, through a
// ping socket where the namespace allows them and a raw socket otherwise;
// an address nobody has gets no reply.
func TestPing(t *testing.T) {
	b := newBed(t)
	tests := []struct {
		name, pingGroups, kind string
	}{
		{"through a raw socket", "1 0", "raw"},
		{"through a ping socket", "0 2147483647", "ping"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := b.node.Sysctl("net.ipv4.ping_group_range", tc.pingGroups); err != nil {
				t.Fatal(err)
			}
			// Long enough an ICMP timeout to outlive ARP giving up on the
			// address nobody has (3 s).
			timeouts := shortTimeouts
			timeouts.ICMP = 10 * time.Second
			h := newHarness(t, b, nat.Config{Timeouts: timeouts})
			payload := []byte("abcdefghijklmnopqrstuvwxyz0123456789")
			for seq := uint16(1); seq <= 3; seq++ {
				h.nat.Deliver(echoRequest(t, workloadA, outsideAddr, 0x77, seq, payload))
				reply := h.work.waitICMP(5*time.Second, func(ip header.IPv4, m header.ICMPv4) bool {
					return m.Type() == header.ICMPv4EchoReply && m.Sequence() == seq
				})
				if reply == nil {
					t.Fatalf("no echo reply to seq %d", seq)
				}
				p := gopacket.NewPacket(reply, layers.LayerTypeIPv4, gopacket.Default)
				ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
				icmp := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
				if !ip.SrcIP.Equal(outsideAddr.AsSlice()) || !ip.DstIP.Equal(workloadA.AsSlice()) || icmp.Id != 0x77 || !bytes.Equal(icmp.Payload, payload) {
					t.Errorf("reply %v: want from %s to %s, id 0x77, the same payload", p, outsideAddr, workloadA)
				}
			}
			if kinds := h.net.kinds(); len(kinds) != 1 || kinds[0] != tc.kind {
				t.Errorf("host ICMP sockets opened: %v, want one %s socket for the flow", kinds, tc.kind)
			}
			flows := flowsOf(h.nat.Flows(), "icmp")
			if len(flows) != 1 || flows[0].PacketsOut != 3 || flows[0].PacketsIn != 3 || flows[0].Inside != netip.AddrPortFrom(workloadA, 0x77) {
				t.Errorf("flows:%s\nwant one echo flow from %s id 0x77, 3 packets each way", describe(flows), workloadA)
			}

			// 198.18.3.99 is on the node's subnet but nobody has it: the
			// netstack must not answer for it; the node's kernel gives up
			// on ARP and says host unreachable, which the workload hears.
			nobody := netip.MustParseAddr("198.18.3.99")
			h.nat.Deliver(echoRequest(t, workloadA, nobody, 0x78, 1, payload))
			got := h.work.waitICMP(8*time.Second, func(ip header.IPv4, m header.ICMPv4) bool {
				return netip.AddrFrom4(ip.SourceAddress().As4()) != outsideAddr
			})
			if got == nil {
				t.Fatal("an echo to an address nobody has: no host unreachable")
			}
			m := header.ICMPv4(header.IPv4(got).Payload())
			if m.Type() != header.ICMPv4DstUnreachable || m.Code() != header.ICMPv4HostUnreachable {
				t.Fatalf("an echo to an address nobody has got %v", gopacket.NewPacket(got, layers.LayerTypeIPv4, gopacket.Default))
			}
			if from := netip.AddrFrom4(header.IPv4(got).SourceAddress().As4()); from != nodeAddr {
				t.Errorf("host unreachable from %s, want from the node (%s), whose ARP failed", from, nodeAddr)
			}
			if seq, ok := quotedEchoOf(got); !ok || seq != 1 {
				t.Errorf("the host unreachable does not quote the workload's echo (id 0x78 seq 1) to %s", nobody)
			}
		})
	}
}

// quotedEchoOf returns the sequence number of the echo request from
// workload A with id 0x78 that an ICMP error quotes.
func quotedEchoOf(pkt []byte) (uint16, bool) {
	quote := header.IPv4(header.ICMPv4(header.IPv4(pkt).Payload()).Payload())
	if len(quote) < 28 || netip.AddrFrom4(quote.SourceAddress().As4()) != workloadA {
		return 0, false
	}
	echo := header.ICMPv4(quote[quote.HeaderLength():])
	if echo.Type() != header.ICMPv4Echo || echo.Ident() != 0x78 {
		return 0, false
	}
	return echo.Sequence(), true
}

// TestThousandConnections: 1,000 concurrent TCP connections from two
// workload addresses carry their data intact, and the table drains once
// they end.
func TestThousandConnections(t *testing.T) {
	b := newBed(t)
	h := newHarness(t, b, nat.Config{})
	ln := listenTCP(t, b.outside, 9100)
	testbed.ServeEcho(ln)
	const perSource = 500
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	server := netip.AddrPortFrom(outsideAddr, 9100)
	conns := make([]net.Conn, 2*perSource)
	var wg sync.WaitGroup
	errs := make(chan error, len(conns))
	sem := make(chan struct{}, 64)
	for i := range conns {
		src := workloadA
		if i >= perSource {
			src = workloadB
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			c, err := h.work.dial(ctx, src, server)
			if err != nil {
				errs <- fmt.Errorf("connection %d from %s: %w", i, src, err)
				return
			}
			conns[i] = c
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	if tcp := flowsOf(h.nat.Flows(), "tcp"); len(tcp) != len(conns) {
		t.Errorf("with %d connections open the table holds %d TCP flows", len(conns), len(tcp))
	}
	results := make(chan error, len(conns))
	for i, c := range conns {
		go func() {
			msg := fmt.Appendf(nil, "connection %04d %s", i, strings.Repeat("x", 1000+i))
			if _, err := c.Write(msg); err != nil {
				results <- fmt.Errorf("connection %d: write: %w", i, err)
				return
			}
			_ = c.(interface{ CloseWrite() error }).CloseWrite()
			got, err := io.ReadAll(c)
			if err == nil && !bytes.Equal(got, msg) {
				err = fmt.Errorf("got %d bytes back, not its own %d", len(got), len(msg))
			}
			if err != nil {
				err = fmt.Errorf("connection %d: %w", i, err)
			}
			results <- err
		}()
	}
	for range conns {
		if err := <-results; err != nil {
			t.Error(err)
		}
	}
	for _, c := range conns {
		c.Close()
	}
	h.waitFlows(t, 0, shortTimeouts.TCPFinWait+shortTimeouts.TCPClose+5*time.Second)
	if st := h.nat.Stats(); st.Created != uint64(len(conns)) || st.Ended != uint64(len(conns)) {
		t.Errorf("stats %+v: want %d flows created and ended", st, len(conns))
	}
}

// TestLimits: a flow over a limit is refused, TCP with a reset and UDP and
// ICMP with ICMP "administratively prohibited", and counted by reason.
func TestLimits(t *testing.T) {
	b := newBed(t)
	ln := listenTCP(t, b.outside, 9200)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(io.Discard, c) }()
		}
	}()
	server := netip.AddrPortFrom(outsideAddr, 9200)
	prohibited := func(ip header.IPv4, m header.ICMPv4) bool {
		return m.Type() == header.ICMPv4DstUnreachable && m.Code() == header.ICMPv4AdminProhibited
	}

	t.Run("per source", func(t *testing.T) {
		h := newHarness(t, b, nat.Config{MaxFlowsPerSource: 100})
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		for i := range 100 {
			c, err := h.work.dial(ctx, workloadA, server)
			if err != nil {
				t.Fatalf("connection %d of the first 100: %v", i+1, err)
			}
			defer c.Close()
		}
		if _, err := h.work.dial(ctx, workloadA, server); err == nil || !strings.Contains(err.Error(), "refused") {
			t.Errorf("the 101st connection: %v, want it refused by a reset", err)
		}
		if got := h.nat.Stats().Refused[nat.RefusedPerSource]; got != 1 {
			t.Errorf("per-source refusals counted: %d, want 1", got)
		}
		other, err := h.work.dial(ctx, workloadB, server)
		if err != nil {
			t.Errorf("another workload was refused too: %v", err)
		} else {
			other.Close()
		}

		udp, err := h.work.dialUDP(workloadA, netip.AddrPortFrom(outsideAddr, 9201))
		if err != nil {
			t.Fatal(err)
		}
		defer udp.Close()
		if _, err := udp.Write([]byte("over the limit")); err != nil {
			t.Fatal(err)
		}
		if h.work.waitICMP(5*time.Second, prohibited) == nil {
			t.Error("a UDP flow over the limit got no ICMP administratively prohibited")
		}
		h.nat.Deliver(echoRequest(t, workloadA, outsideAddr, 1, 1, nil))
		if h.work.waitICMP(5*time.Second, prohibited) == nil {
			t.Error("an echo flow over the limit got no ICMP administratively prohibited")
		}
		if got := h.nat.Stats().Refused[nat.RefusedPerSource]; got != 3 {
			t.Errorf("per-source refusals counted: %d, want 3 (TCP, UDP, ICMP)", got)
		}
	})

	t.Run("table", func(t *testing.T) {
		h := newHarness(t, b, nat.Config{MaxFlows: 2})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, src := range []netip.Addr{workloadA, workloadB} {
			c, err := h.work.dial(ctx, src, server)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
		}
		if _, err := h.work.dial(ctx, workloadB, server); err == nil {
			t.Error("a third flow got through a table of 2")
		}
		if got := h.nat.Stats().Refused[nat.RefusedTableFull]; got != 1 {
			t.Errorf("table-full refusals: %d, want 1", got)
		}
	})
}

// TestDialFailures: what the outside answers a SYN reaches the workload: a
// reset for a closed port, ICMP net unreachable where the node has no
// route.
func TestDialFailures(t *testing.T) {
	b := newBed(t)
	h := newHarness(t, b, nat.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	t.Run("nothing listening", func(t *testing.T) {
		_, err := h.work.dial(ctx, workloadA, netip.AddrPortFrom(outsideAddr, 9))
		if err == nil || !strings.Contains(err.Error(), "refused") {
			t.Errorf("dial to a closed port: %v, want connection refused", err)
		}
		if got := h.nat.Stats().Refused[nat.RefusedDial]; got != 1 {
			t.Errorf("dial failures counted: %d, want 1", got)
		}
	})

	t.Run("no route", func(t *testing.T) {
		// The node has no default route, so nothing leaves the bed.
		nowhere := netip.MustParseAddr("203.0.113.1")
		start := time.Now()
		_, err := h.work.dial(ctx, workloadA, netip.AddrPortFrom(nowhere, 80))
		if err == nil {
			t.Fatal("dial to an unroutable address succeeded")
		}
		if time.Since(start) > 5*time.Second {
			t.Errorf("the dial took %s to fail: the unreachable did not reach the workload's stack", time.Since(start))
		}
		pkt := h.work.waitICMP(time.Second, func(ip header.IPv4, m header.ICMPv4) bool {
			return m.Type() == header.ICMPv4DstUnreachable && m.Code() == header.ICMPv4NetUnreachable
		})
		if pkt == nil {
			t.Fatalf("no ICMP net unreachable reached the workload (dial error %v)", err)
		}
		if src := netip.AddrFrom4(header.IPv4(pkt).SourceAddress().As4()); src != nowhere {
			t.Errorf("net unreachable from %s, want from the destination %s", src, nowhere)
		}
	})
}

// TestClose: Close resets the flows it ends and returns promptly.
func TestClose(t *testing.T) {
	b := newBed(t)
	h := newHarness(t, b, nat.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	outside, _ := h.connectOut(ctx, t, listenTCP(t, b.outside, 9300))
	start := time.Now()
	if err := h.nat.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Close took %s", d)
	}
	if flows := h.nat.Flows(); len(flows) != 0 {
		t.Errorf("after Close the table lists:%s", describe(flows))
	}
	_ = outside.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := outside.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the outside's connection after Close: %v, want ECONNRESET", err)
	}
}

// TestResets: a reset on either side reaches the other as a reset.
func TestResets(t *testing.T) {
	b := newBed(t)
	// Timeouts longer than the test, so that only a carried reset, not
	// an expiry, can end the other side.
	timeouts := shortTimeouts
	timeouts.TCPEstablished, timeouts.TCPFinWait = time.Minute, time.Minute
	h := newHarness(t, b, nat.Config{Timeouts: timeouts})
	ln := listenTCP(t, b.outside, 9400)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	t.Run("the outside resets", func(t *testing.T) {
		outside, w := h.connectOut(ctx, t, ln)
		_ = outside.SetLinger(0)
		outside.Close()
		_ = w.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := w.Read(make([]byte, 1))
		if err == nil || !strings.Contains(err.Error(), "reset") {
			t.Errorf("the workload read %v after the outside reset, want a reset", err)
		}
	})

	t.Run("the workload resets", func(t *testing.T) {
		outside, w := h.connectOut(ctx, t, ln)
		// Closing with data unread makes a stack reset, Linux's and
		// gVisor's alike.
		if _, err := outside.Write([]byte("unread")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
		w.Close()
		_ = outside.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := outside.Read(make([]byte, 1))
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("the outside read %v after the workload reset, want ECONNRESET", err)
		}
	})
	h.waitFlows(t, 0, 5*time.Second)
}

// TestIdleTCPExpires: an ESTABLISHED flow idle past its timeout leaves the
// table, and both ends are reset rather than left hanging.
func TestIdleTCPExpires(t *testing.T) {
	b := newBed(t)
	timeouts := shortTimeouts
	timeouts.TCPEstablished = time.Second
	h := newHarness(t, b, nat.Config{Timeouts: timeouts})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	outside, w := h.connectOut(ctx, t, listenTCP(t, b.outside, 9500))
	h.waitFlows(t, 0, 3*time.Second)
	if st := h.nat.Stats(); st.Expired != 1 {
		t.Errorf("stats %+v: want 1 flow expired", st)
	}
	_ = w.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := w.Read(make([]byte, 1)); err == nil || !strings.Contains(err.Error(), "reset") {
		t.Errorf("the workload's end after expiry: %v, want a reset", err)
	}
	_ = outside.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := outside.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the outside's end after expiry: %v, want ECONNRESET", err)
	}
}
