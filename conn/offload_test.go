package conn

import (
	"bytes"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestUDPOffloads sends runs the sender joins into GSO trains and checks
// that every datagram arrives whole and in order, one per Message, however
// the receiver's GRO coalesced them and however few Messages each
// ReadBatch offers.
func TestUDPOffloads(t *testing.T) {
	a, b, c := listenUDP(t), listenUDP(t), listenUDP(t)
	if gso, gro := a.Offloads(); !gso || !gro {
		t.Skipf("skipping: this kernel has no UDP GSO (%v) or GRO (%v)", gso, gro)
	}
	toB, toC := b.LocalAddr(), c.LocalAddr()
	type datagram struct {
		size int
		to   netip.AddrPort
	}
	run := func(n, size int, to netip.AddrPort) []datagram {
		d := make([]datagram, n)
		for i := range d {
			d[i] = datagram{size, to}
		}
		return d
	}
	tests := []struct {
		name      string
		datagrams []datagram
		perRead   int
	}{
		{"a TSO burst: 45 of 1400 bytes and a 700-byte tail", append(run(45, 1400, toB), datagram{700, toB}), MaxBatch},
		{"200 equal datagrams, more than one train holds", run(200, 1000, toB), MaxBatch},
		{"200 equal datagrams read 7 at a time", run(200, 1000, toB), 7},
		{"a shorter datagram ends a train, the next starts a new one", append(append(run(10, 900, toB), datagram{100, toB}), run(10, 900, toB)...), MaxBatch},
		{"two peers interleaved", append(append(run(5, 500, toB), run(5, 500, toC)...), run(5, 500, toB)...), MaxBatch},
		{"larger than a segment may be: sent alone", append(run(3, 1472, toB), datagram{1473, toB}, datagram{1473, toB}), MaxBatch},
		{"64-byte datagrams, as for a packet rate test", run(128, 64, toB), MaxBatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := make([]Message, len(tt.datagrams))
			want := map[netip.AddrPort][]Message{}
			for i, d := range tt.datagrams {
				out[i] = Message{Buf: payload(i, d.size), Addr: d.to.Addr().As4(), Port: d.to.Port()}
				want[d.to] = append(want[d.to], out[i])
			}
			before := b.gro.coalesced
			sent, err := a.WriteBatch(out)
			if err != nil || sent != len(out) {
				t.Fatalf("WriteBatch: %d of %d sent, %v", sent, len(out), err)
			}
			for to, rx := range map[netip.AddrPort]*UDPConn{toB: b, toC: c} {
				for i, m := range receiveInto(t, rx, len(want[to]), tt.perRead, 65536) {
					w := want[to][i]
					if !bytes.Equal(m.Buf, w.Buf) || m.Truncated {
						t.Fatalf("to %s, datagram %d: %d bytes starting %x (truncated %v), want %d starting %x", to, i, m.N, head(m.Buf), m.Truncated, len(w.Buf), head(w.Buf))
					}
					if from := netip.AddrPortFrom(netip.AddrFrom4(m.Addr), m.Port); from != a.LocalAddr() {
						t.Errorf("datagram %d: source %s, want %s", i, from, a.LocalAddr())
					}
				}
			}
			if len(want[toB]) > 1 && b.gro.coalesced == before {
				t.Errorf("no message arrived coalesced: GSO or GRO did not take effect")
			}
		})
	}
}

// TestUDPSegmentSize follows SetUnderlayMTU: a jumbo underlay lets larger
// datagrams join a train.
func TestUDPSegmentSize(t *testing.T) {
	a := listenUDP(t)
	if gso, _ := a.Offloads(); !gso {
		t.Skip("skipping: this kernel has no UDP GSO")
	}
	to := listenUDP(t).LocalAddr()
	msgs := make([]Message, 4)
	for i := range msgs {
		msgs[i] = Message{Buf: make([]byte, 8000), Addr: to.Addr().As4(), Port: to.Port()}
	}
	for _, tt := range []struct {
		mtu        int
		wantTrains int
	}{{1500, 4}, {9000, 1}} {
		a.SetUnderlayMTU(tt.mtu)
		if used := a.prepareWrite(msgs); used != len(msgs) || a.wr.n != tt.wantTrains {
			t.Errorf("MTU %d: %d messages in %d headers, want %d in %d", tt.mtu, used, a.wr.n, len(msgs), tt.wantTrains)
		}
	}
}

// TestUDPSpreadSourcePorts checks that flows leave from several source
// ports, each flow from one, in its order, with GSO trains still joined.
func TestUDPSpreadSourcePorts(t *testing.T) {
	a, b := listenUDP(t), listenUDP(t)
	if err := a.SpreadSourcePorts(8); err != nil {
		t.Fatal(err)
	}
	ports := a.SourcePorts()
	if len(ports) != 8 {
		t.Fatalf("%d source ports, want 8", len(ports))
	}
	to := b.LocalAddr()
	const flows, perFlow = 64, 20
	var out []Message
	for i := range perFlow {
		for f := range flows {
			// Flows interleave; flow f's packets carry f and their rank.
			p := payload(f<<8|i, 600)
			out = append(out, Message{Buf: p, Addr: to.Addr().As4(), Port: to.Port(), Flow: uint32(f) * 0x9e3779b9})
		}
	}
	// Trains too: a run of one flow's equal datagrams.
	for i := range 40 {
		out = append(out, Message{Buf: payload(0xff00|i, 1000), Addr: to.Addr().As4(), Port: to.Port(), Flow: 7})
	}
	if sent, err := a.WriteBatch(out); err != nil || sent != len(out) {
		t.Fatalf("WriteBatch: %d of %d sent, %v", sent, len(out), err)
	}
	portOf := map[int]uint16{} // flow -> its source port
	next := map[int]int{}      // flow -> the rank expected next
	used := map[uint16]bool{}
	for _, m := range receiveInto(t, b, len(out), MaxBatch, 65536) {
		id := int(m.Buf[0])<<8 | int(m.Buf[1])
		f, rank := id>>8, id&0xff
		if p, ok := portOf[f]; ok && p != m.Port {
			t.Fatalf("flow %d came from ports %d and %d", f, p, m.Port)
		}
		portOf[f] = m.Port
		used[m.Port] = true
		if rank != next[f] {
			t.Fatalf("flow %d: datagram %d arrived where %d was due", f, rank, next[f])
		}
		next[f]++
	}
	for p := range used {
		if !slices.Contains(ports, p) {
			t.Errorf("a datagram came from port %d, not one of %v", p, ports)
		}
	}
	if len(used) < 6 {
		t.Errorf("%d flows used %d of the 8 source ports: not spread", flows, len(used))
	}
}

// TestUDPSpreadAllocatesNothing: spreading a batch over the senders
// reuses the conn's per-sender slices.
func TestUDPSpreadAllocatesNothing(t *testing.T) {
	a, b := listenUDP(t), listenUDP(t)
	if err := a.SpreadSourcePorts(4); err != nil {
		t.Fatal(err)
	}
	to := b.LocalAddr()
	out := make([]Message, 32)
	for i := range out {
		out[i] = Message{Buf: payload(i, 64), Addr: to.Addr().As4(), Port: to.Port(), Flow: uint32(i) * 0x9e3779b9}
	}
	in := make([]Message, MaxBatch)
	for i := range in {
		in[i] = Message{Buf: make([]byte, 2048)}
	}
	allocs := testing.AllocsPerRun(20, func() {
		if n, err := a.WriteBatch(out); err != nil || n != len(out) {
			t.Fatalf("WriteBatch: %d, %v", n, err)
		}
		// Keep b's queue short: what was sent is read back.
		for got := 0; got < len(out); {
			n, err := b.ReadBatch(in)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	})
	if allocs != 0 {
		t.Errorf("a spread WriteBatch and its ReadBatch allocate %v times, want 0", allocs)
	}
}

// TestUDPPollable checks what a loop polling the socket itself relies on:
// FD is the receiving socket, readable when a datagram waits, and Buffered
// says when ReadBatch holds datagrams the socket no longer shows.
func TestUDPPollable(t *testing.T) {
	a, b := listenUDP(t), listenUDP(t)
	if gso, gro := a.Offloads(); !gso || !gro {
		t.Skipf("skipping: this kernel has no UDP GSO (%v) or GRO (%v)", gso, gro)
	}
	sa, err := unix.Getsockname(b.FD())
	if err != nil {
		t.Fatal(err)
	}
	if port := sa.(*unix.SockaddrInet4).Port; port != int(b.LocalAddr().Port()) {
		t.Fatalf("FD is bound to port %d, want the socket's %d", port, b.LocalAddr().Port())
	}
	readable := func() bool {
		fds := []unix.PollFd{{Fd: int32(b.FD()), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		return err == nil && n > 0
	}
	if readable() || b.Buffered() {
		t.Fatal("an idle socket is readable or has datagrams on hand")
	}
	// One GSO train of ten: GRO hands it over as one message.
	out := make([]Message, 10)
	to := b.LocalAddr()
	for i := range out {
		out[i] = Message{Buf: payload(i, 1000), Addr: to.Addr().As4(), Port: to.Port()}
	}
	if sent, err := a.WriteBatch(out); err != nil || sent != len(out) {
		t.Fatalf("WriteBatch: %d of %d sent, %v", sent, len(out), err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for !readable() {
		if time.Now().After(deadline) {
			t.Fatal("FD never became readable with datagrams sent to the socket")
		}
		time.Sleep(time.Millisecond)
	}
	in := []Message{{Buf: make([]byte, 2000)}, {Buf: make([]byte, 2000)}}
	got := 0
	for got < len(out) {
		n, err := b.ReadBatch(in)
		if err != nil {
			t.Fatal(err)
		}
		got += n
		// A loop that polls FD unless Buffered would wait for ever here.
		if got < len(out) && !readable() && !b.Buffered() {
			t.Fatalf("after %d of %d datagrams: neither FD nor Buffered says that more are there", got, len(out))
		}
	}
	if b.Buffered() {
		t.Error("Buffered after every datagram was read")
	}
}
