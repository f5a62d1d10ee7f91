package nat_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/overlayd/overlayd/encap"
	"github.com/overlayd/overlayd/internal/testbed"
	"github.com/overlayd/overlayd/nat"
)

// openTUN makes a TUN device (no packet information header) in the host's
// namespace and returns it as a file whose reads and writes are whole IPv4
// packets; closing the file removes the device.
func openTUN(h *testbed.Host, name string) (*os.File, error) {
	var f *os.File
	err := h.Do(func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			return fmt.Errorf("opening /dev/net/tun: %w", err)
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			unix.Close(fd)
			return err
		}
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return fmt.Errorf("TUNSETIFF %s: %w", name, err)
		}
		f = os.NewFile(uintptr(fd), name)
		return nil
	})
	return f, err
}

// TestTraceroute runs the real traceroute from a kernel workload whose
// traffic the node routes into a TUN served by the NAT, the way overlayd
// steers natOutgoing traffic: every method (UDP, ICMP echo, TCP SYN) shows
// the node, the router beyond it and the destination.
func TestTraceroute(t *testing.T) {
	if _, err := exec.LookPath("traceroute"); err != nil {
		t.Skip("traceroute is not installed (scripts/deps.sh traceroute:traceroute installs it)")
	}
	b := newHopBed(t)
	work, err := b.testbed.AddWorkload("node", "wl", workloadA)
	if err != nil {
		t.Fatal(err)
	}
	testbed.ServeEcho(listenTCPAt(t, b.outside, netip.AddrPortFrom(farAddr, 80)))

	dev, err := openTUN(b.node, "nat0")
	if err != nil {
		t.Fatal(err)
	}
	n, err := nat.New(nat.Config{
		Outside: nodeAddr, Net: &nsNet{host: b.node}, Timeouts: shortTimeouts,
		Out: func(bufs [][]byte) error {
			for _, b := range bufs {
				if _, err := dev.Write(b[encap.Headroom:]); err != nil {
					return err
				}
			}
			return nil
		},
	})
	if err != nil {
		dev.Close()
		t.Fatal(err)
	}
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		buf := make([]byte, 1<<16)
		for {
			k, err := dev.Read(buf)
			if err != nil {
				return
			}
			n.Deliver(buf[:k])
		}
	}()
	t.Cleanup(func() {
		dev.Close()
		<-readerDone
		n.Close()
	})
	// The workload's traffic to the outside goes into the TUN, as
	// overlayd's steering rule sends it; the node's own keeps the main
	// table. Replies come out of the TUN from outside addresses routed
	// through eth0, hence loose reverse-path filtering.
	for _, args := range [][]string{
		{"link", "set", "nat0", "up"},
		{"route", "add", "default", "dev", "nat0", "table", "100"},
		{"rule", "add", "iif", testbed.WorkloadIface("wl"), "lookup", "100"},
	} {
		if err := b.node.IP(args...); err != nil {
			t.Fatal(err)
		}
	}
	for key, value := range map[string]string{"net.ipv4.ip_forward": "1", "net.ipv4.conf.nat0.rp_filter": "2"} {
		if err := b.node.Sysctl(key, value); err != nil {
			t.Fatal(err)
		}
	}

	// traceroute -n prints a hop a line: its number and the address that
	// answered, or * when none did.
	hopLine := regexp.MustCompile(`(?m)^\s*(\d+)\s+(\S+)`)
	want := []string{nodeAddr.String(), hopAddr.String(), farAddr.String()}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"UDP", nil},
		{"ICMP echo", []string{"-I"}},
		{"TCP SYN", []string{"-T", "-p", "80"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			args := append([]string{"-n", "-q", "1", "-w", "2", "-m", "5"}, tc.args...)
			out, err := work.Run(ctx, "traceroute", append(args, farAddr.String())...)
			if err != nil {
				t.Fatalf("traceroute %v: %v\n%s", args, err, out)
			}
			t.Logf("traceroute %v %s:\n%s", args, farAddr, out)
			var got []string
			for _, m := range hopLine.FindAllStringSubmatch(string(out), -1) {
				got = append(got, m[2])
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("hops %v, want %v", got, want)
			}
		})
	}
}
