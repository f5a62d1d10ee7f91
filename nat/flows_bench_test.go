package nat

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/overlayd/overlayd/encap"
)

// The flow benchmarks need no root: the NAT's host sockets are the
// process's own, on one of this host's addresses (not loopback: the
// netstack refuses loopback destinations from a NIC that is not one), and
// the workloads are packets handed to Deliver, their replies counted in
// Out. Run them with
//
//	go test -run '^$' -bench 'NewFlows|IdleFlow' -benchtime 1x ./nat/

// hostAddr is an IPv4 address of this host's other than loopback.
func hostAddr(tb testing.TB) netip.Addr {
	tb.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		tb.Skipf("no interface addresses: %v", err)
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() && !p.Addr().IsLoopback() {
			return p.Addr()
		}
	}
	tb.Skip("no IPv4 address other than loopback to relay through")
	return netip.Addr{}
}

// udpEcho answers every datagram on a socket of addr with its own payload.
func udpEcho(tb testing.TB, addr netip.Addr) netip.AddrPort {
	tb.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
	if err != nil {
		tb.Fatal(err)
	}
	// A burst of new flows arrives at once: room for it, so that what the
	// benchmark sees lost is lost in the NAT.
	_ = c.SetReadBuffer(8 << 20)
	tb.Cleanup(func() { c.Close() })
	for range 2 {
		go func() {
			buf := make([]byte, 2048)
			for {
				n, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					if errors.Is(err, net.ErrClosed) {
						return
					}
					continue
				}
				_, _ = c.WriteToUDPAddrPort(buf[:n], from)
			}
		}()
	}
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// flowSource is the workload end of flow i: 1,000 flows per address, under
// the default per-source limit.
func flowSource(i int) netip.AddrPort {
	a := 1<<16 + i/1000 // 10.1.0.0 + the flow's thousand
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(a >> 16), byte(a >> 8), byte(a)}), uint16(20000+i%1000))
}

func flowIndex(src netip.AddrPort) int {
	a := src.Addr().As4()
	return (int(a[1])<<16|int(a[2])<<8|int(a[3])-1<<16)*1000 + int(src.Port()) - 20000
}

// udpFlows is a NAT relaying workload datagrams to an echo server and
// counting, per flow, the replies that come back.
type udpFlows struct {
	nat  *NAT
	echo netip.AddrPort
	// replied[i] counts flow i's replies; got counts the flows with one.
	replied []atomic.Uint32
	got     *counter
	pkt     []byte // the request being built; Deliver copies it
}

func newUDPFlows(tb testing.TB, flows int, timeouts Timeouts) *udpFlows {
	tb.Helper()
	addr := hostAddr(tb)
	u := &udpFlows{echo: udpEcho(tb, addr), replied: make([]atomic.Uint32, flows), got: newCounter()}
	n, err := New(Config{Outside: addr, MaxFlows: max(flows, DefaultMaxFlows), Timeouts: timeouts, Out: u.out})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { n.Close() })
	u.nat = n
	return u
}

func (u *udpFlows) out(bufs [][]byte) error {
	for _, b := range bufs {
		pkt := header.IPv4(b[encap.Headroom:])
		if pkt.Protocol() != uint8(protoUDP) || !pkt.IsValid(len(pkt)) {
			continue
		}
		d := header.UDP(pkt.Payload())
		i := flowIndex(netip.AddrPortFrom(netip.AddrFrom4(pkt.DestinationAddress().As4()), d.DestinationPort()))
		if i >= 0 && i < len(u.replied) && u.replied[i].Add(1) == 1 {
			u.got.Add(1)
		}
	}
	return nil
}

// send delivers flow i's first datagram. Not safe for concurrent use.
func (u *udpFlows) send(i int) {
	const hl, payload = header.IPv4MinimumSize, 16
	if u.pkt == nil {
		u.pkt = make([]byte, hl+header.UDPMinimumSize+payload)
	}
	src := flowSource(i)
	putIPv4(u.pkt, 0, len(u.pkt), protoUDP, src.Addr(), u.echo.Addr())
	d := header.UDP(u.pkt[hl:])
	d.SetSourcePort(src.Port())
	d.SetDestinationPort(u.echo.Port())
	d.SetLength(uint16(len(u.pkt) - hl))
	d.SetChecksum(0) // none, which IPv4 allows
	u.nat.Deliver(u.pkt)
}

// run opens flows from..to-1, keeping at most window of them unanswered,
// and waits for the replies until none has come for a second; it returns
// how many flows got no reply.
func (u *udpFlows) run(from, to, window int) (lost int) {
	base := u.got.Load()
	for i := from; i < to; i++ {
		for int64(i-from)-(u.got.Load()-base) >= int64(window) {
			if !waitCount(u.got, base, int64(i-from), time.Second) {
				break // lost: do not wait for them any longer
			}
		}
		u.send(i)
	}
	waitCount(u.got, base, int64(to-from), time.Second)
	return to - from - int(u.got.Load()-base)
}

// counted is what the NAT's counters account for: packets dropped, flows
// refused.
func (n *NAT) counted() uint64 {
	s := n.Stats()
	var c uint64
	for _, v := range s.Drops {
		c += v
	}
	for _, v := range s.Refused {
		c += v
	}
	return c
}

// BenchmarkUDPNewFlows opens b.N new UDP flows, one datagram each, with at
// most window of them waiting for their reply, and reports new flows per
// second; window=burst sends them all at once. Every flow without a reply
// must be counted by the NAT (a queue drop or a refusal): lost-silently
// is the rest.
func BenchmarkUDPNewFlows(b *testing.B) {
	for _, tc := range []struct {
		name   string
		window int
	}{{"window=256", 256}, {"burst", 1 << 30}} {
		b.Run(tc.name, func(b *testing.B) {
			// Flows expire soon after their reply, so a long run does not
			// run out of ports and descriptors.
			u := newUDPFlows(b, b.N, Timeouts{UDPUnreplied: 2 * time.Second, UDPAssured: 200 * time.Millisecond})
			b.ResetTimer()
			start := time.Now()
			lost := u.run(0, b.N, tc.window)
			elapsed := time.Since(start)
			b.StopTimer()
			counted := u.nat.counted()
			b.ReportMetric(float64(b.N-lost)/elapsed.Seconds(), "flows/s")
			b.ReportMetric(float64(lost), "lost")
			b.ReportMetric(float64(max(0, int64(lost)-int64(counted))), "lost-silently")
			if uint64(lost) > counted {
				b.Errorf("%d of %d flows got no reply and the NAT counted %d (stats %+v)", lost, b.N, counted, u.nat.Stats())
			}
		})
	}
}

// rss is the process's resident memory in bytes.
func rss(tb testing.TB) int64 {
	tb.Helper()
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		tb.Skipf("no /proc/self/statm: %v", err)
	}
	f := strings.Fields(string(b))
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		tb.Fatal(err)
	}
	return pages * int64(os.Getpagesize())
}

// memory is a garbage-collected heap, the goroutine stacks and the
// resident memory.
type memory struct{ heap, stacks, rss int64 }

func measureMemory(tb testing.TB) memory {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memory{heap: int64(ms.HeapInuse), stacks: int64(ms.StackInuse), rss: rss(tb)}
}

// reportPerFlow reports the growth from before to after per flow.
func reportPerFlow(b *testing.B, before, after memory, flows int) {
	b.ReportMetric(float64(after.heap-before.heap)/float64(flows), "heap-B/flow")
	b.ReportMetric(float64(after.stacks-before.stacks)/float64(flows), "stack-B/flow")
	b.ReportMetric(float64(after.rss-before.rss)/float64(flows), "RSS-B/flow")
}

// flowCounts are the idle flow counts measured: 60,000 only where this
// process may hold that many descriptors and the host has that many
// ephemeral ports (a host socket each).
var flowCounts = []int{10000, 60000}

// canHold says whether the process can hold flows host sockets, or why
// not.
func canHold(flows int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if need := uint64(flows) + 1000; lim.Cur < need {
		want := syscall.Rlimit{Cur: need, Max: max(lim.Max, need)}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			return fmt.Errorf("%d descriptors needed, RLIMIT_NOFILE is %d (hard %d) and cannot be raised: %w", need, lim.Cur, lim.Max, err)
		}
	}
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return err
	}
	var lo, hi int
	if _, err := fmt.Sscan(string(b), &lo, &hi); err != nil {
		return err
	}
	if hi-lo+1 < flows {
		return fmt.Errorf("%d ephemeral ports (net.ipv4.ip_local_port_range %d-%d), %d flows need one each", hi-lo+1, lo, hi, flows)
	}
	return nil
}

// BenchmarkUDPIdleFlowMemory opens flows UDP flows, each answered once,
// then leaves them idle and reports the heap and resident memory they hold
// per flow. Run with -benchtime 1x: the flows are opened once.
func BenchmarkUDPIdleFlowMemory(b *testing.B) {
	for _, flows := range flowCounts {
		b.Run(fmt.Sprintf("flows=%d", flows), func(b *testing.B) {
			if err := canHold(flows); err != nil {
				b.Skip(err)
			}
			long := time.Hour
			u := newUDPFlows(b, flows, Timeouts{UDPUnreplied: long, UDPAssured: long})
			before := measureMemory(b)
			for b.Loop() {
				if lost := u.run(0, flows, 256); lost > 0 {
					b.Fatalf("%d of %d flows got no reply (stats %+v)", lost, flows, u.nat.Stats())
				}
			}
			time.Sleep(100 * time.Millisecond) // the relays settle idle
			after := measureMemory(b)
			if live := len(u.nat.Flows()); live != flows {
				b.Fatalf("%d flows in the table, want %d", live, flows)
			}
			reportPerFlow(b, before, after, flows)
		})
	}
}

// tcpServerEnv, set to an address, makes TestTCPServerProcess the outside
// server of the TCP benchmarks, in a process of its own so that its
// descriptors and memory are not the benchmark's.
const tcpServerEnv = "OVERLAYD_NAT_BENCH_TCP_SERVER"

// TestTCPServerProcess is not a test: run by tcpServer with tcpServerEnv
// set, it listens there, prints its port and accepts connections until
// its standard input closes, closing each at once when the variable's
// value ends in "/close" and keeping it open otherwise.
func TestTCPServerProcess(t *testing.T) {
	spec := os.Getenv(tcpServerEnv)
	if spec == "" {
		t.Skip("the TCP benchmarks' outside server, run by them")
	}
	addr, closeAccepted := strings.CutSuffix(spec, "/close")
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	var mu sync.Mutex
	var held []net.Conn // referenced, or their finalizers would close them
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			if closeAccepted {
				c.Close()
				continue
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	_, _ = io.Copy(io.Discard, os.Stdin)
	ln.Close()
	mu.Lock()
	defer mu.Unlock()
	for _, c := range held {
		c.Close()
	}
}

// tcpServer starts the outside server on addr in a process of its own
// (TestTCPServerProcess) and returns where it listens.
func tcpServer(tb testing.TB, addr netip.Addr, closeAccepted bool) netip.AddrPort {
	tb.Helper()
	spec := netip.AddrPortFrom(addr, 0).String()
	if closeAccepted {
		spec += "/close"
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestTCPServerProcess$")
	cmd.Env = append(os.Environ(), tcpServerEnv+"="+spec)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { stdin.Close(); _ = cmd.Wait() })
	var port uint16
	if _, err := fmt.Fscan(stdout, &port); err != nil {
		tb.Fatalf("the outside server did not say its port: %v", err)
	}
	return netip.AddrPortFrom(addr, port)
}

// tcpFlows is a NAT and workloads that are bare TCP packets: a SYN per
// flow; the NAT's SYN-ACK (sent once the outside accepted) is answered
// with the handshake's ACK, and a FIN with a reset, from Out itself.
type tcpFlows struct {
	nat    *NAT
	server netip.AddrPort
	// open[i] is set when flow i's handshake is done; got counts them.
	open []atomic.Bool
	got  *counter

	mu  sync.Mutex // Out may be called concurrently
	pkt []byte
}

func newTCPFlows(tb testing.TB, flows int, timeouts Timeouts, closeAccepted bool) *tcpFlows {
	tb.Helper()
	addr := hostAddr(tb)
	f := &tcpFlows{server: tcpServer(tb, addr, closeAccepted), open: make([]atomic.Bool, flows), got: newCounter()}
	n, err := New(Config{Outside: addr, MaxFlows: max(flows, DefaultMaxFlows), Timeouts: timeouts, Out: f.out})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { n.Close() })
	f.nat = n
	return f
}

const workloadISN = 1000

// segment delivers a workload's TCP segment of flow i, without data.
// Callers hold f.mu.
func (f *tcpFlows) segment(i int, flags header.TCPFlags, seq, ack uint32) {
	const hl = header.IPv4MinimumSize
	if f.pkt == nil {
		f.pkt = make([]byte, hl+header.TCPMinimumSize)
	}
	src := flowSource(i)
	putIPv4(f.pkt, 0, len(f.pkt), protoTCP, src.Addr(), f.server.Addr())
	t := header.TCP(f.pkt[hl:])
	t.Encode(&header.TCPFields{
		SrcPort: src.Port(), DstPort: f.server.Port(), SeqNum: seq, AckNum: ack,
		DataOffset: header.TCPMinimumSize, Flags: flags, WindowSize: 65535,
	})
	sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, tcpipAddr(src.Addr()), tcpipAddr(f.server.Addr()), header.TCPMinimumSize)
	t.SetChecksum(^t.CalculateChecksum(sum))
	f.nat.Deliver(f.pkt)
}

func (f *tcpFlows) syn(i int) {
	f.mu.Lock()
	f.segment(i, header.TCPFlagSyn, workloadISN, 0)
	f.mu.Unlock()
}

func (f *tcpFlows) out(bufs [][]byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, b := range bufs {
		ip := header.IPv4(b[encap.Headroom:])
		if ip.Protocol() != uint8(protoTCP) || !ip.IsValid(len(ip)) {
			continue
		}
		t := header.TCP(ip.Payload())
		i := flowIndex(netip.AddrPortFrom(netip.AddrFrom4(ip.DestinationAddress().As4()), t.DestinationPort()))
		if i < 0 || i >= len(f.open) {
			continue
		}
		switch fl := t.Flags(); {
		case fl&header.TCPFlagSyn != 0 && fl&header.TCPFlagAck != 0:
			f.segment(i, header.TCPFlagAck, workloadISN+1, t.SequenceNumber()+1)
			if !f.open[i].Swap(true) {
				f.got.Add(1)
			}
		case fl&header.TCPFlagFin != 0:
			f.segment(i, header.TCPFlagRst, workloadISN+1, 0)
		}
	}
	return nil
}

// run opens flows from..to-1 with at most window handshakes at once and
// waits until none has completed for a second; it returns how many did
// not complete.
func (f *tcpFlows) run(from, to, window int) (lost int) {
	base := f.got.Load()
	for i := from; i < to; i++ {
		for int64(i-from)-(f.got.Load()-base) >= int64(window) {
			if !waitCount(f.got, base, int64(i-from), time.Second) {
				break
			}
		}
		f.syn(i)
	}
	waitCount(f.got, base, int64(to-from), time.Second)
	return to - from - int(f.got.Load()-base)
}

// counter counts completed flows and wakes whoever waits for them, so
// the benchmark does not spin on the cores the NAT needs.
type counter struct {
	n    atomic.Int64
	more chan struct{} // a token after each increment
}

func newCounter() *counter { return &counter{more: make(chan struct{}, 1)} }

func (c *counter) Load() int64 { return c.n.Load() }

func (c *counter) Add(d int64) {
	c.n.Add(d)
	select {
	case c.more <- struct{}{}:
	default:
	}
}

// waitCount waits until c-base reaches want, or c has not moved for
// quiet; it says whether want was reached.
func waitCount(c *counter, base, want int64, quiet time.Duration) bool {
	t := time.NewTimer(quiet)
	defer t.Stop()
	for c.Load()-base < want {
		select {
		case <-c.more:
			t.Reset(quiet)
		case <-t.C:
			return c.Load()-base >= want
		}
	}
	return true
}

// BenchmarkTCPNewConnections opens b.N TCP connections through the NAT,
// at most window handshakes at once, and reports connections per second:
// a connection counts when the NAT's SYN-ACK reaches the workload, which
// it sends once the outside has accepted. The outside closes each at
// once, and the workload answers the FIN with a reset.
func BenchmarkTCPNewConnections(b *testing.B) {
	f := newTCPFlows(b, b.N, Timeouts{TCPClose: 100 * time.Millisecond, TCPFinWait: time.Second}, true)
	b.ResetTimer()
	start := time.Now()
	lost := f.run(0, b.N, 256)
	elapsed := time.Since(start)
	b.StopTimer()
	counted := f.nat.counted()
	b.ReportMetric(float64(b.N-lost)/elapsed.Seconds(), "conns/s")
	b.ReportMetric(float64(lost), "lost")
	b.ReportMetric(float64(max(0, int64(lost)-int64(counted))), "lost-silently")
	if uint64(lost) > counted {
		b.Errorf("%d of %d connections not made and the NAT counted %d (stats %+v)", lost, b.N, counted, f.nat.Stats())
	}
}

// BenchmarkTCPIdleFlowMemory opens flows TCP connections, leaves them idle
// and reports the heap and resident memory they hold per flow. The outside
// server is another process and the workloads are bare packets: only the
// NAT's side is measured. Run with -benchtime 1x.
func BenchmarkTCPIdleFlowMemory(b *testing.B) {
	for _, flows := range flowCounts {
		b.Run(fmt.Sprintf("flows=%d", flows), func(b *testing.B) {
			if err := canHold(flows); err != nil {
				b.Skip(err)
			}
			f := newTCPFlows(b, flows, Timeouts{}, false)
			before := measureMemory(b)
			for b.Loop() {
				if lost := f.run(0, flows, 256); lost > 0 {
					b.Fatalf("%d of %d connections not made (stats %+v)", lost, flows, f.nat.Stats())
				}
			}
			time.Sleep(200 * time.Millisecond) // the relays settle idle
			after := measureMemory(b)
			if st := f.nat.Stats(); st.Flows["tcp/ESTABLISHED"] != flows {
				b.Fatalf("%d flows ESTABLISHED, want %d (stats %+v)", st.Flows["tcp/ESTABLISHED"], flows, st)
			}
			reportPerFlow(b, before, after, flows)
		})
	}
}

// BenchmarkUDPFloodTail floods one UDP flow through the NAT for half a
// second, faster than it can send, and reports how long after the last
// datagram was delivered to it the destination still received some
// (tail-ms): what a flood leaves queued reaches its peer that late. Run
// with -benchtime 1x.
func BenchmarkUDPFloodTail(b *testing.B) {
	addr := hostAddr(b)
	sink, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	_ = sink.SetReadBuffer(8 << 20)
	var lastRecv atomic.Int64 // unix nanoseconds
	var received atomic.Int64
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, err := sink.Read(buf); err != nil {
				return
			}
			received.Add(1)
			lastRecv.Store(time.Now().UnixNano())
		}
	}()
	u := &udpFlows{echo: sink.LocalAddr().(*net.UDPAddr).AddrPort(), replied: make([]atomic.Uint32, 1), got: newCounter()}
	n, err := New(Config{Outside: addr, Out: u.out})
	if err != nil {
		b.Fatal(err)
	}
	defer n.Close()
	u.nat = n
	for b.Loop() {
		sent := 0
		start := time.Now()
		for time.Since(start) < 500*time.Millisecond {
			u.send(0)
			sent++
		}
		lastSend := time.Now()
		time.Sleep(2 * time.Second) // the queue drains
		b.ReportMetric(float64(time.Unix(0, lastRecv.Load()).Sub(lastSend).Microseconds())/1000, "tail-ms")
		b.ReportMetric(float64(received.Load())/float64(sent), "delivered")
	}
}
