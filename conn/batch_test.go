package conn

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
)

func listenLoopback(t testing.TB) *UDPConn {
	t.Helper()
	c, err := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestUDPBatches(t *testing.T) {
	a, b := listenLoopback(t), listenLoopback(t)
	to := b.LocalAddr()
	for _, n := range []int{1, 7, 64, MaxBatch} {
		t.Run(fmt.Sprintf("%d messages", n), func(t *testing.T) {
			out := make([]Message, n)
			for i := range out {
				out[i] = Message{Buf: bytes.Repeat([]byte{byte(i)}, 1+i*9), Addr: to.Addr().As4(), Port: to.Port()}
			}
			sent, err := a.WriteBatch(out)
			if err != nil || sent != n {
				t.Fatalf("WriteBatch: %d sent, %v", sent, err)
			}
			in := make([]Message, MaxBatch)
			for got := 0; got < n; {
				for i := range in {
					in[i] = Message{Buf: make([]byte, 2048)}
				}
				k, err := b.ReadBatch(in)
				if err != nil {
					t.Fatal(err)
				}
				for i := range k {
					m := in[i]
					if want := out[got+i].Buf; !bytes.Equal(m.Buf[:m.N], want) {
						t.Fatalf("message %d: %d bytes, want %d bytes of %d", got+i, m.N, len(want), want[0])
					}
					if from := netip.AddrPortFrom(netip.AddrFrom4(m.Addr), m.Port); from != a.LocalAddr() {
						t.Errorf("source %s, want %s", from, a.LocalAddr())
					}
				}
				got += k
			}
		})
	}
}

func TestUDPTruncated(t *testing.T) {
	a, b := listenLoopback(t), listenLoopback(t)
	to := b.LocalAddr()
	if _, err := a.WriteBatch([]Message{{Buf: make([]byte, 100), Addr: to.Addr().As4(), Port: to.Port()}}); err != nil {
		t.Fatal(err)
	}
	in := []Message{{Buf: make([]byte, 10)}}
	if _, err := b.ReadBatch(in); err != nil {
		t.Fatal(err)
	}
	if !in[0].Truncated {
		t.Errorf("a 100-byte datagram read into 10 bytes is not marked truncated: %+v", in[0])
	}
}

func TestCloseUnblocksRead(t *testing.T) {
	c, err := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := c.ReadBatch([]Message{{Buf: make([]byte, 64)}})
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("ReadBatch after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock ReadBatch")
	}
}

func TestBatchesAllocateNothing(t *testing.T) {
	a, b := listenLoopback(t), listenLoopback(t)
	to := b.LocalAddr()
	out := make([]Message, 32)
	in := make([]Message, 32)
	for i := range out {
		out[i] = Message{Buf: make([]byte, 64), Addr: to.Addr().As4(), Port: to.Port()}
		in[i] = Message{Buf: make([]byte, 2048)}
	}
	allocs := testing.AllocsPerRun(50, func() {
		if _, err := a.WriteBatch(out); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < len(out); {
			n, err := b.ReadBatch(in)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	})
	if allocs != 0 {
		t.Errorf("a write and read of a batch allocate %v times, want 0", allocs)
	}
}

func TestIPIPRoundTrip(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("conn: skipping, a raw IP-in-IP socket needs CAP_NET_RAW (run as root)")
	}
	lo := netip.MustParseAddr("127.0.0.1")
	tx, err := ListenIPIP(lo)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	rx, err := ListenIPIP(lo)
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	// An outer IPv4 header (protocol 4) around a minimal inner IPv4 header
	// and payload, as the router writes them.
	pkt := make([]byte, 20+20+8)
	outer := pkt[:20]
	outer[0], outer[8], outer[9] = 0x45, 64, 4
	copy(outer[12:16], lo.AsSlice())
	copy(outer[16:20], lo.AsSlice())
	pkt[2], pkt[3] = 0, byte(len(pkt))
	inner := pkt[20:]
	inner[0], inner[8], inner[9] = 0x45, 64, 17
	inner[2], inner[3] = 0, 28
	copy(pkt[40:], "overlayd")
	if n, err := tx.WriteBatch([]Message{{Buf: pkt, Addr: lo.As4()}}); err != nil || n != 1 {
		t.Fatalf("WriteBatch: %d, %v", n, err)
	}
	in := []Message{{Buf: make([]byte, 2048)}}
	if _, err := rx.ReadBatch(in); err != nil {
		t.Fatal(err)
	}
	got := in[0].Buf[:in[0].N]
	if len(got) != len(pkt) || got[9] != 4 || !bytes.Equal(got[20:], pkt[20:]) {
		t.Errorf("received %x, want the outer header and %x", got, pkt[20:])
	}
	if netip.AddrFrom4(in[0].Addr) != lo {
		t.Errorf("source %v", in[0].Addr)
	}
}

func BenchmarkUDPBatch(b *testing.B) {
	for _, size := range []int{64, 1400} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			tx, rx := listenLoopback(b), listenLoopback(b)
			to := rx.LocalAddr()
			out := make([]Message, 64)
			in := make([]Message, 64)
			for i := range out {
				out[i] = Message{Buf: make([]byte, size), Addr: to.Addr().As4(), Port: to.Port()}
				in[i] = Message{Buf: make([]byte, 2048)}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := tx.WriteBatch(out); err != nil {
					b.Fatal(err)
				}
				for got := 0; got < len(out); {
					n, err := rx.ReadBatch(in)
					if err != nil {
						b.Fatal(err)
					}
					got += n
				}
			}
			b.ReportMetric(float64(b.N*len(out))/b.Elapsed().Seconds(), "pkts/s")
		})
	}
}
