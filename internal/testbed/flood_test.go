package testbed

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
)

// TestFloodIsAccounted floods a socket that reads nothing until the flood
// ends, with a receive buffer far too small: every packet Flood says it
// sent is then either read or counted by SocketOverflows (or, at most,
// dropped by the veth between the hosts), and some overflowed.
func TestFloodIsAccounted(t *testing.T) {
	b := NewForTest(t, Options{})
	src, err := b.AddHost("src")
	if err != nil {
		t.Fatal(err)
	}
	sink, err := b.AddHost("sink")
	if err != nil {
		t.Fatal(err)
	}
	sinkAddr := netip.MustParseAddr("198.18.0.2")
	if err := b.Link(
		Endpoint{Host: src, Iface: "eth0", Addr: netip.MustParsePrefix("198.18.0.1/24")},
		Endpoint{Host: sink, Iface: "eth0", Addr: netip.PrefixFrom(sinkAddr, 24)},
	); err != nil {
		t.Fatal(err)
	}
	inner, err := ForgedUDP(netip.MustParseAddr("10.1.0.5"), netip.MustParseAddr("10.1.0.6"), 7777)
	if err != nil {
		t.Fatal(err)
	}
	vxlan, err := ForgedVXLAN(4096, net.HardwareAddr{0x66, 0, 0, 0, 0, 1}, inner)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		port   uint16
		packet []byte
		listen func() (net.PacketConn, error)
	}{
		{"VXLAN to a UDP socket", 4789, vxlan, func() (net.PacketConn, error) {
			return net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(sinkAddr, 4789)))
		}},
		{"IP-in-IP to a raw socket", 0, inner, func() (net.PacketConn, error) {
			return net.ListenIP("ip4:4", &net.IPAddr{IP: sinkAddr.AsSlice()})
		}},
	}
	ctx := context.Background()
	overflows := func() uint64 {
		udp, ipip, err := sink.SocketOverflows(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return udp + ipip
	}
	linkDrops := func() uint64 {
		var sum uint64
		for _, h := range []*Host{src, sink} {
			d, err := h.LinkDrops(ctx)
			if err != nil {
				t.Fatal(err)
			}
			sum += d
		}
		return sum
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var pc net.PacketConn
			if err := sink.Do(func() (err error) { pc, err = tc.listen(); return err }); err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			if err := pc.(interface{ SetReadBuffer(int) error }).SetReadBuffer(0); err != nil {
				t.Fatal(err)
			}
			overflow0, links0 := overflows(), linkDrops()
			fctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
			defer cancel()
			sent, err := Flood(fctx, Forged{From: src, To: sinkAddr, Port: tc.port, Packets: [][]byte{tc.packet}})
			if err != nil {
				t.Fatal(err)
			}
			// What the socket holds now is all it will get: a loop
			// through lo or a veth ends within the send.
			overflowed, links := overflows()-overflow0, linkDrops()-links0
			read := uint64(0)
			buf := make([]byte, 2048)
			for {
				if err := pc.SetReadDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
					t.Fatal(err)
				}
				if _, _, err := pc.ReadFrom(buf); errors.Is(err, os.ErrDeadlineExceeded) {
					break
				} else if err != nil {
					t.Fatal(err)
				}
				read++
			}
			t.Logf("sent %d, read %d, overflowed %d, the veth dropped %d", sent, read, overflowed, links)
			if overflowed == 0 {
				t.Errorf("nothing overflowed a socket with no receive buffer")
			}
			if read+overflowed > sent || read+overflowed+links < sent {
				t.Errorf("sent %d: read %d, overflowed %d, the veth dropped %d", sent, read, overflowed, links)
			}
		})
	}
}
