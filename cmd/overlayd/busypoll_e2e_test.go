package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/overlayd/overlayd/internal/testbed"
)

// TestE2EBusyPoll runs every node with [tunnel] busyPoll on: a TCP stream
// from A to C, which keeps the loops spinning, survives a switch from
// IP-in-IP to VXLAN (a receive loop started while the router runs) and
// arrives whole; pings cross; and every overlayd stops cleanly on SIGTERM,
// spin or no spin.
func TestE2EBusyPoll(t *testing.T) {
	testbed.Require(t)
	file := filepath.Join(t.TempDir(), "cluster.toml")
	write := func(mode string) {
		t.Helper()
		src := "[tunnel]\nbusyPoll = \"50us\"\n\n[[pools]]\nname = \"pool\"\ncidr = \"192.168.0.0/16\"\n" + mode + "\n" + bedNodesTOML
		if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(`ipipMode = "Always"`)
	c := startCluster(t, file)
	s := startStream(t, c.workload["node-a"], c.workload["node-c"], netip.AddrPortFrom(c.addr["node-c"], 5011))
	time.Sleep(time.Second)
	write(`vxlanMode = "Always"`)
	for _, n := range nodeNames {
		if err := c.procs[n].Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	before := s.got.Load()
	time.Sleep(2 * time.Second)
	if after := s.got.Load(); after <= before {
		t.Fatalf("the stream stalled at %d bytes after the switch to VXLAN", after)
	}
	s.finish(t, "a switch from IP-in-IP to VXLAN with busy polling")
	c.ping("node-a", "node-c")
	c.ping("node-c", "node-b")
	m := scrape(t, c.bed.Host("node-a"))
	for _, e := range []string{"ipip", "vxlan"} {
		if m[`overlayd_rx_packets_total{encap="`+e+`"}`] == 0 {
			t.Errorf("node-a received nothing over %s", e)
		}
	}
	for _, n := range nodeNames {
		if err := c.procs[n].Stop(); err != nil {
			t.Errorf("%s: %v", n, err)
		}
	}
}
