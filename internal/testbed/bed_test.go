package testbed

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
)

// These tests build real beds: they need root and skip without it.

func TestStandardBed(t *testing.T) {
	rootForward := rootSysctl(t, "net/ipv4/ip_forward")
	b := NewStandard(t, Options{})
	a, nodeB, c, outside := b.Host("node-a"), b.Host("node-b"), b.Host("node-c"), b.Host("outside")
	w, err := b.AddWorkload("node-a", "wl-a1", netip.MustParseAddr("192.168.0.5"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	t.Run("hosts reach each other through the router", func(t *testing.T) {
		for _, tc := range []struct{ from, to *Host }{
			{a, nodeB}, {a, c}, {a, outside}, {c, outside}, {nodeB, c},
			{w, a}, // a workload reaches its node through proxy ARP
		} {
			if err := tc.from.Ping(ctx, tc.to.Addr.Addr(), 2); err != nil {
				t.Errorf("%s cannot ping %s: %v", tc.from, tc.to, err)
			}
		}
	})
	t.Run("a ping nobody answers fails", func(t *testing.T) {
		if err := a.Ping(ctx, netip.MustParseAddr("198.18.1.99"), 1); err == nil {
			t.Error("a ping to an unused address succeeded")
		}
	})
	t.Run("a workload is wired Calico style", func(t *testing.T) {
		if w.Node != a || w.NodeIface != WorkloadIface("wl-a1") || w.Addr.String() != "192.168.0.5/32" {
			t.Errorf("workload fields: node %v, iface %q, addr %v", w.Node, w.NodeIface, w.Addr)
		}
		if got := run(t, w, "ip", "route"); !strings.Contains(got, "default via 169.254.1.1 dev eth0") || !strings.Contains(got, "169.254.1.1 dev eth0 scope link") {
			t.Errorf("workload routes:\n%s", got)
		}
		if got := run(t, a, "ip", "route"); !strings.Contains(got, "192.168.0.5 dev "+w.NodeIface+" scope link") {
			t.Errorf("node routes lack the workload's /32:\n%s", got)
		}
		if v, err := a.SysctlValue("net.ipv4.conf." + w.NodeIface + ".proxy_arp"); err != nil || v != "1" {
			t.Errorf("proxy_arp on the node's end: %q, %v", v, err)
		}
	})
	t.Run("sysctls are set per namespace", func(t *testing.T) {
		for _, tc := range []struct {
			h    *Host
			want string
		}{{a, "1"}, {b.Host("router"), "1"}, {outside, "0"}} {
			if v, err := tc.h.SysctlValue("net.ipv4.ip_forward"); err != nil || v != tc.want {
				t.Errorf("ip_forward in %s = %q, %v; want %s", tc.h, v, err, tc.want)
			}
		}
		if got := rootSysctl(t, "net/ipv4/ip_forward"); got != rootForward {
			t.Errorf("the machine's ip_forward changed from %s to %s", rootForward, got)
		}
	})
	t.Run("TCP transfer of 10 MB A to C checks every byte", func(t *testing.T) {
		res, err := TCPTransfer(ctx, a, c, netip.MustParseAddrPort("198.18.2.10:5000"), 10<<20)
		if err != nil {
			t.Fatal(err)
		}
		if res.ClientSeenAs.Addr() != a.Addr.Addr() {
			t.Errorf("the server saw the client as %v, want %v", res.ClientSeenAs, a.Addr.Addr())
		}
		t.Logf("TCP A <-> C over the plain underlay: %v", res)
	})
	t.Run("UDP echo", func(t *testing.T) {
		// Pool addresses are routed nowhere but on their node until an
		// overlay routes them, so the workload talks to its node only.
		for _, tc := range []struct{ client, server *Host }{{a, outside}, {w, a}} {
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			res, err := UDPEcho(ctx, tc.client, tc.server, netip.AddrPortFrom(tc.server.Addr.Addr(), 0))
			cancel()
			if err != nil {
				t.Error(err)
				continue
			}
			if res.Datagrams != len(udpEchoSizes) || res.ClientSeenAs.Addr() != tc.client.Addr.Addr() {
				t.Errorf("%s -> %s: echo result %+v", tc.client, tc.server, res)
			}
		}
	})
	t.Run("UDP echo fails where there is no route back", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if _, err := UDPEcho(ctx, w, outside, netip.AddrPortFrom(outside.Addr.Addr(), 0)); err == nil {
			t.Error("an echo came back to a pool address the router has no route for")
		}
	})
	t.Run("Do runs in the host's namespace", func(t *testing.T) {
		// Only node C has 198.18.2.10: binding it proves where we are.
		var ln net.Listener
		if err := c.Do(func() (err error) { ln, err = net.Listen("tcp4", "198.18.2.10:0"); return err }); err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		if l, err := net.Listen("tcp4", "198.18.2.10:0"); err == nil {
			l.Close()
			t.Error("the machine's own namespace has node C's address")
		}
		wantErr := errors.New("from fn")
		if err := c.Do(func() error { return wantErr }); err != wantErr {
			t.Errorf("Do returned %v, want fn's error", err)
		}
	})
	t.Run("capture on A's eth0 decodes ICMP in both directions", func(t *testing.T) {
		capA, err := a.Capture("eth0")
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Ping(ctx, nodeB.Addr.Addr(), 3); err != nil {
			t.Fatal(err)
		}
		var requests, replies int
		for _, p := range capA.Stop() {
			ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			icmp, _ := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
			if ip == nil || icmp == nil {
				continue
			}
			dir, _ := PacketTypeOf(p)
			switch {
			case icmp.TypeCode.Type() == layers.ICMPv4TypeEchoRequest && ip.DstIP.Equal(net.IP(nodeB.Addr.Addr().AsSlice())) && dir == PacketOutgoing:
				requests++
			case icmp.TypeCode.Type() == layers.ICMPv4TypeEchoReply && ip.SrcIP.Equal(net.IP(nodeB.Addr.Addr().AsSlice())) && dir == PacketHost:
				replies++
			}
		}
		if requests != 3 || replies != 3 {
			t.Errorf("the capture saw %d outgoing echo requests and %d incoming replies, want 3 and 3", requests, replies)
		}
	})
}

// TestCustomBed builds the benchmark's shape, two namespaces over one veth,
// from the generic pieces, with a jumbo MTU.
func TestCustomBed(t *testing.T) {
	b := NewForTest(t, Options{MTU: 9000, WorkloadMTU: 1400})
	left, err := b.AddHost("left")
	if err != nil {
		t.Fatal(err)
	}
	right, err := b.AddHost("right")
	if err != nil {
		t.Fatal(err)
	}
	left.Addr, right.Addr = netip.MustParsePrefix("198.19.0.1/30"), netip.MustParsePrefix("198.19.0.2/30")
	if err := b.Link(Endpoint{Host: left, Iface: "eth0", Addr: left.Addr}, Endpoint{Host: right, Iface: "eth0", Addr: right.Addr}); err != nil {
		t.Fatal(err)
	}
	w, err := b.AddWorkload("left", "wl", netip.MustParseAddr("10.1.0.2"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		h     *Host
		iface string
		mtu   string
	}{{left, "eth0", "9000"}, {right, "eth0", "9000"}, {w, "eth0", "1400"}, {left, w.NodeIface, "1400"}} {
		if got := run(t, tc.h, "ip", "-o", "link", "show", tc.iface); !strings.Contains(got, " mtu "+tc.mtu+" ") {
			t.Errorf("%s %s: want mtu %s:\n%s", tc.h, tc.iface, tc.mtu, got)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := TCPTransfer(ctx, left, right, netip.MustParseAddrPort("198.19.0.2:0"), 1<<20); err != nil {
		t.Error(err)
	}
	out := run(t, left, "ip", "-o", "addr")
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[2] == "inet6" && f[1] != "lo" {
			t.Errorf("IPv6 is on beyond lo without Options.IPv6: %s", line)
		}
	}
	for _, tc := range []struct {
		name string
		do   func() error
	}{
		{"a duplicate host", func() error { _, err := b.AddHost("left"); return err }},
		{"a host name with capitals", func() error { _, err := b.AddHost("Left"); return err }},
		{"an interface name over 15 characters", func() error {
			return b.Link(Endpoint{Host: left, Iface: "much-too-long-name"}, Endpoint{Host: right, Iface: "x"})
		}},
		{"an IPv6 workload", func() error { _, err := b.AddWorkload("left", "v6", netip.MustParseAddr("fd00::1")); return err }},
		{"a workload on an unknown node", func() error { _, err := b.AddWorkload("nope", "w2", netip.MustParseAddr("10.1.0.3")); return err }},
		{"a sysctl outside net", func() error { return left.Sysctl("kernel.pid_max", "1") }},
	} {
		if tc.do() == nil {
			t.Errorf("%s was accepted", tc.name)
		}
	}
}

func TestProcess(t *testing.T) {
	b := NewForTest(t, Options{})
	h, err := b.AddHost("proc")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("runs in the namespace, output readable while it runs, SIGTERM is a clean stop", func(t *testing.T) {
		p, err := h.Start("sh", "-c", "readlink /proc/self/ns/net; echo ready; exec sleep 1000")
		if err != nil {
			t.Fatal(err)
		}
		if err := p.WaitOutput(ctx, "ready"); err != nil {
			t.Fatal(err)
		}
		want := strings.TrimSpace(run(t, h, "readlink", "/proc/self/ns/net"))
		if got := strings.Fields(p.Output())[0]; got != want {
			t.Errorf("the process is in %s, the host is %s", got, want)
		}
		if self, _ := os.Readlink("/proc/self/ns/net"); self == want {
			t.Error("the host's namespace is the machine's")
		}
		if err := p.Stop(); err != nil {
			t.Errorf("Stop: %v", err)
		}
		if err := p.Stop(); err != nil {
			t.Errorf("a second Stop: %v", err)
		}
	})
	t.Run("an exit status is reported as an ExitError", func(t *testing.T) {
		p, err := h.Start("sh", "-c", "echo failing; exit 3")
		if err != nil {
			t.Fatal(err)
		}
		var exit *exec.ExitError
		if err := p.Wait(ctx); !errors.As(err, &exit) || exit.ExitCode() != 3 {
			t.Errorf("Wait = %v, want exit status 3", err)
		}
		if err := p.Stop(); !errors.As(err, &exit) {
			t.Errorf("Stop after exit = %v, want the exit status", err)
		}
		if err := p.WaitOutput(ctx, "never printed"); err == nil {
			t.Error("WaitOutput on an exited process succeeded")
		}
	})
	t.Run("signals reach the process", func(t *testing.T) {
		p, err := h.Start("sh", "-c", `trap "echo got-hup" HUP; echo ready; while :; do sleep 0.05; done`)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.WaitOutput(ctx, "ready"); err != nil {
			t.Fatal(err)
		}
		if err := p.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		if err := p.WaitOutput(ctx, "got-hup"); err != nil {
			t.Error(err)
		}
		if err := p.Stop(); err != nil {
			t.Errorf("Stop: %v", err)
		}
		if err := p.Signal(syscall.SIGHUP); err == nil {
			t.Error("signalling an exited process succeeded")
		}
	})
	t.Run("a missing command fails at Start", func(t *testing.T) {
		if _, err := h.Start("no-such-command-overlayd"); err == nil {
			t.Error("Start of a missing command succeeded")
		}
	})
	t.Run("Run's error carries the output", func(t *testing.T) {
		_, err := h.Run(ctx, "sh", "-c", "echo the-reason >&2; exit 1")
		if err == nil || !strings.Contains(err.Error(), "the-reason") {
			t.Errorf("Run error %v lacks the output", err)
		}
	})
}

func TestCloseRemovesEverything(t *testing.T) {
	Require(t)
	rootLinks := rootLinkNames(t)
	b, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	if err := BuildStandard(b); err != nil {
		t.Fatal(err)
	}
	w, err := b.AddWorkload("node-b", "wl-b1", netip.MustParseAddr("192.168.1.5"))
	if err != nil {
		t.Fatal(err)
	}
	// A process and a grandchild in a session of its own, outside the group
	// Close signals: Close must still leave nothing running.
	p, err := w.Start("sh", "-c", "setsid sleep 1001 & exec sleep 1000")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Host("node-a").Capture("eth0"); err != nil {
		t.Fatal(err)
	}
	impaired, err := b.Impair(b.Host("router"), "to-node-c", Impairment{Loss: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	if got := namespacesOf(t, b.ID()); len(got) != 7 {
		t.Errorf("the bed has namespaces %v, want 7 (with the relay's)", got)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Exited():
	default:
		t.Error("a process is still running after Close")
	}
	deadline := time.Now().Add(5 * time.Second) // SIGKILL takes effect asynchronously
	for len(pidsRunning(t, "sleep 1001")) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := pidsRunning(t, "sleep 1001"); len(got) > 0 {
		t.Errorf("the grandchild survived Close: %v", got)
	}
	if left := namespacesOf(t, b.ID()); len(left) > 0 {
		t.Errorf("namespaces left after Close: %v", left)
	}
	if err := impaired.sockets[0].Close(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("the relay's socket was still open after Close: %v", err)
	}
	if after := rootLinkNames(t); !slices.Equal(after, rootLinks) {
		t.Errorf("the machine's own links changed: %v -> %v", rootLinks, after)
	}
	if _, err := os.Stat(lockPath(b.ID())); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the bed's lock file is still there: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("a second Close: %v", err)
	}
	if _, err := b.AddHost("late"); err == nil {
		t.Error("AddHost on a closed bed succeeded")
	}
	if _, err := w.Start("true"); err == nil {
		t.Error("Start on a closed bed succeeded")
	}
	if err := w.Do(func() error { return nil }); err == nil {
		t.Error("Do on a closed bed succeeded")
	}
}

// helperEnv tells the test binary, run as a child by the tests below, to
// build a bed and then end in the way the variable names.
const helperEnv = "OVERLAYD_TESTBED_HELPER"

// TestHelperBed is not a test of its own: it is the child process of
// TestCleanupWhenTestEndsBadly and TestSweepAfterKill.
func TestHelperBed(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("only runs as a child of the cleanup tests")
	}
	b := NewForTest(t, Options{})
	h, err := b.AddHost("solo")
	if err != nil {
		t.Fatal(err)
	}
	p, err := h.Start("sleep", "1000")
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("BED %s %d\n", b.ID(), p.Pid())
	switch mode {
	case "fail":
		t.Fatal("failing on purpose")
	case "panic":
		panic("panicking on purpose")
	case "hang":
		time.Sleep(time.Hour)
	}
}

// startHelper runs TestHelperBed in a child and returns it with the bed ID
// and the PID of the process the child started in its bed.
func startHelper(t *testing.T, mode string) (cmd *exec.Cmd, done chan error, bedID string, pid int) {
	t.Helper()
	cmd = exec.Command(os.Args[0], "-test.run=^TestHelperBed$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	var output strings.Builder
	for lines.Scan() {
		output.WriteString(lines.Text() + "\n")
		if f := strings.Fields(lines.Text()); len(f) == 3 && f[0] == "BED" {
			bedID = f[1]
			pid, _ = strconv.Atoi(f[2])
			break
		}
	}
	if bedID == "" {
		_ = cmd.Wait()
		t.Fatalf("the child never reported its bed:\n%s", output.String())
	}
	done = make(chan error, 1)
	go func() {
		for lines.Scan() {
		}
		done <- cmd.Wait()
	}()
	return cmd, done, bedID, pid
}

func TestCleanupWhenTestEndsBadly(t *testing.T) {
	Require(t)
	for _, mode := range []string{"fail", "panic"} {
		t.Run("the test does "+mode, func(t *testing.T) {
			_, done, bedID, pid := startHelper(t, mode)
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("the child test passed; it was meant to " + mode)
				}
			case <-time.After(60 * time.Second):
				t.Fatal("the child did not end")
			}
			if left := namespacesOf(t, bedID); len(left) > 0 {
				t.Errorf("namespaces left by a test that did %s: %v", mode, left)
			}
			if pidAlive(pid) {
				t.Errorf("the process the test started (PID %d) survived", pid)
			}
		})
	}
}

// TestSweepAfterKill: a test binary killed outright runs no cleanup at all;
// its processes die with it (Pdeathsig) and the next Sweep removes its
// namespaces.
func TestSweepAfterKill(t *testing.T) {
	Require(t)
	cmd, done, bedID, pid := startHelper(t, "hang")
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-done
	deadline := time.Now().Add(5 * time.Second)
	for pidAlive(pid) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if pidAlive(pid) {
		t.Errorf("the process of the killed test (PID %d) outlived it", pid)
	}
	if left := namespacesOf(t, bedID); len(left) != 1 {
		// Legitimate when another test process made a bed meanwhile: its
		// New swept first. Our Sweep below then has nothing to prove.
		t.Logf("before the sweep the killed test's namespaces are %v; another process swept them", left)
	}
	if err := Sweep(); err != nil {
		t.Fatal(err)
	}
	if left := namespacesOf(t, bedID); len(left) > 0 {
		t.Errorf("Sweep left %v", left)
	}
	if _, err := os.Stat(lockPath(bedID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Sweep left the lock file: %v", err)
	}
}

func TestSweep(t *testing.T) {
	Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	addNS := func(t *testing.T, name string) {
		t.Helper()
		if _, err := runIP(ctx, "netns", "add", name); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = deleteNamespace(name) })
	}
	t.Run("a namespace of a dead PID is removed", func(t *testing.T) {
		dead := fmt.Sprintf("%s-%d-%s-node-a", namePrefix, deadPID(t), "0badc0de")
		addNS(t, dead)
		if err := Sweep(); err != nil {
			t.Fatal(err)
		}
		if namespaceExists(dead) {
			t.Errorf("Sweep left %s", dead)
		}
	})
	t.Run("a held lock protects a bed whose PID looks dead", func(t *testing.T) {
		// As a bed made in another PID namespace would look.
		bedID := fmt.Sprintf("%s-%d-%s", namePrefix, deadPID(t), "0badf00d")
		lock, err := acquireLock(bedID)
		if err != nil {
			t.Fatal(err)
		}
		defer os.Remove(lock.Name())
		addNS(t, bedID+"-node-a")
		if err := Sweep(); err != nil {
			t.Fatal(err)
		}
		if !namespaceExists(bedID + "-node-a") {
			t.Fatal("Sweep removed a namespace whose bed holds its lock")
		}
		lock.Close() // the owner dies
		if err := Sweep(); err != nil {
			t.Fatal(err)
		}
		if namespaceExists(bedID + "-node-a") {
			t.Error("Sweep left a namespace whose owner is gone")
		}
	})
	t.Run("live beds and other namespaces are left alone", func(t *testing.T) {
		b := NewForTest(t, Options{})
		if _, err := b.AddHost("alive"); err != nil {
			t.Fatal(err)
		}
		other := fmt.Sprintf("notours-%d-0badc0de-x", deadPID(t))
		addNS(t, other)
		if err := Sweep(); err != nil {
			t.Fatal(err)
		}
		if !namespaceExists(b.ID()+"-alive") || !namespaceExists(other) {
			t.Error("Sweep removed a live bed's or a foreign namespace")
		}
	})
}

// deadPID returns the PID of a process that has exited.
func deadPID(t *testing.T) int {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

func run(t *testing.T, h *Host, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := h.Run(ctx, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func namespacesOf(t *testing.T, prefix string) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, prefix+"-") {
			found = append(found, strings.Fields(line)[0])
		}
	}
	return found
}

func rootLinkNames(t *testing.T) []string {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, i := range ifs {
		names = append(names, i.Name)
	}
	slices.Sort(names)
	return names
}

func rootSysctl(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile("/proc/sys/" + path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

// pidsRunning lists the processes whose command line is cmdline.
func pidsRunning(t *testing.T, cmdline string) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && strings.TrimRight(strings.ReplaceAll(string(data), "\x00", " "), " ") == cmdline {
			pids = append(pids, pid)
		}
	}
	return pids
}
