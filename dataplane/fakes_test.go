package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/conn"
	"github.com/overlayd/overlayd/encap"
	"github.com/overlayd/overlayd/plan"
)

// This file holds the in-memory world the packet loops run in under plain
// `go test`: a TUN device and underlay transports made of queues, a network
// joining the transports of several routers back to back, and a node that
// runs a Router on them. Nothing here needs root or a namespace.

// planFor builds node's plan from a cluster file's text. It is the one
// place the tests call config and plan, so a change of plan.Build's
// signature is adapted here alone.
func planFor(t testing.TB, clusterTOML, node string) *plan.Plan {
	t.Helper()
	c, err := config.Parse("cluster.toml", []byte(clusterTOML))
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.Build(c, node, 1500)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// queue is a FIFO between goroutines: push waits while the queue holds
// limit items or more (0: never), pop waits for at least one item. Items
// leave by being copied down, so a queue that has warmed up allocates
// nothing.
type queue[T any] struct {
	mu     sync.Mutex
	cond   *sync.Cond
	items  []T
	limit  int
	closed bool
}

func newQueue[T any](limit int) *queue[T] {
	q := &queue[T]{limit: limit}
	q.cond = sync.NewCond(&q.mu)
	return q
}

// push appends items, all at once so one pop can take them together; it
// reports false, dropping them, if the queue is closed.
func (q *queue[T]) push(items ...T) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.limit > 0 && len(q.items) >= q.limit && !q.closed {
		q.cond.Wait()
	}
	if q.closed {
		return false
	}
	q.items = append(q.items, items...)
	q.cond.Broadcast()
	return true
}

// pop waits for an item, then moves up to len(dst) of them into dst; it
// reports false once the queue is closed.
func (q *queue[T]) pop(dst []T) (int, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.items) == 0 && !q.closed {
		q.cond.Wait()
	}
	if q.closed {
		return 0, false
	}
	n := copy(dst, q.items)
	rest := copy(q.items, q.items[n:])
	clear(q.items[rest:])
	q.items = q.items[:rest]
	q.cond.Broadcast()
	return n, true
}

// closedNow reports whether close was called.
func (q *queue[T]) closedNow() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.closed
}

func (q *queue[T]) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	q.cond.Broadcast()
}

// storeMax raises *m to v if v is larger.
func storeMax(m *atomic.Int64, v int) {
	for {
		old := m.Load()
		if int64(v) <= old || m.CompareAndSwap(old, int64(v)) {
			return
		}
	}
}

// memTUN is a tun.Device in memory. What the kernel would route into the
// device is injected with inject and handed to Read, at most BatchSize
// packets per call; what the router writes toward the kernel is kept, as
// copies, for the test to read with written (or discarded, when discard
// is set, so that writing allocates nothing).
type memTUN struct {
	batch     int
	discard   bool
	in        *queue[[]byte]
	scratch   [][]byte // Read's, one caller at a time
	events    chan tun.Event
	closeOnce sync.Once

	readCalls atomic.Int64 // Read calls begun
	maxRead   atomic.Int64 // most packets one Read returned

	mu  sync.Mutex
	out [][]byte
}

func newMemTUN(batch int) *memTUN {
	return &memTUN{
		batch:   batch,
		in:      newQueue[[]byte](1024),
		scratch: make([][]byte, batch),
		events:  make(chan tun.Event),
	}
}

// inject queues packets for Read, all at once.
func (d *memTUN) inject(pkts ...[]byte) { d.in.push(pkts...) }

// written returns the packets the router wrote so far, in order.
func (d *memTUN) written() [][]byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([][]byte(nil), d.out...)
}

func (d *memTUN) File() *os.File { return nil }

func (d *memTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	d.readCalls.Add(1)
	if len(sizes) < len(bufs) {
		return 0, errors.New("memTUN: fewer sizes than buffers")
	}
	n, ok := d.in.pop(d.scratch[:min(len(bufs), d.batch)])
	if !ok {
		return 0, os.ErrClosed
	}
	for i, p := range d.scratch[:n] {
		d.scratch[i] = nil
		if offset+len(p) > len(bufs[i]) {
			// The batch is lost, as a real device's read would fail.
			return 0, fmt.Errorf("memTUN: a %d-byte packet does not fit a %d-byte buffer at offset %d", len(p), len(bufs[i]), offset)
		}
		sizes[i] = copy(bufs[i][offset:], p)
	}
	storeMax(&d.maxRead, n)
	return n, nil
}

func (d *memTUN) Write(bufs [][]byte, offset int) (int, error) {
	if d.in.closedNow() {
		return 0, os.ErrClosed
	}
	if d.discard {
		return len(bufs), nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, b := range bufs {
		d.out = append(d.out, append([]byte(nil), b[offset:]...))
	}
	return len(bufs), nil
}

func (d *memTUN) MTU() (int, error)        { return 1500, nil }
func (d *memTUN) Name() (string, error)    { return "mem0", nil }
func (d *memTUN) Events() <-chan tun.Event { return d.events }
func (d *memTUN) BatchSize() int           { return d.batch }
func (d *memTUN) Close() error {
	d.closeOnce.Do(func() {
		d.in.close()
		close(d.events)
	})
	return nil
}

// datagram is one packet on the in-memory underlay: the bytes a socket
// delivers (from the VXLAN header on for UDP, from the outer IPv4 header on
// for raw IP-in-IP), and where they came from.
type datagram struct {
	b    []byte
	from [4]byte
	port uint16
}

// sentMsg is a copy of one message a router sent.
type sentMsg struct {
	b        []byte
	to       [4]byte
	port     uint16
	flow     uint32
	fragment bool
}

// memTransport is a conn.Transport in memory: ReadBatch takes what was
// injected or delivered by the network; WriteBatch keeps a copy of every
// message (unless discard is set) and hands it to the network, if any, for
// the transport of the same kind at the destination address.
type memTransport struct {
	kind    plan.Encap
	addr    [4]byte
	port    uint16 // the source port of what it sends; 0 for IP-in-IP
	network *memNetwork
	discard bool
	// refuse makes WriteBatch refuse every message, as a socket does a
	// packet with no route.
	refuse bool
	// pathMTU, when set and not zero, is the kernel's path MTU toward every
	// peer: WriteBatch refuses, marked TooBig, an outer packet over it that
	// may not be fragmented, as the sockets do.
	pathMTU *atomic.Int32

	// socketDrops is what SocketDrops reports, as a socket's kernel count.
	socketDrops atomic.Uint64

	in        *queue[datagram]
	scratch   []datagram
	readCalls atomic.Int64
	maxRead   atomic.Int64

	mu   sync.Mutex
	sent []sentMsg
}

func newMemTransport(kind plan.Encap, addr [4]byte, port uint16) *memTransport {
	return &memTransport{kind: kind, addr: addr, port: port, in: newQueue[datagram](0), scratch: make([]datagram, conn.MaxBatch)}
}

// SocketDrops implements conn.DropCounter.
func (tr *memTransport) SocketDrops() (uint64, error) { return tr.socketDrops.Load(), nil }

// inject queues datagrams for ReadBatch, all at once.
func (tr *memTransport) inject(ds ...datagram) { tr.in.push(ds...) }

// sentMsgs returns copies of what the router sent so far, in order.
func (tr *memTransport) sentMsgs() []sentMsg {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]sentMsg(nil), tr.sent...)
}

func (tr *memTransport) ReadBatch(msgs []conn.Message) (int, error) {
	tr.readCalls.Add(1)
	n, ok := tr.in.pop(tr.scratch[:min(len(msgs), conn.MaxBatch)])
	if !ok {
		return 0, fmt.Errorf("memTransport: %w", net.ErrClosed)
	}
	for i, d := range tr.scratch[:n] {
		tr.scratch[i] = datagram{}
		m := &msgs[i]
		m.N = copy(m.Buf, d.b)
		m.Truncated = len(d.b) > len(m.Buf)
		m.Addr, m.Port = d.from, d.port
	}
	storeMax(&tr.maxRead, n)
	return n, nil
}

func (tr *memTransport) WriteBatch(msgs []conn.Message) (int, error) {
	if tr.in.closedNow() {
		return 0, fmt.Errorf("memTransport: %w", net.ErrClosed)
	}
	if tr.refuse {
		return 0, errors.New("memTransport: no route to host")
	}
	refused := 0
	for i := range msgs {
		msgs[i].TooBig = tr.tooBig(&msgs[i])
		if msgs[i].TooBig {
			refused++
		}
	}
	if tr.discard {
		return len(msgs) - refused, refusedErr(refused)
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, m := range msgs {
		if m.TooBig {
			continue
		}
		b := append([]byte(nil), m.Buf...)
		tr.sent = append(tr.sent, sentMsg{b: b, to: m.Addr, port: m.Port, flow: m.Flow, fragment: m.Fragment})
		if tr.network != nil {
			tr.network.deliver(tr.kind, m.Addr, datagram{b: b, from: tr.addr, port: tr.port})
		}
	}
	return len(msgs) - refused, refusedErr(refused)
}

// tooBig reports whether the kernel would refuse m as over the path MTU:
// the UDP socket sends what is not marked Fragment with DF, the raw socket
// what its header says.
func (tr *memTransport) tooBig(m *conn.Message) bool {
	if tr.pathMTU == nil {
		return false
	}
	mtu := int(tr.pathMTU.Load())
	switch tr.kind {
	case plan.EncapVXLAN:
		return mtu != 0 && len(m.Buf)+encap.OuterIPv4UDPLen > mtu && !m.Fragment
	default:
		return mtu != 0 && len(m.Buf) > mtu && encap.IPv4DF(m.Buf)
	}
}

func refusedErr(n int) error {
	if n == 0 {
		return nil
	}
	return fmt.Errorf("memTransport: %d messages: %w", n, syscall.EMSGSIZE)
}

func (tr *memTransport) Close() error {
	tr.in.close()
	return nil
}

// memNetwork is the underlay joining memTransports: a message sent to an
// address reaches the transport of the same encapsulation there, or is
// lost if there is none.
type memNetwork struct {
	mu   sync.Mutex
	ends map[netEnd]*memTransport
}

type netEnd struct {
	kind plan.Encap
	addr [4]byte
}

func newMemNetwork() *memNetwork { return &memNetwork{ends: map[netEnd]*memTransport{}} }

func (n *memNetwork) attach(tr *memTransport) {
	n.mu.Lock()
	defer n.mu.Unlock()
	tr.network = n
	n.ends[netEnd{tr.kind, tr.addr}] = tr
}

func (n *memNetwork) deliver(kind plan.Encap, to [4]byte, d datagram) {
	n.mu.Lock()
	tr := n.ends[netEnd{kind, to}]
	n.mu.Unlock()
	if tr != nil {
		tr.inject(d)
	}
}

// testNode is one router with its in-memory TUN and transports.
type testNode struct {
	name        string
	addr        [4]byte
	r           *Router
	tun         *memTUN
	vxlan, ipip *memTransport
	nat         *natSink // nil: the router has no NAT
}

// nodeOpts vary a node from the defaults: a TUN batch of 16, a NAT that
// records what it is given, writes and sends kept for the test to read.
type nodeOpts struct {
	tunBatch int
	noNAT    bool
	discard  bool // the TUN, transports and NAT discard what they are given
	// pathMTU, when set, is the path MTU toward every peer, for the
	// transports and the router's probe alike (0: the underlay's); the
	// router asks again every pathRecheck.
	pathMTU     *atomic.Int32
	pathRecheck time.Duration
}

// natSink is a Config.NAT that keeps copies of the packets it is given,
// unless told not to.
type natSink struct {
	mu   sync.Mutex
	pkts [][]byte
	keep bool
}

func (s *natSink) handle(pkt []byte) {
	if !s.keep {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pkts = append(s.pkts, append([]byte(nil), pkt...))
}

func (s *natSink) packets() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.pkts...)
}

// newNode makes node p.Node's router on the network (nil: its transports
// are on no network, and what it sends goes nowhere), not yet running: the
// test may queue packets first, then call start.
func newNode(t testing.TB, network *memNetwork, p *plan.Plan, o nodeOpts) *testNode {
	t.Helper()
	if o.tunBatch == 0 {
		o.tunBatch = 16
	}
	addr := p.Address.Addr().As4()
	n := &testNode{
		name:  p.Node,
		addr:  addr,
		tun:   newMemTUN(o.tunBatch),
		vxlan: newMemTransport(plan.EncapVXLAN, addr, p.VXLANPort),
		ipip:  newMemTransport(plan.EncapIPIP, addr, 0),
	}
	n.tun.discard, n.vxlan.discard, n.ipip.discard = o.discard, o.discard, o.discard
	if network != nil {
		network.attach(n.vxlan)
		network.attach(n.ipip)
	}
	cfg := Config{Plan: p, TUN: n.tun, VXLAN: n.vxlan, IPIP: n.ipip, PathRecheck: o.pathRecheck}
	if o.pathMTU != nil {
		n.vxlan.pathMTU, n.ipip.pathMTU = o.pathMTU, o.pathMTU
		cfg.PathMTU = func([4]byte) (int, error) {
			if m := int(o.pathMTU.Load()); m != 0 {
				return m, nil
			}
			return p.UnderlayMTU, nil
		}
	}
	if !o.noNAT {
		n.nat = &natSink{keep: !o.discard}
		cfg.NAT = n.nat.handle
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	n.r = r
	return n
}

// start runs the router until the test ends; Run must then return nil.
func (n *testNode) start(t testing.TB) {
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- n.r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-runErr:
			if err != nil {
				t.Errorf("%s: Run returned %v, want nil after a normal stop", n.name, err)
			}
		case <-time.After(waitLimit):
			t.Errorf("%s: Run did not return within %v of the stop", n.name, waitLimit)
		}
	})
}

// startNode is newNode then start.
func startNode(t testing.TB, network *memNetwork, p *plan.Plan, o nodeOpts) *testNode {
	n := newNode(t, network, p, o)
	n.start(t)
	return n
}

// waitLimit bounds every wait for the loops: far beyond what they need, so
// a slow machine is no failure, while a lost packet fails in bounded time.
const waitLimit = 20 * time.Second

// eventually polls cond until it holds, failing the test with describe's
// account of the state if it does not within waitLimit.
func eventually(t testing.TB, cond func() bool, describe func() string) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting after %v: %s", waitLimit, describe())
		}
		time.Sleep(time.Millisecond)
	}
}
