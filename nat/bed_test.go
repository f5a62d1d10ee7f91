package nat_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/overlayd/overlayd/encap"
	"github.com/overlayd/overlayd/internal/testbed"
	"github.com/overlayd/overlayd/nat"
)

// The bed: a "node" namespace where the NAT's host sockets live, linked to
// an "outside" namespace by a veth. Workloads are a gVisor netstack in the
// test process, wired straight to the NAT: what the workload stack sends
// goes to Deliver, what the NAT sends out is injected into it.
var (
	nodeAddr    = netip.MustParseAddr("198.18.3.1")
	outsideAddr = netip.MustParseAddr("198.18.3.10")
	workloadA   = netip.MustParseAddr("10.1.0.5")
	workloadB   = netip.MustParseAddr("10.1.0.6")
)

type bed struct {
	testbed       *testbed.Bed
	node, outside *testbed.Host
	// router, in a hop bed only, forwards between the node and the
	// outside host.
	router *testbed.Host
}

func newBed(t *testing.T) *bed {
	t.Helper()
	b := testbed.NewForTest(t, testbed.Options{})
	node, err := b.AddHost("node")
	if err != nil {
		t.Fatal(err)
	}
	outside, err := b.AddHost("outside")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Link(
		testbed.Endpoint{Host: node, Iface: "eth0", Addr: netip.PrefixFrom(nodeAddr, 24)},
		testbed.Endpoint{Host: outside, Iface: "eth0", Addr: netip.PrefixFrom(outsideAddr, 24)},
	); err != nil {
		t.Fatal(err)
	}
	return &bed{testbed: b, node: node, outside: outside}
}

// nsNet opens the NAT's host sockets inside a namespace of the bed. It
// records which kind of ICMP socket it handed out.
type nsNet struct {
	host *testbed.Host
	// tcpUserTimeout, when set, bounds how long a host TCP connection
	// waits for unacknowledged data before the kernel drops it.
	tcpUserTimeout time.Duration

	mu        sync.Mutex
	icmpKinds []string // "ping" or "raw"
}

func (n *nsNet) DialTCP(ctx context.Context, local netip.Addr, remote netip.AddrPort, control func(fd uintptr) error) (c net.Conn, err error) {
	if n.tcpUserTimeout > 0 {
		natControl := control
		control = func(fd uintptr) error {
			if err := unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(n.tcpUserTimeout.Milliseconds())); err != nil {
				return err
			}
			if natControl == nil {
				return nil
			}
			return natControl(fd)
		}
	}
	if derr := n.host.Do(func() error { c, err = nat.ProcessNet{}.DialTCP(ctx, local, remote, control); return nil }); derr != nil {
		return nil, derr
	}
	return c, err
}

func (n *nsNet) ListenUDP(local netip.Addr) (c *net.UDPConn, err error) {
	if derr := n.host.Do(func() error { c, err = nat.ProcessNet{}.ListenUDP(local); return nil }); derr != nil {
		return nil, derr
	}
	return c, err
}

func (n *nsNet) ListenICMP(local netip.Addr) (c net.PacketConn, err error) {
	if derr := n.host.Do(func() error { c, err = nat.ProcessNet{}.ListenICMP(local); return nil }); derr != nil {
		return nil, derr
	}
	if err == nil {
		kind := "ping"
		if _, raw := c.LocalAddr().(*net.IPAddr); raw {
			kind = "raw"
		}
		n.mu.Lock()
		n.icmpKinds = append(n.icmpKinds, kind)
		n.mu.Unlock()
	}
	return c, err
}

func (n *nsNet) kinds() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.icmpKinds...)
}

// workload is a netstack holding the workloads' addresses.
type workload struct {
	stack *stack.Stack
	link  *channel.Endpoint

	// icmp receives a copy of every ICMP packet the NAT sends toward the
	// workloads.
	icmp chan []byte
	// tcp, while tcpOn, receives a copy of every TCP packet toward them.
	tcp   chan []byte
	tcpOn atomic.Bool
	// sent, when set, sees every packet the workloads send.
	sent atomic.Pointer[func(pkt []byte)]
}

func newWorkload(t *testing.T, deliver func([]byte), addrs ...netip.Addr) *workload {
	t.Helper()
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	w := &workload{stack: s, link: channel.New(1024, 1500, ""), icmp: make(chan []byte, 1024), tcp: make(chan []byte, 1024)}
	if err := s.CreateNIC(1, w.link); err != nil {
		t.Fatalf("workload NIC: %s", err)
	}
	for _, a := range addrs {
		pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddrFrom4(a.As4()).WithPrefix()}
		if err := s.AddProtocolAddress(1, pa, stack.AddressProperties{}); err != nil {
			t.Fatalf("workload address %s: %s", a, err)
		}
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: 1}})
	sack := tcpip.TCPSACKEnabled(true)
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack)
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 8 << 20})
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 8 << 20})

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1<<16)
		for {
			p := w.link.ReadContext(ctx)
			if p == nil {
				return
			}
			n := 0
			for _, s := range p.AsSlices() {
				n += copy(buf[n:], s)
			}
			p.DecRef()
			if sent := w.sent.Load(); sent != nil {
				(*sent)(buf[:n])
			}
			deliver(buf[:n])
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		s.Destroy()
	})
	return w
}

// receive is the NAT's Out: it injects the packets into the workload stack.
func (w *workload) receive(bufs [][]byte) error {
	for _, b := range bufs {
		w.receiveOne(b[encap.Headroom:])
	}
	return nil
}

func (w *workload) receiveOne(pkt []byte) {
	if len(pkt) >= header.IPv4MinimumSize {
		switch header.IPv4(pkt).TransportProtocol() {
		case header.ICMPv4ProtocolNumber:
			select {
			case w.icmp <- append([]byte(nil), pkt...):
			default:
			}
		case header.TCPProtocolNumber:
			if w.tcpOn.Load() {
				select {
				case w.tcp <- append([]byte(nil), pkt...):
				default:
				}
			}
		}
	}
	w.link.InjectInbound(ipv4.ProtocolNumber, stack.NewPacketBuffer(stack.PacketBufferOptions{
		Payload: buffer.MakeWithData(pkt),
	}))
}

func fullAddr(a netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(a.Addr().As4()), Port: a.Port()}
}

// dial connects from a workload address to dst through the NAT.
func (w *workload) dial(ctx context.Context, from netip.Addr, dst netip.AddrPort) (*gonet.TCPConn, error) {
	return gonet.DialTCPWithBind(ctx, w.stack, fullAddr(netip.AddrPortFrom(from, 0)), fullAddr(dst), ipv4.ProtocolNumber)
}

// dialUDP opens a connected UDP socket from a workload address.
func (w *workload) dialUDP(from netip.Addr, dst netip.AddrPort) (*gonet.UDPConn, error) {
	laddr, raddr := fullAddr(netip.AddrPortFrom(from, 0)), fullAddr(dst)
	return gonet.DialUDP(w.stack, &laddr, &raddr, ipv4.ProtocolNumber)
}

// waitICMP waits for an ICMP packet toward the workloads that match
// accepts, and returns it; nil when none comes within d.
func (w *workload) waitICMP(d time.Duration, match func(ip header.IPv4, m header.ICMPv4) bool) []byte {
	timeout := time.After(d)
	for {
		select {
		case pkt := <-w.icmp:
			ip := header.IPv4(pkt)
			if match(ip, header.ICMPv4(ip.Payload())) {
				return pkt
			}
		case <-timeout:
			return nil
		}
	}
}

// shortTimeouts make flows leave the table within seconds.
var shortTimeouts = nat.Timeouts{
	TCPEstablished: 30 * time.Second, TCPSynSent: 5 * time.Second, TCPFinWait: 2 * time.Second,
	TCPClose: 500 * time.Millisecond, UDPUnreplied: 2 * time.Second, UDPAssured: 3 * time.Second, ICMP: 2 * time.Second,
}

// harness is a bed, a NAT in the test process with its host sockets in the
// node namespace, and a workload netstack.
type harness struct {
	*bed
	nat  *nat.NAT
	net  *nsNet
	work *workload
}

func newHarness(t *testing.T, b *bed, cfg nat.Config) *harness {
	t.Helper()
	h := &harness{bed: b, net: &nsNet{host: b.node}}
	var n *nat.NAT
	h.work = newWorkload(t, func(pkt []byte) { n.Deliver(pkt) }, workloadA, workloadB)
	cfg.Outside, cfg.Out, cfg.Net = nodeAddr, h.work.receive, h.net
	if cfg.Timeouts == (nat.Timeouts{}) {
		cfg.Timeouts = shortTimeouts
	}
	var err error
	if n, err = nat.New(cfg); err != nil {
		t.Fatal(err)
	}
	h.nat = n
	// Registered after the workload's cleanup, so it runs first: the NAT
	// stops before the stack that feeds it.
	t.Cleanup(func() { n.Close() })
	return h
}

// waitFlows waits until the table holds want flows, or fails the test.
func (h *harness) waitFlows(t *testing.T, want int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		flows := h.nat.Flows()
		if len(flows) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the NAT table holds %d flows after %s, want %d; stats %+v", len(flows), within, want, h.nat.Stats())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// listenTCP listens in the outside namespace.
func listenTCP(t *testing.T, h *testbed.Host, port uint16) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := h.Do(func() (err error) {
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(outsideAddr, port).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// connectOut connects workload A through the NAT to ln, a listener of the
// outside host, and returns the outside's end and the workload's once the
// NAT relays the flow (ESTABLISHED). Both are closed when the test ends.
//
// The wait matters: the workload's dial returns at its SYN-ACK, while the
// NAT's forwarder is still in the handshake until the final ACK has come
// through its queue. A flow ended in that window is reset by the handshake's
// own failure path, not by the relay, so a test of the relay's resets would
// pass without them (TestClose did, most of the time).
func (h *harness) connectOut(ctx context.Context, t *testing.T, ln net.Listener) (outside *net.TCPConn, work *gonet.TCPConn) {
	t.Helper()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	work, err := h.work.dial(ctx, workloadA, ln.Addr().(*net.TCPAddr).AddrPort())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { work.Close() })
	select {
	case c := <-accepted:
		t.Cleanup(func() { c.Close() })
		outside = c.(*net.TCPConn)
	case <-ctx.Done():
		t.Fatal("the outside accepted nothing")
	}
	local := work.LocalAddr().(*net.TCPAddr).AddrPort()
	for {
		for _, f := range h.nat.Flows() {
			if f.Proto == "tcp" && f.Inside == local && f.State == "ESTABLISHED" {
				return outside, work
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the NAT does not relay %s; table:%s", local, describe(h.nat.Flows()))
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func listenUDP(t *testing.T, h *testbed.Host, port uint16) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	if err := h.Do(func() (err error) {
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(outsideAddr, port)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func flowsOf(flows []nat.Flow, proto string) []nat.Flow {
	var out []nat.Flow
	for _, f := range flows {
		if f.Proto == proto {
			out = append(out, f)
		}
	}
	return out
}

func describe(flows []nat.Flow) string {
	s := ""
	for _, f := range flows {
		s += fmt.Sprintf("\n  %s %s -> %s via %s %s", f.Proto, f.Inside, f.Dest, f.Outside, f.State)
	}
	return s
}
