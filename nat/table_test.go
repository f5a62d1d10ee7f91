package nat

import (
	"bytes"
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newFakeTable(maxFlows, perSource int, t Timeouts) (*table, *fakeClock) {
	clk := &fakeClock{t: time.Date(2026, 11, 25, 9, 0, 0, 0, time.UTC)}
	return newTable(context.Background(), maxFlows, perSource, t, clk.now), clk
}

func key(p proto, src string, sport uint16) flowKey {
	return flowKey{proto: p, inside: netip.AddrPortFrom(netip.MustParseAddr(src), sport),
		dest: netip.MustParseAddrPort("198.18.3.10:80")}
}

func TestTableLimits(t *testing.T) {
	tests := []struct {
		name       string
		max, per   int
		adds       []flowKey
		wantRefuse string // reason the last add is refused; "" if admitted
	}{
		{"under both limits", 10, 10, []flowKey{key(protoTCP, "10.1.0.5", 1), key(protoTCP, "10.1.0.5", 2)}, ""},
		{"the per-source limit refuses the source's next flow", 10, 2,
			[]flowKey{key(protoTCP, "10.1.0.5", 1), key(protoUDP, "10.1.0.5", 2), key(protoTCP, "10.1.0.5", 3)}, RefusedPerSource},
		{"another source is not held back by a full one", 10, 2,
			[]flowKey{key(protoTCP, "10.1.0.5", 1), key(protoTCP, "10.1.0.5", 2), key(protoTCP, "10.1.0.6", 3)}, ""},
		{"the table limit counts every source", 2, 10,
			[]flowKey{key(protoTCP, "10.1.0.5", 1), key(protoUDP, "10.1.0.6", 2), key(protoICMP, "10.1.0.7", 3)}, RefusedTableFull},
		{"the same flow twice is one entry", 1, 1, []flowKey{key(protoUDP, "10.1.0.5", 1), key(protoUDP, "10.1.0.5", 1)}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tb, _ := newFakeTable(tc.max, tc.per, Timeouts{})
			var refused string
			for _, k := range tc.adds {
				_, _, refused = tb.add(k, stateSynSent)
			}
			if refused != tc.wantRefuse {
				t.Errorf("last add refused with %q, want %q", refused, tc.wantRefuse)
			}
			if got := tb.stats().Refused[tc.wantRefuse]; tc.wantRefuse != "" && got != 1 {
				t.Errorf("refusals counted for %s: %d, want 1", tc.wantRefuse, got)
			}
		})
	}
}

func TestTableEndFreesTheSource(t *testing.T) {
	tests := []struct {
		name string
		done func(tb *table, e *entry)
	}{
		{"the flow ended", func(tb *table, e *entry) { tb.end(e) }},
		{"the flow was removed", func(tb *table, e *entry) { tb.remove(e) }},
		{"the flow expired", func(tb *table, e *entry) { tb.expire(tb.now().Add(time.Hour)) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tb, _ := newFakeTable(10, 1, Timeouts{UDPUnreplied: time.Minute})
			e, _, _ := tb.add(key(protoUDP, "10.1.0.5", 1), stateUnreplied)
			if _, _, r := tb.add(key(protoUDP, "10.1.0.5", 2), stateUnreplied); r != RefusedPerSource {
				t.Fatalf("second flow of the source: %q, want refused", r)
			}
			tc.done(tb, e)
			if _, _, r := tb.add(key(protoUDP, "10.1.0.5", 2), stateUnreplied); r != "" {
				t.Errorf("after the first flow left: refused %q, want admitted", r)
			}
			if e.ctx.Err() == nil {
				t.Error("the first flow's context is still live: its sockets would stay open")
			}
		})
	}
}

// TestTableStates walks flows through their states on a fake clock and
// checks each state's timeout decides when the flow leaves.
func TestTableStates(t *testing.T) {
	tm := Timeouts{TCPEstablished: 100 * time.Second, TCPSynSent: 20 * time.Second, TCPFinWait: 30 * time.Second,
		TCPClose: 5 * time.Second, UDPUnreplied: 10 * time.Second, UDPAssured: 60 * time.Second, ICMP: 15 * time.Second}
	type step struct {
		to      state         // the state to move to first (stateNone: stay)
		idle    time.Duration // then this long without a packet
		present bool          // is the flow still listed after expiry ran
		state   string        // and in which state
	}
	tests := []struct {
		name  string
		proto proto
		start state
		steps []step
	}{
		{"a SYN_SENT flow expires after TCPSynSent", protoTCP, stateSynSent, []step{
			{idle: 19 * time.Second, present: true, state: "SYN_SENT"},
			{idle: time.Second, present: false},
		}},
		{"ESTABLISHED lives on TCPEstablished", protoTCP, stateSynSent, []step{
			{to: stateEstablished, idle: 99 * time.Second, present: true, state: "ESTABLISHED"},
			{idle: time.Second, present: false},
		}},
		{"FIN_WAIT has its own shorter timeout", protoTCP, stateSynSent, []step{
			{to: stateEstablished, idle: 50 * time.Second, present: true, state: "ESTABLISHED"},
			{to: stateFinWait, idle: 29 * time.Second, present: true, state: "FIN_WAIT"},
			{idle: time.Second, present: false},
		}},
		{"an ended TCP flow stays listed CLOSED for TCPClose", protoTCP, stateSynSent, []step{
			{to: stateEstablished, present: true, state: "ESTABLISHED"},
			{to: stateClosed, idle: 4 * time.Second, present: true, state: "CLOSED"},
			{idle: time.Second, present: false},
		}},
		{"UDP unreplied expires after UDPUnreplied", protoUDP, stateUnreplied, []step{
			{idle: 9 * time.Second, present: true, state: "UNREPLIED"},
			{idle: time.Second, present: false},
		}},
		{"a reply makes UDP ASSURED with the longer timeout", protoUDP, stateUnreplied, []step{
			{to: stateAssured, idle: 59 * time.Second, present: true, state: "ASSURED"},
			{idle: time.Second, present: false},
		}},
		{"an ended UDP flow leaves at once", protoUDP, stateUnreplied, []step{
			{to: stateClosed, present: false},
		}},
		{"ICMP expires after ICMP", protoICMP, stateNone, []step{
			{idle: 14 * time.Second, present: true, state: ""},
			{idle: time.Second, present: false},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tb, clk := newFakeTable(10, 10, tm)
			e, _, _ := tb.add(key(tc.proto, "10.1.0.5", 1), tc.start)
			for i, s := range tc.steps {
				if s.to != stateNone {
					tb.setState(e, s.to)
				}
				clk.advance(s.idle)
				tb.expire(clk.now())
				flows := tb.snapshot()
				if present := len(flows) == 1; present != s.present {
					t.Fatalf("step %d: listed %v, want %v (%+v)", i, present, s.present, flows)
				}
				if s.present && flows[0].State != s.state {
					t.Errorf("step %d: state %q, want %q", i, flows[0].State, s.state)
				}
			}
		})
	}
}

func TestTableCountsExpiredAndEnded(t *testing.T) {
	tb, clk := newFakeTable(10, 10, Timeouts{UDPUnreplied: 10 * time.Second, TCPClose: 5 * time.Second})
	tb.add(key(protoUDP, "10.1.0.5", 1), stateUnreplied)
	tcp, _, _ := tb.add(key(protoTCP, "10.1.0.5", 2), stateEstablished)
	tb.end(tcp)
	clk.advance(time.Minute)
	if n := tb.expire(clk.now()); n != 1 {
		t.Errorf("expire reported %d flows, want the UDP one (the CLOSED one had already ended)", n)
	}
	s := tb.stats()
	if s.Created != 2 || s.Expired != 1 || s.Ended != 1 || len(tb.snapshot()) != 0 {
		t.Errorf("created %d expired %d ended %d listed %d, want 2, 1, 1, 0", s.Created, s.Expired, s.Ended, len(tb.snapshot()))
	}
}

// TestTableAccountsEveryFlow: however a flow leaves (ended, expired,
// removed when its socket could not be opened, stopped by Close), it is
// counted once, so that created = listed live + ended + expired.
func TestTableAccountsEveryFlow(t *testing.T) {
	tb, clk := newFakeTable(10, 10, Timeouts{UDPUnreplied: 10 * time.Second, TCPClose: 5 * time.Second})
	ended, _, _ := tb.add(key(protoTCP, "10.1.0.5", 1), stateEstablished)
	tb.end(ended)
	tb.add(key(protoUDP, "10.1.0.5", 2), stateUnreplied)
	clk.advance(time.Minute)
	tb.expire(clk.now())
	removed, _, _ := tb.add(key(protoUDP, "10.1.0.5", 3), stateUnreplied)
	tb.remove(removed)
	tb.add(key(protoTCP, "10.1.0.5", 4), stateEstablished)
	closed, _, _ := tb.add(key(protoTCP, "10.1.0.5", 5), stateEstablished)
	tb.end(closed) // listed CLOSED until Close: ended once, not twice
	tb.stopAll()
	s := tb.stats()
	if s.Created != 5 || s.Ended != 4 || s.Expired != 1 || len(tb.snapshot()) != 0 {
		t.Errorf("created %d ended %d expired %d listed %d, want 5, 4, 1, 0", s.Created, s.Ended, s.Expired, len(tb.snapshot()))
	}
}

func TestTableActivityPostponesExpiry(t *testing.T) {
	tb, clk := newFakeTable(10, 10, Timeouts{UDPUnreplied: 10 * time.Second})
	e, _, _ := tb.add(key(protoUDP, "10.1.0.5", 1), stateUnreplied)
	for range 5 {
		clk.advance(8 * time.Second)
		e.countOut(100, clk.now())
		tb.expire(clk.now())
	}
	flows := tb.snapshot()
	if len(flows) != 1 {
		t.Fatal("a flow with a packet every 8 s expired on a 10 s timeout")
	}
	if flows[0].Expires != 10*time.Second || flows[0].PacketsOut != 5 || flows[0].BytesOut != 500 {
		t.Errorf("flow %+v: want 10s left and 5 packets, 500 bytes out", flows[0])
	}
}

func TestClosedEntryGivesWayToANewFlow(t *testing.T) {
	tb, _ := newFakeTable(10, 1, Timeouts{})
	k := key(protoTCP, "10.1.0.5", 40000)
	old, _, _ := tb.add(k, stateEstablished)
	tb.end(old)
	e, fresh, refused := tb.add(k, stateSynSent)
	if refused != "" || !fresh || e == old {
		t.Fatalf("a new SYN on a CLOSED tuple: fresh %v refused %q, want a new entry", fresh, refused)
	}
	if flows := tb.snapshot(); len(flows) != 1 || flows[0].State != "SYN_SENT" {
		t.Errorf("table %+v, want only the new SYN_SENT flow", flows)
	}
}

func TestClosedEntriesAreBounded(t *testing.T) {
	tb, _ := newFakeTable(2, 10, Timeouts{})
	for i := range 5 {
		e, _, refused := tb.add(key(protoTCP, "10.1.0.5", uint16(i)), stateEstablished)
		if refused != "" {
			t.Fatalf("flow %d refused (%s): ended flows must not hold places", i, refused)
		}
		tb.end(e)
	}
	if n := len(tb.snapshot()); n != 2 {
		t.Errorf("%d CLOSED entries listed, want at most MaxFlows (2)", n)
	}
}

func TestFormatConntrack(t *testing.T) {
	tb, clk := newFakeTable(10, 10, Timeouts{})
	tcp, _, _ := tb.add(key(protoTCP, "10.1.0.5", 40000), stateEstablished)
	tcp.setOutside(netip.MustParseAddrPort("198.18.3.1:51000"))
	tcp.countOut(100, clk.now())
	tcp.countIn(200, clk.now())
	clk.advance(time.Second)
	ping, _, _ := tb.add(flowKey{protoICMP, netip.MustParseAddrPort("10.1.0.5:7"), netip.MustParseAddrPort("198.18.3.10:7")}, stateNone)
	ping.setOutside(netip.MustParseAddrPort("198.18.3.1:3"))
	clk.advance(time.Second)
	tb.add(key(protoUDP, "10.1.0.6", 5353), stateUnreplied) // no socket yet
	var b bytes.Buffer
	FormatConntrack(&b, tb.snapshot())
	want := []string{
		"tcp  6 src=10.1.0.5 dst=198.18.3.10 sport=40000 dport=80 packets=1 bytes=100 src=198.18.3.10 dst=198.18.3.1 sport=80 dport=51000 packets=1 bytes=200 ESTABLISHED expires=431998s",
		"icmp 1 src=10.1.0.5 dst=198.18.3.10 type=8 code=0 id=7 packets=0 bytes=0 src=198.18.3.10 dst=198.18.3.1 type=0 code=0 id=3 packets=0 bytes=0 expires=29s",
		"udp  17 src=10.1.0.6 dst=198.18.3.10 sport=5353 dport=80 packets=0 bytes=0 src=198.18.3.10 dst=0.0.0.0 sport=80 dport=0 packets=0 bytes=0 UNREPLIED expires=30s",
		"overlayd nat: 3 flow entries",
	}
	got := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	if len(got) != len(want) {
		t.Fatalf("got %d lines, want %d:\n%s", len(got), len(want), b.String())
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d:\n got %s\nwant %s", i, got[i], want[i])
		}
	}
}

func TestTimeoutsDefaultToConntrack(t *testing.T) {
	got := Timeouts{UDPUnreplied: 5 * time.Second}.withDefaults()
	want := Timeouts{TCPEstablished: 432000 * time.Second, TCPSynSent: 120 * time.Second, TCPFinWait: 120 * time.Second,
		TCPClose: 10 * time.Second, UDPUnreplied: 5 * time.Second, UDPAssured: 180 * time.Second, ICMP: 30 * time.Second}
	if got != want {
		t.Errorf("%+v\nwant %+v", got, want)
	}
	if got.shortest() != 5*time.Second {
		t.Errorf("shortest %s, want 5s", got.shortest())
	}
}

func BenchmarkTableLookup(b *testing.B) {
	tb, _ := newFakeTable(1<<20, 1<<20, Timeouts{})
	keys := make([]flowKey, 10000)
	for i := range keys {
		keys[i] = flowKey{protoUDP, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), uint16(i)),
			netip.MustParseAddrPort("198.18.3.10:53")}
		tb.add(keys[i], stateUnreplied)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if tb.lookup(keys[i%len(keys)]) == nil {
			b.Fatal("missing flow")
		}
		i++
	}
}

// TestTableSetLimits: new limits refuse new flows but keep the ones over
// them; new timeouts apply to flows already in the table.
func TestTableSetLimits(t *testing.T) {
	tb, clk := newFakeTable(10, 10, Timeouts{})
	for port := range uint16(3) {
		if _, _, refused := tb.add(key(protoUDP, "10.1.0.5", port+1), stateUnreplied); refused != "" {
			t.Fatalf("flow %d refused: %s", port+1, refused)
		}
	}
	tb.setLimits(10, 2, Timeouts{UDPUnreplied: 5 * time.Second})
	if got := len(tb.snapshot()); got != 3 {
		t.Errorf("after lowering the per-source limit to 2 the table holds %d flows, want the 3 it had", got)
	}
	if _, _, refused := tb.add(key(protoUDP, "10.1.0.5", 4), stateUnreplied); refused != RefusedPerSource {
		t.Errorf("a 4th flow over the lowered limit: refused %q, want %q", refused, RefusedPerSource)
	}
	if _, _, refused := tb.add(key(protoUDP, "10.1.0.6", 1), stateUnreplied); refused != "" {
		t.Errorf("another source's flow: refused %q", refused)
	}
	tb.setLimits(4, 10, Timeouts{UDPUnreplied: 5 * time.Second})
	if _, _, refused := tb.add(key(protoUDP, "10.1.0.5", 5), stateUnreplied); refused != RefusedTableFull {
		t.Errorf("a 5th flow in a table lowered to 4: refused %q, want %q", refused, RefusedTableFull)
	}
	clk.advance(6 * time.Second)
	if got := tb.expire(clk.now()); got != 4 {
		t.Errorf("6 s idle with a UDP timeout set to 5 s: %d flows expired, want 4", got)
	}
	if got := tb.getTimeouts(); got.UDPUnreplied != 5*time.Second || got.TCPEstablished != 432000*time.Second {
		t.Errorf("timeouts %+v: want UDPUnreplied 5 s and conntrack's for the zero fields", got)
	}
}
