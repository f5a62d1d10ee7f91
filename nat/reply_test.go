package nat

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/overlayd/overlayd/encap"
)

// TestReplyPath checks what outbound does with each netstack packet: the
// packet, spread over views behind reserved header space, reaches Out once
// at encap.Headroom, is accounted to its flow, and none of it allocates.
func TestReplyPath(t *testing.T) {
	inside, dest := netip.MustParseAddrPort("10.1.0.5:40000"), netip.MustParseAddrPort("198.18.3.10:53")
	var got []byte
	calls := 0
	n := &NAT{
		cfg: Config{Out: func(bufs [][]byte) error {
			calls++
			if len(bufs) == 1 {
				got = bufs[0]
			}
			return nil
		}},
		log:   slog.New(slog.DiscardHandler),
		table: newTable(context.Background(), 10, 10, Timeouts{}, time.Now),
	}
	e, _, refused := n.table.add(flowKey{protoUDP, inside, dest}, stateUnreplied)
	if refused != "" {
		t.Fatal(refused)
	}

	// The reply: the destination's datagram to the workload.
	const hl = header.IPv4MinimumSize
	data := []byte("a reply from the outside")
	pkt := make([]byte, hl+header.UDPMinimumSize+len(data))
	putIPv4(pkt, 0, len(pkt), protoUDP, dest.Addr(), inside.Addr())
	u := header.UDP(pkt[hl:])
	u.SetSourcePort(dest.Port())
	u.SetDestinationPort(inside.Port())
	u.SetLength(uint16(len(pkt) - hl))
	copy(u.Payload(), data)
	payload := buffer.MakeWithData(pkt[:hl+4])
	payload.Append(buffer.NewViewWithData(pkt[hl+4:]))
	pb := stack.NewPacketBuffer(stack.PacketBufferOptions{ReserveHeaderBytes: 16, Payload: payload})
	defer pb.DecRef()

	buf, bufs := make([]byte, encap.Headroom+1<<16), make([][]byte, 1)
	runs := 0
	allocs := testing.AllocsPerRun(100, func() {
		n.reply(pb, buf, bufs)
		runs++
	})
	if allocs != 0 {
		t.Errorf("%v allocations per reply, want 0", allocs)
	}
	if calls != runs {
		t.Errorf("Out called %d times for %d replies", calls, runs)
	}
	if len(got) < encap.Headroom || !bytes.Equal(got[encap.Headroom:], pkt) || &got[0] != &buf[0] {
		t.Errorf("Out got %x, want the packet %x at encap.Headroom of the caller's buffer", got, pkt)
	}
	if e.packetsIn.Load() != uint64(runs) || e.bytesIn.Load() != uint64(runs*len(pkt)) || e.getState() != stateAssured {
		t.Errorf("flow: %d packets, %d bytes in, %v; want %d, %d, ASSURED", e.packetsIn.Load(), e.bytesIn.Load(), e.getState(), runs, runs*len(pkt))
	}
}
