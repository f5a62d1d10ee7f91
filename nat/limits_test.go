package nat_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/overlayd/overlayd/nat"
)

// stuckNet is a HostNet whose connects never finish, so TCP flows stay in
// SYN_SENT, and that opens no other socket: nothing leaves the test.
type stuckNet struct{}

func (stuckNet) DialTCP(ctx context.Context, _ netip.Addr, _ netip.AddrPort, _ func(uintptr) error) (net.Conn, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func (stuckNet) ListenUDP(netip.Addr) (*net.UDPConn, error) { return nil, errors.New("no UDP here") }

func (stuckNet) ListenICMP(netip.Addr) (net.PacketConn, error) {
	return nil, errors.New("no ICMP here")
}

// syn builds a workload's TCP SYN.
func syn(t *testing.T, src netip.Addr, sport uint16, dst netip.AddrPort, ttl uint8) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: ttl, Protocol: layers.IPProtocolTCP, SrcIP: src.AsSlice(), DstIP: dst.Addr().AsSlice()}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dst.Port()), Seq: 1000, SYN: true, Window: 65535}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}, ip, tcp); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestSetLimits: limits lowered while flows run refuse new flows and keep
// the old ones; raised, they admit again; new timeouts end flows already
// in the table. SetLimits runs concurrently with the data path (-race).
func TestSetLimits(t *testing.T) {
	n, err := nat.New(nat.Config{Outside: nodeAddr, Out: func([][]byte) error { return nil }, Net: stuckNet{}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	dst := netip.AddrPortFrom(outsideAddr, 80)
	waitSynSent := func(t *testing.T, want int) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for n.Stats().Flows["tcp/SYN_SENT"] != want {
			if time.Now().After(deadline) {
				t.Fatalf("stats %+v: want %d flows in SYN_SENT", n.Stats(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for port := uint16(1); port <= 3; port++ {
		n.Deliver(syn(t, workloadA, port, dst, 64))
	}
	waitSynSent(t, 3)

	var wg sync.WaitGroup
	wg.Go(func() {
		for range 100 {
			if err := n.SetLimits(0, 2, nat.Timeouts{}); err != nil {
				t.Error(err)
				return
			}
		}
	})
	for range 100 {
		n.Deliver(syn(t, workloadA, 3, dst, 64)) // a retransmission: no new flow
	}
	wg.Wait()

	t.Run("a lowered limit keeps the flows over it and refuses new ones", func(t *testing.T) {
		n.Deliver(syn(t, workloadA, 4, dst, 64))
		time.Sleep(100 * time.Millisecond)
		waitSynSent(t, 3)
		if got := n.Stats().Refused[nat.RefusedPerSource]; got != 1 {
			t.Errorf("per-source refusals: %d, want 1", got)
		}
	})
	t.Run("a raised limit admits again", func(t *testing.T) {
		if err := n.SetLimits(0, 10, nat.Timeouts{}); err != nil {
			t.Fatal(err)
		}
		n.Deliver(syn(t, workloadA, 5, dst, 64))
		waitSynSent(t, 4)
	})
	t.Run("a shorter timeout ends the flows already there", func(t *testing.T) {
		if err := n.SetLimits(0, 10, nat.Timeouts{TCPSynSent: 200 * time.Millisecond, TCPClose: 200 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(3 * time.Second)
		for len(n.Flows()) != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("flows left after 3 s with a 200 ms SYN_SENT timeout:%s", describe(n.Flows()))
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	t.Run("negative limits are refused", func(t *testing.T) {
		if err := n.SetLimits(-1, 0, nat.Timeouts{}); err == nil {
			t.Error("SetLimits(-1, ...) succeeded")
		}
	})
}
