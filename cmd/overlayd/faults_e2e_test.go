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

// TestE2EKilledUnderAStream (issue 17's first fault): overlayd on node A is
// killed with SIGKILL while a TCP stream from A's workload to C's crosses
// it over VXLAN, and started again. The stream completes intact (TCP
// retransmits across the gap), and the restarted overlayd reconciles the
// routes and rules the dead one left: the same set, none twice.
func TestE2EKilledUnderAStream(t *testing.T) {
	testbed.Require(t)
	c := startCluster(t, "vxlan-cross-subnet.toml")
	a := c.bed.Host("node-a")
	before := ownedKernelState(t, a)
	st := startStream(t, c.workload["node-a"], c.workload["node-c"], netip.AddrPortFrom(c.addr["node-c"], 7101))
	flowing := func(when string) {
		t.Helper()
		got := st.got.Load()
		deadline := time.Now().Add(20 * time.Second)
		for st.got.Load() < got+1<<20 {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the stream stalled at %d bytes", when, st.got.Load())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	flowing("before the kill")
	if err := c.procs["node-a"].Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-c.procs["node-a"].Exited()
	time.Sleep(500 * time.Millisecond) // a gap TCP must retransmit across
	c.start("node-a")
	flowing("after the restart")

	close(st.stop)
	sent := <-st.sent
	if sent < 0 {
		t.Fatalf("the sender failed after %d bytes", -sent)
	}
	select {
	case err := <-st.received:
		if err != nil {
			t.Fatalf("the stream broke across the kill: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the receiver never saw the end of the stream")
	}
	if got := st.got.Load(); got != sent {
		t.Errorf("received %d bytes of %d", got, sent)
	}
	after := ownedKernelState(t, a)
	if !slices.Equal(before, after) {
		t.Errorf("overlayd's routes and rules after the kill and restart:\n%s\nwant as before:\n%s", strings.Join(after, "\n"), strings.Join(before, "\n"))
	}
	if len(slices.Compact(slices.Clone(after))) != len(after) {
		t.Errorf("a route or rule is there twice:\n%s", strings.Join(after, "\n"))
	}
	t.Logf("%d bytes crossed the kill intact; %d routes and rules reconciled", sent, len(after))
}
