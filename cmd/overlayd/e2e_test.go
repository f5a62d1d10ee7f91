package main

// End-to-end tests: the real `overlayd run` on every node of the standard
// bed (network namespaces, veth, a router between subnets), real workloads,
// and captures on the underlay proving what went on the wire.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/overlayd/overlayd/cni"
	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/daemon"
	"github.com/overlayd/overlayd/internal/testbed"
	"github.com/overlayd/overlayd/plan"
)

// childEnv makes the test binary act as overlayd: the e2e tests start it in
// the node namespaces, so the router runs with the race detector too.
const childEnv = "OVERLAYD_TEST_AS_OVERLAYD"

// cniCrashEnv names the crash point (cni.Crash*) at which the test binary,
// linked as a CNI plugin, kills itself.
const cniCrashEnv = "OVERLAYD_TEST_CNI_CRASH_AT"

func TestMain(m *testing.M) {
	// Linked as overlayd-cni or overlayd-ipam, the test binary is that
	// plugin (with the race detector), with crash points a test can arm.
	if name := filepath.Base(os.Args[0]); name == cni.PluginName || name == cni.IPAMName {
		crashAt := os.Getenv(cniCrashEnv)
		os.Exit(cni.MainWithHooks(name, "overlayd test build", cni.Hooks{Crash: func(point string) {
			if point == crashAt {
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
		}}))
	}
	if os.Getenv(childEnv) == "1" {
		os.Exit(mainWithArgs(&cliEnv{stdout: os.Stdout, stderr: os.Stderr}, os.Args[1:]))
	}
	os.Exit(m.Run())
}

// cluster is a bed running overlayd on nodes A, B and C with one example
// file, and one workload per node.
type cluster struct {
	t        *testing.T
	bed      *testbed.Bed
	file     string
	cfg      *config.Cluster
	procs    map[string]*testbed.Process
	workload map[string]*testbed.Host   // by node
	addr     map[string]netip.Addr      // workload address by node
	extra    map[string][]*testbed.Host // more workloads (second pool) by node
	sockets  string                     // the directory of the nodes' admin sockets
}

// socketDir is a directory for the admin sockets of one test's overlayd
// processes: the bed's nodes share the filesystem, so each test keeps its
// own, and none is left in /run. os.MkdirTemp's name is short: a socket's
// path is at most 107 bytes.
func socketDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ovl-admin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// socket is node's admin socket.
func (c *cluster) socket(node string) string { return filepath.Join(c.sockets, node+".sock") }

var nodeNames = []string{"node-a", "node-b", "node-c"}

// loadForBed loads a cluster file and returns it with the tunnel MTU its
// plan gives a node on the bed's underlay: the workloads' MTU.
func loadForBed(t *testing.T, path string) (*config.Cluster, int) {
	t.Helper()
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.Build(cfg, "node-a", testbed.DefaultMTU)
	if err != nil {
		t.Fatal(err)
	}
	return cfg, p.TunnelMTU
}

// startCluster builds the standard bed, adds a workload in each node's
// first block (and one per further block), and starts overlayd everywhere.
func startCluster(t *testing.T, file string) *cluster {
	t.Helper()
	return startClusterNodes(t, file, nodeNames...)
}

// startClusterNodes is startCluster with overlayd on the given nodes only.
func startClusterNodes(t *testing.T, file string, run ...string) *cluster {
	t.Helper()
	path := file
	if !filepath.IsAbs(path) {
		var err error
		if path, err = filepath.Abs(filepath.Join("..", "..", "examples", file)); err != nil {
			t.Fatal(err)
		}
	}
	cfg, tunnelMTU := loadForBed(t, path)
	bed := testbed.NewStandard(t, testbed.Options{WorkloadMTU: tunnelMTU})
	c := &cluster{t: t, bed: bed, file: path, cfg: cfg, sockets: socketDir(t),
		procs: map[string]*testbed.Process{}, workload: map[string]*testbed.Host{},
		addr: map[string]netip.Addr{}, extra: map[string][]*testbed.Host{}}
	for _, n := range cfg.Nodes {
		for i, b := range n.Blocks {
			addr := testbed.WorkloadAddr(b.Prefix)
			w, err := bed.AddWorkload(n.Name, fmt.Sprintf("w%c%d", n.Name[len(n.Name)-1], i), addr)
			if err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				c.workload[n.Name], c.addr[n.Name] = w, addr
			} else {
				c.extra[n.Name] = append(c.extra[n.Name], w)
			}
		}
	}
	for _, n := range run {
		c.start(n)
	}
	return c
}

// start runs overlayd on a node and waits until it says it is running.
func (c *cluster) start(node string) {
	c.t.Helper()
	self, err := os.Executable()
	if err != nil {
		c.t.Fatal(err)
	}
	proc, err := c.bed.Host(node).Start("env", childEnv+"=1", self, "run", "--config", c.file, "--node", node,
		"--admin-socket", c.socket(node), "--log-level", "debug")
	if err != nil {
		c.t.Fatal(err)
	}
	c.procs[node] = proc
	waitRunning(c.t, proc)
}

// ping sends three echoes from one node's workload to another's.
func (c *cluster) ping(from, to string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.workload[from].Ping(ctx, c.addr[to], 3); err != nil {
		c.t.Errorf("ping %s (%s) -> %s (%s): %v", from, c.addr[from], to, c.addr[to], err)
	}
}

// transfer moves 10 MB each way between two nodes' workloads over TCP and
// checks the content.
func (c *cluster) transfer(client, server string, port uint16) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := testbed.TCPTransfer(ctx, c.workload[client], c.workload[server], netip.AddrPortFrom(c.addr[server], port), 10<<20)
	if err != nil {
		c.t.Errorf("TCP transfer %s -> %s: %v", client, server, err)
		return
	}
	c.t.Logf("TCP %s <-> %s: %v", client, server, res)
}

// wireKinds returns how the packets between two inner addresses crossed the
// captured link: "none" (bare), "ipip" or "vxlan" (with the cluster's VNI).
func wireKinds(pkts []gopacket.Packet, a, b netip.Addr, vni uint32) map[string]int {
	kinds := map[string]int{}
	for _, p := range pkts {
		kind, _, inner, gotVNI := testbed.Carried(p)
		if inner == nil || (kind == testbed.CarriedVXLAN && gotVNI != vni) {
			continue
		}
		src, _ := netip.AddrFromSlice(inner.SrcIP.To4())
		dst, _ := netip.AddrFromSlice(inner.DstIP.To4())
		if (src == a && dst == b) || (src == b && dst == a) {
			kinds[kind]++
		}
	}
	return kinds
}

// wireSourcePorts returns, per inner flow that node from sent in VXLAN,
// the outer UDP source ports it left from.
func wireSourcePorts(pkts []gopacket.Packet, from netip.Addr) map[string]map[uint16]bool {
	ports := map[string]map[uint16]bool{}
	for _, p := range pkts {
		kind, outer, inner, _ := testbed.Carried(p)
		udp, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if kind != testbed.CarriedVXLAN || udp == nil || !outer.SrcIP.Equal(from.AsSlice()) {
			continue
		}
		flow := fmt.Sprintf("%s>%s/%s", inner.SrcIP, inner.DstIP, inner.Protocol)
		if tcp, ok := p.Layer(layers.LayerTypeTCP).(*layers.TCP); ok {
			flow += fmt.Sprintf(" %d>%d", tcp.SrcPort, tcp.DstPort)
		}
		if ports[flow] == nil {
			ports[flow] = map[uint16]bool{}
		}
		ports[flow][uint16(udp.SrcPort)] = true
	}
	return ports
}

func TestE2EConfigurations(t *testing.T) {
	testbed.Require(t)
	tests := []struct {
		file string
		toB  string // how node A's workload traffic to node B crosses the wire
		toC  string
	}{
		{"ipip-always.toml", "ipip", "ipip"},
		{"ipip-cross-subnet.toml", "none", "ipip"},
		{"vxlan-always.toml", "vxlan", "vxlan"},
		{"vxlan-cross-subnet.toml", "none", "vxlan"},
		{"nat-outgoing.toml", "none", "ipip"},
		{"never.toml", "none", "none"},
	}
	for _, tc := range tests {
		t.Run(strings.TrimSuffix(tc.file, ".toml"), func(t *testing.T) {
			c := startCluster(t, tc.file)
			// Blocks sent unencapsulated across subnets need BGP in
			// Calico: the router between the subnets learns them.
			for _, n := range c.cfg.Nodes {
				p, err := plan.Build(c.cfg, n.Name, testbed.DefaultMTU)
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range p.Routes {
					if r.UnderlayRouted() {
						if err := c.bed.Host("router").IP("route", "replace", r.Block.String(), "via", r.NodeAddr.String()); err != nil {
							t.Fatal(err)
						}
					}
				}
			}
			capA, err := c.bed.Host("node-a").Capture("eth0")
			if err != nil {
				t.Fatal(err)
			}
			c.ping("node-a", "node-b")
			c.ping("node-a", "node-c")
			c.ping("node-b", "node-a")
			c.ping("node-c", "node-a")
			c.transfer("node-a", "node-b", 5001)
			c.transfer("node-c", "node-a", 5002)
			pkts := capA.Stop()

			vni := c.cfg.VXLAN.VNI
			for _, want := range []struct {
				peer, kind string
			}{{"node-b", tc.toB}, {"node-c", tc.toC}} {
				kinds := wireKinds(pkts, c.addr["node-a"], c.addr[want.peer], vni)
				if kinds[want.kind] == 0 || len(kinds) != 1 {
					t.Errorf("node-a <-> %s workload traffic on node-a's eth0: %v, want only %q", want.peer, kinds, want.kind)
				}
			}
			// VXLAN leaves from the spread source ports, each inner flow
			// from one, as the kernel's VXLAN picks a port per flow.
			for flow, ports := range wireSourcePorts(pkts, c.bed.Host("node-a").Addr.Addr()) {
				if len(ports) != 1 || ports[c.cfg.VXLAN.Port] {
					t.Errorf("inner flow %s left node-a from UDP source ports %v, want one, not the VXLAN port", flow, ports)
				}
			}
		})
	}
}

func TestE2ETwoPoolsSideBySide(t *testing.T) {
	testbed.Require(t)
	c := startCluster(t, "two-pools.toml")
	capA, err := c.bed.Host("node-a").Capture("eth0")
	if err != nil {
		t.Fatal(err)
	}
	// The first workload of each node is in pool-vxlan (CrossSubnet), the
	// second in pool-ipip (Always).
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ipipA, ipipC := c.extra["node-a"][0], c.extra["node-c"][0]
	ipipAddr := func(h *testbed.Host) netip.Addr { return h.Addr.Addr() }
	for _, pair := range []struct{ from, to *testbed.Host }{
		{c.workload["node-a"], c.workload["node-b"]},
		{c.workload["node-a"], c.workload["node-c"]},
		{ipipA, c.extra["node-b"][0]},
		{ipipA, ipipC},
	} {
		if err := pair.from.Ping(ctx, pair.to.Addr.Addr(), 2); err != nil {
			t.Errorf("ping %s -> %s: %v", pair.from.Name, pair.to.Name, err)
		}
	}
	if _, err := testbed.TCPTransfer(ctx, ipipA, ipipC, netip.AddrPortFrom(ipipAddr(ipipC), 5003), 10<<20); err != nil {
		t.Errorf("TCP over the IP-in-IP pool: %v", err)
	}
	pkts := capA.Stop()
	vni := c.cfg.VXLAN.VNI
	for _, want := range []struct {
		a, b netip.Addr
		kind string
	}{
		{c.addr["node-a"], c.addr["node-b"], "none"},
		{c.addr["node-a"], c.addr["node-c"], "vxlan"},
		{ipipAddr(ipipA), ipipAddr(c.extra["node-b"][0]), "ipip"},
		{ipipAddr(ipipA), ipipAddr(ipipC), "ipip"},
	} {
		kinds := wireKinds(pkts, want.a, want.b, vni)
		if kinds[want.kind] == 0 || len(kinds) != 1 {
			t.Errorf("%s <-> %s on node-a's eth0: %v, want only %q", want.a, want.b, kinds, want.kind)
		}
	}
}

// scrape reads a node's /metrics from inside its namespace.
func scrape(t *testing.T, h *testbed.Host) map[string]float64 {
	t.Helper()
	status, body := metricsListener(t, h, http.MethodGet, "/metrics")
	if status != http.StatusOK {
		t.Fatalf("scraping %s: status %d", h.Name, status)
	}
	m := map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m
}

// metricsListener sends one request to a node's TCP metrics listener from
// inside its namespace and returns the status line's code and the body.
func metricsListener(t *testing.T, h *testbed.Host, method, path string) (int, string) {
	t.Helper()
	var (
		status int
		body   []byte
	)
	err := h.Do(func() error {
		conn, err := net.DialTimeout("tcp", "127.0.0.1:9469", 5*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
			return err
		}
		if _, err := fmt.Fprintf(conn, "%s %s HTTP/1.0\r\nHost: localhost\r\n\r\n", method, path); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		status = resp.StatusCode
		body, err = io.ReadAll(resp.Body)
		return err
	})
	if err != nil {
		t.Fatalf("%s %s on %s's metrics listener: %v", method, path, h.Name, err)
	}
	return status, string(body)
}

// forgeVXLAN sends one VXLAN packet from host h to dst:4789 carrying a UDP
// datagram from innerSrc to innerDst:port.
func forgeVXLAN(t *testing.T, h *testbed.Host, dst netip.Addr, vni uint32, innerSrc, innerDst netip.Addr, port uint16) {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{0x66, 1, 2, 3, 4, 5}, DstMAC: net.HardwareAddr(config.VTEPMACFor("node-a")), EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: innerSrc.AsSlice(), DstIP: innerDst.AsSlice()}
	udp := &layers.UDP{SrcPort: 40000, DstPort: layers.UDPPort(port)}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, &layers.VXLAN{ValidIDFlag: true, VNI: vni}, eth, ip, udp, gopacket.Payload("forged")); err != nil {
		t.Fatal(err)
	}
	err := h.Do(func() error {
		conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 4789)))
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = conn.Write(buf.Bytes())
		return err
	})
	if err != nil {
		t.Fatalf("sending a forged packet from %s: %v", h.Name, err)
	}
}

func TestE2EForgedPacketsAreDropped(t *testing.T) {
	testbed.Require(t)
	c := startCluster(t, "vxlan-always.toml")
	wa := c.workload["node-a"]
	const port = 7777
	// A listener in node A's workload: nothing forged may reach it.
	got := make(chan string, 16)
	err := wa.Do(func() error {
		conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(c.addr["node-a"], port)))
		if err != nil {
			return err
		}
		t.Cleanup(func() { conn.Close() })
		go func() {
			b := make([]byte, 2048)
			for {
				n, from, err := conn.ReadFromUDP(b)
				if err != nil {
					return
				}
				got <- fmt.Sprintf("%s from %s", b[:n], from)
			}
		}()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	aAddr := c.cfg.Node("node-a").Address.Addr()
	vni := c.cfg.VXLAN.VNI
	before := scrape(t, c.bed.Host("node-a"))
	// From the outside host: not a node of the cluster.
	forgeVXLAN(t, c.bed.Host("outside"), aAddr, vni, c.addr["node-b"], c.addr["node-a"], port)
	// From node B, with the wrong VNI.
	forgeVXLAN(t, c.bed.Host("node-b"), aAddr, vni+1, c.addr["node-b"], c.addr["node-a"], port)
	// From node B, with an inner source of node C's block.
	forgeVXLAN(t, c.bed.Host("node-b"), aAddr, vni, c.addr["node-c"], c.addr["node-a"], port)
	// And a genuine one from node B, to show the listener works.
	forgeVXLAN(t, c.bed.Host("node-b"), aAddr, vni, c.addr["node-b"], c.addr["node-a"], port)

	select {
	case msg := <-got:
		if !strings.Contains(msg, c.addr["node-b"].String()) {
			t.Errorf("the genuine packet arrived as %q", msg)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the genuine packet from node B never reached the workload")
	}
	select {
	case msg := <-got:
		t.Errorf("a forged packet reached the workload: %s", msg)
	case <-time.After(500 * time.Millisecond):
	}
	after := scrape(t, c.bed.Host("node-a"))
	// The VXLAN socket's filter refuses what no node sent and another
	// VNI before overlayd reads them; the kernel counts them at the
	// socket. The spoofed inner source is overlayd's to see.
	for key, want := range map[string]float64{
		`overlayd_socket_drops_total{encap="vxlan"}`:    2,
		`overlayd_drops_total{reason="unknown_peer"}`:   0,
		`overlayd_drops_total{reason="wrong_vni"}`:      0,
		`overlayd_drops_total{reason="spoofed_source"}`: 1,
	} {
		if d := after[key] - before[key]; d != want {
			t.Errorf("%s went up by %v, want %v", key, d, want)
		}
	}
}

// TestE2EKernelVXLANInterop replaces overlayd on node C with the kernel's own
// VXLAN, set up as Calico's Felix sets up vxlan.calico: workloads behind
// overlayd and behind the kernel must reach each other both ways.
func TestE2EKernelVXLANInterop(t *testing.T) {
	testbed.Require(t)
	path, err := filepath.Abs(filepath.Join("..", "..", "examples", "vxlan-always.toml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, tunnelMTU := loadForBed(t, path)
	bed := testbed.NewStandard(t, testbed.Options{WorkloadMTU: tunnelMTU})
	c := &cluster{t: t, bed: bed, file: path, cfg: cfg, sockets: socketDir(t), procs: map[string]*testbed.Process{},
		workload: map[string]*testbed.Host{}, addr: map[string]netip.Addr{}, extra: map[string][]*testbed.Host{}}
	for _, name := range []string{"node-a", "node-c"} {
		w, err := bed.AddNodeWorkload(cfg.Node(name))
		if err != nil {
			t.Fatal(err)
		}
		c.workload[name], c.addr[name] = w, w.Addr.Addr()
	}

	a, hc, dev := cfg.Node("node-a"), bed.Host("node-c"), testbed.FelixVXLANDevice
	if err := hc.AddFelixVXLAN(cfg, "node-a"); errors.Is(err, testbed.ErrNoKernelVXLAN) {
		t.Skipf("%v", err)
	} else if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c.start("node-a")

	c.ping("node-a", "node-c")
	c.ping("node-c", "node-a")
	c.transfer("node-a", "node-c", 5004)
	c.transfer("node-c", "node-a", 5005)

	// Without the static neighbour entry the kernel asks for node A's VTEP
	// address by ARP inside VXLAN (flooded through an all-zeros FDB entry):
	// overlayd must answer it.
	before := scrape(t, bed.Host("node-a"))["overlayd_vxlan_arp_replies_total"]
	if err := hc.IP("neigh", "del", a.TunnelAddr.String(), "dev", dev); err != nil {
		t.Fatal(err)
	}
	if out, err := hc.Run(ctx, "bridge", "fdb", "append", "00:00:00:00:00:00", "dev", dev, "dst", a.Address.Addr().String()); err != nil {
		t.Fatalf("bridge fdb: %v: %s", err, out)
	}
	c.ping("node-c", "node-a")
	if after := scrape(t, bed.Host("node-a"))["overlayd_vxlan_arp_replies_total"]; after <= before {
		t.Errorf("overlayd answered no ARP request (%v before, %v after)", before, after)
	}
	neigh := runIn(t, hc, "ip", "neigh", "show", a.TunnelAddr.String(), "dev", dev)
	if !strings.Contains(neigh, a.VTEPMAC.String()) {
		t.Errorf("the kernel did not learn node A's VTEP MAC from the ARP reply: %q", neigh)
	}
}

// TestE2EFragmentationNeeded: with a tunnel MTU larger than the underlay
// can carry (here set by hand), a DF packet that does not fit is answered
// with ICMP fragmentation needed and the right MTU, so path MTU discovery
// works and TCP still gets through.
func TestE2EFragmentationNeeded(t *testing.T) {
	testbed.Require(t)
	src, err := os.ReadFile(filepath.Join("..", "..", "examples", "vxlan-always.toml"))
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "big-mtu.toml")
	if err := os.WriteFile(file, append([]byte("[tunnel]\nmtu = 1500\n\n"), src...), 0o644); err != nil {
		t.Fatal(err)
	}
	c := startClusterNodes(t, file, "node-a", "node-c")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, _ := c.workload["node-a"].Run(ctx, "ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", "1472", c.addr["node-c"].String())
	if !strings.Contains(string(out), "mtu = 1450") {
		t.Errorf("a 1500-byte DF ping over VXLAN got no fragmentation needed with MTU 1450:\n%s", out)
	}
	c.transfer("node-a", "node-c", 5006)

	// A pool address in no node's block is answered, not dropped silently.
	out, _ = c.workload["node-a"].Run(ctx, "ping", "-n", "-c", "1", "-W", "2", "192.168.200.1")
	if !strings.Contains(string(out), "Destination Net Unreachable") {
		t.Errorf("a ping to a pool address with no block got no net unreachable:\n%s", out)
	}
}

func runIn(t *testing.T, h *testbed.Host, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := h.Run(ctx, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// TestE2ERoutesLifecycle: routes left by a crashed run are reconciled at the
// next start, and a clean stop removes every route overlayd owns.
func TestE2ERoutesLifecycle(t *testing.T) {
	testbed.Require(t)
	c := startClusterNodes(t, "vxlan-cross-subnet.toml", "node-a")
	a := c.bed.Host("node-a")
	if got := runIn(t, a, "ip", "route", "show", "proto", "211"); !strings.Contains(got, "192.168.0.64/26 via 198.18.1.11") {
		t.Fatalf("the direct route to node-b's block is missing:\n%s", got)
	}
	// A crash leaves the routes behind (the pool route goes with the TUN).
	if err := c.procs["node-a"].Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-c.procs["node-a"].Exited()
	if got := runIn(t, a, "ip", "route", "show", "proto", "211"); !strings.Contains(got, "192.168.0.64/26") {
		t.Fatalf("after SIGKILL the direct route should still be there:\n%s", got)
	}
	// The next run, with VXLAN Always, has no direct route: the stale one goes.
	always, err := filepath.Abs(filepath.Join("..", "..", "examples", "vxlan-always.toml"))
	if err != nil {
		t.Fatal(err)
	}
	c.file = always
	c.start("node-a")
	got := runIn(t, a, "ip", "route", "show", "proto", "211")
	if strings.Contains(got, "192.168.0.64/26") || !strings.Contains(got, "192.168.0.0/16 dev ovl0") {
		t.Errorf("after a restart with vxlan-always the routes are:\n%s", got)
	}
	if err := c.procs["node-a"].Stop(); err != nil {
		t.Errorf("overlayd did not exit cleanly on SIGTERM: %v\n%s", err, c.procs["node-a"].Output())
	}
	if got := runIn(t, a, "ip", "route", "show", "proto", "211"); strings.TrimSpace(got) != "" {
		t.Errorf("routes left after SIGTERM:\n%s", got)
	}
}

// TestE2EMissingPrivilege: without CAP_NET_ADMIN overlayd says so and exits
// 1; with CAP_NET_ADMIN but not CAP_NET_RAW, an IP-in-IP pool is refused
// with the capability named, and VXLAN pools still run.
func TestE2EMissingPrivilege(t *testing.T) {
	requireSetpriv(t)
	bed := testbed.NewStandard(t, testbed.Options{})
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	example := func(f string) string {
		p, err := filepath.Abs(filepath.Join("..", "..", "examples", f))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name     string
		caps     []string
		file     string
		wantExit int
		want     string
	}{
		{"no capabilities", []string{"--bounding-set=-all"}, example("vxlan-always.toml"), 1, "needs CAP_NET_ADMIN"},
		{"CAP_NET_ADMIN only, IP-in-IP pool", []string{"--bounding-set=-all,+net_admin"}, example("ipip-always.toml"), 1, "IP-in-IP needs CAP_NET_RAW"},
		{"CAP_NET_ADMIN only, VXLAN pool", []string{"--bounding-set=-all,+net_admin"}, example("vxlan-always.toml"), -1, "overlayd running"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Root with a cut-down bounding set: a container's root.
			args := append([]string{"--inh-caps=-all"}, tc.caps...)
			args = append(args, "env", childEnv+"=1", self, "run", "--config", tc.file, "--node", "node-a", "--no-metrics",
				"--admin-socket", filepath.Join(socketDir(t), "node-a.sock"))
			proc, err := bed.Host("node-a").Start("setpriv", args...)
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantExit < 0 {
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				defer cancel()
				if err := proc.WaitOutput(ctx, tc.want); err != nil {
					t.Errorf("%v; output %q", err, proc.Output())
				}
				if err := proc.Stop(); err != nil {
					t.Errorf("stop: %v", err)
				}
				return
			}
			select {
			case <-proc.Exited():
			case <-time.After(15 * time.Second):
				t.Fatalf("overlayd kept running without the privilege:\n%s", proc.Output())
			}
			var exit *exec.ExitError
			if err := proc.Stop(); !errors.As(err, &exit) || exit.ExitCode() != tc.wantExit {
				t.Errorf("exit %v, want status %d", err, tc.wantExit)
			}
			if !strings.Contains(proc.Output(), tc.want) {
				t.Errorf("output %q does not contain %q", proc.Output(), tc.want)
			}
		})
	}
}

// streamByte is byte i of the reload test's stream: every byte is checked.
func streamByte(i int64) byte { return byte(i*7 + i>>9) }

// stream is a TCP connection from one workload to another that keeps
// sending a known byte stream at a modest rate until stopped; the receiver
// checks every byte.
type stream struct {
	stop     chan struct{}
	sent     chan int64
	received chan error
	got      atomic.Int64
}

// finish ends the stream and checks that every byte sent arrived and the
// receiver saw the end, across what (for the messages); it returns the
// bytes sent.
func (s *stream) finish(t *testing.T, across string) int64 {
	t.Helper()
	close(s.stop)
	sent := <-s.sent
	if sent < 0 {
		t.Fatalf("the sender failed after %d bytes", -sent)
	}
	select {
	case err := <-s.received:
		if err != nil {
			t.Fatalf("the stream broke across %s: %v", across, err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the receiver never saw the end of the stream")
	}
	if got := s.got.Load(); got != sent {
		t.Errorf("received %d bytes of %d", got, sent)
	}
	return sent
}

func startStream(t *testing.T, client, server *testbed.Host, addr netip.AddrPort) *stream {
	t.Helper()
	s := &stream{stop: make(chan struct{}), sent: make(chan int64, 1), received: make(chan error, 1)}
	var ln net.Listener
	if err := server.Do(func() (err error) { ln, err = net.Listen("tcp4", addr.String()); return err }); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer ln.Close()
		s.received <- func() error {
			c, err := ln.Accept()
			if err != nil {
				return err
			}
			defer c.Close()
			buf := make([]byte, 64<<10)
			var off int64
			for {
				n, err := c.Read(buf)
				for i := range n {
					if buf[i] != streamByte(off+int64(i)) {
						return fmt.Errorf("byte %d differs", off+int64(i))
					}
				}
				off += int64(n)
				s.got.Store(off)
				if err == io.EOF {
					return nil
				}
				if err != nil {
					return fmt.Errorf("after %d bytes: %w", off, err)
				}
			}
		}()
	}()
	var conn net.Conn
	if err := client.Do(func() (err error) { conn, err = net.DialTimeout("tcp4", addr.String(), 5*time.Second); return err }); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer conn.Close()
		buf := make([]byte, 16<<10)
		var off int64
		tick := time.NewTicker(5 * time.Millisecond) // ~3 MB/s: a stream, not a flood
		defer tick.Stop()
		for {
			select {
			case <-s.stop:
				conn.(*net.TCPConn).CloseWrite()
				s.sent <- off
				return
			case <-tick.C:
			}
			for i := range buf {
				buf[i] = streamByte(off + int64(i))
			}
			n, err := conn.Write(buf)
			off += int64(n)
			if err != nil {
				s.sent <- -off
				return
			}
		}
	}()
	return s
}

// TestE2EHitlessModeSwitch: a TCP stream from A to C runs while the pool
// goes IP-in-IP Always, VXLAN Always, VXLAN CrossSubnet and back, reloaded
// on each node in turn; the stream never resets and every byte arrives. A
// file that fails validation is refused on the way, and counted.
// bedNodesTOML is the cluster file's [[nodes]] for the standard bed's three
// nodes, for tests that write their own pools.
const bedNodesTOML = `
[[nodes]]
name = "node-a"
address = "198.18.1.10/24"

[[nodes]]
name = "node-b"
address = "198.18.1.11/24"

[[nodes]]
name = "node-c"
address = "198.18.2.10/24"
`

func TestE2EHitlessModeSwitch(t *testing.T) {
	testbed.Require(t)
	file := filepath.Join(t.TempDir(), "cluster.toml")
	write := func(modes string) {
		t.Helper()
		src := "[[pools]]\nname = \"pool\"\ncidr = \"192.168.0.0/16\"\n" + modes + "\n" + bedNodesTOML
		if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(`ipipMode = "Always"`)
	c := startCluster(t, file)
	s := startStream(t, c.workload["node-a"], c.workload["node-c"], netip.AddrPortFrom(c.addr["node-c"], 5010))

	reloadAll := func() {
		t.Helper()
		for _, n := range nodeNames {
			if err := c.procs[n].Signal(syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
			time.Sleep(700 * time.Millisecond)
		}
	}
	progress := func(step string) {
		t.Helper()
		before := s.got.Load()
		time.Sleep(1 * time.Second)
		if after := s.got.Load(); after <= before {
			t.Fatalf("%s: the stream stalled at %d bytes", step, after)
		}
		t.Logf("%s: %d bytes so far", step, s.got.Load())
	}
	progress("ipip Always")
	for _, step := range []string{`vxlanMode = "Always"`, `vxlanMode = "CrossSubnet"`, `ipipMode = "Always"`} {
		write(step)
		reloadAll()
		progress(step)
	}

	// A broken file is refused; the running configuration and the stream stay.
	write(`ipipMode = "always"`)
	if err := c.procs["node-a"].Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	progress("bad file")
	if out := c.procs["node-a"].Output(); !strings.Contains(out, `msg="pool changed" pool=pool`) {
		t.Errorf("the mode switches are not logged as pool changes:\n%s", out)
	}
	if out := c.procs["node-a"].Output(); !strings.Contains(out, "reload refused") || !strings.Contains(out, file+":4") {
		t.Errorf("the refused reload is not logged with the file and line:\n%s", out)
	}
	m := scrape(t, c.bed.Host("node-a"))
	if m[`overlayd_config_reloads_total{result="applied"}`] != 3 || m[`overlayd_config_reloads_total{result="refused"}`] != 1 {
		t.Errorf("reload counters: applied %v, refused %v; want 3 and 1",
			m[`overlayd_config_reloads_total{result="applied"}`], m[`overlayd_config_reloads_total{result="refused"}`])
	}
	for _, e := range []string{"ipip", "vxlan"} {
		if m[fmt.Sprintf(`overlayd_rx_packets_total{encap=%q}`, e)] == 0 {
			t.Errorf("node-a received nothing over %s during the switches", e)
		}
	}

	// `overlayd reload` asks the same thing through the admin API: the
	// broken file is refused as bad input (exit status 2, file and line),
	// a good one applied.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	reloadCmd := func() (string, int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := c.bed.Host("node-a").Run(ctx, "env", childEnv+"=1", self, "reload", "--admin-socket", c.socket("node-a"))
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return string(out), exit.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	if out, code := reloadCmd(); code != exitBadInput || !strings.Contains(out, file+":4") {
		t.Errorf("overlayd reload of a broken file: exit %d, %q; want %d and the file's line", code, out, exitBadInput)
	}
	write(`ipipMode = "Always"`)
	if out, code := reloadCmd(); code != 0 || !strings.Contains(out, "reload applied") {
		t.Errorf("overlayd reload of a good file: exit %d, %q", code, out)
	}
	progress("overlayd reload")

	s.finish(t, "the mode switches")
}

// TestE2EMetricsMatchTraffic scrapes /metrics around a known amount of
// traffic: N datagrams from A's workload to C's over VXLAN must show as N
// packets sent by A (by encapsulation and to node-c, with 50 bytes of
// overhead each) and N received by C.
func TestE2EMetricsMatchTraffic(t *testing.T) {
	testbed.Require(t)
	c := startCluster(t, "vxlan-always.toml")
	const n, size = 200, 100
	dst := netip.AddrPortFrom(c.addr["node-c"], 6000)
	var sink *net.UDPConn
	if err := c.workload["node-c"].Do(func() (err error) {
		sink, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(dst))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	received := make(chan int)
	go func() {
		count := 0
		buf := make([]byte, 2048)
		for {
			if err := sink.SetReadDeadline(time.Now().Add(2 * time.Second)); err != nil {
				break
			}
			if _, _, err := sink.ReadFromUDP(buf); err != nil {
				break
			}
			count++
		}
		received <- count
	}()
	a, cc := c.bed.Host("node-a"), c.bed.Host("node-c")
	beforeA, beforeC := scrape(t, a), scrape(t, cc)
	if err := c.workload["node-a"].Do(func() error {
		conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(dst))
		if err != nil {
			return err
		}
		defer conn.Close()
		payload := make([]byte, size)
		for range n {
			if _, err := conn.Write(payload); err != nil {
				return err
			}
			time.Sleep(time.Millisecond) // no drops in socket buffers: the count must be exact
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := <-received; got != n {
		t.Fatalf("the sink received %d of %d datagrams", got, n)
	}
	afterA, afterC := scrape(t, a), scrape(t, cc)
	delta := func(before, after map[string]float64, key string) float64 { return after[key] - before[key] }
	wire := float64(n * (size + 8 + 20 + plan.EncapVXLAN.Overhead())) // UDP, inner IPv4, VXLAN overhead
	for _, check := range []struct {
		what string
		got  float64
		want float64
	}{
		{"node-a tx_packets{vxlan}", delta(beforeA, afterA, `overlayd_tx_packets_total{encap="vxlan"}`), n},
		{"node-a tx_bytes{vxlan}", delta(beforeA, afterA, `overlayd_tx_bytes_total{encap="vxlan"}`), wire},
		{"node-a peer_packets{node-c,tx}", delta(beforeA, afterA, `overlayd_peer_packets_total{direction="tx",peer="node-c"}`), n},
		{"node-a encap overhead{vxlan}", delta(beforeA, afterA, `overlayd_encap_overhead_bytes_total{encap="vxlan"}`), float64(n * plan.EncapVXLAN.Overhead())},
		{"node-c rx_packets{vxlan}", delta(beforeC, afterC, `overlayd_rx_packets_total{encap="vxlan"}`), n},
		{"node-c rx_bytes{vxlan}", delta(beforeC, afterC, `overlayd_rx_bytes_total{encap="vxlan"}`), wire},
		{"node-c peer_packets{node-a,rx}", delta(beforeC, afterC, `overlayd_peer_packets_total{direction="rx",peer="node-a"}`), n},
		{"node-a routes{vxlan}", afterA[`overlayd_routes{encap="vxlan"}`], 2},
	} {
		if check.got != check.want {
			t.Errorf("%s: %v, want %v", check.what, check.got, check.want)
		}
	}
}

// TestE2ENATOutgoing: a workload of a natOutgoing pool reaches the outside
// host by TCP, UDP and ping; the outside sees node A's address, the
// workload the outside's; the flows show in the NAT table.
func TestE2ENATOutgoing(t *testing.T) {
	testbed.Require(t)
	c := startClusterNodes(t, "nat-outgoing.toml", "node-a")
	wa, outside := c.workload["node-a"], c.bed.Host("outside")
	nodeA := c.cfg.Node("node-a").Address.Addr()
	out := outside.Addr.Addr()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// TCP and UDP: the outside sees node A's address. The workload sees the
	// outside host's: its connected sockets take replies from no other.
	res, err := testbed.TCPTransfer(ctx, wa, outside, netip.AddrPortFrom(out, 8001), 10<<20)
	if err != nil {
		t.Errorf("10 MB through the NAT: %v", err)
	} else {
		t.Logf("TCP through the NAT: %v", res)
		if got := res.ClientSeenAs.Addr(); got != nodeA {
			t.Errorf("the outside host saw the TCP connection from %s, want node A's address %s", got, nodeA)
		}
	}
	echo, err := testbed.UDPEcho(ctx, wa, outside, netip.AddrPortFrom(out, 8053))
	if err != nil {
		t.Errorf("UDP through the NAT: %v", err)
	} else if got := echo.ClientSeenAs.Addr(); got != nodeA {
		t.Errorf("the outside host saw the UDP requests from %s, want node A's address %s", got, nodeA)
	}

	if err := wa.Ping(ctx, out, 3); err != nil {
		t.Errorf("ping through the NAT: %v", err)
	}
	m := scrape(t, c.bed.Host("node-a"))
	if m["overlayd_nat_flows_created_total"] < 3 {
		t.Errorf("the NAT table counted %v flows, want the TCP, UDP and ICMP ones", m["overlayd_nat_flows_created_total"])
	}

	// The metrics listener answers /metrics (above) and nothing else: the
	// admin API is on the socket.
	for _, req := range []struct{ method, path string }{
		{http.MethodPost, daemon.APIReload}, {http.MethodGet, daemon.APINAT}, {http.MethodGet, daemon.APIStatus}, {http.MethodGet, "/debug/pprof/"},
	} {
		if status, _ := metricsListener(t, c.bed.Host("node-a"), req.method, req.path); status != http.StatusNotFound {
			t.Errorf("%s %s on the metrics listener: %d, want 404", req.method, req.path, status)
		}
	}

	// The admin commands read the running daemon.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []struct{ name, want string }{
		{"nat", "udp  17 src=" + c.addr["node-a"].String() + " dst=" + out.String()},
		{"status", "node node-a, running since"},
		{"routes", "kernel routes owned by overlayd"},
	} {
		got := runIn(t, c.bed.Host("node-a"), "env", childEnv+"=1", self, cmd.name, "--admin-socket", c.socket("node-a"))
		if !strings.Contains(got, cmd.want) {
			t.Errorf("overlayd %s:\n%s\nwant a line with %q", cmd.name, got, cmd.want)
		}
	}
}

// withPrefix writes an example cluster file with extra TOML in front (and
// optional replacements) into a temporary file.
func withPrefix(t *testing.T, example, prefix string, replace ...string) string {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("..", "..", "examples", example))
	if err != nil {
		t.Fatal(err)
	}
	text := prefix + "\n" + string(src)
	for i := 0; i+1 < len(replace); i += 2 {
		text = strings.ReplaceAll(text, replace[i], replace[i+1])
	}
	file := filepath.Join(t.TempDir(), example)
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

// echoServer accepts connections in the host and echoes each one.
func echoServer(t *testing.T, h *testbed.Host, addr netip.AddrPort) {
	t.Helper()
	var ln net.Listener
	if err := h.Do(func() (err error) { ln, err = net.Listen("tcp4", addr.String()); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	testbed.ServeEcho(ln)
}

// dialMany opens n connections from a host (sockets keep its namespace).
func dialMany(t *testing.T, h *testbed.Host, to netip.AddrPort, n int) ([]net.Conn, error) {
	t.Helper()
	var conns []net.Conn
	err := h.Do(func() error {
		for range n {
			c, err := net.DialTimeout("tcp4", to.String(), 10*time.Second)
			if err != nil {
				return err
			}
			conns = append(conns, c)
		}
		return nil
	})
	return conns, err
}

func natFlows(t *testing.T, h *testbed.Host) float64 {
	var total float64
	for k, v := range scrape(t, h) {
		if strings.HasPrefix(k, "overlayd_nat_flows{") {
			total += v
		}
	}
	return total
}

// TestE2ENATThousandConnections: 1,000 concurrent TCP connections from two
// workloads through the NAT all carry their data intact, and the table
// drains to zero once they close.
func TestE2ENATThousandConnections(t *testing.T) {
	testbed.Require(t)
	c := startClusterNodes(t, "nat-outgoing.toml", "node-a")
	second, err := c.bed.AddWorkload("node-a", "wa2", c.addr["node-a"].Next())
	if err != nil {
		t.Fatal(err)
	}
	server := netip.AddrPortFrom(c.bed.Host("outside").Addr.Addr(), 9100)
	echoServer(t, c.bed.Host("outside"), server)
	var conns []net.Conn
	for _, w := range []*testbed.Host{c.workload["node-a"], second} {
		cs, err := dialMany(t, w, server, 500)
		if err != nil {
			t.Fatalf("opening 500 connections from %s: %v (after %d)", w.Name, err, len(cs))
		}
		conns = append(conns, cs...)
	}
	if got := natFlows(t, c.bed.Host("node-a")); got != 1000 {
		t.Errorf("the NAT table holds %v flows with 1,000 connections open", got)
	}
	errs := make(chan error, len(conns))
	for i, conn := range conns {
		go func() {
			defer conn.Close()
			msg := []byte(fmt.Sprintf("connection %04d %s", i, strings.Repeat("x", 1000)))
			if _, err := conn.Write(msg); err != nil {
				errs <- err
				return
			}
			_ = conn.(*net.TCPConn).CloseWrite()
			got, err := io.ReadAll(conn)
			if err == nil && string(got) != string(msg) {
				err = fmt.Errorf("connection %d got %d bytes back, not its own %d", i, len(got), len(msg))
			}
			errs <- err
		}()
	}
	for range conns {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	// Closed flows stay listed for conntrack's CLOSE timeout (10 s) before
	// they leave the table; this bounds the wait, it measures nothing.
	deadline := time.Now().Add(60 * time.Second)
	for natFlows(t, c.bed.Host("node-a")) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the NAT table did not drain: %v flows left", natFlows(t, c.bed.Host("node-a")))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestE2ENATPerSourceLimit: with maxFlowsPerSource 100, the 101st
// connection from one workload is refused with a reset and counted.
func TestE2ENATPerSourceLimit(t *testing.T) {
	testbed.Require(t)
	file := withPrefix(t, "nat-outgoing.toml", "[nat]\nmaxFlowsPerSource = 100")
	c := startClusterNodes(t, file, "node-a")
	server := netip.AddrPortFrom(c.bed.Host("outside").Addr.Addr(), 9200)
	echoServer(t, c.bed.Host("outside"), server)
	conns, err := dialMany(t, c.workload["node-a"], server, 100)
	if err != nil {
		t.Fatalf("the first 100 connections: %v", err)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	_, err = dialMany(t, c.workload["node-a"], server, 1)
	if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the 101st connection: %v, want it reset", err)
	}
	if got := scrape(t, c.bed.Host("node-a"))[`overlayd_nat_flows_refused_total{reason="per_source_limit"}`]; got != 1 {
		t.Errorf("refusals counted: %v, want 1", got)
	}

	// A reload that raises the limit lets more in, with the 100 kept.
	text, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte(strings.Replace(string(text), "maxFlowsPerSource = 100", "maxFlowsPerSource = 110", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.procs["node-a"].Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.procs["node-a"].WaitOutput(ctx, "reload applied"); err != nil {
		t.Fatalf("waiting for the reload: %v", err)
	}
	more, err := dialMany(t, c.workload["node-a"], server, 10)
	if err != nil {
		t.Errorf("after raising maxFlowsPerSource to 110 by reload, 10 more connections: %v", err)
	}
	for _, c := range more {
		c.Close()
	}
}

// TestE2ENoNATWithoutNatOutgoing: a pool without natOutgoing is not
// steered: the outside host sees the workload's own address.
func TestE2ENoNATWithoutNatOutgoing(t *testing.T) {
	testbed.Require(t)
	c := startClusterNodes(t, withPrefix(t, "vxlan-always.toml", "", "natOutgoing = true", "natOutgoing = false"), "node-a")
	outside := c.bed.Host("outside")
	var sink *net.UDPConn
	if err := outside.Do(func() (err error) {
		sink, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(outside.Addr.Addr(), 9300)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	forgeFrom := func() error {
		conn, err := net.DialUDP("udp4", nil, sink.LocalAddr().(*net.UDPAddr))
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = conn.Write([]byte("who am I"))
		return err
	}
	if err := c.workload["node-a"].Do(forgeFrom); err != nil {
		t.Fatal(err)
	}
	_ = sink.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, from, err := sink.ReadFromUDPAddrPort(make([]byte, 64))
	if err != nil {
		t.Fatalf("nothing arrived: %v", err)
	}
	if from.Addr() != c.addr["node-a"] {
		t.Errorf("the outside host saw %s, want the workload's own %s", from.Addr(), c.addr["node-a"])
	}
	if got := natFlows(t, c.bed.Host("node-a")); got != 0 {
		t.Errorf("%v NAT flows for a pool without natOutgoing", got)
	}
}
