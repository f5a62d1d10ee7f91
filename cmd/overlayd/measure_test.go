package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/overlayd/overlayd/internal/testbed"
)

// measureEnv turns on TestMeasureNetstackThroughput, which is a measurement
// for people (seconds of full CPU), not a check.
const measureEnv = "OVERLAYD_MEASURE"

// TestMeasureNetstackThroughput measures TCP throughput from node-a to
// node-b's workload across VXLAN, with node-a's overlayd in netstack mode
// (through the port forward, with iperf3, and through SOCKS5, with a Go
// client) and then in kernel-TUN mode (iperf3 from node-a itself, its
// traffic routed into the TUN). Run it with
//
//	OVERLAYD_MEASURE=1 go test -count=1 -v -run TestMeasureNetstackThroughput ./cmd/overlayd/
func TestMeasureNetstackThroughput(t *testing.T) {
	if os.Getenv(measureEnv) != "1" {
		t.Skipf("a measurement, not a check: set %s=1 to run it", measureEnv)
	}
	requireSetpriv(t)
	exe, file := unprivilegedDir(t, rootlessCluster("vxlanMode", `
[netstack]
socks5 = "127.0.0.1:1080"

[[forward]]
listen = "127.0.0.1:8080"
to = "192.168.0.69:5201"

[[forward]]
listen = "127.0.0.1:8081"
to = "192.168.0.69:5202"
`))
	bed, workloads := twoNodeBed(t, file, (*testbed.Bed).AddHost)
	a, b := bed.Host("node-a"), bed.Host("node-b")
	sockets := socketDir(t)
	procB, err := b.Start("env", childEnv+"=1", exe, "run", "--config", file, "--node", "node-b", "--admin-socket", filepath.Join(sockets, "node-b.sock"))
	if err != nil {
		t.Fatal(err)
	}
	waitRunning(t, procB)
	if _, err := workloads["node-b"].Start("iperf3", "-s", "-B", workloadB.String(), "-p", "5201"); err != nil {
		t.Fatal(err)
	}
	sinkAddr := workloadB.String() + ":5202"
	var sink net.Listener
	if err := workloads["node-b"].Do(func() error {
		sink, err = net.Listen("tcp4", sinkAddr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	go func() {
		for {
			c, err := sink.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				n, _ := io.Copy(io.Discard, c)
				fmt.Fprintf(c, "%d", n)
			}()
		}
	}()
	time.Sleep(300 * time.Millisecond) // iperf3 -s listening

	const seconds = "5"
	iperf := func(name string, args ...string) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		for _, dir := range []struct {
			label string
			flag  []string
		}{{"node-a -> wb", nil}, {"wb -> node-a", []string{"-R"}}} {
			cmd := append(append([]string{"-J", "-t", seconds}, args...), dir.flag...)
			out, err := a.Run(ctx, "iperf3", cmd...)
			if err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			var res struct {
				End struct {
					SumReceived struct {
						BitsPerSecond float64 `json:"bits_per_second"`
					} `json:"sum_received"`
				} `json:"end"`
			}
			if err := json.Unmarshal(out, &res); err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			t.Logf("%-28s %-14s %6.2f Gbit/s   (iperf3 %v)", name, dir.label, res.End.SumReceived.BitsPerSecond/1e9, cmd)
		}
	}
	upload := func(name string, dial func() (net.Conn, error)) {
		const size = 100 << 20
		var c net.Conn
		if err := a.Do(func() error {
			var err error
			c, err = dial()
			return err
		}); err != nil {
			t.Errorf("%s: %v", name, err)
			return
		}
		defer c.Close()
		start := time.Now()
		if _, err := io.CopyN(c, zeroReader{}, size); err != nil {
			t.Errorf("%s: %v", name, err)
			return
		}
		_ = c.(interface{ CloseWrite() error }).CloseWrite()
		got, _ := io.ReadAll(c)
		elapsed := time.Since(start)
		t.Logf("%-28s %-14s %6.2f Gbit/s   (100 MB, server counted %s bytes)", name, "node-a -> wb", float64(size)*8/elapsed.Seconds()/1e9, got)
	}

	netstackArgs := append(append([]string{}, noPrivileges...), "env", childEnv+"=1", "XDG_RUNTIME_DIR="+runtimeDir(t, nobody),
		exe, "run", "--config", file, "--node", "node-a", "--tunnel-mode", "netstack")
	procA, err := a.Start("setpriv", netstackArgs...)
	if err != nil {
		t.Fatal(err)
	}
	waitRunning(t, procA)
	iperf("netstack, port forward", "-c", "127.0.0.1", "-p", "8080")
	upload("netstack, port forward", func() (net.Conn, error) { return net.Dial("tcp4", "127.0.0.1:8081") })
	upload("netstack, SOCKS5", func() (net.Conn, error) {
		d, err := proxy.SOCKS5("tcp4", "127.0.0.1:1080", nil, proxy.Direct)
		if err != nil {
			return nil, err
		}
		return d.Dial("tcp4", sinkAddr)
	})
	if err := procA.Stop(); err != nil {
		t.Fatal(err)
	}

	procA, err = a.Start("env", childEnv+"=1", exe, "run", "--config", file, "--node", "node-a", "--admin-socket", filepath.Join(sockets, "node-a.sock"))
	if err != nil {
		t.Fatal(err)
	}
	waitRunning(t, procA)
	iperf("kernel TUN", "-c", workloadB.String(), "-p", "5201")
	upload("kernel TUN", func() (net.Conn, error) { return net.Dial("tcp4", sinkAddr) })
}

// zeroReader is an endless stream of zeros.
type zeroReader struct{}

func (zeroReader) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}
