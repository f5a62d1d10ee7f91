package etcd

import (
	"log/slog"
	"net/netip"

	"github.com/overlayd/overlayd/datastore/calico"
	"github.com/overlayd/overlayd/pool"
)

// ipamPool is a datastore pool validated once per EnsureBlocks call.
type ipamPool struct {
	stored *calico.IPPool
	pool   *pool.IPPool
}

// validPools validates the datastore's pools with Calico's rules, keeping
// their order; an invalid pool is logged and skipped, never used.
func validPools(pools []*calico.IPPool, log *slog.Logger) []ipamPool {
	valid := make([]ipamPool, 0, len(pools))
	for _, p := range pools {
		v, err := p.Pool()
		if err != nil {
			log.Warn("IPAM skips an invalid IPPool", "pool", p.Metadata.Name, "err", err)
			continue
		}
		valid = append(valid, ipamPool{stored: p, pool: v})
	}
	return valid
}

// claimable reports whether a node with labels may claim a new block of the
// pool: enabled, automatic assignment (not a "Manual" pool), a nodeSelector
// that selects it, and a use a node's block serves (workloads or the tunnel
// address, not LoadBalancer only).
func (p ipamPool) claimable(labels map[string]string) bool {
	return !p.pool.Disabled && p.stored.AutoAssign() && p.pool.NodeSelector.Matches(labels) &&
		(p.stored.Allows(calico.AllowedUseWorkload) || p.stored.Allows(calico.AllowedUseTunnel))
}

// tunnelType is the allocation type of a tunnel address in the pool, for a
// node with labels, as calico-node's determineEnabledPoolCIDRs decides it:
// the pool allows tunnel addresses, selects the node, is enabled and has
// VXLAN (AttrTypeVXLAN) or IP-in-IP (AttrTypeIPIP) on. ok is false when the
// pool gives no tunnel address.
func (p ipamPool) tunnelType(labels map[string]string) (attrType string, ok bool) {
	if p.pool.Disabled || !p.stored.Allows(calico.AllowedUseTunnel) || !p.pool.NodeSelector.Matches(labels) {
		return "", false
	}
	switch {
	case p.pool.VXLANMode != pool.ModeNever:
		return calico.AttrTypeVXLAN, true
	case p.pool.IPIPMode != pool.ModeNever:
		return calico.AttrTypeIPIP, true
	}
	return "", false
}

// firstClaimable is the pool a node claims its block from: the first
// claimable one, as the cluster file's allocation picks it; nil when none
// selects the node (it then holds no block and takes part in the overlay
// without workloads).
func firstClaimable(pools []ipamPool, labels map[string]string) *ipamPool {
	for i := range pools {
		if pools[i].claimable(labels) {
			return &pools[i]
		}
	}
	return nil
}

// poolOf is the pool that contains block, nil when none does (the pool was
// deleted; the block keeps routing until it is released).
func poolOf(pools []ipamPool, block netip.Prefix) *ipamPool {
	for i := range pools {
		if pools[i].pool.CIDR.Contains(block.Addr()) && pools[i].pool.BlockSize == block.Bits() {
			return &pools[i]
		}
	}
	return nil
}
