package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMeasureWakeups counts, per ping through VXLAN from node-a's workload
// to node-c's, the context switches (voluntary and involuntary, summed over
// every thread of each overlayd) and the system calls (strace -c -f) of
// node-a's and node-c's overlayd, and reads the round-trip times ping
// reports at three paces. Counts do not depend on the machine being quiet,
// as times do. A measurement for people, not a check: run it with
//
//	OVERLAYD_MEASURE=1 go test -count=1 -v -run TestMeasureWakeups ./cmd/overlayd/
//
// and OVERLAYD_BUSY_POLL=50us to run the nodes with that [tunnel] busyPoll.
func TestMeasureWakeups(t *testing.T) {
	if os.Getenv(measureEnv) != "1" {
		t.Skipf("a measurement, not a check: set %s=1 to run it", measureEnv)
	}
	file := "vxlan-always.toml"
	if spin := os.Getenv("OVERLAYD_BUSY_POLL"); spin != "" {
		example, err := os.ReadFile(filepath.Join("..", "..", "examples", file))
		if err != nil {
			t.Fatal(err)
		}
		file = filepath.Join(t.TempDir(), file)
		if err := os.WriteFile(file, append([]byte("[tunnel]\nbusyPoll = \""+spin+"\"\n"), example...), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("[tunnel] busyPoll = %q", spin)
	}
	c := startCluster(t, file)
	c.ping("node-a", "node-c") // ARP and the first packets out of the way
	nodes := []string{"node-a", "node-c"}
	for _, pace := range []struct {
		interval string
		count    int
	}{{"0.001", 1000}, {"0.01", 500}, {"0.2", 50}} {
		before := map[string]map[string][2]int{}
		for _, n := range nodes {
			before[n] = contextSwitches(t, c.procs[n].Pid())
		}
		rtts := c.pingTimes(pace.interval, pace.count)
		for _, n := range nodes {
			var vol, invol int
			var threads []string
			for tid, cs := range contextSwitches(t, c.procs[n].Pid()) {
				dv, di := cs[0]-before[n][tid][0], cs[1]-before[n][tid][1]
				vol, invol = vol+dv, invol+di
				if dv+di > pace.count/10 {
					threads = append(threads, fmt.Sprintf("%s:%.2f+%.2f", tid, float64(dv)/float64(pace.count), float64(di)/float64(pace.count)))
				}
			}
			slices.Sort(threads)
			t.Logf("pace %ss: %s: %.2f context switches per round trip (%.2f voluntary, %.2f involuntary; busy threads %v)", pace.interval, n,
				float64(vol+invol)/float64(pace.count), float64(vol)/float64(pace.count), float64(invol)/float64(pace.count), threads)
		}
		t.Logf("pace %ss: RTT p50 %.0f µs, p99 %.0f µs (%d replies)", pace.interval, percentile(rtts, 50), percentile(rtts, 99), len(rtts))
	}
	// Back to back (ping -f) and a TCP stream, where packets follow each
	// other closely enough for a spin to catch them.
	before := map[string]map[string][2]int{}
	cpu := map[string]int{}
	for _, n := range nodes {
		before[n], cpu[n] = contextSwitches(t, c.procs[n].Pid()), cpuTicks(t, c.procs[n].Pid())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := c.workload["node-a"].Run(ctx, "ping", "-n", "-q", "-f", "-c", "5000", c.addr["node-c"].String())
	if err != nil {
		t.Fatalf("ping -f: %v", err)
	}
	for _, n := range nodes {
		t.Logf("flood: %s: %.2f context switches per round trip, %d clock ticks of CPU", n,
			float64(switchesSince(t, c.procs[n].Pid(), before[n]))/5000, cpuTicks(t, c.procs[n].Pid())-cpu[n])
	}
	t.Logf("flood: %s", bytes.TrimSpace(out[bytes.LastIndex(out, []byte("rtt")):]))
	for _, n := range nodes {
		before[n], cpu[n] = contextSwitches(t, c.procs[n].Pid()), cpuTicks(t, c.procs[n].Pid())
	}
	c.transfer("node-a", "node-c", 5201)
	for _, n := range nodes {
		t.Logf("TCP 10 MB each way: %s: %.0f context switches per MB, %d clock ticks of CPU", n,
			float64(switchesSince(t, c.procs[n].Pid(), before[n]))/20, cpuTicks(t, c.procs[n].Pid())-cpu[n])
	}
	// 64-byte UDP at 30,000 datagrams a second: 33 µs apart, closer than
	// a spin's bound.
	const udpRate, udpSeconds = 30000, 3
	for _, n := range nodes {
		before[n], cpu[n] = contextSwitches(t, c.procs[n].Pid()), cpuTicks(t, c.procs[n].Pid())
	}
	lost := c.udpStream(udpRate, udpSeconds)
	for _, n := range nodes {
		t.Logf("UDP 64 B at %d/s: %s: %.2f context switches per datagram, %d clock ticks of CPU in %d s", udpRate, n,
			float64(switchesSince(t, c.procs[n].Pid(), before[n]))/(udpRate*udpSeconds), cpuTicks(t, c.procs[n].Pid())-cpu[n], udpSeconds)
	}
	t.Logf("UDP 64 B at %d/s: %s", udpRate, lost)
	// strace slows every system call down, so it gets a run of its own.
	const traced = 200
	var tracers []*exec.Cmd
	outs := map[string]string{}
	for _, n := range nodes {
		out := filepath.Join(t.TempDir(), n+".strace")
		outs[n] = out
		cmd := exec.Command("strace", "-c", "-f", "-o", out, "-p", strconv.Itoa(c.procs[n].Pid()))
		if err := cmd.Start(); err != nil {
			t.Fatalf("strace: %v", err)
		}
		tracers = append(tracers, cmd)
	}
	time.Sleep(time.Second) // strace attached to every thread
	c.pingTimes("0.01", traced)
	for _, cmd := range tracers {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}
	for _, n := range nodes {
		calls := straceTotal(t, outs[n])
		t.Logf("pace 0.01s: %s: %.2f system calls per round trip (strace -c -f)", n, float64(calls)/traced)
	}
	for _, n := range nodes {
		before := cpuTicks(t, c.procs[n].Pid())
		time.Sleep(10 * time.Second)
		t.Logf("idle: %s: %d clock ticks of CPU (utime+stime) in 10 s", n, cpuTicks(t, c.procs[n].Pid())-before)
	}
}

// switchesSince sums a process's context switches since before.
func switchesSince(t *testing.T, pid int, before map[string][2]int) int {
	sum := 0
	for tid, cs := range contextSwitches(t, pid) {
		sum += cs[0] + cs[1] - before[tid][0] - before[tid][1]
	}
	return sum
}

// pingTimes pings node-c's workload from node-a's count times at interval
// seconds and returns the round-trip times in microseconds.
func (c *cluster) pingTimes(interval string, count int) []float64 {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := c.workload["node-a"].Run(ctx, "ping", "-n", "-i", interval, "-c", strconv.Itoa(count), c.addr["node-c"].String())
	if err != nil {
		c.t.Fatalf("ping: %v", err)
	}
	var rtts []float64
	for _, m := range pingTime.FindAllSubmatch(out, -1) {
		ms, _ := strconv.ParseFloat(string(m[1]), 64)
		rtts = append(rtts, ms*1000)
	}
	return rtts
}

var pingTime = regexp.MustCompile(`time=([0-9.]+) ms`)

func percentile(v []float64, p int) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

// contextSwitches reads the voluntary and involuntary context switches of
// each of a process's threads, by thread ID.
func contextSwitches(t *testing.T, pid int) map[string][2]int {
	t.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil || len(tasks) == 0 {
		t.Fatalf("threads of %d: %v", pid, err)
	}
	counts := map[string][2]int{}
	for _, task := range tasks {
		b, err := os.ReadFile(task)
		if err != nil {
			continue // the thread ended
		}
		var cs [2]int
		for _, line := range strings.Split(string(b), "\n") {
			for i, key := range []string{"voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"} {
				if v, ok := strings.CutPrefix(line, key); ok {
					cs[i], _ = strconv.Atoi(strings.TrimSpace(v))
				}
			}
		}
		counts[filepath.Base(filepath.Dir(task))] = cs
	}
	return counts
}

// cpuTicks is a process's utime+stime in clock ticks.
func cpuTicks(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name, which ends at the last ')': state is
	// field 3, utime 14, stime 15.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	return utime + stime
}

// straceTotal reads the "total" line of strace -c's summary.
func straceTotal(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s:\n%s", filepath.Base(path), b)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[len(f)-1] == "total" {
			n, _ := strconv.Atoi(f[3])
			return n
		}
	}
	t.Fatalf("no total in %s", path)
	return 0
}

// udpStream sends 64-byte UDP datagrams from node-a's workload to node-c's
// with iperf3 at rate per second and returns its loss report.
func (c *cluster) udpStream(rate, seconds int) string {
	c.t.Helper()
	srv, err := c.workload["node-c"].Start("iperf3", "-s", "-1", "-B", c.addr["node-c"].String())
	if err != nil {
		c.t.Fatal(err)
	}
	defer srv.Stop()
	time.Sleep(500 * time.Millisecond) // listening
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := c.workload["node-a"].Run(ctx, "iperf3", "-c", c.addr["node-c"].String(), "-u", "-l", "64",
		"-b", strconv.Itoa(rate*64*8), "-t", strconv.Itoa(seconds), "-J")
	var report struct {
		End struct {
			Sum struct {
				Packets     int     `json:"packets"`
				LostPackets int     `json:"lost_packets"`
				LostPercent float64 `json:"lost_percent"`
			} `json:"sum"`
		} `json:"end"`
	}
	if jerr := json.Unmarshal(out, &report); jerr != nil {
		c.t.Fatalf("iperf3: %v %v\n%s", err, jerr, out)
	}
	s := report.End.Sum
	return fmt.Sprintf("%d datagrams, %d lost (%.1f %%)", s.Packets, s.LostPackets, s.LostPercent)
}
