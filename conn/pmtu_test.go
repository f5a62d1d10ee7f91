package conn

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"

	"github.com/overlayd/overlayd/internal/testbed"
)

// TestPathMTU: on a bed of two hosts whose route between them says MTU
// 1300 (as a route's PMTU cache entry does after a router's ICMP
// fragmentation needed), PathMTU reads 1300; the VXLAN socket refuses,
// marked TooBig, single datagrams and GSO trains over it, since it sends
// with DF; sends what fits; and sends a datagram marked Fragment in
// fragments, which arrives whole.
func TestPathMTU(t *testing.T) {
	testbed.Require(t)
	const pathMTU = 1300
	bed := testbed.NewForTest(t, testbed.Options{})
	a, err := bed.AddHost("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := bed.AddHost("b")
	if err != nil {
		t.Fatal(err)
	}
	addrA, addrB := netip.MustParsePrefix("198.18.9.1/24"), netip.MustParsePrefix("198.18.9.2/24")
	if err := bed.Link(testbed.Endpoint{Host: a, Iface: "eth0", Addr: addrA}, testbed.Endpoint{Host: b, Iface: "eth0", Addr: addrB}); err != nil {
		t.Fatal(err)
	}
	if err := a.IP("route", "add", addrB.Addr().String()+"/32", "dev", "eth0", "mtu", "1300"); err != nil {
		t.Fatal(err)
	}
	// One sending socket as it is, one spreading its source ports.
	var tx, spread, rx *UDPConn
	var mtu int
	if err := a.Do(func() (err error) {
		if mtu, err = PathMTU(addrB.Addr().As4()); err != nil {
			return err
		}
		if tx, err = ListenUDP(netip.AddrPortFrom(addrA.Addr(), 0)); err != nil {
			return err
		}
		if spread, err = ListenUDP(netip.AddrPortFrom(addrA.Addr(), 0)); err != nil {
			return err
		}
		return spread.SpreadSourcePorts(4)
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Close(); spread.Close() })
	if err := b.Do(func() (err error) { rx, err = ListenUDP(netip.AddrPortFrom(addrB.Addr(), 0)); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rx.Close() })
	if mtu != pathMTU {
		t.Errorf("PathMTU = %d, want %d", mtu, pathMTU)
	}

	fits := pathMTU - udpIPv4Headers
	to := rx.LocalAddr()
	msg := func(i, size int, fragment bool) Message {
		return Message{Buf: payload(i, size), Addr: to.Addr().As4(), Port: to.Port(), Fragment: fragment}
	}
	tests := []struct {
		name       string
		msgs       []Message
		tooBig     []bool
		delivered  []int // the messages that arrive, in order
		wantErrSub string
	}{
		{"what fits the path, a GSO train of it too", []Message{msg(0, fits, false), msg(1, fits, false), msg(2, fits, false)},
			[]bool{false, false, false}, []int{0, 1, 2}, ""},
		// A shorter datagram after a longer one would join its train and
		// share its fate: the small ones come first.
		{"one datagram over the path MTU", []Message{msg(0, 100, false), msg(1, 100, false), msg(2, fits+1, false)},
			[]bool{false, false, true}, []int{0, 1}, "message too long"},
		{"a GSO train over the path MTU", []Message{msg(0, 100, false), msg(1, 1472, false), msg(2, 1472, false), msg(3, 1472, false)},
			[]bool{false, true, true, true}, []int{0}, "sendmmsg"},
		{"over the path MTU, marked Fragment", []Message{msg(0, 1472, true), msg(1, 1472, true), msg(2, 100, false)},
			[]bool{false, false, false}, []int{0, 1, 2}, ""},
	}
	for _, sender := range []struct {
		name string
		c    *UDPConn
	}{{"one port", tx}, {"spread ports", spread}} {
		for _, tc := range tests {
			t.Run(sender.name+"/"+tc.name, func(t *testing.T) {
				tx := sender.c
				for i := range tc.msgs {
					tc.msgs[i].TooBig = !tc.tooBig[i] // WriteBatch sets every one
				}
				sent, err := tx.WriteBatch(tc.msgs)
				if sent != len(tc.delivered) {
					t.Errorf("WriteBatch says %d sent, want %d (error %v)", sent, len(tc.delivered), err)
				}
				if (err == nil) != (tc.wantErrSub == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErrSub)) {
					t.Errorf("WriteBatch error %v, want one saying %q", err, tc.wantErrSub)
				}
				for i, m := range tc.msgs {
					if m.TooBig != tc.tooBig[i] {
						t.Errorf("message %d (%d bytes): TooBig %v, want %v", i, len(m.Buf), m.TooBig, tc.tooBig[i])
					}
				}
				got := receive(t, rx, len(tc.delivered), MaxBatch)
				for i, m := range got {
					if want := tc.msgs[tc.delivered[i]].Buf; !bytes.Equal(m.Buf, want) {
						t.Errorf("datagram %d arrived with %d bytes starting %x, want message %d's %d starting %x",
							i, len(m.Buf), head(m.Buf), tc.delivered[i], len(want), head(want))
					}
				}
			})
		}
	}
}
