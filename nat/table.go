// Package nat is overlayd's natOutgoing: traffic from a natOutgoing pool to
// destinations outside every pool is terminated in a gVisor netstack and
// re-originated from host sockets, so it leaves with the node's address and
// the replies come back without netfilter or raw sockets, the way
// slirp4netns and pasta serve rootless containers. Every flow is an entry
// of the NAT table, with limits per source and in all.
package nat

import (
	"fmt"
	"io"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Flow is one connection in the NAT table, as `overlayd nat` lists it.
type Flow struct {
	Proto      string         `json:"proto"` // tcp, udp, icmp
	Inside     netip.AddrPort `json:"inside"`
	Dest       netip.AddrPort `json:"dest"`
	Outside    netip.AddrPort `json:"outside"`
	State      string         `json:"state"`
	Created    time.Time      `json:"created"`
	LastSeen   time.Time      `json:"lastSeen"`
	PacketsOut uint64         `json:"packetsOut"` // workload to outside
	BytesOut   uint64         `json:"bytesOut"`
	PacketsIn  uint64         `json:"packetsIn"` // replies
	BytesIn    uint64         `json:"bytesIn"`
	Expires    time.Duration  `json:"expires"`
}

// Timeouts are the idle timeouts of flows, Linux conntrack's by default.
type Timeouts struct {
	TCPEstablished time.Duration
	UDPUnreplied   time.Duration
	UDPAssured     time.Duration
	ICMP           time.Duration
}

func (t Timeouts) withDefaults() Timeouts {
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&t.TCPEstablished, 432000*time.Second) // nf_conntrack_tcp_timeout_established
	def(&t.UDPUnreplied, 30*time.Second)       // nf_conntrack_udp_timeout
	def(&t.UDPAssured, 180*time.Second)        // nf_conntrack_udp_timeout_stream
	def(&t.ICMP, 30*time.Second)               // nf_conntrack_icmp_timeout
	return t
}

// flowKey identifies a flow by its inside 5-tuple.
type flowKey struct {
	proto        string
	inside, dest netip.AddrPort
}

// entry is a flow's live state; counters are atomics because both relay
// directions update them.
type entry struct {
	key                  flowKey
	created              time.Time
	outside              atomic.Pointer[netip.AddrPort]
	state                atomic.Pointer[string]
	lastSeen             atomic.Int64 // unix nanoseconds
	packetsOut, bytesOut atomic.Uint64
	packetsIn, bytesIn   atomic.Uint64
}

func (e *entry) setState(s string) { e.state.Store(&s) }

func (e *entry) touch() { e.lastSeen.Store(time.Now().UnixNano()) }

func (e *entry) countOut(n int) {
	e.packetsOut.Add(1)
	e.bytesOut.Add(uint64(n))
	e.touch()
}

func (e *entry) countIn(n int) {
	e.packetsIn.Add(1)
	e.bytesIn.Add(uint64(n))
	e.touch()
}

// Refusal reasons.
const (
	RefusedTableFull = "table_full"
	RefusedPerSource = "per_source_limit"
	RefusedDial      = "dial_failed"
)

// table holds the flows and enforces the limits. A mutex is fine here: it
// is taken per flow, not per packet.
type table struct {
	maxFlows, maxPerSource int
	timeouts               Timeouts

	mu        sync.Mutex
	flows     map[flowKey]*entry
	perSource map[netip.Addr]int

	created atomic.Uint64
	expired atomic.Uint64
	refused sync.Map // reason -> *atomic.Uint64
}

func newTable(maxFlows, maxPerSource int, t Timeouts) *table {
	return &table{maxFlows: maxFlows, maxPerSource: maxPerSource, timeouts: t.withDefaults(),
		flows: map[flowKey]*entry{}, perSource: map[netip.Addr]int{}}
}

func (t *table) refuse(reason string) {
	c, _ := t.refused.LoadOrStore(reason, new(atomic.Uint64))
	c.(*atomic.Uint64).Add(1)
}

// add makes a flow's entry, or says which limit refuses it.
func (t *table) add(k flowKey, state string) (*entry, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.flows[k]; ok {
		return e, ""
	}
	if len(t.flows) >= t.maxFlows {
		t.refuse(RefusedTableFull)
		return nil, RefusedTableFull
	}
	if t.perSource[k.inside.Addr()] >= t.maxPerSource {
		t.refuse(RefusedPerSource)
		return nil, RefusedPerSource
	}
	e := &entry{key: k, created: time.Now()}
	e.setState(state)
	e.touch()
	t.flows[k] = e
	t.perSource[k.inside.Addr()]++
	t.created.Add(1)
	return e, ""
}

func (t *table) lookup(k flowKey) *entry {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.flows[k]
}

// remove drops a flow; expired says it ended by idling out.
func (t *table) remove(e *entry, expired bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.flows[e.key] != e {
		return
	}
	delete(t.flows, e.key)
	if t.perSource[e.key.inside.Addr()]--; t.perSource[e.key.inside.Addr()] <= 0 {
		delete(t.perSource, e.key.inside.Addr())
	}
	if expired {
		t.expired.Add(1)
	}
}

// timeout is a flow's idle timeout in its current state.
func (t *table) timeout(e *entry) time.Duration {
	switch e.key.proto {
	case "tcp":
		return t.timeouts.TCPEstablished
	case "udp":
		if e.packetsIn.Load() > 0 {
			return t.timeouts.UDPAssured
		}
		return t.timeouts.UDPUnreplied
	}
	return t.timeouts.ICMP
}

func (t *table) snapshot() []Flow {
	t.mu.Lock()
	entries := make([]*entry, 0, len(t.flows))
	for _, e := range t.flows {
		entries = append(entries, e)
	}
	t.mu.Unlock()
	now := time.Now()
	flows := make([]Flow, 0, len(entries))
	for _, e := range entries {
		last := time.Unix(0, e.lastSeen.Load())
		f := Flow{
			Proto: e.key.proto, Inside: e.key.inside, Dest: e.key.dest, State: *e.state.Load(),
			Created: e.created, LastSeen: last,
			PacketsOut: e.packetsOut.Load(), BytesOut: e.bytesOut.Load(),
			PacketsIn: e.packetsIn.Load(), BytesIn: e.bytesIn.Load(),
			Expires: max(0, t.timeout(e)-now.Sub(last)).Round(time.Second),
		}
		if o := e.outside.Load(); o != nil {
			f.Outside = *o
		}
		flows = append(flows, f)
	}
	sort.Slice(flows, func(i, j int) bool { return flows[i].Created.Before(flows[j].Created) })
	return flows
}

// FormatConntrack writes flows one per line, like `conntrack -L`.
func FormatConntrack(w io.Writer, flows []Flow) {
	for _, f := range flows {
		fmt.Fprintf(w, "%-4s %d src=%s dst=%s sport=%d dport=%d packets=%d bytes=%d src=%s dst=%s sport=%d dport=%d packets=%d bytes=%d %s expires=%s\n",
			f.Proto, protoNumber(f.Proto), f.Inside.Addr(), f.Dest.Addr(), f.Inside.Port(), f.Dest.Port(), f.PacketsOut, f.BytesOut,
			f.Dest.Addr(), f.Outside.Addr(), f.Dest.Port(), f.Outside.Port(), f.PacketsIn, f.BytesIn, f.State, f.Expires)
	}
	fmt.Fprintf(w, "overlayd nat: %d flow entries\n", len(flows))
}

func protoNumber(p string) int {
	switch p {
	case "tcp":
		return 6
	case "udp":
		return 17
	}
	return 1
}
