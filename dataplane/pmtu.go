package dataplane

import (
	"context"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/overlayd/overlayd/conn"
	"github.com/overlayd/overlayd/plan"
)

// Path MTU discovery for the underlay. A router between this node and a
// peer may have a smaller MTU than the links at either end. Its ICMP
// "fragmentation needed" teaches this node's kernel the smaller path MTU,
// and from then on the kernel refuses the outer packets that do not fit
// (conn.Message.TooBig). The router then asks the kernel for the path MTU
// toward that peer and answers the inner DF packets that would not fit with
// fragmentation needed of its own, carrying what does fit, as it does for
// the tunnel MTU: the workload's TCP shrinks its segments instead of
// retransmitting into a black hole. Inner packets without DF are sent on,
// and the kernel fragments their outer packets.

// defaultPathRecheck is how often the path MTU toward a peer found smaller
// than the underlay MTU is asked again, so that a path that grew back (the
// kernel forgot the smaller MTU) is used in full within this much of it.
const defaultPathRecheck = 5 * time.Second

// pathMTU is the kernel's path MTU toward one peer when it is smaller than
// the underlay MTU, 0 otherwise. The path MTU watcher writes it; the send
// loop reads it per packet, one atomic load. It is kept by peer address
// across plans.
type pathMTU struct{ mtu atomic.Int32 }

// innerLimit is the largest inner packet the tunnel to p carries in
// encapsulation e: static, the limit of the underlay MTU, or less when the
// path to p is smaller.
func (p *peer) innerLimit(e plan.Encap, static int) int {
	if p.path == nil {
		return static
	}
	if m := int(p.path.mtu.Load()); m != 0 {
		return min(static, m-e.Overhead())
	}
	return static
}

// noteTooBig tells the path MTU watcher about the peers whose packets the
// kernel refused as too big, once per run of messages to one peer. It never
// waits: a full queue means the watcher has news to read already.
func (r *Router) noteTooBig(msgs []conn.Message) {
	var last [4]byte
	for i := range msgs {
		if !msgs[i].TooBig || msgs[i].Addr == last {
			continue
		}
		last = msgs[i].Addr
		select {
		case r.pathNews <- last:
		default:
		}
	}
}

// watchPathMTUs asks the kernel for the path MTU toward a peer when a send
// to it was refused as too big, and asks again every pathRecheck for the
// peers whose path is smaller than the underlay, until ctx is done.
func (r *Router) watchPathMTUs(ctx context.Context) {
	tick := time.NewTicker(r.pathRecheck)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case addr := <-r.pathNews:
			r.learnPathMTU(addr)
		case <-tick.C:
			for _, addr := range r.smallerPaths() {
				r.learnPathMTU(addr)
			}
		}
	}
}

// smallerPaths are the peer addresses whose path MTU is below the underlay's.
func (r *Router) smallerPaths() [][4]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	var addrs [][4]byte
	for addr, pm := range r.paths {
		if pm.mtu.Load() != 0 {
			addrs = append(addrs, addr)
		}
	}
	return addrs
}

// learnPathMTU asks the kernel for the path MTU toward addr and keeps it
// for the send loop.
func (r *Router) learnPathMTU(addr [4]byte) {
	r.mu.Lock()
	pm := r.paths[addr]
	r.mu.Unlock()
	if pm == nil {
		return // no longer a peer
	}
	mtu, err := r.pathProbe(addr)
	if err != nil {
		r.log.Warn("asking the kernel for a path MTU failed", "peer", netip.AddrFrom4(addr), "err", err)
		return
	}
	underlay := r.table.Load().plan.UnderlayMTU
	if mtu >= underlay {
		mtu = 0
	}
	old := int(pm.mtu.Swap(int32(mtu)))
	if mtu == old {
		return
	}
	if mtu != 0 && (old == 0 || mtu < old) {
		r.stats.pathMTUsLearned.Add(1)
		r.log.Info("smaller path MTU toward a peer", "peer", netip.AddrFrom4(addr), "mtu", mtu, "underlayMTU", underlay)
		return
	}
	grown := mtu
	if grown == 0 {
		grown = underlay
	}
	r.log.Info("path MTU toward a peer grew", "peer", netip.AddrFrom4(addr), "mtu", grown, "underlayMTU", underlay)
}
