package conn

import (
	"testing"
)

// TestUDPTOS sends datagrams with TOS bytes (DSCP and ECN) of their own and
// checks each arrives with its own: the IP_TOS control message on send,
// IP_RECVTOS on receive, and no GSO train (whose datagrams share one IPv4
// header) joining datagrams of different TOS. The datagrams are of equal
// size to one peer, so GSO would join them all if the TOS did not keep them
// apart, and runs of equal TOS are still joined.
func TestUDPTOS(t *testing.T) {
	a, b := listenUDP(t), listenUDP(t)
	to := b.LocalAddr()
	const (
		ect0 = 0x02
		ect1 = 0x01
		ce   = 0x03
		af11 = 10 << 2
		ef   = 46 << 2
	)
	tos := []uint8{
		0, ect0, ect0, ect0, ect0, ce, ect0, ect1, ect1, 0, af11 | ect0, ef | ce, ef | ce, ef | ce, 0, 0,
		ce, ect0, ce, ect0, ce, ect0, af11, af11 | ect1, 0xff,
	}
	out := make([]Message, len(tos))
	for i := range out {
		out[i] = Message{Buf: payload(i, 600), Addr: to.Addr().As4(), Port: to.Port(), TOS: tos[i]}
	}
	if gso, _ := a.Offloads(); gso {
		// Trains are cut where the TOS changes, and only there.
		runs := 1
		for i := 1; i < len(tos); i++ {
			if tos[i] != tos[i-1] {
				runs++
			}
		}
		if used := a.prepareWrite(out); used != len(out) || a.wr.n != runs {
			t.Errorf("%d messages in %d headers, want %d in %d (one per run of equal TOS)", used, a.wr.n, len(out), runs)
		}
	}
	sent, err := a.WriteBatch(out)
	if err != nil || sent != len(out) {
		t.Fatalf("WriteBatch: %d of %d sent, %v", sent, len(out), err)
	}
	for i, m := range receive(t, b, len(out), MaxBatch) {
		idx := int(m.Buf[0])<<8 | int(m.Buf[1])
		if idx != i {
			t.Fatalf("datagram %d arrived as %d", idx, i)
		}
		if m.TOS != tos[i] {
			t.Errorf("datagram %d: TOS %#02x, want %#02x", i, m.TOS, tos[i])
		}
	}
}

// Sending with a TOS and receiving it allocate nothing either.
func TestUDPTOSAllocatesNothing(t *testing.T) {
	a, b := listenUDP(t), listenUDP(t)
	to := b.LocalAddr()
	const batch, runs = 32, 20
	out := make([]Message, batch)
	in := make([]Message, batch)
	for i := range out {
		out[i] = Message{Buf: payload(i, 64), Addr: to.Addr().As4(), Port: to.Port(), TOS: uint8(i % 4)}
		in[i] = Message{Buf: make([]byte, 2048)}
	}
	allocs := testing.AllocsPerRun(runs, func() {
		if n, err := a.WriteBatch(out); err != nil || n != batch {
			t.Fatalf("WriteBatch: %d, %v", n, err)
		}
	})
	if allocs != 0 {
		t.Errorf("WriteBatch with TOS allocates %v times, want 0", allocs)
	}
	allocs = testing.AllocsPerRun(runs, func() {
		if n, err := b.ReadBatch(in); err != nil || n == 0 {
			t.Fatalf("ReadBatch: %d, %v", n, err)
		}
	})
	if allocs != 0 {
		t.Errorf("ReadBatch with TOS allocates %v times, want 0", allocs)
	}
}
