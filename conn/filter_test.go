package conn

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
)

// vxlanDatagram is a VXLAN header with vni followed by body.
func vxlanDatagram(vni uint32, body string) []byte {
	b := make([]byte, 8, 8+len(body))
	b[0] = 0x08
	binary.BigEndian.PutUint32(b[4:], vni<<8)
	return append(b, body...)
}

// sendFrom sends b to dst from a UDP socket bound to src.
func sendFrom(t *testing.T, src netip.Addr, dst netip.AddrPort, b []byte) {
	t.Helper()
	s, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.WriteToUDPAddrPort(b, dst); err != nil {
		t.Fatal(err)
	}
}

func socketDropsOf(t *testing.T, f SourceFilter) uint64 {
	t.Helper()
	n, err := f.SocketDrops()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// expectFiltered checks what a send did: delivered whole to rx, or dropped
// by the kernel and counted. Loopback delivers within the send, so the
// count has moved by the time the send returns.
func expectFiltered(t *testing.T, rx Transport, f SourceFilter, dropsBefore uint64, sent []byte, pass bool) {
	t.Helper()
	drops := socketDropsOf(t, f) - dropsBefore
	if !pass {
		if drops != 1 {
			t.Errorf("socket drops moved by %d, want 1: the filter let the packet through", drops)
		}
		return
	}
	if drops != 0 {
		t.Fatalf("socket drops moved by %d, want 0: the filter refused the packet", drops)
	}
	if got := receive(t, rx, 1, 1); !bytes.Equal(got[0].Buf, sent) {
		t.Errorf("received %x, want %x", got[0].Buf, sent)
	}
}

func TestUDPFilterSources(t *testing.T) {
	const vni = 4096
	rx := listenUDP(t)
	if err := rx.SpreadSourcePorts(2); err != nil {
		t.Fatal(err)
	}
	peer, other := loopbackAddr(), loopbackAddr()
	if filtered, err := rx.FilterSources([]netip.Addr{peer}, vni); err != nil || !filtered {
		t.Fatalf("FilterSources: filtered %v, %v", filtered, err)
	}
	listening := rx.LocalAddr()
	tests := []struct {
		name string
		from netip.Addr
		to   netip.AddrPort
		data []byte
		pass bool
	}{
		{"a peer's VXLAN passes", peer, listening, vxlanDatagram(vni, "inner"), true},
		{"an unknown source is dropped", other, listening, vxlanDatagram(vni, "inner"), false},
		{"another VNI is dropped", peer, listening, vxlanDatagram(vni+1, "inner"), false},
		{"a datagram shorter than a VXLAN header is dropped", peer, listening, []byte{0x08, 0, 0, 0}, false},
		{"the reserved byte after the VNI is not the filter's business", peer, listening, append(vxlanDatagram(vni, "")[:7], 0xff, 'x'), true},
		{"a source port's socket takes nothing", peer, netip.AddrPortFrom(listening.Addr(), rx.SourcePorts()[0]), vxlanDatagram(vni, "x"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := socketDropsOf(t, rx)
			sendFrom(t, tt.from, tt.to, tt.data)
			expectFiltered(t, rx, rx, before, tt.data, tt.pass)
		})
	}
	t.Run("a new filter replaces the old one", func(t *testing.T) {
		if _, err := rx.FilterSources([]netip.Addr{other}, vni); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			from netip.Addr
			pass bool
		}{{other, true}, {peer, false}} {
			before, data := socketDropsOf(t, rx), vxlanDatagram(vni, "again")
			sendFrom(t, c.from, listening, data)
			expectFiltered(t, rx, rx, before, data, c.pass)
		}
	})
	t.Run("past the most peers a filter lists, only the VNI is checked", func(t *testing.T) {
		many := make([]netip.Addr, maxFilterPeers+1)
		for i := range many {
			many[i] = netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		}
		filtered, err := rx.FilterSources(many, vni)
		if err != nil || filtered {
			t.Fatalf("FilterSources of %d peers: filtered %v, %v; want false, nil", len(many), filtered, err)
		}
		for _, c := range []struct {
			vni  uint32
			pass bool
		}{{vni, true}, {vni + 1, false}} {
			before, data := socketDropsOf(t, rx), vxlanDatagram(c.vni, "many")
			sendFrom(t, other, listening, data)
			expectFiltered(t, rx, rx, before, data, c.pass)
		}
	})
	t.Run("the largest filter the kernel takes", func(t *testing.T) {
		most := make([]netip.Addr, maxFilterPeers)
		for i := range most {
			most[i] = netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		}
		most[len(most)-1] = peer
		if filtered, err := rx.FilterSources(most, vni); err != nil || !filtered {
			t.Fatalf("FilterSources of %d peers: filtered %v, %v", len(most), filtered, err)
		}
		before, data := socketDropsOf(t, rx), vxlanDatagram(vni, "last")
		sendFrom(t, peer, listening, data)
		expectFiltered(t, rx, rx, before, data, true)
	})
}

func TestIPIPSocketDrops(t *testing.T) {
	// A raw socket's filter would drop without counting, so IP-in-IP has
	// none; what its socket drops is what found no room.
	var tr Transport = listenIPIP(t, loopbackAddr())
	if _, ok := tr.(SourceFilter); ok {
		t.Fatal("the IP-in-IP socket offers a source filter, whose drops the kernel does not count")
	}
	if n, err := tr.(DropCounter).SocketDrops(); err != nil || n != 0 {
		t.Fatalf("SocketDrops of a new socket: %d, %v", n, err)
	}
}
