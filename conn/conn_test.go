package conn

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func listenUDP(t testing.TB) *UDPConn {
	t.Helper()
	c, err := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// loopbackAddr is an address of 127/8 of this run's own, so that raw IP-in-IP
// sockets of test processes running at the same time do not see each
// other's packets (a raw socket bound to an address gets only what is sent
// to it).
func loopbackAddr() netip.Addr {
	return netip.AddrFrom4([4]byte{127, byte(1 + rand.IntN(254)), byte(rand.IntN(256)), byte(1 + rand.IntN(254))})
}

func listenIPIP(t testing.TB, local netip.Addr) *IPIPConn {
	t.Helper()
	c, err := ListenIPIP(local)
	if errors.Is(err, ErrNoRawSocket) {
		t.Skipf("skipping: run as root for the IP-in-IP tests (%v)", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// receive reads from c until want messages arrived, perRead at most per
// ReadBatch into buffers of 2048 bytes, and returns copies of them.
func receive(t *testing.T, c Transport, want, perRead int) []Message {
	t.Helper()
	return receiveInto(t, c, want, perRead, 2048)
}

// receiveInto is receive with buffers of bufSize bytes. A timer closes c,
// so that a lost packet fails the test instead of hanging it.
func receiveInto(t *testing.T, c Transport, want, perRead, bufSize int) []Message {
	t.Helper()
	var timedOut atomic.Bool
	timer := time.AfterFunc(5*time.Second, func() {
		timedOut.Store(true)
		c.Close()
	})
	defer timer.Stop()
	in := make([]Message, perRead)
	var got []Message
	for len(got) < want {
		for i := range in {
			in[i] = Message{Buf: make([]byte, bufSize)}
		}
		n, err := c.ReadBatch(in[:min(perRead, want-len(got))])
		if err != nil {
			if timedOut.Load() {
				t.Fatalf("%d of %d messages received in 5 s", len(got), want)
			}
			t.Fatal(err)
		}
		if n == 0 {
			t.Fatal("ReadBatch returned no message and no error")
		}
		for _, m := range in[:n] {
			m.Buf = bytes.Clone(m.Buf[:m.N])
			got = append(got, m)
		}
	}
	return got
}

// payload is message i's content: its index then a pattern, size bytes
// (at least 2).
func payload(i, size int) []byte {
	b := make([]byte, size)
	binary.BigEndian.PutUint16(b, uint16(i))
	for j := 2; j < size; j++ {
		b[j] = byte(i + j)
	}
	return b
}

func TestUDPBatches(t *testing.T) {
	tests := []struct {
		name    string
		sizes   []int
		perRead int
	}{
		{"one message", []int{100}, 64},
		{"7 messages of growing sizes", sizesFrom(7, func(i int) int { return 2 + i*200 }), 64},
		{"64 messages of 2 to 1402 bytes", sizesFrom(64, func(i int) int { return 2 + i*1400/63 }), 64},
		{"64 messages read 5 at a time", sizesFrom(64, func(i int) int { return 64 + i }), 5},
		{"200 messages, more than one system call sends", sizesFrom(200, func(i int) int { return 2 + i%1400 }), MaxBatch},
		{"a 65507-byte message, UDP's largest", []int{65507}, 1},
	}
	a, b := listenUDP(t), listenUDP(t)
	to := b.LocalAddr()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := make([]Message, len(tt.sizes))
			for i, size := range tt.sizes {
				out[i] = Message{Buf: payload(i, size), Addr: to.Addr().As4(), Port: to.Port()}
			}
			sent, err := a.WriteBatch(out)
			if err != nil || sent != len(out) {
				t.Fatalf("WriteBatch: %d of %d sent, %v", sent, len(out), err)
			}
			for i, m := range receiveInto(t, b, len(out), tt.perRead, 65536) {
				if !bytes.Equal(m.Buf, out[i].Buf) {
					t.Fatalf("message %d: %d bytes starting %x, want %d bytes starting %x", i, m.N, head(m.Buf), len(out[i].Buf), head(out[i].Buf))
				}
				if m.N != len(out[i].Buf) || m.Truncated {
					t.Errorf("message %d: N %d, truncated %v; want %d, false", i, m.N, m.Truncated, len(out[i].Buf))
				}
				if from := netip.AddrPortFrom(netip.AddrFrom4(m.Addr), m.Port); from != a.LocalAddr() {
					t.Errorf("message %d: source %s, want %s", i, from, a.LocalAddr())
				}
			}
		})
	}
}

func sizesFrom(n int, size func(i int) int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = size(i)
	}
	return s
}

func head(b []byte) []byte { return b[:min(len(b), 4)] }

func TestUDPSendSkipsRefusedMessages(t *testing.T) {
	tests := []struct {
		name    string
		refused map[int]string // index -> why
		count   int
		wantErr error
	}{
		{"too big in the middle", map[int]string{2: "big"}, 5, unix.EMSGSIZE},
		{"too big first", map[int]string{0: "big"}, 5, unix.EMSGSIZE},
		{"too big last", map[int]string{4: "big"}, 5, unix.EMSGSIZE},
		{"to port 0 and too big: the first refusal is reported", map[int]string{1: "port0", 3: "big"}, 5, unix.EINVAL},
		{"every other of 150 too big, across system calls", everyOther(150), 150, unix.EMSGSIZE},
	}
	a, b := listenUDP(t), listenUDP(t)
	to := b.LocalAddr()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, wantDelivered []Message
			for i := range tt.count {
				m := Message{Buf: payload(i, 100), Addr: to.Addr().As4(), Port: to.Port()}
				switch tt.refused[i] {
				case "big":
					m.Buf = payload(i, 70000)
				case "port0":
					m.Port = 0
				default:
					wantDelivered = append(wantDelivered, m)
				}
				out = append(out, m)
			}
			sent, err := a.WriteBatch(out)
			if sent != len(wantDelivered) {
				t.Errorf("WriteBatch says %d sent, want %d", sent, len(wantDelivered))
			}
			if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), "sendmmsg to 127.0.0.1:") {
				t.Errorf("WriteBatch error %v, want one naming the destination and wrapping %v", err, tt.wantErr)
			}
			got := receive(t, b, len(wantDelivered), MaxBatch)
			for i, m := range got {
				if !bytes.Equal(m.Buf, wantDelivered[i].Buf) {
					t.Fatalf("delivered message %d starts %x, want %x", i, head(m.Buf), head(wantDelivered[i].Buf))
				}
			}
		})
	}
}

func everyOther(n int) map[int]string {
	m := map[int]string{}
	for i := 1; i < n; i += 2 {
		m[i] = "big"
	}
	return m
}

func TestUDPTruncated(t *testing.T) {
	a, b := listenUDP(t), listenUDP(t)
	to := b.LocalAddr()
	long, short := payload(0, 100), payload(1, 10)
	if _, err := a.WriteBatch([]Message{
		{Buf: long, Addr: to.Addr().As4(), Port: to.Port()},
		{Buf: short, Addr: to.Addr().As4(), Port: to.Port()},
	}); err != nil {
		t.Fatal(err)
	}
	in := []Message{{Buf: make([]byte, 10)}, {Buf: make([]byte, 10)}}
	for got := 0; got < 2; {
		n, err := b.ReadBatch(in[got:])
		if err != nil {
			t.Fatal(err)
		}
		got += n
	}
	t.Run("longer than its buffer: first bytes, truncated", func(t *testing.T) {
		if m := in[0]; !m.Truncated || m.N != 10 || !bytes.Equal(m.Buf, long[:10]) {
			t.Errorf("got N %d, truncated %v, %x; want 10, true, %x", m.N, m.Truncated, m.Buf, long[:10])
		}
	})
	t.Run("the next one fitting exactly: whole, not truncated", func(t *testing.T) {
		if m := in[1]; m.Truncated || m.N != 10 || !bytes.Equal(m.Buf, short) {
			t.Errorf("got N %d, truncated %v, %x; want 10, false, %x", m.N, m.Truncated, m.Buf, short)
		}
	})
}

// pair is two sockets of one transport: tx sends to rx, whose address dst
// holds; build makes packet i with size bytes of data for it.
type pair struct {
	name   string
	tx, rx Transport
	dst    Message
	build  func(i, size int) []byte
}

// transports opens a pair of each transport the process may open.
func transports(t *testing.T) []pair {
	a, b := listenUDP(t), listenUDP(t)
	to := b.LocalAddr()
	pairs := []pair{{"UDP", a, b, Message{Addr: to.Addr().As4(), Port: to.Port()}, payload}}
	src, dst := loopbackAddr(), loopbackAddr()
	tx, err := ListenIPIP(src)
	if err != nil {
		t.Logf("IP-in-IP not tested: %v", err)
		return pairs
	}
	tx.Close()
	tx, rx := listenIPIP(t, src), listenIPIP(t, dst)
	build := func(i, size int) []byte { return ipipPacket(src, dst, uint16(i), payload(i, size)) }
	return append(pairs, pair{"IP-in-IP", tx, rx, Message{Addr: dst.As4()}, build})
}

func TestCloseUnblocksRead(t *testing.T) {
	for _, tr := range transports(t) {
		t.Run(tr.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() {
				_, err := tr.rx.ReadBatch([]Message{{Buf: make([]byte, 64)}})
				done <- err
			}()
			time.Sleep(50 * time.Millisecond) // let ReadBatch block in the poller
			if err := tr.rx.Close(); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-done:
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("ReadBatch after Close: %v, want net.ErrClosed", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Close did not unblock ReadBatch")
			}
			if _, err := tr.rx.WriteBatch([]Message{tr.dst}); !errors.Is(err, net.ErrClosed) {
				t.Errorf("WriteBatch after Close: %v, want net.ErrClosed", err)
			}
		})
	}
}

func TestBatchesAllocateNothing(t *testing.T) {
	const batch, runs = 32, 20
	for _, tr := range transports(t) {
		out := make([]Message, batch)
		in := make([]Message, batch)
		for i := range out {
			out[i] = tr.dst
			out[i].Buf = tr.build(i, 64)
			in[i] = Message{Buf: make([]byte, 2048)}
		}
		t.Run(tr.name+" WriteBatch", func(t *testing.T) {
			// runs+1 batches, AllocsPerRun's warm-up included, are queued
			// for ReadBatch's turn below.
			allocs := testing.AllocsPerRun(runs, func() {
				if n, err := tr.tx.WriteBatch(out); err != nil || n != batch {
					t.Fatalf("WriteBatch: %d, %v", n, err)
				}
			})
			if allocs != 0 {
				t.Errorf("WriteBatch of %d messages allocates %v times, want 0", batch, allocs)
			}
		})
		t.Run(tr.name+" ReadBatch", func(t *testing.T) {
			// Each call takes at most a batch, so data is always queued
			// and no call blocks.
			allocs := testing.AllocsPerRun(runs, func() {
				if n, err := tr.rx.ReadBatch(in); err != nil || n == 0 {
					t.Fatalf("ReadBatch: %d, %v", n, err)
				}
			})
			if allocs != 0 {
				t.Errorf("ReadBatch of up to %d messages allocates %v times, want 0", batch, allocs)
			}
		})
	}
}

// ipipPacket builds what the router writes: an outer IPv4 header (protocol
// 4, DF, TTL 64, a DSCP) around an inner IPv4/UDP packet carrying data, all
// checksums right.
func ipipPacket(src, dst netip.Addr, id uint16, data []byte) []byte {
	pkt := make([]byte, 20+20+8+len(data))
	outer, inner, udp := pkt[:20], pkt[20:40], pkt[40:48]
	ipv4Header(outer, len(pkt), id, 4, src, dst)
	outer[1] = 0xb8 // DSCP EF: the router's choice survives
	binary.BigEndian.PutUint16(outer[10:], 0)
	binary.BigEndian.PutUint16(outer[10:], ^checksum(outer, 0))
	innerSrc, innerDst := netip.MustParseAddr("10.244.1.5"), netip.MustParseAddr("10.244.2.7")
	ipv4Header(inner, len(pkt)-20, id+1, unix.IPPROTO_UDP, innerSrc, innerDst)
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], 5201)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(data)))
	copy(pkt[48:], data)
	pseudo := make([]byte, 0, 12)
	pseudo = append(append(append(pseudo, innerSrc.AsSlice()...), innerDst.AsSlice()...), 0, unix.IPPROTO_UDP)
	pseudo = binary.BigEndian.AppendUint16(pseudo, uint16(8+len(data)))
	binary.BigEndian.PutUint16(udp[6:], ^checksum(pkt[40:], checksum(pseudo, 0)))
	return pkt
}

func ipv4Header(h []byte, totalLen int, id uint16, proto byte, src, dst netip.Addr) {
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(totalLen))
	binary.BigEndian.PutUint16(h[4:], id)
	h[6] = 0x40 // DF
	h[8], h[9] = 64, proto
	copy(h[12:16], src.AsSlice())
	copy(h[16:20], dst.AsSlice())
	binary.BigEndian.PutUint16(h[10:], ^checksum(h, 0))
}

// checksum is the ones' complement sum of b added to sum, folded.
func checksum(b []byte, sum uint16) uint16 {
	s := uint32(sum)
	for len(b) >= 2 {
		s += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

func TestIPIPRoundTrip(t *testing.T) {
	src, dst := loopbackAddr(), loopbackAddr()
	tx, rx := listenIPIP(t, src), listenIPIP(t, dst)
	tests := []struct {
		name    string
		sizes   []int
		perRead int
	}{
		{"one packet", []int{8}, 16},
		{"16 packets of 2 to 1412 bytes", sizesFrom(16, func(i int) int { return 2 + i*94 }), 16},
		{"16 packets read 3 at a time", sizesFrom(16, func(i int) int { return 2 + i }), 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := make([]Message, len(tt.sizes))
			for i, size := range tt.sizes {
				out[i] = Message{Buf: ipipPacket(src, dst, uint16(100+i), payload(i, size)), Addr: dst.As4()}
			}
			if n, err := tx.WriteBatch(out); err != nil || n != len(out) {
				t.Fatalf("WriteBatch: %d of %d, %v", n, len(out), err)
			}
			// The packets come back whole, outer header included and as
			// written: the router's checksum, length and ID stand.
			for i, m := range receive(t, rx, len(out), tt.perRead) {
				if !bytes.Equal(m.Buf, out[i].Buf) {
					t.Errorf("packet %d:\n got %x\nwant %x", i, m.Buf, out[i].Buf)
				}
				if from := netip.AddrFrom4(m.Addr); from != src || m.Port != 0 {
					t.Errorf("packet %d: from %s port %d, want %s port 0", i, from, m.Port, src)
				}
			}
		})
	}
}

func TestIPIPOnlyItsAddress(t *testing.T) {
	src, dst, other := loopbackAddr(), loopbackAddr(), loopbackAddr()
	tx, rx := listenIPIP(t, src), listenIPIP(t, dst)
	if n, err := tx.WriteBatch([]Message{
		{Buf: ipipPacket(src, other, 1, payload(1, 20)), Addr: other.As4()},
		{Buf: ipipPacket(src, dst, 2, payload(2, 20)), Addr: dst.As4()},
	}); err != nil || n != 2 {
		t.Fatalf("WriteBatch: %d, %v", n, err)
	}
	got := receive(t, rx, 1, 2)
	if id := binary.BigEndian.Uint16(got[0].Buf[4:]); id != 2 {
		t.Errorf("the socket bound to %s received the packet with ID %d, want only the one to it (ID 2)", dst, id)
	}
}

func TestListenIPIPWithoutCapNetRaw(t *testing.T) {
	// Capabilities are per thread on Linux: drop CAP_NET_RAW on a thread of
	// its own and let the thread die with the goroutine (never unlocked).
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capget: %w", err)
			return
		}
		data[0].Effective &^= 1 << unix.CAP_NET_RAW
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capset: %w", err)
			return
		}
		c, err := ListenIPIP(netip.MustParseAddr("127.0.0.1"))
		if err == nil {
			c.Close()
			err = errors.New("no error")
		}
		errc <- err
	}()
	err := <-errc
	const want = "IP-in-IP needs CAP_NET_RAW (a raw socket for IP protocol 4); VXLAN pools work without it"
	if !errors.Is(err, ErrNoRawSocket) || !errors.Is(err, unix.EPERM) || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("ListenIPIP without CAP_NET_RAW: %v\nwant %q wrapping EPERM", err, want)
	}
}

func TestListenIPIPRejectsIPv6(t *testing.T) {
	if c, err := ListenIPIP(netip.MustParseAddr("::1")); err == nil {
		c.Close()
		t.Error("ListenIPIP(::1) succeeded, want an error: IP-in-IP runs over IPv4")
	}
}

func BenchmarkUDPBatch(b *testing.B) {
	for _, size := range []int{64, 1400} {
		b.Run(fmt.Sprintf("64x%dB", size), func(b *testing.B) {
			tx, rx := listenUDP(b), listenUDP(b)
			to := rx.LocalAddr()
			benchmarkBatch(b, tx, rx, func(i int) Message {
				return Message{Buf: make([]byte, size), Addr: to.Addr().As4(), Port: to.Port()}
			})
		})
	}
}

func BenchmarkIPIPBatch(b *testing.B) {
	for _, size := range []int{64, 1400} {
		b.Run(fmt.Sprintf("64x%dB", size), func(b *testing.B) {
			src, dst := loopbackAddr(), loopbackAddr()
			tx, rx := listenIPIP(b, src), listenIPIP(b, dst)
			benchmarkBatch(b, tx, rx, func(i int) Message {
				return Message{Buf: ipipPacket(src, dst, uint16(i), make([]byte, size-48)), Addr: dst.As4()}
			})
		})
	}
}

// benchmarkBatch sends a batch of 64 messages and receives them, per
// iteration.
func benchmarkBatch(b *testing.B, tx, rx Transport, message func(i int) Message) {
	out := make([]Message, 64)
	in := make([]Message, 64)
	for i := range out {
		out[i] = message(i)
		in[i] = Message{Buf: make([]byte, 2048)}
	}
	b.ReportAllocs()
	for b.Loop() {
		if n, err := tx.WriteBatch(out); err != nil || n != len(out) {
			b.Fatalf("WriteBatch: %d, %v", n, err)
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
}
