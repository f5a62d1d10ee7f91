// Package nat is overlayd's natOutgoing: traffic from a natOutgoing pool to
// destinations outside every pool is re-originated from host sockets, so it
// leaves with the node's address and the replies come back without
// netfilter, the way slirp4netns and pasta serve rootless containers. TCP
// is terminated in a gVisor netstack; UDP datagrams go straight to a
// connected host socket per flow, read by one poller (the netstack only
// reassembles fragmented ones); ICMP echo is relayed as a real echo. Host sockets send with the TTL and DSCP of the
// workload's packet, and the ICMP errors they get (unreachable, time
// exceeded) go back to the workload from their sender, quoting the
// workload's packet, so traceroute through the NAT shows the hops beyond. Every flow is an entry of a connection-tracking
// table, with Linux conntrack's idle timeouts and limits per source and in
// all.
package nat

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Flow is one entry of the NAT table, as `overlayd nat` lists it.
type Flow struct {
	Proto string `json:"proto"` // "tcp", "udp", "icmp"
	// Inside is the workload's address and port, Dest the original
	// destination (ICMP: the echo identifier as both ports).
	Inside netip.AddrPort `json:"inside"`
	Dest   netip.AddrPort `json:"dest"`
	// Outside is the host socket's local address; zero until it is open.
	Outside netip.AddrPort `json:"outside"`
	// State is, for TCP, SYN_SENT, ESTABLISHED, FIN_WAIT or CLOSED; for UDP
	// UNREPLIED or ASSURED; empty for ICMP.
	State    string    `json:"state"`
	Created  time.Time `json:"created"`
	LastSeen time.Time `json:"lastSeen"`
	// Out counts the workload's packets toward the outside, In the replies;
	// bytes are whole IPv4 packets, as conntrack counts them.
	PacketsOut uint64 `json:"packetsOut"`
	BytesOut   uint64 `json:"bytesOut"`
	PacketsIn  uint64 `json:"packetsIn"`
	BytesIn    uint64 `json:"bytesIn"`
	// Expires is the time left before the entry leaves the table if
	// nothing moves.
	Expires time.Duration `json:"expires"`
}

// Timeouts are idle timeouts by protocol state. A zero field takes Linux
// conntrack's default (net.netfilter.nf_conntrack_*_timeout*).
type Timeouts struct {
	TCPEstablished time.Duration // 432000 s (5 days)
	TCPSynSent     time.Duration // 120 s; also bounds the outside dial
	TCPFinWait     time.Duration // 120 s: one side has closed
	TCPClose       time.Duration // 10 s: how long an ended flow stays listed
	UDPUnreplied   time.Duration // 30 s
	UDPAssured     time.Duration // 180 s: the outside has replied
	ICMP           time.Duration // 30 s
}

func (t Timeouts) withDefaults() Timeouts {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&t.TCPEstablished, 432000*time.Second)
	def(&t.TCPSynSent, 120*time.Second)
	def(&t.TCPFinWait, 120*time.Second)
	def(&t.TCPClose, 10*time.Second)
	def(&t.UDPUnreplied, 30*time.Second)
	def(&t.UDPAssured, 180*time.Second)
	def(&t.ICMP, 30*time.Second)
	return t
}

// shortest is the smallest timeout, which sets how often the table is swept.
func (t Timeouts) shortest() time.Duration {
	return min(t.TCPEstablished, t.TCPSynSent, t.TCPFinWait, t.TCPClose, t.UDPUnreplied, t.UDPAssured, t.ICMP)
}

// Reasons a flow is refused, the keys of Stats.Refused.
const (
	RefusedTableFull = "table_full"
	RefusedPerSource = "per_source_limit"
	// RefusedDial: the outside could not be reached (connection refused,
	// unreachable, timeout) or no host socket could be opened.
	RefusedDial = "dial_failed"
)

// proto is an IP protocol number the NAT tracks.
type proto uint8

const (
	protoICMP proto = 1
	protoTCP  proto = 6
	protoUDP  proto = 17
)

func (p proto) String() string {
	switch p {
	case protoTCP:
		return "tcp"
	case protoUDP:
		return "udp"
	case protoICMP:
		return "icmp"
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

// state is a flow's protocol state.
type state uint32

const (
	stateNone        state = iota // ICMP has no states
	stateSynSent                  // TCP: dialling the outside
	stateEstablished              // TCP: relaying
	stateFinWait                  // TCP: one direction has ended
	stateClosed                   // TCP: ended, listed until TCPClose passes
	stateUnreplied                // UDP: nothing back yet
	stateAssured                  // UDP: the outside has replied
)

var stateNames = [...]string{
	stateNone: "", stateSynSent: "SYN_SENT", stateEstablished: "ESTABLISHED", stateFinWait: "FIN_WAIT",
	stateClosed: "CLOSED", stateUnreplied: "UNREPLIED", stateAssured: "ASSURED",
}

func (s state) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("state-%d", uint32(s))
}

// flowKey identifies a flow by its inside tuple.
type flowKey struct {
	proto        proto
	inside, dest netip.AddrPort
}

func (k flowKey) String() string { return fmt.Sprintf("%s %s -> %s", k.proto, k.inside, k.dest) }

// entry is a flow's live record. The counters and lastSeen are atomics: the
// packet loops update them without the table's lock.
type entry struct {
	key     flowKey
	created time.Time
	// ctx ends when the flow leaves the table (expiry, NAT closed); its
	// goroutines close their sockets then.
	ctx    context.Context
	cancel context.CancelFunc

	state                atomic.Uint32
	lastSeen             atomic.Int64 // unix nanoseconds
	outside              atomic.Pointer[netip.AddrPort]
	packetsOut, bytesOut atomic.Uint64
	packetsIn, bytesIn   atomic.Uint64

	// synQuote is, for TCP, the workload's SYN up to 8 bytes past the IP
	// header: what an ICMP error about the flow must quote, sequence number
	// included, for the workload's stack to accept it. Set before the entry
	// is published, then read-only.
	synQuote []byte
	// marks are the TTL and TOS of the packet that opened the flow (TCP's
	// SYN, UDP's first datagram), for its host socket. Set before the entry
	// is published, then read-only.
	marks ipMarks
	// workloadSeqEnd is, for TCP, one past the last sequence number the
	// workload has sent (SYN and FIN count): a sequence number its stack
	// accepts in the quote of an ICMP error, being within its
	// SND.UNA..SND.NXT. Only the inbound loop writes it.
	workloadSeqEnd atomic.Uint32
	// echoRequests feeds an ICMP flow's sender; only the inbound loop
	// touches it.
	echoRequests chan echoRequest
	// relaying says a goroutine serves the (TCP) flow; set once.
	relaying atomic.Bool
	// udp is a UDP flow's host socket, opened with its first datagram;
	// only the inbound loop touches it.
	udp *udpSock
}

func (e *entry) getState() state { return state(e.state.Load()) }

func (e *entry) setOutside(a netip.AddrPort) { e.outside.Store(&a) }

func (e *entry) countOut(bytes int, now time.Time) {
	e.packetsOut.Add(1)
	e.bytesOut.Add(uint64(bytes))
	e.lastSeen.Store(now.UnixNano())
}

func (e *entry) countIn(bytes int, now time.Time) {
	e.packetsIn.Add(1)
	e.bytesIn.Add(uint64(bytes))
	e.lastSeen.Store(now.UnixNano())
}

// table holds the flows and enforces the limits. Its mutex is taken per
// flow (add, state change, removal) and as a read lock per packet lookup;
// the counters of a flow are atomics.
type table struct {
	// timeouts may be replaced while flows run (setLimits); readers load
	// it once per decision.
	timeouts atomic.Pointer[Timeouts]
	now      func() time.Time
	base     context.Context

	mu sync.RWMutex
	// maxFlows and maxPerSource are guarded by mu, which every new flow
	// takes anyway.
	maxFlows, maxPerSource int
	flows                  map[flowKey]*entry
	// live counts flows that are not CLOSED, in all and by source: ended
	// flows still listed do not hold a place against the limits. The
	// CLOSED ones are the rest, len(flows) - live.
	live      int
	perSource map[netip.Addr]int

	created, expired, ended atomic.Uint64
	refusedMu               sync.Mutex
	refused                 map[string]uint64
}

// newTable makes a table whose entries' contexts derive from base, and
// that reads the time from now (a fake clock in tests).
func newTable(base context.Context, maxFlows, maxPerSource int, t Timeouts, now func() time.Time) *table {
	tb := &table{
		maxFlows: maxFlows, maxPerSource: maxPerSource, now: now, base: base,
		flows: map[flowKey]*entry{}, perSource: map[netip.Addr]int{}, refused: map[string]uint64{},
	}
	td := t.withDefaults()
	tb.timeouts.Store(&td)
	return tb
}

func (t *table) getTimeouts() Timeouts { return *t.timeouts.Load() }

// setLimits replaces the limits and timeouts. Flows already in the table
// stay, even over a lowered limit: new ones are refused until enough have
// ended. New timeouts apply to every flow from the next sweep, counted from
// its last packet.
func (t *table) setLimits(maxFlows, maxPerSource int, to Timeouts) {
	td := to.withDefaults()
	t.mu.Lock()
	t.maxFlows, t.maxPerSource = maxFlows, maxPerSource
	t.mu.Unlock()
	t.timeouts.Store(&td)
}

func (t *table) refuse(reason string) {
	t.refusedMu.Lock()
	t.refused[reason]++
	t.refusedMu.Unlock()
}

// add makes a new flow's entry in state st, or returns the flow's entry if
// it is already live (fresh=false), or says which limit refuses it (and
// counts the refusal). A CLOSED entry with the same key gives way to the new
// flow, as conntrack lets a new SYN reopen a closed tuple.
func (t *table) add(k flowKey, st state) (e *entry, fresh bool, refused string) {
	return t.addWith(k, st, nil)
}

// addWith is add that lets init fill in a new entry before anyone else can
// see it.
func (t *table) addWith(k flowKey, st state, init func(*entry)) (e *entry, fresh bool, refused string) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if old, ok := t.flows[k]; ok {
		if old.getState() != stateClosed {
			return old, false, ""
		}
		t.dropLocked(old)
	}
	switch {
	case t.live >= t.maxFlows:
		refused = RefusedTableFull
	case t.perSource[k.inside.Addr()] >= t.maxPerSource:
		refused = RefusedPerSource
	}
	if refused != "" {
		t.refuse(refused)
		return nil, false, refused
	}
	e = &entry{key: k, created: now}
	e.ctx, e.cancel = context.WithCancel(t.base)
	e.state.Store(uint32(st))
	e.lastSeen.Store(now.UnixNano())
	if init != nil {
		init(e)
	}
	t.flows[k] = e
	t.live++
	t.perSource[k.inside.Addr()]++
	t.created.Add(1)
	return e, true, ""
}

func (t *table) lookup(k flowKey) *entry {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.flows[k]
}

// setState moves a live flow to st; moving to CLOSED ends it (see end).
// Other moves refresh lastSeen, so the new state's timeout counts from now.
func (t *table) setState(e *entry, st state) {
	if st == stateClosed {
		t.end(e)
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.flows[e.key] != e || e.getState() == stateClosed {
		return
	}
	e.state.Store(uint32(st))
	e.lastSeen.Store(t.now().UnixNano())
}

// end records that a flow has finished: it stops counting against the
// limits, its goroutines are told to stop, and it stays listed as CLOSED
// for TCPClose (TCP; other protocols leave at once), unless the table
// already lists as many ended flows as it may hold live ones.
func (t *table) end(e *entry) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.flows[e.key] != e || e.getState() == stateClosed {
		return
	}
	t.ended.Add(1)
	if e.key.proto != protoTCP || len(t.flows)-t.live >= t.maxFlows {
		t.dropLocked(e)
		return
	}
	t.releaseLocked(e)
	e.state.Store(uint32(stateClosed))
	e.lastSeen.Store(t.now().UnixNano())
	e.cancel()
}

// remove takes a flow out of the table at once, for a flow that never got
// going (its host socket could not be opened). It counts as ended, as a TCP
// flow whose dial failed does, so that every flow created is accounted
// live, ended or expired.
func (t *table) remove(e *entry) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.flows[e.key] == e {
		if e.getState() != stateClosed {
			t.ended.Add(1)
		}
		t.dropLocked(e)
	}
}

// releaseLocked gives back the flow's place against the limits.
func (t *table) releaseLocked(e *entry) {
	t.live--
	src := e.key.inside.Addr()
	if t.perSource[src]--; t.perSource[src] <= 0 {
		delete(t.perSource, src)
	}
}

func (t *table) dropLocked(e *entry) {
	delete(t.flows, e.key)
	if e.getState() != stateClosed {
		t.releaseLocked(e)
	}
	e.cancel()
}

// timeout is how long a flow in state st may idle.
func (to *Timeouts) timeout(st state, p proto) time.Duration {
	switch st {
	case stateSynSent:
		return to.TCPSynSent
	case stateEstablished:
		return to.TCPEstablished
	case stateFinWait:
		return to.TCPFinWait
	case stateClosed:
		return to.TCPClose
	case stateUnreplied:
		return to.UDPUnreplied
	case stateAssured:
		return to.UDPAssured
	}
	if p == protoICMP {
		return to.ICMP
	}
	return to.UDPUnreplied
}

// expire removes the flows idle for their state's timeout at now and stops
// them; it returns how many live flows expired (CLOSED ones leaving are not
// counted: they ended before).
func (t *table) expire(now time.Time) int {
	to := t.timeouts.Load()
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, e := range t.flows {
		st := e.getState()
		if now.Sub(time.Unix(0, e.lastSeen.Load())) < to.timeout(st, e.key.proto) {
			continue
		}
		if st != stateClosed {
			n++
		}
		t.dropLocked(e)
	}
	t.expired.Add(uint64(n))
	return n
}

// stopAll ends every flow, for Close; the live ones count as ended.
func (t *table) stopAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, e := range t.flows {
		if e.getState() != stateClosed {
			t.ended.Add(1)
		}
		t.dropLocked(e)
	}
}

func (t *table) snapshot() []Flow {
	now := t.now()
	to := t.timeouts.Load()
	t.mu.RLock()
	flows := make([]Flow, 0, len(t.flows))
	for _, e := range t.flows {
		st := e.getState()
		last := time.Unix(0, e.lastSeen.Load())
		f := Flow{
			Proto: e.key.proto.String(), Inside: e.key.inside, Dest: e.key.dest, State: st.String(),
			Created: e.created, LastSeen: last,
			PacketsOut: e.packetsOut.Load(), BytesOut: e.bytesOut.Load(),
			PacketsIn: e.packetsIn.Load(), BytesIn: e.bytesIn.Load(),
			Expires: max(0, to.timeout(st, e.key.proto)-now.Sub(last)),
		}
		if o := e.outside.Load(); o != nil {
			f.Outside = *o
		}
		flows = append(flows, f)
	}
	t.mu.RUnlock()
	slices.SortFunc(flows, func(a, b Flow) int { return a.Created.Compare(b.Created) })
	return flows
}

// Stats are the NAT's counters.
type Stats struct {
	// Flows counts the table's entries by "proto/state" ("tcp/ESTABLISHED",
	// "icmp/").
	Flows map[string]int `json:"flows"`
	// Created, Ended and Expired are totals since start: flows admitted,
	// flows that finished (TCP closed or reset, dial failed), and flows
	// removed because they idled past their timeout.
	Created uint64 `json:"created"`
	Ended   uint64 `json:"ended"`
	Expired uint64 `json:"expired"`
	// Refused counts flows refused, by reason (the Refused constants).
	Refused map[string]uint64 `json:"refused"`
	// Drops counts packets the NAT took and could not pass on, by reason
	// (the Drop constants).
	Drops map[string]uint64 `json:"drops"`
	// Ignored counts packets the NAT does not translate: malformed (a UDP
	// datagram with a bad checksum included), ICMP other than echo
	// requests, fragmented ICMP, and packets that arrive with TTL 0
	// (answered with time exceeded from the node).
	Ignored uint64 `json:"ignored"`
}

func (t *table) stats() Stats {
	s := Stats{Flows: map[string]int{}, Refused: map[string]uint64{},
		Created: t.created.Load(), Ended: t.ended.Load(), Expired: t.expired.Load()}
	t.mu.RLock()
	for _, e := range t.flows {
		s.Flows[e.key.proto.String()+"/"+e.getState().String()]++
	}
	t.mu.RUnlock()
	t.refusedMu.Lock()
	for k, v := range t.refused {
		s.Refused[k] = v
	}
	t.refusedMu.Unlock()
	return s
}

// FormatConntrack writes flows one per line, in the manner of `conntrack
// -L`: protocol name and number, the original direction (the workload to its
// destination) with its counters, the reply direction (the destination to
// the host socket) with its counters, then the state and the seconds left
// before expiry; a summary line ends the list.
func FormatConntrack(w io.Writer, flows []Flow) {
	for _, f := range flows {
		out := f.Outside
		if !out.IsValid() {
			out = netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
		}
		fmt.Fprintf(w, "%-4s %d ", f.Proto, protoNumber(f.Proto))
		if f.Proto == "icmp" {
			fmt.Fprintf(w, "src=%s dst=%s type=8 code=0 id=%d packets=%d bytes=%d src=%s dst=%s type=0 code=0 id=%d packets=%d bytes=%d",
				f.Inside.Addr(), f.Dest.Addr(), f.Inside.Port(), f.PacketsOut, f.BytesOut,
				f.Dest.Addr(), out.Addr(), out.Port(), f.PacketsIn, f.BytesIn)
		} else {
			fmt.Fprintf(w, "src=%s dst=%s sport=%d dport=%d packets=%d bytes=%d src=%s dst=%s sport=%d dport=%d packets=%d bytes=%d",
				f.Inside.Addr(), f.Dest.Addr(), f.Inside.Port(), f.Dest.Port(), f.PacketsOut, f.BytesOut,
				f.Dest.Addr(), out.Addr(), f.Dest.Port(), out.Port(), f.PacketsIn, f.BytesIn)
		}
		if f.State != "" {
			fmt.Fprintf(w, " %s", f.State)
		}
		fmt.Fprintf(w, " expires=%ds\n", int64(f.Expires.Seconds()))
	}
	fmt.Fprintf(w, "overlayd nat: %d flow entries\n", len(flows))
}

func protoNumber(name string) int {
	for _, p := range []proto{protoTCP, protoUDP, protoICMP} {
		if p.String() == name {
			return int(p)
		}
	}
	return 0
}
