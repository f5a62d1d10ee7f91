package main

import (
	"encoding/json"
	"fmt"
	"html"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"
)

const reference = "kernel VXLAN"

// ratio renders v against the reference mode's value of the same figure.
func ratio(v, ref float64) string {
	if v == 0 || ref == 0 {
		return ""
	}
	return fmt.Sprintf(" (%.2f×)", v/ref)
}

func referenceOf(results []result) result {
	for _, r := range results {
		if r.Mode.Name == reference {
			return r
		}
	}
	return result{}
}

// table renders the results with each figure's ratio to kernel VXLAN.
func table(results []result) string {
	ref := referenceOf(results)
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 2, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "MODE\tTCP x1 Gbit/s\tTCP x4 Gbit/s\tUDP 64 B kpps (loss)\tUDP paced kpps (loss)\tRTT p50 / p99 µs\tCPU s/GB\tRSS MiB\tOVERHEAD / MTU\n")
	var notes []string
	for _, r := range results {
		if r.Skipped != "" {
			notes = append(notes, fmt.Sprintf("%s: not measured: %s", r.Mode.Name, r.Skipped))
		}
		if r.Skipped != "" && r.TCP1Gbps == 0 {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t-\t-\t%d B / %d\n", r.Mode.Name, r.Mode.Overhead, r.Mode.MTU)
			continue
		}
		rss := "kernel"
		if r.PeakRSSMiB > 0 {
			rss = fmt.Sprintf("%.0f", r.PeakRSSMiB)
		} else if r.Mode.Name == "underlay" {
			rss = "-"
		}
		paced := "-"
		if r.PacedKpps > 0 {
			paced = fmt.Sprintf("%.0f%s (%.1f%%)", r.PacedKpps, ratio(r.PacedKpps, ref.UDPkpps), r.PacedLossPct)
		}
		fmt.Fprintf(tw, "%s\t%.2f%s\t%.2f%s\t%.0f%s (%.0f%%)\t%s\t%.0f / %.0f%s\t%.1f%s\t%s\t%d B / %d\n",
			r.Mode.Name,
			r.TCP1Gbps, ratio(r.TCP1Gbps, ref.TCP1Gbps),
			r.TCP4Gbps, ratio(r.TCP4Gbps, ref.TCP4Gbps),
			r.UDPkpps, ratio(r.UDPkpps, ref.UDPkpps), r.UDPLossPct, paced,
			r.RTTp50us, r.RTTp99us, ratio(r.RTTp50us, ref.RTTp50us),
			r.CPUPerGB, ratio(r.CPUPerGB, ref.CPUPerGB),
			rss, r.Mode.Overhead, r.Mode.MTU)
	}
	tw.Flush()
	for _, n := range notes {
		b.WriteString(n + "\n")
	}
	b.WriteString(rttTable(results))
	b.WriteString(natFlowsTable(results))
	b.WriteString(floodTable(results))
	return b.String()
}

// writeReports writes DATE.md, DATE.json and DATE.svg into dir.
func writeReports(dir, stamp string, results []result, p plan, quick bool) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("results directory: %w", err)
	}
	host, _ := os.Hostname()
	doc := savedRun{
		Date: time.Now().UTC().Format(time.RFC3339), Quick: quick,
		Kernel: strings.TrimSpace(readFirstLine("/proc/sys/kernel/osrelease")), Host: host,
		Load:    strings.TrimSpace(readFirstLine("/proc/loadavg")),
		Plan:    fmt.Sprintf("TCP %d s x %d (median), UDP %d s (%s), %s", p.tcpSeconds, p.repeats, p.udpSeconds, p.pacedNote(), pacesNote(p.rttPaces)),
		Results: results,
	}
	js, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, err
	}
	md := markdown(doc, stamp)
	files := []string{filepath.Join(dir, stamp+".json"), filepath.Join(dir, stamp+".md"), filepath.Join(dir, stamp+".svg")}
	for i, content := range [][]byte{js, []byte(md), []byte(svg(results))} {
		if err := os.WriteFile(files[i], content, 0o644); err != nil {
			return nil, err
		}
	}
	return files, nil
}

// savedRun is a run as the JSON report keeps it.
type savedRun struct {
	Date    string   `json:"date"`
	Quick   bool     `json:"quick"`
	Kernel  string   `json:"kernel"`
	Host    string   `json:"host"`
	Load    string   `json:"loadavg"`
	Plan    string   `json:"plan"`
	Results []result `json:"results"`
}

func markdown(doc savedRun, stamp string) string {
	return fmt.Sprintf("# overlayd bench, %s\n\nKernel %s, %s. %s. Ratios are to %s. "+
		"CPU s/GB is the whole machine's busy CPU over the one-stream TCP run per GB moved "+
		"(the kernel's work shows in no process); RSS is the peak of the userspace router processes.\n\n```\n%s```\n\n![chart](%s.svg)\n",
		doc.Date, doc.Kernel, loadNote(doc.Load), doc.Plan, reference, table(doc.Results), stamp)
}

func loadNote(loadavg string) string {
	if f := strings.Fields(loadavg); len(f) > 0 {
		return "load average " + f[0] + " at the end"
	}
	return "load unknown"
}

func readFirstLine(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.SplitN(string(b), "\n", 2)[0]
}

// svg draws two bar charts side by side: one-stream TCP throughput and
// 64-byte UDP packets per second received, one bar per mode.
func svg(results []result) string {
	const (
		width, barH, gap, left, chartW = 900, 22, 8, 150, 300
	)
	height := 60 + len(results)*(barH+gap)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	panels := []struct {
		title string
		value func(result) float64
		unit  string
		x     int
	}{
		{"TCP, one stream (Gbit/s)", func(r result) float64 { return r.TCP1Gbps }, "", left},
		{"UDP 64 B received (kpps)", func(r result) float64 { return r.UDPkpps }, "", left + chartW + 120},
	}
	for _, p := range panels {
		maxV := 0.0
		for _, r := range results {
			maxV = max(maxV, p.value(r))
		}
		fmt.Fprintf(&b, `<text x="%d" y="24" font-weight="bold">%s</text>`+"\n", p.x, html.EscapeString(p.title))
		for i, r := range results {
			y := 40 + i*(barH+gap)
			if p.x == left {
				fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", left-8, y+barH-7, html.EscapeString(r.Mode.Name))
			}
			v := p.value(r)
			if v == 0 || maxV == 0 {
				fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#888">not measured</text>`+"\n", p.x, y+barH-7)
				continue
			}
			w := int(v / maxV * chartW)
			color := "#4c78a8"
			if r.Mode.Name == reference {
				color = "#f58518"
			}
			fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s"/>`+"\n", p.x, y, max(w, 1), barH, color)
			fmt.Fprintf(&b, `<text x="%d" y="%d">%.2f</text>`+"\n", p.x+w+4, y+barH-7, v)
		}
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// sectionTable renders one section of the report for the results that
// have it (row's ok): its intro and its header (tab-separated, made from
// the first such result) once, then a row each; "" when none has it.
func sectionTable(results []result, intro string, header func(result) string, row func(result) (line string, ok bool)) string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 2, 0, 2, ' ', 0)
	started := false
	for _, r := range results {
		line, ok := row(r)
		if !ok {
			continue
		}
		if !started {
			b.WriteString("\n" + intro + "\n")
			fmt.Fprintln(tw, header(r))
			started = true
		}
		fmt.Fprintln(tw, line)
	}
	tw.Flush()
	return b.String()
}
