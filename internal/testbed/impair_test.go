package testbed

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
)

// within says whether got is within tol (relative) of want.
func within(got, want, tol float64) bool { return math.Abs(got-want) <= tol*want }

func TestDeciderRatesAndSeed(t *testing.T) {
	const draws = 200000
	tests := []struct {
		name string
		imp  Impairment
	}{
		{"1 % loss, 1 % duplication, 1 % reordering", Impairment{Loss: 0.01, Duplicate: 0.01, Reorder: 0.01, Seed: 1}},
		{"5 % loss only", Impairment{Loss: 0.05, Seed: 2}},
		{"a fifth of the frames held back", Impairment{Reorder: 0.2, Seed: 3}},
		{"nothing", Impairment{Seed: 4}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, again, back := newDecider(tc.imp, 0), newDecider(tc.imp, 0), newDecider(tc.imp, 1)
			var drops, dups, holds, sameAsOtherDirection float64
			for range draws {
				v := d.next()
				if v != again.next() {
					t.Fatal("the same seed and direction gave another verdict")
				}
				if v == back.next() {
					sameAsOtherDirection++
				}
				drops += b2f(v.drop)
				dups += b2f(v.duplicate)
				holds += b2f(v.hold)
			}
			for _, r := range []struct {
				what      string
				got, want float64
			}{
				{"drops", drops, tc.imp.Loss * draws},
				{"duplicates", dups, tc.imp.Duplicate * draws},
				{"holds", holds, tc.imp.Reorder * draws},
			} {
				// 0.15 relative is over 4 standard deviations at 1 % of 200,000.
				if !within(r.got, r.want, 0.15) {
					t.Errorf("%s: %v of %d draws, want about %v", r.what, r.got, draws, r.want)
				}
			}
			if tc.imp.Loss+tc.imp.Duplicate+tc.imp.Reorder > 0 && sameAsOtherDirection == draws {
				t.Error("both directions drew the same verdicts")
			}
		})
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func TestImpairmentCheck(t *testing.T) {
	for _, imp := range []Impairment{{Loss: -0.1}, {Duplicate: 1.5}, {Reorder: math.NaN()}, {ReorderGap: -1}} {
		if imp.check() == nil {
			t.Errorf("%+v accepted", imp)
		}
	}
}

// impairedPair is two hosts, x (198.18.0.1) and y (198.18.0.2), on one
// link impaired at x's end.
func impairedPair(t *testing.T, imp Impairment) (x, y *Host, l *ImpairedLink) {
	t.Helper()
	b := NewForTest(t, Options{})
	var err error
	if x, err = b.AddHost("x"); err != nil {
		t.Fatal(err)
	}
	if y, err = b.AddHost("y"); err != nil {
		t.Fatal(err)
	}
	x.Addr, y.Addr = netip.MustParsePrefix("198.18.0.1/24"), netip.MustParsePrefix("198.18.0.2/24")
	if err := b.Link(Endpoint{Host: x, Iface: "eth0", Addr: x.Addr}, Endpoint{Host: y, Iface: "eth0", Addr: y.Addr}); err != nil {
		t.Fatal(err)
	}
	if l, err = b.Impair(x, "eth0", imp); err != nil {
		t.Fatal(err)
	}
	if l.Peer != y || l.PeerIface != "eth0" {
		t.Fatalf("the impaired link's peer is %s:%s, want y:eth0", l.Peer, l.PeerIface)
	}
	return x, y, l
}

// TestImpairedLinkUDP: numbered datagrams cross an impaired link; what the
// receiver sees (how many, how many distinct, how many late) is exactly
// what the relay counted, and the counts are near the configured rates.
func TestImpairedLinkUDP(t *testing.T) {
	Require(t)
	imp := Impairment{Loss: 0.05, Duplicate: 0.05, Reorder: 0.05, Seed: 17}
	x, y, l := impairedPair(t, imp)
	const datagrams = 4000
	to := netip.AddrPortFrom(y.Addr.Addr(), 9000)

	var rx *net.UDPConn
	if err := y.Do(func() (err error) {
		rx, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(to))
		if err == nil {
			err = rx.SetReadBuffer(4 << 20)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	var tx *net.UDPConn
	if err := x.Do(func() (err error) { tx, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(to)); return err }); err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	// Resolve y's address first, so that the relay's first IPv4 frame
	// is the first datagram.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := x.Run(ctx, "ip", "neigh", "replace", y.Addr.Addr().String(), "lladdr", macOf(t, y, "eth0"), "dev", "eth0"); err != nil {
		t.Fatal(err)
	}

	msg := make([]byte, 8)
	for i := range datagrams {
		binary.BigEndian.PutUint64(msg, uint64(i))
		if _, err := tx.Write(msg); err != nil {
			t.Fatal(err)
		}
		if i%50 == 49 {
			time.Sleep(time.Millisecond) // a pace the relay and receiver keep up with
		}
	}
	var received, distinct, late int
	seen := make([]bool, datagrams)
	highest := -1
	buf := make([]byte, 64)
	for {
		rx.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := rx.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil || n != 8 {
			t.Fatalf("read %d bytes: %v", n, err)
		}
		seq := int(binary.BigEndian.Uint64(buf))
		received++
		if seen[seq] {
			continue
		}
		seen[seq], distinct = true, distinct+1
		if seq < highest {
			late++
		}
		highest = max(highest, seq)
	}

	s, back := l.Stats()
	t.Logf("x -> y: %v; y -> x: %v", s, back)
	t.Logf("y received %d datagrams, %d distinct, %d late", received, distinct, late)
	if s.Frames != datagrams || s.SendErrors != 0 {
		t.Fatalf("the relay saw %d IPv4 frames with %d send errors, want the %d datagrams and none", s.Frames, s.SendErrors, datagrams)
	}
	for _, c := range []struct {
		what      string
		got, want uint64
	}{
		{"datagrams received (sent - dropped + duplicated)", uint64(received), s.Frames - s.Dropped + s.Duplicated},
		{"distinct datagrams (sent - dropped)", uint64(distinct), s.Frames - s.Dropped},
		{"datagrams arriving after a later one (reordered)", uint64(late), s.Reordered},
	} {
		if c.got != c.want {
			t.Errorf("%s: %d, the relay's counts say %d", c.what, c.got, c.want)
		}
	}
	for _, r := range []struct {
		what string
		got  uint64
		rate float64
	}{
		{"dropped", s.Dropped, imp.Loss},
		// A held frame waits for the next ones to overtake it, which may
		// be dropped or held in turn: fewer than held end reordered.
		{"reordered", s.Reordered, imp.Reorder * (1 - imp.Loss)},
		{"duplicated", s.Duplicated, imp.Duplicate * (1 - imp.Loss)},
	} {
		if !within(float64(r.got), r.rate*datagrams, 0.35) {
			t.Errorf("%s %d of %d, want about %.0f", r.what, r.got, datagrams, r.rate*datagrams)
		}
	}
}

func macOf(t *testing.T, h *Host, iface string) string {
	t.Helper()
	var mac string
	if err := h.Do(func() error {
		ifi, err := net.InterfaceByName(iface)
		if err == nil {
			mac = ifi.HardwareAddr.String()
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return mac
}

// TestImpairedLinkTCP: a TCP transfer both ways over 1 % loss, reordering
// and duplication arrives byte-exact, and the relay saw wire-sized frames,
// not offload super-frames, so the impairment struck single segments.
func TestImpairedLinkTCP(t *testing.T) {
	Require(t)
	x, y, l := impairedPair(t, Impairment{Loss: 0.01, Duplicate: 0.01, Reorder: 0.01, Seed: 5})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := TCPTransfer(ctx, x, y, netip.AddrPortFrom(y.Addr.Addr(), 9001), 2<<20)
	if err != nil {
		t.Fatal(err)
	}
	toY, toX := l.Stats()
	t.Logf("%v; x -> y: %v; y -> x: %v", res, toY, toX)
	all := toY.Plus(toX)
	if all.Dropped == 0 || all.Duplicated == 0 || all.Reordered == 0 {
		t.Errorf("the relay did not impair the transfer: %v", all)
	}
	if limit := DefaultMTU + 14; all.Largest > limit {
		t.Errorf("the relay saw a frame of %d bytes, more than the %d of a wire frame", all.Largest, limit)
	}
}
