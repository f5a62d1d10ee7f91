package testbed

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
)

func TestPatternIsIndependentOfReadSizes(t *testing.T) {
	whole := make([]byte, 1000)
	if _, err := io.ReadFull(pattern(7), whole); err != nil {
		t.Fatal(err)
	}
	for _, step := range []int{1, 3, 7, 8, 13, 64, 999} {
		r, got := pattern(7), make([]byte, 0, 1000)
		buf := make([]byte, step)
		for len(got) < len(whole) {
			n, _ := r.Read(buf[:min(step, len(whole)-len(got))])
			got = append(got, buf[:n]...)
		}
		if !bytes.Equal(got, whole) {
			t.Errorf("reads of %d bytes give another stream", step)
		}
	}
}

func TestStandardBed(t *testing.T) {
	rootLinks := rootLinkNames(t)
	b := NewStandard(t, Options{})
	w, err := b.AddWorkload("node-a", "wa", netip.MustParseAddr("192.168.0.5"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	capA, err := b.Host("node-a").Capture("eth0")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ from, to string }{
		{"node-a", "node-b"}, {"node-a", "node-c"}, {"node-a", "outside"}, {"node-c", "outside"},
	} {
		if err := b.Host(c.from).Ping(ctx, b.Host(c.to).Addr.Addr(), 1); err != nil {
			t.Errorf("ping %s -> %s: %v", c.from, c.to, err)
		}
	}
	if err := w.Ping(ctx, b.Host("node-a").Addr.Addr(), 1); err != nil {
		t.Errorf("a workload cannot ping its node: %v", err)
	}
	res, err := TCPTransfer(ctx, b.Host("node-a"), b.Host("node-c"), netip.MustParseAddrPort("198.18.2.10:5000"), 10<<20)
	if err != nil {
		t.Errorf("TCP A -> C: %v", err)
	} else {
		t.Logf("TCP A <-> C over the plain underlay: %v", res)
	}
	echoes := 0
	for _, p := range capA.Stop() {
		if icmp, ok := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4); ok && icmp.TypeCode.Type() == layers.ICMPv4TypeEchoRequest {
			echoes++
		}
	}
	if echoes < 3 {
		t.Errorf("capture on node-a's eth0 saw %d echo requests, want the 3 node-a sent", echoes)
	}

	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if left := namespacesOf(t, b.ID()); len(left) > 0 {
		t.Errorf("namespaces left after Close: %v", left)
	}
	if after := rootLinkNames(t); !slices.Equal(after, rootLinks) {
		t.Errorf("the root namespace's links changed: %v -> %v", rootLinks, after)
	}
}

func TestSweepRemovesDeadRuns(t *testing.T) {
	Require(t)
	// A namespace named as a bed of a process that no longer exists.
	dead := fmt.Sprintf("%s-%d-%s-node-a", namePrefix, deadPID(t), "0badc0de")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := runIP(ctx, "netns", "add", dead); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = deleteNamespace(dead) })
	if err := Sweep(); err != nil {
		t.Fatal(err)
	}
	if namespaceExists(dead) {
		t.Errorf("Sweep left %s", dead)
	}
}

// deadPID returns the PID of a process that has exited.
func deadPID(t *testing.T) int {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

func namespacesOf(t *testing.T, prefix string) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, prefix) {
			found = append(found, line)
		}
	}
	return found
}

func rootLinkNames(t *testing.T) []string {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, i := range ifs {
		names = append(names, i.Name)
	}
	slices.Sort(names)
	return names
}
