package main

import (
	"context"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/overlayd/overlayd/internal/testbed"
)

// ownedKernelState is what overlayd programmed in a node: its routes
// (protocol 211, main table and its own) and its policy rules, a line each,
// sorted.
func ownedKernelState(t *testing.T, h *testbed.Host) []string {
	t.Helper()
	var lines []string
	for _, args := range [][]string{
		{"ip", "route", "show", "proto", "211"},
		{"ip", "route", "show", "table", "211", "proto", "211"},
		{"ip", "rule", "show"},
	} {
		for _, l := range strings.Split(strings.TrimSpace(runIn(t, h, args[0], args[1:]...)), "\n") {
			if l != "" && (args[1] == "route" || strings.Contains(l, "proto 211")) {
				lines = append(lines, args[1]+": "+l)
			}
		}
	}
	slices.Sort(lines)
	return lines
}

// TestE2EFaultsUnderAStream (issue 17's faults): while a TCP stream from
// A's workload to C's crosses the overlay over VXLAN, a fault strikes and
// passes. The stream completes byte-exact (TCP retransmits across the gap),
// and overlayd's routes and rules on node A are afterwards what they were
// before, none twice: a restarted overlayd reconciles what the dead one
// left.
func TestE2EFaultsUnderAStream(t *testing.T) {
	testbed.Require(t)
	// Parallel with the soak: see TestSoak.
	t.Parallel()
	faults := []struct {
		name  string
		fault func(t *testing.T, c *cluster)
		// counted are the counters that must rise across the fault: where
		// what it dropped is told. Node A's overlayd, which lives through
		// the peer's faults, must count no drop beyond them.
		counted []counter
	}{
		// No counts: the packets are lost while no overlayd runs on node
		// A, and the restarted one counts from zero.
		{name: "node A's overlayd killed with SIGKILL and started again", fault: func(t *testing.T, c *cluster) {
			if err := c.procs["node-a"].Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			<-c.procs["node-a"].Exited()
			time.Sleep(500 * time.Millisecond)
			c.start("node-a")
		}},
		// While no overlayd listens on node C, its kernel refuses node A's
		// VXLAN datagrams (and answers with ICMP port unreachable, which
		// node A's unconnected socket does not report).
		{name: "the peer node C's overlayd restarted", fault: func(t *testing.T, c *cluster) {
			if err := c.procs["node-c"].Stop(); err != nil {
				t.Logf("stopping node-c: %v", err)
			}
			c.start("node-c")
		}, counted: []counter{{"node-c", "Udp NoPorts", 1}}},
		// Node C's overlayd cannot send with its link down: echo requests
		// from its workload, sent meanwhile, are dropped as send errors.
		// Node A's tunnel packets die in the router, which cannot resolve
		// node C and says so by ICMP host unreachable.
		{name: "the peer node C's underlay link down for 5 s", fault: func(t *testing.T, c *cluster) {
			nodeC := c.bed.Host("node-c")
			if err := nodeC.IP("link", "set", "eth0", "down"); err != nil {
				t.Fatal(err)
			}
			down := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
			if err := c.workload["node-c"].Ping(ctx, c.addr["node-a"], pingsWhileDown); err == nil {
				t.Error("node C's workload reached node A's with node C's link down")
			}
			cancel()
			time.Sleep(time.Until(down.Add(5 * time.Second)))
			if err := nodeC.IP("link", "set", "eth0", "up"); err != nil {
				t.Fatal(err)
			}
			// The link's routes went with it; the bed's default route comes
			// back by hand, as a network manager would put it back.
			if err := nodeC.IP("route", "replace", "default", "via", "198.18.2.1"); err != nil {
				t.Fatal(err)
			}
		}, counted: []counter{
			{"node-c", `overlayd_drops_total{reason="send_error"}`, pingsWhileDown},
			{"node-c", `overlayd_io_errors_total{op="socket_write"}`, 1},
			{"router", "Icmp OutDestUnreachs", 1},
		}},
	}
	for i, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			c := startCluster(t, "vxlan-cross-subnet.toml")
			streamThrough(t, c, uint16(7101+i), f.counted, func() { f.fault(t, c) })
		})
	}
}

// pingsWhileDown is how many echo requests node C's workload sends while
// node C's link is down.
const pingsWhileDown = 5

// counter is one count in a host of the bed: an overlayd metric, keyed as
// scrape keys it, or a kernel counter of the host's /proc/net/snmp, as
// "Udp NoPorts".
type counter struct {
	host, name string
	rise       float64 // how much it must rise at least
}

func (k counter) read(t *testing.T, c *cluster) float64 {
	t.Helper()
	h := c.bed.Host(k.host)
	if strings.HasPrefix(k.name, "overlayd_") {
		return scrape(t, h)[k.name]
	}
	proto, field, _ := strings.Cut(k.name, " ")
	// /proc/net/snmp has per protocol a line of names, then one of values.
	lines := strings.Split(runIn(t, h, "cat", "/proc/net/snmp"), "\n")
	for i := 0; i+1 < len(lines); i++ {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) == 0 || names[0] != proto+":" || len(values) != len(names) {
			continue
		}
		if j := slices.Index(names, field); j > 0 {
			v, err := strconv.ParseFloat(values[j], 64)
			if err != nil {
				t.Fatalf("%s: /proc/net/snmp %s: %v", k.host, k.name, err)
			}
			return v
		}
	}
	t.Fatalf("%s: no %s in /proc/net/snmp", k.host, k.name)
	return 0
}

// dropCounts are an overlayd's counts of what it dropped or failed to do.
func dropCounts(m map[string]float64) map[string]float64 {
	drops := map[string]float64{}
	for k, v := range m {
		if strings.Contains(k, "drops_total") || strings.Contains(k, "errors_total") || strings.Contains(k, "refused_total") {
			drops[k] = v
		}
	}
	return drops
}

// streamThrough runs a stream from A's workload to C's across fault and
// checks the stream, node A's routes and rules, and that the counted
// counters rose by what they must; if node A's overlayd lived through the
// fault, it must have counted no drop beyond those.
func streamThrough(t *testing.T, c *cluster, port uint16, counted []counter, fault func()) {
	t.Helper()
	a := c.bed.Host("node-a")
	before := ownedKernelState(t, a)
	procA := c.procs["node-a"]
	st := startStream(t, c.workload["node-a"], c.workload["node-c"], netip.AddrPortFrom(c.addr["node-c"], port))
	flowing := func(when string) {
		t.Helper()
		got := st.got.Load()
		deadline := time.Now().Add(30 * time.Second)
		for st.got.Load() < got+1<<20 {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the stream stalled at %d bytes", when, st.got.Load())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	flowing("before the fault")
	countsBefore := make([]float64, len(counted))
	for i, k := range counted {
		countsBefore[i] = k.read(t, c)
	}
	dropsBefore := dropCounts(scrape(t, a))
	fault()
	flowing("after the fault")
	for i, k := range counted {
		if rose := k.read(t, c) - countsBefore[i]; rose < k.rise {
			t.Errorf("%s's %s rose by %v across the fault, want at least %v", k.host, k.name, rose, k.rise)
		} else {
			t.Logf("%s's %s rose by %v", k.host, k.name, rose)
		}
	}
	if c.procs["node-a"] == procA {
		for name, v := range dropCounts(scrape(t, a)) {
			expected := slices.ContainsFunc(counted, func(k counter) bool { return k.host == "node-a" && k.name == name })
			if v != dropsBefore[name] && !expected {
				t.Errorf("node A's overlayd counted %s from %v to %v across the fault", name, dropsBefore[name], v)
			}
		}
	}

	sent := st.finish(t, "the fault")
	after := ownedKernelState(t, a)
	if !slices.Equal(before, after) {
		t.Errorf("overlayd's routes and rules on node A after the fault:\n%s\nwant as before:\n%s", strings.Join(after, "\n"), strings.Join(before, "\n"))
	}
	if len(slices.Compact(slices.Clone(after))) != len(after) {
		t.Errorf("a route or rule is there twice:\n%s", strings.Join(after, "\n"))
	}
	t.Logf("%d bytes crossed the fault intact; %d routes and rules on node A as before", sent, len(after))
}
