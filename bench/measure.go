package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/overlayd/overlayd/internal/testbed"
)

// userHZ is the kernel's clock tick for /proc CPU times (USER_HZ, 100 on
// every Linux architecture Go supports).
const userHZ = 100

// iperf3Run starts an iperf3 server on the server host for one test, runs
// the client with args, and returns the client's JSON report.
func iperf3Run(ctx context.Context, ep *endpoints, seconds int, args ...string) (map[string]any, error) {
	srv, err := ep.server.Start("iperf3", "-s", "-1", "-B", ep.addr.String())
	if err != nil {
		return nil, err
	}
	defer srv.Stop()
	if err := waitListening(ctx, ep.server, 5201); err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, time.Duration(seconds+30)*time.Second)
	defer cancel()
	full := append([]string{"-c", ep.addr.String(), "-t", strconv.Itoa(seconds), "-J"}, args...)
	out, err := ep.client.Run(cctx, "iperf3", full...)
	var report map[string]any
	if jerr := json.Unmarshal(out, &report); jerr != nil {
		if err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("iperf3 output is not JSON: %w", jerr)
	}
	if msg, ok := report["error"].(string); ok {
		return nil, fmt.Errorf("iperf3: %s", msg)
	}
	return report, nil
}

// waitListening waits until something listens on the TCP port in the host.
func waitListening(ctx context.Context, h *testbed.Host, port int) error {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		out, err := h.Run(ctx, "ss", "-Hltn", fmt.Sprintf("sport = :%d", port))
		if err == nil && strings.TrimSpace(string(out)) != "" {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("iperf3 did not start listening in %s", h.Name)
}

// number digs a float out of iperf3's JSON by path.
func number(report map[string]any, path ...string) float64 {
	var cur any = report
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return 0
		}
		cur = m[p]
	}
	f, _ := cur.(float64)
	return f
}

// tcpResult is the TCP figures of one mode.
type tcpResult struct {
	gbps      float64 // median receiver rate
	bytes     float64 // bytes moved in the run CPU was measured over
	cpuSecs   float64 // whole-machine busy CPU seconds over that run
	routerCPU float64 // router processes' CPU seconds over that run
}

// measureTCP runs iperf3 with the given streams repeats times and returns the
// median rate; CPU is measured over the first run.
func measureTCP(ctx context.Context, ep *endpoints, streams, seconds, repeats int) (tcpResult, error) {
	var res tcpResult
	var rates []float64
	for i := range repeats {
		busy0, router0 := busyCPU(), routerCPU(ep)
		report, err := iperf3Run(ctx, ep, seconds, "-P", strconv.Itoa(streams))
		if err != nil {
			return res, err
		}
		bps := number(report, "end", "sum_received", "bits_per_second")
		if i == 0 {
			res.cpuSecs = busyCPU() - busy0
			res.routerCPU = routerCPU(ep) - router0
			res.bytes = number(report, "end", "sum_received", "bytes")
		}
		rates = append(rates, bps/1e9)
	}
	slices.Sort(rates)
	res.gbps = rates[len(rates)/2]
	return res, nil
}

// measureUDP offers 64-byte datagrams as fast as one iperf3 client can send
// them and returns the packets per second received and the loss.
func measureUDP(ctx context.Context, ep *endpoints, seconds int) (pps, lossPct float64, err error) {
	return udpRun(ctx, ep, seconds, "0")
}

// measureUDPPaced offers 64-byte datagrams at pps (iperf3 paces the bits
// per second of payload) and returns what arrived and the loss.
func measureUDPPaced(ctx context.Context, ep *endpoints, seconds int, pps float64) (received, lossPct float64, err error) {
	return udpRun(ctx, ep, seconds, strconv.FormatFloat(pps*64*8, 'f', 0, 64))
}

func udpRun(ctx context.Context, ep *endpoints, seconds int, bitrate string) (pps, lossPct float64, err error) {
	report, err := iperf3Run(ctx, ep, seconds, "-u", "-l", "64", "-b", bitrate)
	if err != nil {
		return 0, 0, err
	}
	packets := number(report, "end", "sum", "packets")
	lost := number(report, "end", "sum", "lost_packets")
	secs := number(report, "end", "sum", "seconds")
	if secs == 0 || packets == 0 {
		return 0, 0, fmt.Errorf("iperf3 UDP reported no packets")
	}
	return (packets - lost) / secs, 100 * lost / packets, nil
}

// busyCPU is the machine's busy CPU time in seconds (all cores, from
// /proc/stat): the kernel's work on packets shows here and in no process,
// so comparing modes needs the whole machine.
func busyCPU() float64 {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0
	}
	fields := strings.Fields(sc.Text())[1:]
	var busy float64
	for i, v := range fields {
		n, _ := strconv.ParseFloat(v, 64)
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		busy += n
	}
	return busy / userHZ
}

// routerCPU is the user and system CPU seconds of the mode's userspace
// router processes.
func routerCPU(ep *endpoints) float64 {
	var total float64
	for _, p := range ep.routers {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Pid()))
		if err != nil {
			continue
		}
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(fields) > 12 {
			u, _ := strconv.ParseFloat(fields[11], 64)
			k, _ := strconv.ParseFloat(fields[12], 64)
			total += (u + k) / userHZ
		}
	}
	return total
}

// peakRSS is the largest peak resident set (VmHWM) of the router processes,
// in MiB.
func peakRSS(ep *endpoints) float64 {
	var peak float64
	for _, p := range ep.routers {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Pid()))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
				peak = max(peak, kb/1024)
			}
		}
	}
	return peak
}
