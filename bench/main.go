// Command bench is `make bench`: it measures what each way of carrying
// workload traffic costs, on the standard bed (network namespaces, node A
// and node C on different subnets behind a router), one mode at a time on a
// fresh bed: the plain underlay, overlayd direct, IP-in-IP and VXLAN, the
// kernel's own VXLAN set up as Calico's Felix does, wireguard-go, and
// overlayd's NAT with its peers: the kernel's MASQUERADE, pasta and
// slirp4netns. It prints a table with each figure's ratio to kernel VXLAN
// and writes it as Markdown, JSON and an SVG chart under bench/results/.
// Needs root, iperf3, wireguard-tools, iptables, pasta and slirp4netns
// (make bench installs them).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/overlayd/overlayd/internal/testbed"
)

// result is one mode's figures; zero where not measured.
type result struct {
	Mode       mode    `json:"mode"`
	Skipped    string  `json:"skipped,omitempty"` // why the mode was not measured
	TCP1Gbps   float64 `json:"tcp1Gbps"`
	TCP4Gbps   float64 `json:"tcp4Gbps"`
	UDPkpps    float64 `json:"udp64ReceivedKpps"`
	UDPLossPct float64 `json:"udp64LossPercent"`
	// The paced test offers 64-byte datagrams at pacedShare of kernel
	// VXLAN's received rate: what a mode receives of a load the kernel
	// carries, and what it loses of it.
	PacedKpps    float64 `json:"udp64PacedReceivedKpps,omitempty"`
	PacedLossPct float64 `json:"udp64PacedLossPercent,omitempty"`
	// RTTp50us and RTTp99us are the back-to-back round trips; RTTByPace
	// has them and the paced ones.
	RTTp50us    float64   `json:"rttP50Micros"`
	RTTp99us    float64   `json:"rttP99Micros"`
	RTTByPace   []paceRTT `json:"rttByPace,omitempty"`
	CPUPerGB    float64   `json:"cpuSecondsPerGB"`       // whole machine, over the one-stream TCP run
	RouterCPUGB float64   `json:"routerCPUSecondsPerGB"` // the userspace router processes alone
	PeakRSSMiB  float64   `json:"peakRSSMiB"`
	// NATFlows is the NAT flows section, for the modes that measure it.
	NATFlows *natFlowsResult `json:"natFlows,omitempty"`
	// Flood is the forged flood section (flood.go), likewise.
	Flood *floodResult `json:"forgedFlood,omitempty"`
}

// plan is how long and how often each measurement runs.
type plan struct {
	tcpSeconds, repeats, udpSeconds int
	rttPaces                        []pace
	// pacedPPS is the rate of the paced UDP test, set once the reference
	// is measured or by --paced-kpps (pacedGiven); 0: not run.
	pacedPPS   float64
	pacedGiven bool
	// floodOnly: measure the forged flood section alone.
	floodOnly bool
}

// noteReference sets the paced test's rate from the reference mode's
// result, unless --paced-kpps gave one.
func (p *plan) noteReference(m mode, r result) {
	if m.Name == reference && r.UDPkpps > 0 && !p.pacedGiven {
		p.pacedPPS = pacedShare * r.UDPkpps * 1000
	}
}

// pacedNote says, for the report, what the UDP tests offered.
func (p plan) pacedNote() string {
	switch {
	case p.pacedPPS == 0:
		return "flood only: no paced test without kernel VXLAN measured or --paced-kpps"
	case p.pacedGiven:
		return fmt.Sprintf("flood, then paced at %.0f kpps as --paced-kpps asked", p.pacedPPS/1000)
	}
	return fmt.Sprintf("flood, then paced at %.0f kpps, %.1fx kernel VXLAN's received rate", p.pacedPPS/1000, pacedShare)
}

// pacedShare is the share of kernel VXLAN's 64-byte rate the paced UDP test
// offers: the target is to receive it with under 1 % loss.
const pacedShare = 0.8

func main() {
	e := &env{}
	flag.StringVar(&e.overlayd, "overlayd", "bin/overlayd", "the overlayd binary")
	flag.StringVar(&e.wireguardGo, "wireguard-go", "bin/wireguard-go", "the wireguard-go binary (\"\": skip that mode)")
	flag.StringVar(&e.examples, "examples", "examples", "the directory of example cluster files")
	quick := flag.Bool("quick", false, "one short pass of everything, for smoke tests")
	out := flag.String("out", "bench/results", "where to write DATE.md, DATE.json and DATE.svg")
	only := flag.String("mode", "", "measure only the mode with this name")
	render := flag.String("render", "", "measure nothing: write the reports of a saved run (its .json) again")
	pacedKpps := flag.Float64("paced-kpps", 0, "offer the paced UDP test this rate instead of 0.8x kernel VXLAN's (for a --mode run without the reference)")
	floodOnly := flag.Bool("flood-only", false, "measure only the forged flood section (of the modes that have it)")
	flag.StringVar(&e.profileDir, "profile", "", "write to this directory profiles of each overlayd: CPU and allocations in the one-stream TCP run, the paced UDP run and under the forged flood, CPU of the NAT flow runs and the heap of its idle flows")
	flag.Parse()
	if *render != "" {
		if err := rerender(*render); err != nil {
			fail(err)
		}
		return
	}

	p := plan{tcpSeconds: 10, repeats: 3, udpSeconds: 5, rttPaces: fullPaces}
	if *quick {
		p = plan{tcpSeconds: 1, repeats: 1, udpSeconds: 1, rttPaces: quickPaces}
	}
	p.pacedPPS, p.pacedGiven = *pacedKpps*1000, *pacedKpps > 0
	p.floodOnly = *floodOnly
	for _, path := range []*string{&e.overlayd, &e.wireguardGo, &e.examples, out, &e.profileDir} {
		if *path != "" {
			abs, err := filepath.Abs(*path)
			if err != nil {
				fail(err)
			}
			*path = abs
		}
	}
	if _, err := os.Stat(e.wireguardGo); e.wireguardGo != "" && err != nil {
		e.wireguardGo = ""
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	all, err := modes(e.examples)
	if err != nil {
		fail(err)
	}
	start := time.Now()
	var results []result
	for _, m := range all {
		if *only != "" && m.Name != *only || p.floodOnly && !m.flood {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		res := runMode(ctx, e, m, p, start)
		results = append(results, res)
		p.noteReference(m, res)
	}
	stamp := time.Now().UTC().Format("2006-01-02T150405Z")
	files, err := writeReports(*out, stamp, results, p, *quick)
	if err != nil {
		fail(err)
	}
	fmt.Print(table(results))
	progress(start, "done: %v", files)
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "bench: %v\n", err)
	os.Exit(1)
}

func progress(start time.Time, format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6s] %s\n", time.Since(start).Round(time.Second), fmt.Sprintf(format, args...))
}

// runMode builds a fresh bed, sets the mode up and measures it; a failure
// is recorded as the mode's reason, and the other modes go on.
func runMode(ctx context.Context, e *env, m mode, p plan, start time.Time) result {
	res := result{Mode: m}
	progress(start, "%s: building the bed", m.Name)
	bed, err := testbed.New(testbed.Options{WorkloadMTU: m.MTU})
	if err != nil {
		res.Skipped = err.Error()
		return res
	}
	defer bed.Close()
	if err := testbed.BuildStandard(bed); err != nil {
		res.Skipped = err.Error()
		return res
	}
	ep, err := m.setup(e, bed, m)
	if err != nil {
		var nm errNotMeasured
		if !errors.As(err, &nm) {
			progress(start, "%s: setup failed: %v", m.Name, err)
		}
		res.Skipped = firstLine(err.Error())
		return res
	}
	steps := []struct {
		name string
		run  func() error
	}{
		{"TCP, 1 stream", func() error {
			profiled := startProfiles(e, ep, m, "", p.tcpSeconds*p.repeats)
			r, err := measureTCP(ctx, ep, 1, p.tcpSeconds, p.repeats)
			profiled()
			if err == nil && r.bytes > 0 {
				res.TCP1Gbps = r.gbps
				res.CPUPerGB = r.cpuSecs / (r.bytes / 1e9)
				res.RouterCPUGB = r.routerCPU / (r.bytes / 1e9)
			}
			return err
		}},
		{"TCP, 4 streams", func() error {
			r, err := measureTCP(ctx, ep, 4, p.tcpSeconds, p.repeats)
			res.TCP4Gbps = r.gbps
			return err
		}},
		{"UDP, 64-byte datagrams", func() (err error) {
			var pps float64
			pps, res.UDPLossPct, err = measureUDP(ctx, ep, p.udpSeconds)
			res.UDPkpps = pps / 1000
			return err
		}},
		{"UDP, 64-byte datagrams paced", func() (err error) {
			if p.pacedPPS == 0 || m.Name == reference {
				return nil
			}
			var pps float64
			profiled := startProfiles(e, ep, m, "udp-paced", p.udpSeconds)
			pps, res.PacedLossPct, err = measureUDPPaced(ctx, ep, p.udpSeconds, p.pacedPPS)
			profiled()
			res.PacedKpps = pps / 1000
			return err
		}},
		{"round trips", func() error {
			var err error
			res.RTTByPace, err = measureLatency(ep, p.rttPaces)
			b2b := backToBack(res.RTTByPace)
			res.RTTp50us, res.RTTp99us = b2b.P50us, b2b.P99us
			return err
		}},
		// Last: its 10,000 connections end as it returns, and the NAT's
		// work on them would be in the round trips' figures.
		{"NAT flows", func() error {
			if !m.natFlows {
				return nil
			}
			// The RSS column is the throughput tests' peak, as for the
			// other modes, not the 10,000 flows'.
			res.PeakRSSMiB = peakRSS(ep)
			// The flows' profiles: node A's overlayd holds the NAT.
			profile := func(tag, kind, path string, seconds int) (wait func()) {
				return profileNode(e, ep, m, ep.routers[0], tag, kind, path, seconds)
			}
			f, err := measureNATFlows(ctx, ep, profile)
			res.NATFlows = &f
			return err
		}},
		{"forged flood", func() error {
			if !m.flood {
				return nil
			}
			forged, err := floods(bed, m.cfg, ep.client, ep.server)
			if err != nil {
				return err
			}
			// The flooded runs' profiles: where node C's time goes.
			profile := func() (wait func()) { return startProfiles(e, ep, m, "flooded", p.tcpSeconds) }
			f, err := measureFlood(ctx, ep, forged, p.tcpSeconds, p.repeats, profile)
			res.Flood = &f
			return err
		}},
	}
	if p.floodOnly {
		steps = steps[len(steps)-1:]
		res.Skipped = "--flood-only: the forged flood section alone"
	}
	for _, s := range steps {
		if ctx.Err() != nil {
			res.Skipped = "interrupted"
			return res
		}
		progress(start, "%s: %s", m.Name, s.name)
		if err := s.run(); err != nil {
			progress(start, "%s: %s failed: %v", m.Name, s.name, err)
			if res.Skipped == "" {
				res.Skipped = firstLine(fmt.Sprintf("%s failed: %v", s.name, err))
			}
		}
	}
	if res.PeakRSSMiB == 0 {
		res.PeakRSSMiB = peakRSS(ep)
	}
	return res
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// rerender writes the Markdown and SVG of a saved run beside its JSON and
// prints its table, so a report can be redrawn without measuring again.
func rerender(jsonPath string) error {
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		return err
	}
	var doc savedRun
	if err := json.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("%s: %w", jsonPath, err)
	}
	stem := strings.TrimSuffix(jsonPath, ".json")
	if err := os.WriteFile(stem+".md", []byte(markdown(doc, filepath.Base(stem))), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(stem+".svg", []byte(svg(doc.Results)), 0o644); err != nil {
		return err
	}
	fmt.Print(table(doc.Results))
	return nil
}
