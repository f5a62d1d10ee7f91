package main

import (
	"net/netip"
	"slices"
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
	faults := []struct {
		name  string
		fault func(t *testing.T, c *cluster)
	}{
		{"node A's overlayd killed with SIGKILL and started again", func(t *testing.T, c *cluster) {
			if err := c.procs["node-a"].Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			<-c.procs["node-a"].Exited()
			time.Sleep(500 * time.Millisecond)
			c.start("node-a")
		}},
		{"the peer node C's overlayd restarted", func(t *testing.T, c *cluster) {
			if err := c.procs["node-c"].Stop(); err != nil {
				t.Logf("stopping node-c: %v", err)
			}
			c.start("node-c")
		}},
		{"the peer node C's underlay link down for 5 s", func(t *testing.T, c *cluster) {
			if err := c.bed.Host("node-c").IP("link", "set", "eth0", "down"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(5 * time.Second)
			if err := c.bed.Host("node-c").IP("link", "set", "eth0", "up"); err != nil {
				t.Fatal(err)
			}
			// The link's routes went with it; the bed's default route comes
			// back by hand, as a network manager would put it back.
			if err := c.bed.Host("node-c").IP("route", "replace", "default", "via", "198.18.2.1"); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for i, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			c := startCluster(t, "vxlan-cross-subnet.toml")
			streamThrough(t, c, uint16(7101+i), func() { f.fault(t, c) })
		})
	}
}

// streamThrough runs a stream from A's workload to C's across fault and
// checks the stream and node A's routes and rules.
func streamThrough(t *testing.T, c *cluster, port uint16, fault func()) {
	t.Helper()
	a := c.bed.Host("node-a")
	before := ownedKernelState(t, a)
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
	fault()
	flowing("after the fault")

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
