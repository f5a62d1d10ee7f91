package etcd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/overlayd/overlayd/datastore/calico"
)

// IPAM claims and releases a node's blocks in Calico's layout: affinity,
// block and handle, each change one transaction that compares versions.
//
// An IPAM is safe for concurrent use; concurrent calls for one node (or two
// processes claiming for one node) converge on the same blocks, because a
// claim that loses to its own node adopts the block instead.
type IPAM struct {
	cli  *clientv3.Client
	keys calico.Keys
	log  *slog.Logger
	// MaxBlocksPerNode limits the blocks one node may claim; 0: no limit.
	MaxBlocksPerNode int
}

// NewIPAM makes the IPAM of the etcd behind cli, under keys' prefix.
func NewIPAM(cli *clientv3.Client, keys calico.Keys, log *slog.Logger) *IPAM {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &IPAM{cli: cli, keys: keys, log: log}
}

// ErrPoolFull is wrapped by EnsureBlocks when every block of the pool the
// node must claim from is held by other nodes.
var ErrPoolFull = errors.New("no free block in the pool")

// ErrBlockLimit is wrapped by EnsureBlocks when the node needs a block but
// already holds MaxBlocksPerNode.
var ErrBlockLimit = errors.New("the node holds as many blocks as it may")

// Member is a node as IPAM needs it: its name and labels (for the pools'
// nodeSelectors).
type Member struct {
	Name   string
	Labels map[string]string
}

// Claimed is what a node holds after EnsureBlocks.
type Claimed struct {
	// Blocks are the node's blocks (confirmed affinity), by address.
	Blocks []netip.Prefix
	// TunnelAddr is the node's tunnel address, allocated under Calico's
	// handle (vxlan-tunnel-addr-<node> or ipip-tunnel-addr-<node>) in its
	// first block of an enabled pool with IP-in-IP or VXLAN; invalid when
	// there is none. TunnelType is calico.AttrTypeVXLAN or AttrTypeIPIP.
	TunnelAddr netip.Addr
	TunnelType string
	// New lists the blocks this call claimed (empty when the node already
	// held what it needs).
	New []netip.Prefix
	// Conflicts counts the candidate blocks this call lost to other nodes
	// before it claimed one.
	Conflicts int
}

// EnsureBlocks makes node hold a block in the first enabled pool whose
// nodeSelector selects it (as the cluster file's allocation does), adopts
// the blocks it already holds (a restart gets them back), and allocates its
// tunnel address. Claims are transactions (affinity, block and handle each
// created only if absent); a conflict makes the node adopt a block that is
// already its own or try its next candidate, starting at a point seeded by
// its name.
//
// The pool must allow automatic assignment and workloads or tunnel
// addresses (a LoadBalancer-only or Manual pool is never claimed from).
// Affinity is strict: a block another node holds is never used, even an
// empty one. Blocks the node holds in pools that no longer select it are
// kept (they keep routing until released). A pending affinity whose block
// is the node's is confirmed; any other affinity without a block of this
// node is deleted as stale, as Calico does.
//
// A tunnel allocation of the node that its pool no longer gives (the
// pool's mode changed, or it was disabled) is released, as calico-node
// does; pools must therefore be the datastore's whole list.
//
// Calling it again returns the same blocks and tunnel address. It wraps
// ErrPoolFull when the pool has no free block and ErrBlockLimit when the
// node may not claim another.
func (m *IPAM) EnsureBlocks(ctx context.Context, node Member, pools []*calico.IPPool) (Claimed, error) {
	valid := validPools(pools, m.log)
	held, err := m.heldBlocks(ctx, node.Name)
	if err != nil {
		return Claimed{}, err
	}
	var c Claimed
	tun, tunOK := findTunnel(node, held, valid)

	if target := firstClaimable(valid, node.Labels); target != nil && !holdsIn(held, target) {
		if m.MaxBlocksPerNode > 0 && len(held) >= m.MaxBlocksPerNode {
			return Claimed{}, fmt.Errorf("node %q needs a block of pool %q but holds %s, the limit of %d blocks: %w",
				node.Name, target.pool.Name, describeBlocks(held), m.MaxBlocksPerNode, ErrBlockLimit)
		}
		var tunnelType string
		if t, ok := target.tunnelType(node.Labels); ok && !tunOK && firstTunnelBlock(node, held, valid) < 0 {
			tunnelType = t
		}
		b, conflicts, err := m.claim(ctx, node.Name, target, tunnelType)
		c.Conflicts = conflicts
		if err != nil {
			return c, err
		}
		held = append(held, b)
		c.New = append(c.New, b.cidr)
		tun, tunOK = findTunnel(node, held, valid)
	}

	slices.SortFunc(held, func(a, b heldBlock) int { return blockOrder(a.cidr, b.cidr) })
	if !tunOK {
		if i := firstTunnelBlock(node, held, valid); i >= 0 {
			attrType, _ := poolOf(valid, held[i].cidr).tunnelType(node.Labels)
			tun, err = m.allocateTunnel(ctx, node.Name, &held[i], attrType)
			if err != nil {
				return c, err
			}
			tunOK = true
		}
	}
	if err := m.releaseStaleTunnels(ctx, node.Name, held, valid, tun, tunOK); err != nil {
		return c, err
	}
	for _, b := range held {
		c.Blocks = append(c.Blocks, b.cidr)
	}
	if tunOK {
		c.TunnelAddr, c.TunnelType = tun.addr, tun.attrType
	}
	return c, nil
}

// holdsIn reports whether one of the held blocks is a block of p.
func holdsIn(held []heldBlock, p *ipamPool) bool {
	return slices.ContainsFunc(held, func(b heldBlock) bool {
		return p.pool.CIDR.Contains(b.cidr.Addr()) && p.pool.BlockSize == b.cidr.Bits()
	})
}

func describeBlocks(held []heldBlock) string {
	if len(held) == 0 {
		return "no block"
	}
	s := make([]string, len(held))
	for i, b := range held {
		s[i] = b.cidr.String()
	}
	return strings.Join(s, ", ")
}

// blockOrder sorts blocks by address.
func blockOrder(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
