package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/overlayd/overlayd/internal/testbed"
)

// The NAT flows section: how fast the workload on node A opens new flows
// to the outside host through overlayd's NAT (one socket per flow, as a
// client opening connections does), whether any of them is lost without
// a counter saying so, and how much resident memory overlayd holds per
// idle flow.

// natFlowsResult is the section's figures.
type natFlowsResult struct {
	// UDP: new flows per second with at most natFlowsWindow waiting for
	// their reply; then a burst, every flow's datagram sent at once.
	UDPFlowsPerSec float64 `json:"udpNewFlowsPerSecond"`
	UDPLost        int     `json:"udpLost"`
	BurstFlows     int     `json:"udpBurstFlows"`
	BurstLost      int     `json:"udpBurstLost"`
	// TCP: connections per second, at most natFlowsWindow connecting.
	TCPConnsPerSec float64 `json:"tcpNewConnectionsPerSecond"`
	TCPLost        int     `json:"tcpLost"`
	// Counted is what overlayd's counters account for over the whole
	// section: NAT drops and refusals. Lost flows beyond it were lost
	// silently.
	Counted uint64 `json:"counted"`
	// BacklogDrops is the kernel's per-CPU input backlog drops
	// (/proc/net/softnet_stat, the whole machine) over the section: a
	// burst can overflow net.core.netdev_max_backlog on the bed's veths,
	// before or after the NAT, where no overlayd counter sees it.
	BacklogDrops uint64 `json:"kernelBacklogDrops"`
	// LinkDrops is node A's links' drops over the section (ip -s link:
	// transmit and receive, its TUN's included: packets the kernel routed
	// to overlayd that its queue had no room for).
	LinkDrops uint64 `json:"nodeLinkDrops"`
	// LinkDropsBy names the links that dropped.
	LinkDropsBy map[string]uint64 `json:"nodeLinkDropsBy,omitempty"`
	// Memory: overlayd's resident memory growth per idle flow, with
	// IdleFlows flows of each protocol open.
	IdleFlows       int     `json:"idleFlows"`
	UDPBytesPerFlow float64 `json:"udpRSSBytesPerIdleFlow"`
	TCPBytesPerFlow float64 `json:"tcpRSSBytesPerIdleFlow"`
}

const (
	// natFlowsWindow is how many flows are opened at once (a worker
	// each, waiting in poll(2)).
	natFlowsWindow = 64
	// natBurstFlows is the burst's size: the hand measurement
	// lost 72 % of 900 sent at once.
	natBurstFlows = 1000
	// natIdleFlows is how many flows of each protocol the memory is
	// measured at. 60,000 would need overlayd (and this harness) to hold
	// 60,000 descriptors, over this machine's hard RLIMIT_NOFILE of
	// 20,000.
	natIdleFlows = 10000
	natFlowsPort = 7000 // the outside host's UDP echo and TCP server
	// flowTimeout is how long a flow's reply or connection may take
	// before it counts as lost.
	flowTimeout = 2 * time.Second
	// natUDPTimeout is the NAT's UDP idle timeout in the section: longer
	// than opening natIdleFlows flows takes.
	natUDPTimeout = 10 * time.Second
)

// natFlowsConfig is the NAT mode's cluster file with a per-source limit
// that lets the one workload open every flow of the section.
func natFlowsConfig(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	f, err := os.CreateTemp("", "overlayd-bench-nat-*.toml")
	if err != nil {
		return "", err
	}
	defer f.Close()
	// UDP flows time out soon after the UDP part, so that their sockets
	// make room for the TCP part's under overlayd's descriptor limit.
	extra := fmt.Sprintf("\n[nat]\nmaxFlows = %d\nmaxFlowsPerSource = %d\nudpTimeout = %q\nudpStreamTimeout = %q\n",
		4*natIdleFlows, 4*natIdleFlows, natUDPTimeout.String(), natUDPTimeout.String())
	if _, err := f.Write(append(b, extra...)); err != nil {
		return "", err
	}
	return f.Name(), nil
}

// measureNATFlows runs the section against ep, whose first router is node
// A's overlayd, serving its metrics on metricsListen. profile fetches its
// CPU profiles of the UDP and TCP flow runs and its heap with the idle
// TCP flows open (with --profile).
func measureNATFlows(ctx context.Context, ep *endpoints, profile func(tag, kind, path string, seconds int) (wait func())) (natFlowsResult, error) {
	var res natFlowsResult
	if len(ep.routers) == 0 {
		return res, errors.New("no overlayd to measure")
	}
	node := ep.routers[0]
	dst := netip.AddrPortFrom(ep.addr, natFlowsPort)
	echo, err := udpEchoIn(ep.server, dst)
	if err != nil {
		return res, err
	}
	defer echo.Close()
	srv, err := ep.server.Start("python3", "-c", holdServer, dst.Addr().String(), strconv.Itoa(natFlowsPort))
	if err != nil {
		return res, fmt.Errorf("TCP server: %w", err)
	}
	defer srv.Stop()
	if err := waitListening(ctx, ep.server, natFlowsPort); err != nil {
		return res, err
	}
	counted0, err := natCounted(node)
	if err != nil {
		return res, err
	}
	backlog0 := backlogDrops()
	links0, err := linkDrops(ctx, node.Host)
	if err != nil {
		return res, err
	}

	// UDP: the idle flows the memory is measured at are the rate run's.
	rss0 := rssBytes(node)
	udp, err := socketsIn(ep.client, unix.SOCK_DGRAM, natIdleFlows)
	if err != nil {
		return res, err
	}
	profiled := profile("udp-flows", "cpu.pprof", "/debug/pprof/profile?seconds=1", 1)
	res.UDPFlowsPerSec, res.UDPLost = runFlows(udp, natFlowsWindow, func(fd int) bool { return udpExchange(fd, dst) })
	profiled()
	// The NAT's flows stay until their idle timeout; the workload's
	// sockets go, to leave descriptors for the TCP connections, which must
	// stay open.
	closeAll(udp)
	time.Sleep(500 * time.Millisecond) // overlayd settles idle
	res.IdleFlows = natIdleFlows
	res.UDPBytesPerFlow = float64(rssBytes(node)-rss0) / natIdleFlows
	// overlayd may hold 20,000 descriptors here: the UDP flows leave
	// before the TCP ones come.
	if err := waitNoUDPFlows(ctx, node, 2*natUDPTimeout); err != nil {
		return res, err
	}
	rss1 := rssBytes(node)

	// TCP, with the UDP flows still open.
	tcp, err := socketsIn(ep.client, unix.SOCK_STREAM, natIdleFlows)
	if err != nil {
		return res, err
	}
	defer closeAll(tcp)
	profiled = profile("tcp-flows", "cpu.pprof", "/debug/pprof/profile?seconds=1", 1)
	res.TCPConnsPerSec, res.TCPLost = runFlows(tcp, natFlowsWindow, func(fd int) bool { return tcpConnect(fd, dst) })
	profiled()
	time.Sleep(500 * time.Millisecond)
	res.TCPBytesPerFlow = float64(rssBytes(node)-rss1) / natIdleFlows
	// What the idle flows hold, UDP's expired and TCP's all open: the heap,
	// and the runtime's memory statistics (goroutine stacks are not heap).
	profile("idle-tcp-flows", "heap.pprof", "/debug/pprof/heap", 0)()
	profile("idle-tcp-flows", "memstats.txt", "/debug/pprof/heap?debug=1", 0)()
	profile("idle-tcp-flows", "goroutines.txt", "/debug/pprof/goroutine?debug=1", 0)()

	// A burst: new flows' datagrams all sent at once.
	res.BurstFlows = natBurstFlows
	burst, err := socketsIn(ep.client, unix.SOCK_DGRAM, res.BurstFlows)
	if err != nil {
		return res, err
	}
	defer closeAll(burst)
	res.BurstLost = udpBurst(burst, dst)

	counted1, err := natCounted(node)
	if err != nil {
		return res, err
	}
	res.Counted = counted1 - counted0
	res.BacklogDrops = backlogDrops() - backlog0
	links1, err := linkDrops(ctx, node.Host)
	if err != nil {
		return res, err
	}
	for name, d := range links1 {
		if d -= links0[name]; d > 0 {
			if res.LinkDropsBy == nil {
				res.LinkDropsBy = map[string]uint64{}
			}
			res.LinkDropsBy[name] = d
			res.LinkDrops += d
		}
	}
	return res, nil
}

// waitNoUDPFlows waits until overlayd's NAT table holds no UDP flow.
func waitNoUDPFlows(ctx context.Context, p *testbed.Process, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		body, err := fetch(p.Host.Do, "/metrics", 10*time.Second)
		if err != nil {
			return fmt.Errorf("overlayd's metrics: %w", err)
		}
		if !strings.Contains(string(body), `overlayd_nat_flows{proto="udp"`) {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("overlayd still lists UDP flows %s after the UDP part", within)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// holdServer accepts TCP connections and keeps them open until it is
// stopped: a process of its own, so that neither its descriptors nor its
// memory are the harness's or overlayd's.
const holdServer = `
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(4096)
held = []
while True:
    c, _ = s.accept()
    held.append(c)
`

// udpEchoIn answers every datagram to addr, in the host's namespace.
func udpEchoIn(h *testbed.Host, addr netip.AddrPort) (*net.UDPConn, error) {
	var c *net.UDPConn
	if err := h.Do(func() (err error) {
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
		return err
	}); err != nil {
		return nil, fmt.Errorf("UDP echo: %w", err)
	}
	_ = c.SetReadBuffer(8 << 20) // a burst is the NAT's to lose, not the echo's
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
	return c, nil
}

// socketsIn opens n sockets of typ in the host's namespace (made there,
// they stay there), blocking, so the workers below can wait in poll(2).
func socketsIn(h *testbed.Host, typ, n int) ([]int, error) {
	fds := make([]int, 0, n)
	err := h.Do(func() error {
		for range n {
			fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("socket %d of %d: %w", len(fds)+1, n, err)
			}
			fds = append(fds, fd)
		}
		return nil
	})
	if err != nil {
		closeAll(fds)
		return nil, err
	}
	return fds, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// runFlows runs flow on every socket with window workers, and returns the
// flows per second that succeeded and how many did not.
func runFlows(fds []int, window int, flow func(fd int) bool) (perSec float64, lost int) {
	var next, ok, last atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range min(window, len(fds)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(fds) {
					return
				}
				if flow(fds[i]) {
					ok.Add(1)
					last.Store(int64(time.Since(start)))
				}
			}
		})
	}
	wg.Wait()
	// Up to the last success: a lost flow's wait is not the NAT's time.
	elapsed := time.Duration(last.Load())
	return float64(ok.Load()) / max(elapsed, time.Millisecond).Seconds(), len(fds) - int(ok.Load())
}

// udpBurst sends one datagram on every socket, as fast as one loop can,
// then waits for the echoes; it returns how many did not come.
func udpBurst(fds []int, dst netip.AddrPort) (lost int) {
	sa := &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
	pending := make([]unix.PollFd, 0, len(fds))
	for _, fd := range fds {
		if unix.Sendto(fd, []byte("nat flow"), 0, sa) == nil {
			pending = append(pending, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
		}
	}
	lost = len(fds) - len(pending)
	deadline := time.Now().Add(flowTimeout)
	var buf [64]byte
	for len(pending) > 0 && time.Now().Before(deadline) {
		if _, err := unix.Poll(pending, int(time.Until(deadline).Milliseconds())+1); err != nil && !errors.Is(err, unix.EINTR) {
			break
		}
		waiting := pending[:0]
		for _, p := range pending {
			if p.Revents&unix.POLLIN == 0 {
				p.Revents = 0
				waiting = append(waiting, p)
				continue
			}
			_, _, _ = unix.Recvfrom(int(p.Fd), buf[:], unix.MSG_DONTWAIT)
		}
		pending = waiting
	}
	return lost + len(pending)
}

// udpExchange sends a datagram to dst and says whether its echo came back.
func udpExchange(fd int, dst netip.AddrPort) bool {
	sa := &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
	if err := unix.Sendto(fd, []byte("nat flow"), 0, sa); err != nil {
		return false
	}
	if !pollIn(fd, unix.POLLIN) {
		return false
	}
	var buf [64]byte
	n, _, err := unix.Recvfrom(fd, buf[:], unix.MSG_DONTWAIT)
	return err == nil && n == len("nat flow")
}

// tcpConnect connects to dst and says whether the connection was made.
func tcpConnect(fd int, dst netip.AddrPort) bool {
	if err := unix.SetNonblock(fd, true); err != nil {
		return false
	}
	err := unix.Connect(fd, &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()})
	if err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return false
	}
	if err != nil && !pollIn(fd, unix.POLLOUT) {
		return false
	}
	soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	return err == nil && soerr == 0
}

// pollIn waits up to flowTimeout for events on fd.
func pollIn(fd int, events int16) bool {
	deadline := time.Now().Add(flowTimeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: events}}
		n, err := unix.Poll(pfd, int(left.Milliseconds())+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err == nil && n == 1 && pfd[0].Revents&events != 0
	}
}

// backlogDrops sums the second column of /proc/net/softnet_stat: packets
// the kernel dropped because a CPU's input backlog was full.
func backlogDrops() uint64 {
	b, err := os.ReadFile("/proc/net/softnet_stat")
	if err != nil {
		return 0
	}
	var sum uint64
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			v, _ := strconv.ParseUint(f[1], 16, 64)
			sum += v
		}
	}
	return sum
}

// linkDrops gives each of a host's links' transmit and receive drops.
func linkDrops(ctx context.Context, h *testbed.Host) (map[string]uint64, error) {
	out, err := h.Run(ctx, "ip", "-j", "-s", "link", "show")
	if err != nil {
		return nil, fmt.Errorf("%s: ip -s link: %w", h.Name, err)
	}
	var links []struct {
		Name  string `json:"ifname"`
		Stats struct {
			RX struct{ Dropped uint64 } `json:"rx"`
			TX struct{ Dropped uint64 } `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		return nil, fmt.Errorf("%s: ip -s link: %w", h.Name, err)
	}
	drops := make(map[string]uint64, len(links))
	for _, l := range links {
		drops[l.Name] = l.Stats.RX.Dropped + l.Stats.TX.Dropped
	}
	return drops, nil
}

// rssBytes is a process's resident memory.
func rssBytes(p *testbed.Process) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Pid()))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// natCounted sums what overlayd's counters account for: the NAT's drops
// by every reason, refused flows and packets ignored as malformed, and
// its TUN's queue drops.
func natCounted(p *testbed.Process) (uint64, error) {
	return metricsSum(p, "overlayd_nat_drops_total", "overlayd_nat_flows_refused_total",
		"overlayd_nat_ignored_total", "overlayd_tun_queue_drops_total")
}

// metricsSum adds up every sample of overlayd's metrics on p's node whose
// line starts with one of prefixes.
func metricsSum(p *testbed.Process, prefixes ...string) (uint64, error) {
	body, err := fetch(p.Host.Do, "/metrics", 10*time.Second)
	if err != nil {
		return 0, fmt.Errorf("overlayd's metrics on %s: %w", p.Host.Name, err)
	}
	var sum uint64
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		line := sc.Text()
		if !slices.ContainsFunc(prefixes, func(prefix string) bool { return strings.HasPrefix(line, prefix) }) {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += uint64(v)
		}
	}
	return sum, sc.Err()
}

// fetch GETs path from the overlayd listening on metricsListen in a node's
// namespace; see fetchTo.
func fetch(do func(func() error) error, path string, timeout time.Duration) ([]byte, error) {
	var body []byte
	err := fetchTo(do, path, timeout, func(r io.Reader) (err error) {
		body, err = io.ReadAll(r)
		return err
	})
	return body, err
}

// fetchTo GETs path from the overlayd listening on metricsListen in a
// node's namespace and hands the body to read. The connection is dialled
// inside the namespace (do runs there) and then handed to an HTTP client,
// whose own dialling would not be.
func fetchTo(do func(func() error) error, path string, timeout time.Duration, read func(io.Reader) error) error {
	var c net.Conn
	if err := do(func() (err error) {
		c, err = net.DialTimeout("tcp", metricsListen, 5*time.Second)
		return err
	}); err != nil {
		return err
	}
	used := false
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: func(context.Context, string, string) (net.Conn, error) {
			if used {
				return nil, errors.New("one connection per request")
			}
			used = true
			return c, nil
		},
	}}
	resp, err := client.Get("http://" + metricsListen + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	return read(resp.Body)
}

// natFlowsTable renders the section, for the modes that measured it.
func natFlowsTable(results []result) string {
	intro := "NAT flows: the workload on node A opens new flows to the outside host, one socket each. " +
		"Lost flows are set against overlayd's counters (drops, refusals), the kernel's input backlog drops and node A's link drops (its TUN's included); " +
		"RSS is overlayd's growth per idle flow"
	header := func(r result) string {
		return fmt.Sprintf("MODE\tUDP new flows/s (lost)\tUDP burst of %d at once: lost\tTCP new conns/s (lost)\tcounted by overlayd / kernel backlog / node A links\tRSS per idle UDP / TCP flow (at %d each)",
			r.NATFlows.BurstFlows, r.NATFlows.IdleFlows)
	}
	var b strings.Builder
	b.WriteString(sectionTable(results, intro, header, func(r result) (string, bool) {
		f := r.NATFlows
		if f == nil {
			return "", false
		}
		return fmt.Sprintf("%s\t%.0f (%d)\t%d\t%.0f (%d)\t%d / %d / %d\t%.0f / %.0f B", r.Mode.Name,
			f.UDPFlowsPerSec, f.UDPLost, f.BurstLost, f.TCPConnsPerSec, f.TCPLost, f.Counted, f.BacklogDrops, f.LinkDrops, f.UDPBytesPerFlow, f.TCPBytesPerFlow), true
	}))
	for _, r := range results {
		if f := r.NATFlows; f != nil && len(f.LinkDropsBy) > 0 {
			fmt.Fprintf(&b, "%s: node A's links dropped %v\n", r.Mode.Name, f.LinkDropsBy)
		}
	}
	return b.String()
}

// metricsListen is where the overlayd of the NAT flows section serves
// /metrics, inside its node's namespace.
const metricsListen = "127.0.0.1:9469"
