package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/overlayd/overlayd/internal/testbed"
	"github.com/overlayd/overlayd/plan"
)

// TestE2EPathMTUDrop (issue 17's faults): while a TCP stream from A's
// workload to C's crosses the overlay, the router lowers the MTU of its
// link toward node C. The router's ICMP tells node A's kernel the smaller
// path MTU; overlayd learns it from its refused sends and answers the
// workload's too-big DF packets with fragmentation needed carrying what
// fits, so the workload's TCP shrinks its segments and the stream completes
// byte-exact. When the link's MTU goes back up, the full tunnel MTU is used
// again once node A's kernel forgets the smaller path MTU (its PMTU cache
// expiry, shortened for the test from Linux's 10 minutes).
func TestE2EPathMTUDrop(t *testing.T) {
	testbed.Require(t)
	// Parallel with the soak: see TestSoak.
	t.Parallel()
	const (
		lowMTU = 1300
		// expiry is node A's (and its workload's) PMTU cache expiry for
		// the test, in seconds: long enough for the checks under the
		// lowered MTU, short enough to wait for.
		expiry = 10
	)
	for i, tc := range []struct {
		name, file string
		encap      plan.Encap
	}{
		{"VXLAN", "vxlan-always.toml", plan.EncapVXLAN},
		{"IP-in-IP", "ipip-always.toml", plan.EncapIPIP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startClusterNodes(t, tc.file, "node-a", "node-c")
			_, tunnelMTU := loadForBed(t, c.file)
			for _, h := range []*testbed.Host{c.bed.Host("node-a"), c.workload["node-a"]} {
				if err := h.Sysctl("net.ipv4.route.mtu_expires", strconv.Itoa(expiry)); err != nil {
					t.Fatal(err)
				}
			}
			router := c.bed.Host("router")
			st := startStream(t, c.workload["node-a"], c.workload["node-c"], netip.AddrPortFrom(c.addr["node-c"], uint16(7201+i)))
			flowing := func(when string) {
				t.Helper()
				got := st.got.Load()
				deadline := time.Now().Add(30 * time.Second)
				for st.got.Load() < got+1<<20 {
					if time.Now().After(deadline) {
						m := scrape(t, c.bed.Host("node-a"))
						t.Fatalf("%s: the stream stalled at %d bytes; node A's drops: too_big %v, send_error %v",
							when, st.got.Load(), m[`overlayd_drops_total{reason="too_big"}`], m[`overlayd_drops_total{reason="send_error"}`])
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
			flowing("before the MTU drop")
			before := scrape(t, c.bed.Host("node-a"))
			if err := router.IP("link", "set", "to-node-c", "mtu", strconv.Itoa(lowMTU)); err != nil {
				t.Fatal(err)
			}
			// overlayd learns the smaller path from the first send the
			// kernel refuses, within a second or so of the drop.
			pathMTU := `overlayd_peer_path_mtu{peer="node-c"}`
			dropped := time.Now()
			deadline := dropped.Add(20 * time.Second)
			for scrape(t, c.bed.Host("node-a"))[pathMTU] != lowMTU {
				if time.Now().After(deadline) {
					t.Fatalf("node A's path MTU to node C is %v 20 s after the drop, want %d", scrape(t, c.bed.Host("node-a"))[pathMTU], lowMTU)
				}
				time.Sleep(100 * time.Millisecond)
			}
			learnedIn := time.Since(dropped)
			flowing("after the MTU drop")
			after := scrape(t, c.bed.Host("node-a"))
			tooBig := after[`overlayd_drops_total{reason="too_big"}`] - before[`overlayd_drops_total{reason="too_big"}`]
			if tooBig == 0 {
				t.Errorf("no packet was answered too big after the path MTU dropped")
			}
			if after[`overlayd_path_mtus_learned_total`] == 0 {
				t.Errorf("overlayd_path_mtus_learned_total did not move")
			}
			// A DF packet that fits the tunnel but not the path is answered
			// with the path's MTU less the encapsulation; the workload's
			// kernel may know that MTU already and refuse the ping itself
			// (ping says "mtu=N" then).
			if out, want := dfPing(t, c, tunnelMTU), lowMTU-tc.encap.Overhead(); !strings.Contains(out, fmt.Sprintf("mtu = %d", want)) && !strings.Contains(out, fmt.Sprintf("mtu=%d", want)) {
				t.Errorf("a %d-byte DF ping got no fragmentation needed with MTU %d:\n%s", tunnelMTU, want, out)
			}

			// A packet without DF that fits the tunnel but not the path is
			// carried, fragmented on the underlay: from node A itself, whose
			// kernel, unlike the workload's, has no smaller MTU for C's
			// workload to fragment it by first.
			nonDFDatagram(t, c.bed.Host("node-a"), c.workload["node-c"], netip.AddrPortFrom(c.addr["node-c"], uint16(7301+i)), tunnelMTU)

			// The path grows again: once node A's kernel and overlayd forget
			// the smaller MTU, a full-size DF packet crosses.
			if err := router.IP("link", "set", "to-node-c", "mtu", strconv.Itoa(testbed.DefaultMTU)); err != nil {
				t.Fatal(err)
			}
			raised := time.Now()
			// Node A's kernel forgets at most expiry after its last lesson,
			// overlayd asks within 5 s, and the workload's kernel forgets
			// at most expiry after overlayd's last fragmentation needed.
			deadline = raised.Add(4 * expiry * time.Second)
			for {
				out := dfPing(t, c, tunnelMTU)
				if strings.Contains(out, " 0% packet loss") {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d s after the MTU went back up, a %d-byte DF ping still does not cross:\n%s", 4*expiry, tunnelMTU, out)
				}
				time.Sleep(time.Second)
			}
			fullIn := time.Since(raised)
			flowing("after the MTU went back up")
			sent := st.finish(t, "the path MTU changes")
			t.Logf("%d bytes crossed intact; path MTU learned within %v of the drop; %v packets answered too big; full size again %v after the MTU went back up",
				sent, learnedIn.Round(10*time.Millisecond), tooBig, fullIn.Round(100*time.Millisecond))
		})
	}
}

// nonDFDatagram sends one UDP datagram of size bytes (IP header included)
// without DF from host from to addr in host to and checks it arrives whole.
func nonDFDatagram(t *testing.T, from, to *testbed.Host, addr netip.AddrPort, size int) {
	t.Helper()
	const headers = 28 // IPv4 and UDP headers
	var ln *net.UDPConn
	if err := to.Do(func() (err error) { ln, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr)); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conn *net.UDPConn
	if err := from.Do(func() (err error) { conn, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(addr)); return err }); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rc, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var optErr error
	if err := rc.Control(func(fd uintptr) {
		optErr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_MTU_DISCOVER, syscall.IP_PMTUDISC_DONT)
	}); err != nil || optErr != nil {
		t.Fatalf("clearing DF: %v %v", err, optErr)
	}
	want := make([]byte, size-headers)
	for i := range want {
		want[i] = byte(i * 7)
	}
	buf := make([]byte, 2*len(want))
	// Datagrams can be lost; a few tries, each awaited briefly.
	for try := range 5 {
		if _, err := conn.Write(want); err != nil {
			t.Fatal(err)
		}
		if err := ln.SetReadDeadline(time.Now().Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		n, err := ln.Read(buf)
		if err == nil && bytes.Equal(buf[:n], want) {
			return
		}
		t.Logf("try %d: %d bytes, %v", try, n, err)
	}
	t.Errorf("a %d-byte datagram without DF from %s never arrived whole", len(want)+headers, from.Name)
}

// dfPing sends one ping of size bytes (IP header included) with DF from A's
// workload to C's and returns ping's output.
func dfPing(t *testing.T, c *cluster, size int) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const headers = 28 // IPv4 and ICMP echo headers
	out, _ := c.workload["node-a"].Run(ctx, "ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", strconv.Itoa(size-headers), c.addr["node-c"].String())
	return string(out)
}
