// Command demo is `make demo`: it builds the standard bed in network
// namespaces (nodes A and B on one subnet, C behind a router on another),
// runs overlayd on every node with one example cluster file, sends pings and
// a TCP transfer from a workload on A to workloads on B (same subnet) and C
// (other subnet), shows what crossed node A's underlay link, and tears
// everything down. It needs root; it touches nothing outside the namespaces
// it makes.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/internal/testbed"
	"github.com/overlayd/overlayd/plan"
)

func main() {
	bin := flag.String("overlayd", "bin/overlayd", "the overlayd binary")
	file := flag.String("config", "examples/vxlan-cross-subnet.toml", "the cluster file every node runs")
	size := flag.Int("bytes", 50<<20, "bytes each TCP transfer moves each way")
	iperfSeconds := flag.Int("iperf3", 0, "also measure single-stream TCP with iperf3 for this many seconds (0: no)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, *file, *size, *iperfSeconds); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) {
	fmt.Printf("\n==> "+format+"\n", args...)
}

func run(ctx context.Context, bin, file string, size, iperfSeconds int) error {
	start := time.Now()
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	file, err = filepath.Abs(file)
	if err != nil {
		return err
	}
	// A copy of the file whose state directory (the IPAM block files) is
	// this run's, so the demo leaves nothing on the machine.
	tmp, err := os.MkdirTemp("", "overlayd-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	file, err = withStateDir(file, tmp)
	if err != nil {
		return err
	}
	cfg, err := config.Load(file)
	if err != nil {
		return err
	}
	p, err := plan.Build(cfg, "node-a", testbed.DefaultMTU)
	if err != nil {
		return err
	}

	step("building the bed: node-a, node-b on 198.18.1.0/24; node-c on 198.18.2.0/24 behind a router")
	bed, err := testbed.New(testbed.Options{WorkloadMTU: p.TunnelMTU})
	if err != nil {
		return err
	}
	defer func() {
		step("tearing down")
		if err := bed.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "demo: teardown: %v\n", err)
		}
		fmt.Printf("done in %s\n", time.Since(start).Round(100*time.Millisecond))
	}()
	if err := testbed.BuildStandard(bed); err != nil {
		return err
	}
	step("starting overlayd on every node with %s", filepath.Base(file))
	// The admin sockets in a directory of this run's: the bed's nodes share
	// the filesystem with the machine, and with any other bed's node-a.
	sockets := tmp
	for _, n := range cfg.Nodes {
		proc, err := bed.Host(n.Name).Start(bin, "run", "--config", file, "--node", n.Name, "--admin-socket", filepath.Join(sockets, n.Name+".sock"))
		if err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		err = proc.WaitOutput(wctx, "overlayd running")
		cancel()
		if err != nil {
			return fmt.Errorf("overlayd on %s: %w", n.Name, err)
		}
		fmt.Printf("    %s: running\n", n.Name)
	}

	step("attaching a container on every node through the CNI plugin (overlayd cni install, then libcni as a runtime calls it)")
	workloads, addrs, err := attachContainers(ctx, bed, bin, file, cfg, tmp)
	if err != nil {
		return err
	}
	fmt.Println()
	for _, r := range p.Routes {
		fmt.Printf("    node-a -> %-7s %-17s %-5s (%s)\n", r.Node, r.Block, r.Encap, r.Reason())
	}

	capture, err := bed.Host("node-a").Capture("eth0")
	if err != nil {
		return err
	}
	for i, peer := range []string{"node-b", "node-c"} {
		step("node-a's workload %s -> %s's workload %s", addrs["node-a"], peer, addrs[peer])
		pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		err := workloads["node-a"].Ping(pctx, addrs[peer], 3)
		cancel()
		if err != nil {
			return fmt.Errorf("ping: %w", err)
		}
		fmt.Printf("    ping: 3 of 3 answered\n")
		tctx, cancel := context.WithTimeout(ctx, 120*time.Second)
		res, err := testbed.TCPTransfer(tctx, workloads["node-a"], workloads[peer], netip.AddrPortFrom(addrs[peer], uint16(5201+i)), size)
		cancel()
		if err != nil {
			return fmt.Errorf("TCP transfer: %w", err)
		}
		fmt.Printf("    TCP: %v, content checked\n", res)
		if iperfSeconds > 0 {
			rate, err := iperf3(ctx, workloads["node-a"], workloads[peer], addrs[peer], iperfSeconds)
			if err != nil {
				return err
			}
			fmt.Printf("    iperf3, one TCP stream, %d s: %s\n", iperfSeconds, rate)
		}
	}
	pkts := capture.Stop()

	step("what crossed node-a's underlay link (eth0), decoded with gopacket")
	for _, peer := range []string{"node-b", "node-c"} {
		kinds, sample := onTheWire(pkts, addrs["node-a"], addrs[peer])
		fmt.Printf("    to/from %s: %s\n", peer, describe(kinds))
		if sample != "" {
			fmt.Printf("      e.g. %s\n", sample)
		}
	}
	return nil
}

func describe(kinds map[string]int) string {
	var parts []string
	for _, k := range []string{"none", "ipip", "vxlan"} {
		if n := kinds[k]; n > 0 {
			name := map[string]string{"none": "unencapsulated", "ipip": "IP-in-IP (protocol 4)", "vxlan": "VXLAN (UDP 4789)"}[k]
			parts = append(parts, fmt.Sprintf("%d packets %s", n, name))
		}
	}
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, ", ")
}

// onTheWire counts the frames that carried workload traffic between a and b
// by how they were carried, and describes one of them layer by layer.
func onTheWire(pkts []gopacket.Packet, a, b netip.Addr) (map[string]int, string) {
	kinds := map[string]int{}
	sample := ""
	for _, p := range pkts {
		kind, outer, inner, vni := testbed.Carried(p)
		if inner == nil {
			continue
		}
		src, _ := netip.AddrFromSlice(inner.SrcIP.To4())
		dst, _ := netip.AddrFromSlice(inner.DstIP.To4())
		if (src != a || dst != b) && (src != b || dst != a) {
			continue
		}
		kinds[kind]++
		desc := ""
		switch kind {
		case testbed.CarriedIPIP:
			desc = fmt.Sprintf("IPv4 %s > %s proto 4 | inner ", outer.SrcIP, outer.DstIP)
		case testbed.CarriedVXLAN:
			if udp, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP); udp != nil {
				desc = fmt.Sprintf("IPv4 %s > %s | UDP %d > %d | VXLAN VNI %d | Ethernet | inner ", outer.SrcIP, outer.DstIP, udp.SrcPort, udp.DstPort, vni)
			}
		}
		if sample == "" || (kind != testbed.CarriedBare && !strings.Contains(sample, "inner")) {
			sample = fmt.Sprintf("%sIPv4 %s > %s %s, %d bytes", desc, inner.SrcIP, inner.DstIP, inner.Protocol, len(p.Data()))
		}
	}
	return kinds, sample
}

// iperf3 runs one iperf3 TCP stream from client to server and returns the
// receiver's rate.
func iperf3(ctx context.Context, client, server *testbed.Host, addr netip.Addr, seconds int) (string, error) {
	srv, err := server.Start("iperf3", "-s", "-1", "-B", addr.String())
	if err != nil {
		return "", err
	}
	defer srv.Stop()
	time.Sleep(300 * time.Millisecond)
	cctx, cancel := context.WithTimeout(ctx, time.Duration(seconds+20)*time.Second)
	defer cancel()
	out, err := client.Run(cctx, "iperf3", "-c", addr.String(), "-t", fmt.Sprint(seconds), "-f", "g")
	if err != nil {
		return "", fmt.Errorf("iperf3: %w", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "receiver") {
			f := strings.Fields(line)
			for i, w := range f {
				if w == "Gbits/sec" && i > 0 {
					return f[i-1] + " Gbit/s", nil
				}
			}
		}
	}
	return "", fmt.Errorf("iperf3 printed no receiver rate:\n%s", out)
}
