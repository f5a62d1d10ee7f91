// Package dataplane is overlayd's data path: the packet loops between the
// TUN device and the underlay transports (conn.Transport), the lookup table
// they share, built from the plan's forwarding prefixes (plan.Dests), and
// the counters. It programs nothing in the kernel and exports no metrics:
// the daemon does both, from outside.
//
// Each direction is one loop that owns its buffers and moves a batch at a
// time: TUN to underlay (classify, encapsulate in place, send with
// sendmmsg) and, per transport, underlay to TUN (recvmmsg, check, decapsulate
// by re-slicing, write with GRO). The loops read the routing table through an
// atomic.Pointer, so a new plan is swapped in without a lock on the
// per-packet path.
package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/overlayd/overlayd/conn"
	"github.com/overlayd/overlayd/encap"
	"github.com/overlayd/overlayd/plan"
)

// Config is what a Router runs on.
type Config struct {
	Plan  *plan.Plan
	TUN   tun.Device
	VXLAN conn.Transport // nil when no pool uses VXLAN
	IPIP  conn.Transport // nil when no pool uses IP-in-IP
	// NAT receives the packets natOutgoing steers into the TUN: from a
	// natOutgoing pool to outside every pool. nil: no NAT, they are dropped.
	NAT    func(pkt []byte)
	Logger *slog.Logger
	// PathMTU asks the kernel for its path MTU toward a peer's underlay
	// address (nil: conn.PathMTU), and PathRecheck is how often a path
	// found smaller than the underlay is asked again (0: every 5 s).
	PathMTU     func(dst [4]byte) (int, error)
	PathRecheck time.Duration
	// Spin bounds how long a loop that has just moved traffic keeps
	// polling for more before it sleeps (see spin); 0: never.
	Spin time.Duration
}

// Router moves packets between the TUN device and the underlay.
type Router struct {
	tun   tun.Device
	nat   func(pkt []byte)
	log   *slog.Logger
	table atomic.Pointer[table]
	stats counters
	// bufSize is each data-path buffer's size: a TUN with offloads can hand
	// over and coalesce up to 64 KiB packets.
	bufSize int
	// pathNews carries to the path MTU watcher (pmtu.go) the address of
	// each peer a send to was refused as too big; pathProbe is how the
	// watcher asks the kernel, pathRecheck how often it asks again while
	// a path is smaller.
	pathNews    chan [4]byte
	pathProbe   func(dst [4]byte) (int, error)
	pathRecheck time.Duration
	spin        time.Duration

	// mu guards the transports and the loops' lifecycle; it is taken when
	// the plan changes or the router stops, never per packet.
	mu         sync.Mutex
	transports [numEncaps]conn.Transport
	peerStats  map[string]*peerCounters // by node name, kept across plans
	paths      map[[4]byte]*pathMTU     // by peer address, kept across plans
	running    bool
	stopped    bool
	loops      sync.WaitGroup
	loopFailed func(name string, err error)
}

// New makes a router; Run starts it.
func New(cfg Config) (*Router, error) {
	if cfg.Plan == nil || cfg.TUN == nil {
		return nil, errors.New("router: a plan and a TUN device are required")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Spin < 0 {
		return nil, fmt.Errorf("router: spin %v is negative", cfg.Spin)
	}
	r := &Router{tun: cfg.TUN, nat: cfg.NAT, log: log, bufSize: encap.Headroom + 65535, spin: cfg.Spin,
		pathNews: make(chan [4]byte, 16), pathProbe: cfg.PathMTU, pathRecheck: cfg.PathRecheck}
	if r.pathProbe == nil {
		r.pathProbe = conn.PathMTU
	}
	if r.pathRecheck <= 0 {
		r.pathRecheck = defaultPathRecheck
	}
	if err := r.Update(cfg.Plan, cfg.VXLAN, cfg.IPIP); err != nil {
		return nil, err
	}
	return r, nil
}

// Update swaps in a new plan, which the loops use from their next batch on.
// A transport the router did not have yet is added (its receive loop starts
// if the router runs); transports are never taken away, so packets in an
// encapsulation the new plan no longer sends are still received: a mode
// switch does not cut connections. nil leaves a transport as it is.
func (r *Router) Update(p *plan.Plan, vxlan, ipip conn.Transport) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return errors.New("router: stopped")
	}
	for _, add := range []struct {
		kind plan.Encap
		tr   conn.Transport
	}{{plan.EncapVXLAN, vxlan}, {plan.EncapIPIP, ipip}} {
		if add.tr == nil || r.transports[add.kind] != nil {
			continue
		}
		r.transports[add.kind] = add.tr
		if r.running {
			r.startUnderlayLoop(add.kind)
		}
	}
	if p.UsesVXLAN && r.transports[plan.EncapVXLAN] == nil {
		return errors.New("router: the plan uses VXLAN but there is no VXLAN transport")
	}
	if p.UsesIPIP && r.transports[plan.EncapIPIP] == nil {
		return errors.New("router: the plan uses IP-in-IP but there is no IP-in-IP transport")
	}
	if r.peerStats == nil {
		r.peerStats = map[string]*peerCounters{}
	}
	t := newTable(p, r.transports)
	paths := make(map[[4]byte]*pathMTU, len(t.peers))
	for _, pe := range t.peers {
		if r.peerStats[pe.name] == nil {
			r.peerStats[pe.name] = new(peerCounters)
		}
		pe.counters = r.peerStats[pe.name]
		// What was learned of the path to an address stays across plans;
		// the state of an address no peer has any longer is dropped.
		if pe.path = r.paths[pe.addr]; pe.path == nil {
			pe.path = new(pathMTU)
		}
		paths[pe.addr] = pe.path
	}
	r.paths = paths
	r.table.Store(t)
	r.filterSources(p)
	return nil
}

// filterSources has the kernel drop, at the transports' sockets, what no
// peer of plan p sent (filter.go in conn). It follows the table: a new
// peer's packets were dropped by the table's check until now anyway. A
// filter the kernel refuses leaves that check alone on guard.
func (r *Router) filterSources(p *plan.Plan) {
	peers := make([]netip.Addr, len(p.Peers))
	for i, pp := range p.Peers {
		peers[i] = pp.Addr
	}
	for kind, tr := range r.transports {
		f, ok := tr.(conn.SourceFilter)
		if !ok {
			continue
		}
		filtered, err := f.FilterSources(peers, p.VNI)
		switch {
		case err != nil:
			r.log.Warn("the kernel refused the underlay socket's source filter: forged packets are dropped after they are read", "encap", plan.Encap(kind), "err", err)
		case !filtered:
			r.log.Warn("too many peers for the underlay socket's source filter: unknown sources are dropped after they are read", "encap", plan.Encap(kind), "peers", len(peers))
		}
	}
}

// WriteTUN writes packets toward the workloads, for the NAT's replies:
// each bufs[i] holds one at bufs[i][encap.Headroom:], and the device may use
// the headroom in front of it, so nothing is copied; bufs is the caller's,
// kept from one call to the next, so nothing is allocated either. The
// device may change bufs' elements. Safe for concurrent use (the device
// serialises writes).
func (r *Router) WriteTUN(bufs [][]byte) error {
	_, err := r.tun.Write(bufs, encap.Headroom)
	return err
}

// HasTransport reports whether the router has the transport for an
// encapsulation.
func (r *Router) HasTransport(e plan.Encap) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.transports[e] != nil
}

// Plan returns the plan in use.
func (r *Router) Plan() *plan.Plan { return r.table.Load().plan }

// Stats returns a snapshot of the counters.
func (r *Router) Stats() Stats {
	s := r.stats.snapshot()
	s.Peers = map[string]PeerStats{}
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, c := range r.peerStats {
		s.Peers[name] = PeerStats{TxPackets: c.txPackets.Load(), TxBytes: c.txBytes.Load(), RxPackets: c.rxPackets.Load(), RxBytes: c.rxBytes.Load()}
	}
	s.SocketDrops = map[string]uint64{}
	for kind, tr := range r.transports {
		if f, ok := tr.(conn.DropCounter); ok {
			if n, err := f.SocketDrops(); err == nil {
				s.SocketDrops[plan.Encap(kind).String()] = n
			}
		}
	}
	t := r.table.Load()
	for _, pe := range t.peers {
		ps := s.Peers[pe.name]
		ps.PathMTU = t.plan.UnderlayMTU
		if m := int(pe.path.mtu.Load()); m != 0 {
			ps.PathMTU = m
		}
		s.Peers[pe.name] = ps
	}
	return s
}

// startUnderlayLoop runs the receive loop of a transport; r.mu is held.
func (r *Router) startUnderlayLoop(kind plan.Encap) {
	tr := r.transports[kind]
	r.loops.Go(func() {
		// The loop returns only on an error; closing the socket is the
		// normal way to stop it.
		if err := r.underlayLoop(tr, kind); !isClosed(err) {
			r.loopFailed(kind.String(), err)
		}
	})
}

// Run runs the loops until ctx is done or one fails, then closes the TUN and
// the transports so every loop returns, and reports the first failure.
func (r *Router) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		errOnce sync.Once
		first   error
	)
	r.mu.Lock()
	if r.running || r.stopped {
		r.mu.Unlock()
		return errors.New("router: Run called twice")
	}
	r.running = true
	r.loopFailed = func(name string, err error) {
		if ctx.Err() == nil {
			errOnce.Do(func() { first = fmt.Errorf("%s loop: %w", name, err) })
		}
		cancel()
	}
	r.loops.Go(func() {
		if err := r.tunLoop(); !isClosed(err) {
			r.loopFailed("tun", err)
		}
	})
	r.loops.Go(func() { r.watchPathMTUs(ctx) })
	for kind, tr := range r.transports {
		if tr != nil {
			r.startUnderlayLoop(plan.Encap(kind))
		}
	}
	r.mu.Unlock()

	<-ctx.Done()
	// Closing the devices is what unblocks loops waiting in a read.
	r.mu.Lock()
	r.stopped = true
	r.tun.Close()
	for _, tr := range r.transports {
		if tr != nil {
			tr.Close()
		}
	}
	r.mu.Unlock()
	r.loops.Wait()
	return first
}

func isClosed(err error) bool {
	return errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed)
}
