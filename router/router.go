// Package router is overlayd's data path: the packet loops between the TUN
// device and the underlay transports, the lookup table they share, and the
// kernel routes that steer traffic to them.
//
// Each direction is one loop that owns its buffers and moves a batch at a
// time: TUN to underlay (classify, encapsulate in place, send with
// sendmmsg) and, per transport, underlay to TUN (recvmmsg, check, decapsulate
// by re-slicing, write with GRO). The loops read the routing table through an
// atomic.Pointer, so a new plan is swapped in without a lock on the
// per-packet path.
package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/overlayd/overlayd/conn"
	"github.com/overlayd/overlayd/encap"
	"github.com/overlayd/overlayd/router/plan"
)

// Transport is an underlay socket with batched I/O (package conn).
type Transport interface {
	ReadBatch(msgs []conn.Message) (int, error)
	WriteBatch(msgs []conn.Message) (int, error)
	Close() error
}

// Config is what a Router runs on.
type Config struct {
	Plan   *plan.Plan
	TUN    tun.Device
	VXLAN  Transport // nil when no pool uses VXLAN
	IPIP   Transport // nil when no pool uses IP-in-IP
	Logger *slog.Logger
}

// Router moves packets between the TUN device and the underlay.
type Router struct {
	tun   tun.Device
	vxlan Transport
	ipip  Transport
	log   *slog.Logger
	table atomic.Pointer[table]
	stats counters
	// bufSize is each data-path buffer's size: a TUN with offloads can hand
	// over and coalesce up to 64 KiB packets.
	bufSize int
}

// New makes a router; Run starts it.
func New(cfg Config) (*Router, error) {
	if cfg.Plan == nil || cfg.TUN == nil {
		return nil, errors.New("router: a plan and a TUN device are required")
	}
	if cfg.Plan.UsesVXLAN && cfg.VXLAN == nil {
		return nil, errors.New("router: the plan uses VXLAN but no VXLAN transport was given")
	}
	if cfg.Plan.UsesIPIP && cfg.IPIP == nil {
		return nil, errors.New("router: the plan uses IP-in-IP but no IP-in-IP transport was given")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Router{tun: cfg.TUN, vxlan: cfg.VXLAN, ipip: cfg.IPIP, log: log, bufSize: encap.Headroom + 65535}
	r.table.Store(newTable(cfg.Plan))
	return r, nil
}

// SetPlan swaps in a new plan; the loops use it from their next batch on.
func (r *Router) SetPlan(p *plan.Plan) {
	r.table.Store(newTable(p))
}

// Plan returns the plan in use.
func (r *Router) Plan() *plan.Plan { return r.table.Load().plan }

// Stats returns a snapshot of the counters.
func (r *Router) Stats() Stats { return r.stats.snapshot() }

// Run runs the loops until ctx is done or one fails, then closes the TUN and
// the transports so every loop returns, and reports the first failure.
func (r *Router) Run(ctx context.Context) error {
	var (
		wg      sync.WaitGroup
		errOnce sync.Once
		first   error
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := func(name string, loop func() error) {
		wg.Go(func() {
			err := loop()
			if err != nil && ctx.Err() == nil && !isClosed(err) {
				errOnce.Do(func() { first = fmt.Errorf("%s loop: %w", name, err) })
			}
			cancel()
		})
	}
	start("tun", r.tunLoop)
	if r.vxlan != nil {
		start("vxlan", func() error { return r.underlayLoop(r.vxlan, plan.EncapVXLAN) })
	}
	if r.ipip != nil {
		start("ipip", func() error { return r.underlayLoop(r.ipip, plan.EncapIPIP) })
	}
	<-ctx.Done()
	// Closing the devices is what unblocks loops waiting in a read.
	r.tun.Close()
	if r.vxlan != nil {
		r.vxlan.Close()
	}
	if r.ipip != nil {
		r.ipip.Close()
	}
	wg.Wait()
	return first
}

func isClosed(err error) bool {
	return errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed)
}
