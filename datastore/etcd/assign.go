package etcd

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/datastore/calico"
	"github.com/overlayd/overlayd/ipam"
)

// WorkloadStore is ipam.Store for the etcd datastore: one node's workload
// addresses in Calico's own keys, given and taken back as calico-ipam does
// (libcalico-go/lib/ipam/ipam.go autoAssign, assignFromExistingBlock,
// IPsByHandle, ReleaseByHandle), so calicoctl and Calico's own components
// read overlayd's allocations and the other way round.
//
// Every write compares the ModRevision of each key it read (create: Version
// == 0) and is retried on conflict, so stores of the same node in separate
// processes never hand out one address twice. Where Calico writes the
// handle and then the block (and takes the handle back when the block
// write loses), a WorkloadStore writes both in one transaction: the same
// keys and values, without the window in which a crash leaves a handle
// counting an address its block does not hold.
type WorkloadStore struct {
	m    *IPAM
	node string
}

var _ ipam.Store = (*WorkloadStore)(nil)

// OpenWorkloadStore connects to the [datastore] section d (Connect) and
// opens node's store; Close closes the connection. The node must have its
// Node resource in etcd (overlayd registers it when it starts): its labels
// decide which pools select it. An Assign claims another block only while
// the node holds fewer than d.MaxBlocksPerNode in the pools it may use (0:
// no limit, as for EnsureBlocks; Calico's default of 20 does not apply).
func OpenWorkloadStore(ctx context.Context, d config.Datastore, node string) (*WorkloadStore, error) {
	cli, err := Connect(d)
	if err != nil {
		return nil, err
	}
	m := NewIPAM(cli, calico.Keys{Prefix: d.Prefix}, nil)
	m.MaxBlocksPerNode = d.MaxBlocksPerNode
	s := &WorkloadStore{m: m, node: node}
	if _, err := s.labels(ctx); err != nil {
		cli.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the connection to etcd.
func (s *WorkloadStore) Close() error { return s.m.cli.Close() }

// Retry bounds: Calico's datastoreRetries. Seventy plugin processes of one
// node racing for one block lose up to sixty-nine times each.
const (
	assignRetries = 100 // one block's compare-and-swap
	assignPasses  = 100 // rounds of reading the node's blocks and claiming one
)

// errHandleChanged marks an assignment that lost its handle to a concurrent
// write (another process assigning or releasing the same attachment); the
// assignment starts over from the handle.
var errHandleChanged = errors.New("the handle changed concurrently")

// Assign implements ipam.Store. A handle that holds an address gets it back.
// Otherwise the address is the first free one, in the block's FIFO order,
// of the first of the node's blocks with one, taking its blocks in the
// requested pools (or the enabled, automatic pools that select the node) in
// the order Calico lists their affinities: by key, as etcd returns them.
// When they are all full the node claims another block, from the first of
// those pools that has a free one, unless it holds MaxBlocksPerNode of them
// already (Calico counts only the blocks of the pools the request may use).
// Affinity is strict: another node's block is never used, even an empty one.
func (s *WorkloadStore) Assign(ctx context.Context, req ipam.Request) (ipam.Allocation, error) {
	if req.Handle == "" {
		return ipam.Allocation{}, errors.New("IPAM assign: no handle")
	}
	pools, err := s.requestPools(ctx, req.Pools)
	if err != nil {
		return ipam.Allocation{}, err
	}
	for range assignRetries {
		held, handleKV, err := s.m.handleAllocations(ctx, req.Handle)
		if err != nil {
			return ipam.Allocation{}, err
		}
		if len(held) > 0 {
			return held[0], nil
		}
		a, err := s.assignNew(ctx, req, pools, handleKV)
		if !errors.Is(err, errHandleChanged) {
			return a, err
		}
	}
	return ipam.Allocation{}, fmt.Errorf("IPAM assign to %q on node %q: the handle kept changing (%d tries)", req.Handle, s.node, assignRetries)
}

// assignNew allocates a new address to req.Handle, which was absent or held
// no address when read as handleKV.
func (s *WorkloadStore) assignNew(ctx context.Context, req ipam.Request, pools []ipamPool, handleKV *mvccpb.KeyValue) (ipam.Allocation, error) {
	full := map[netip.Prefix]bool{} // blocks found full by this call
	// taken lists the blocks that exist (keys only), read once every block
	// the node holds is full and before they are read again: a block that
	// another process of this node claimed before the list is then among
	// them, so this one does not claim a third.
	var taken map[netip.Prefix]bool
	for range assignPasses {
		held, err := s.m.heldBlocks(ctx, s.node)
		if err != nil {
			return ipam.Allocation{}, err
		}
		usable := blocksInPools(held, pools, s.m.keys, s.node)
		for i := range usable {
			if full[usable[i].cidr] {
				continue
			}
			a, ok, err := s.assignFrom(ctx, usable[i], req, handleKV)
			if err != nil || ok {
				return a, err
			}
			full[usable[i].cidr] = true
		}
		if limit := s.m.MaxBlocksPerNode; limit > 0 && len(usable) >= limit {
			return ipam.Allocation{}, s.limitError(usable, pools)
		}
		if taken == nil {
			if taken, err = s.m.existingBlocks(ctx); err != nil {
				return ipam.Allocation{}, err
			}
			continue
		}
		b, err := s.claimNew(ctx, pools, taken)
		if errors.Is(err, ErrPoolFull) {
			return ipam.Allocation{}, s.poolsFullError(usable, pools)
		}
		if err != nil {
			return ipam.Allocation{}, err
		}
		taken = nil
		a, ok, err := s.assignFrom(ctx, b, req, handleKV)
		if err != nil || ok {
			return a, err
		}
		full[b.cidr] = true // adopted from a concurrent claim and filled meanwhile
	}
	return ipam.Allocation{}, fmt.Errorf("IPAM assign to %q on node %q: its blocks kept filling up while it claimed more (%d rounds); too many concurrent assignments", req.Handle, s.node, assignPasses)
}

// assignFrom allocates the first free address of b to req.Handle and counts
// it in the handle, in one transaction that compares the block's
// ModRevision and the handle's as handleKV read it. ok is false when the
// block is full, was deleted or went to another node. It wraps
// errHandleChanged when the handle changed.
func (s *WorkloadStore) assignFrom(ctx context.Context, b heldBlock, req ipam.Request, handleKV *mvccpb.KeyValue) (a ipam.Allocation, ok bool, err error) {
	blockKey, handleKey := s.m.keys.Block(b.cidr), s.m.keys.Handle(req.Handle)
	for range assignRetries {
		if b.block.Free() == 0 {
			return ipam.Allocation{}, false, nil
		}
		block := cloneBlock(b.block)
		addrs, err := block.Assign(1, req.Handle, req.Attrs)
		if err != nil {
			return ipam.Allocation{}, false, fmt.Errorf("IPAM assign on node %q: %w", s.node, err)
		}
		block.SequenceNumber++ // as Calico's updateBlock
		handle := calico.NewHandle()
		if handleKV != nil {
			if handle, err = calico.DecodeHandle(handleKV.Value); err != nil {
				return ipam.Allocation{}, false, fmt.Errorf("IPAM handle %s: %w", req.Handle, err)
			}
		}
		handle.Increment(b.cidr, 1)
		blockVal, err := marshal(block)
		if err != nil {
			return ipam.Allocation{}, false, err
		}
		handleVal, err := marshal(handle)
		if err != nil {
			return ipam.Allocation{}, false, err
		}
		resp, err := s.m.cli.Txn(ctx).If(
			clientv3.Compare(clientv3.ModRevision(blockKey), "=", b.rev),
			unchangedSince(handleKey, handleKV),
		).Then(
			clientv3.OpPut(blockKey, blockVal),
			clientv3.OpPut(handleKey, handleVal),
		).Else(clientv3.OpGet(blockKey), clientv3.OpGet(handleKey)).Commit()
		if err != nil {
			return ipam.Allocation{}, false, fmt.Errorf("IPAM assign to %q in block %s: %w", req.Handle, b.cidr, err)
		}
		if resp.Succeeded {
			s.m.log.Info("IPAM assigned a workload address", "node", s.node, "handle", req.Handle, "addr", addrs[0])
			return ipam.Allocation{Addr: addrs[0], Block: b.cidr, Handle: req.Handle, Attrs: req.Attrs}, true, nil
		}
		if !sameRevision(firstKV(resp.Responses[1].GetResponseRange()), handleKV) {
			return ipam.Allocation{}, false, errHandleChanged
		}
		kv := firstKV(resp.Responses[0].GetResponseRange())
		if kv == nil {
			return ipam.Allocation{}, false, nil // released meanwhile: not the node's any more
		}
		fresh, err := calico.DecodeBlock(kv.Value)
		if err != nil {
			return ipam.Allocation{}, false, fmt.Errorf("IPAM block %s: %w", b.cidr, err)
		}
		if host, ok := fresh.Host(); !ok || host != s.node {
			return ipam.Allocation{}, false, nil
		}
		b.block, b.rev = fresh, kv.ModRevision
	}
	return ipam.Allocation{}, false, fmt.Errorf("IPAM assign to %q: block %s kept changing (%d tries); too many concurrent assignments", req.Handle, b.cidr, assignRetries)
}

func sameRevision(a, b *mvccpb.KeyValue) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.ModRevision == b.ModRevision
}

// claimNew claims a block for the node from the first of pools with a free
// one, as Calico's findUsableBlock walks them: each pool's candidates in
// the order seeded by the node's name, skipping the blocks in taken. A
// candidate claimed meanwhile by another process of this node is adopted
// (tryClaim). It wraps ErrPoolFull when no pool has a free block.
//
// claim, EnsureBlocks' walk, is not used: it tries the seeded candidate
// blind and adopts it when it is the node's, which here is the block that
// just filled up.
func (s *WorkloadStore) claimNew(ctx context.Context, pools []ipamPool, taken map[netip.Prefix]bool) (heldBlock, error) {
	for _, p := range pools {
		for cidr := range candidates(p.pool.CIDR, p.pool.BlockSize, s.node) {
			if taken[cidr] {
				continue
			}
			b, won, err := s.m.tryClaim(ctx, s.node, cidr, "")
			if err != nil {
				return heldBlock{}, err
			}
			if won {
				return b, nil
			}
		}
	}
	return heldBlock{}, ErrPoolFull
}

// limitError is the error of a node that needs another block but holds as
// many as it may.
func (s *WorkloadStore) limitError(usable []heldBlock, pools []ipamPool) error {
	e := fullError(s.node, usable)
	e.Fix = fmt.Sprintf("the node holds %d blocks in the pools it may use (%s), the limit: raise maxBlocksPerNode (now %d) in the [datastore] section, or release workloads' addresses",
		len(usable), poolNames(pools), s.m.MaxBlocksPerNode)
	return e
}

// poolsFullError is the error of a node that needs another block when the
// pools have none free.
func (s *WorkloadStore) poolsFullError(usable []heldBlock, pools []ipamPool) error {
	e := fullError(s.node, usable)
	desc := make([]string, len(pools))
	for i, p := range pools {
		desc[i] = fmt.Sprintf("%q (%s in /%d blocks)", p.stored.Metadata.Name, p.pool.CIDR, p.pool.BlockSize)
	}
	e.Fix = fmt.Sprintf("pool %s has no free block left: every block is another node's; add a pool (overlayd apply -f ippool.yaml) or release nodes that are gone (overlayd delete node NAME)",
		strings.Join(desc, ", "))
	return e
}

func fullError(node string, usable []heldBlock) *ipam.BlocksFullError {
	e := &ipam.BlocksFullError{Node: node}
	for _, b := range usable {
		e.Blocks = append(e.Blocks, b.cidr)
		e.InUse += b.block.InUse()
	}
	return e
}

func poolNames(pools []ipamPool) string {
	names := make([]string, len(pools))
	for i, p := range pools {
		names[i] = fmt.Sprintf("%q", p.stored.Metadata.Name)
	}
	return strings.Join(names, ", ")
}

// blocksInPools keeps the held blocks that lie in one of pools, in the order
// Calico tries a node's affine blocks: the order its List of the node's
// affinities returns them in, which in etcd is key order (10.0.10.0-26
// before 10.0.9.0-26), not address order.
func blocksInPools(held []heldBlock, pools []ipamPool, keys calico.Keys, node string) []heldBlock {
	var out []heldBlock
	for _, b := range held {
		if slices.ContainsFunc(pools, func(p ipamPool) bool { return p.pool.CIDR.Contains(b.cidr.Addr()) }) {
			out = append(out, b)
		}
	}
	slices.SortFunc(out, func(a, b heldBlock) int {
		return strings.Compare(keys.Affinity(node, a.cidr), keys.Affinity(node, b.cidr))
	})
	return out
}

// requestPools decides the pools a request may take addresses from, as
// Calico's determinePools and filterPoolsByUse do: the named pools
// whatever their nodeSelector (each must exist and be enabled), or else
// the enabled pools with automatic assignment whose nodeSelector selects
// the node; either way only pools that allow workload addresses. Pools
// keep etcd's key order, which is Calico's order by name.
func (s *WorkloadStore) requestPools(ctx context.Context, names []string) ([]ipamPool, error) {
	labels, err := s.labels(ctx)
	if err != nil {
		return nil, err
	}
	all, err := s.m.readPools(ctx)
	if err != nil {
		return nil, err
	}
	var out []ipamPool
	if len(names) > 0 {
		for _, name := range names {
			i := slices.IndexFunc(all, func(p ipamPool) bool { return p.stored.Metadata.Name == name })
			switch {
			case i < 0:
				return nil, fmt.Errorf("IPAM: pool %q does not exist (the pools: %s): %w", name, poolNames(all), ipam.ErrUnknownPool)
			case all[i].pool.Disabled:
				return nil, fmt.Errorf("IPAM: pool %q is disabled: %w", name, ipam.ErrUnknownPool)
			case !all[i].stored.Allows(calico.AllowedUseWorkload):
				return nil, fmt.Errorf("IPAM: pool %q does not allow workload addresses (allowedUses %v): %w", name, all[i].stored.Spec.AllowedUses, ipam.ErrUnknownPool)
			}
			if !slices.ContainsFunc(out, func(p ipamPool) bool { return p.stored.Metadata.Name == name }) {
				out = append(out, all[i])
			}
		}
		return out, nil
	}
	for _, p := range all {
		if !p.pool.Disabled && p.stored.AutoAssign() && p.pool.NodeSelector.Matches(labels) && p.stored.Allows(calico.AllowedUseWorkload) {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("IPAM: no enabled pool with automatic assignment and workload addresses selects node %q (labels %v; the pools: %s): %w",
			s.node, labels, poolNames(all), ipam.ErrUnknownPool)
	}
	return out, nil
}

// labels reads the node's labels from its Node resource.
func (s *WorkloadStore) labels(ctx context.Context) (map[string]string, error) {
	kv, err := s.m.get(ctx, s.m.keys.Node(s.node))
	if err != nil {
		return nil, fmt.Errorf("IPAM: etcd at %s: %w", strings.Join(s.m.cli.Endpoints(), ", "), err)
	}
	if kv == nil {
		return nil, fmt.Errorf("IPAM: node %q has no Node resource in etcd (%s): start overlayd on it first, which registers it, or check the node name", s.node, s.m.keys.Node(s.node))
	}
	n, err := calico.DecodeNode(kv.Value)
	if err != nil {
		return nil, fmt.Errorf("IPAM: %w", err)
	}
	return n.Metadata.Labels, nil
}

// readPools reads the IPPools, valid ones only, in key order (by name).
func (m *IPAM) readPools(ctx context.Context) ([]ipamPool, error) {
	resp, err := m.cli.Get(ctx, m.keys.IPPools(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("listing the IPPools: %w", err)
	}
	var pools []*calico.IPPool
	for _, kv := range resp.Kvs {
		p, err := calico.DecodeIPPool(kv.Value)
		if err != nil {
			m.log.Warn("IPAM skips a malformed IPPool", "key", string(kv.Key), "err", err)
			continue
		}
		pools = append(pools, p)
	}
	return validPools(pools, m.log), nil
}

// handleAllocations reads handle id and the addresses it holds, looking in
// the blocks it counts, as Calico's IPsByHandle does. kv is the handle as
// read, nil when absent.
func (m *IPAM) handleAllocations(ctx context.Context, id string) (held []ipam.Allocation, kv *mvccpb.KeyValue, err error) {
	kv, err = m.get(ctx, m.keys.Handle(id))
	if err != nil || kv == nil {
		return nil, kv, err
	}
	h, err := calico.DecodeHandle(kv.Value)
	if err != nil {
		return nil, nil, fmt.Errorf("IPAM handle %s: %w", id, err)
	}
	for _, cidr := range handleBlocks(h) {
		blockKV, err := m.get(ctx, m.keys.Block(cidr))
		if err != nil {
			return nil, nil, err
		}
		if blockKV == nil {
			continue // counted, not held: the release that removes it tidies the handle
		}
		block, err := calico.DecodeBlock(blockKV.Value)
		if err != nil {
			return nil, nil, fmt.Errorf("IPAM block %s: %w", cidr, err)
		}
		for _, ord := range block.OrdinalsOf(id) {
			held = append(held, allocation(block, ord))
		}
	}
	return held, kv, nil
}

// handleBlocks lists the blocks a handle counts, by address; DecodeHandle
// checked that they parse.
func handleBlocks(h *calico.Handle) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range slices.Sorted(maps.Keys(h.Block)) {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
		}
	}
	slices.SortFunc(out, blockOrder)
	return out
}

// allocation is the allocated ordinal ord of block as ipam reports it.
func allocation(block *calico.Block, ord int) ipam.Allocation {
	a := ipam.Allocation{Addr: block.Addr(ord), Block: block.CIDR}
	if idx := block.Allocations[ord]; idx != nil && *idx < len(block.Attributes) {
		attr := block.Attributes[*idx]
		a.Attrs = attr.ActiveOwnerAttrs
		if attr.HandleID != nil {
			a.Handle = *attr.HandleID
		}
	}
	return a
}

// Lookup implements ipam.Store.
func (s *WorkloadStore) Lookup(ctx context.Context, handle string) ([]netip.Addr, error) {
	held, _, err := s.m.handleAllocations(ctx, handle)
	addrs := make([]netip.Addr, len(held))
	for i, a := range held {
		addrs[i] = a.Addr
	}
	return addrs, err
}

// Blocks implements ipam.Store: the blocks the node holds (confirmed
// affinity, block affine to it), by address, with the node's tunnel
// address marked. It only reads: a pending or stale affinity is left for
// the next Assign or claim to settle.
func (s *WorkloadStore) Blocks(ctx context.Context) ([]ipam.BlockUse, error) {
	affs, err := s.m.nodeAffinities(ctx, s.node)
	if err != nil {
		return nil, err
	}
	pools, err := s.m.readPools(ctx)
	if err != nil {
		return nil, err
	}
	var out []ipam.BlockUse
	for _, a := range affs {
		if aff, err := calico.DecodeAffinity(a.kv.Value); err != nil || !aff.Confirmed() {
			continue
		}
		kv, err := s.m.get(ctx, s.m.keys.Block(a.cidr))
		if err != nil {
			return nil, err
		}
		if kv == nil {
			continue
		}
		block, err := calico.DecodeBlock(kv.Value)
		if err != nil {
			s.m.log.Warn("IPAM skips a malformed block", "node", s.node, "block", a.cidr, "err", err)
			continue
		}
		if host, ok := block.Host(); !ok || host != s.node {
			continue
		}
		use := ipam.BlockUse{CIDR: a.cidr, Node: s.node, Free: block.Free()}
		if i := slices.IndexFunc(pools, func(p ipamPool) bool { return p.pool.CIDR.Contains(a.cidr.Addr()) }); i >= 0 {
			use.Pool = pools[i].stored.Metadata.Name
		}
		for ord, idx := range block.Allocations {
			if idx == nil {
				continue
			}
			al := allocation(block, ord)
			al.Tunnel = isTunnelHandleOf(al.Handle, s.node)
			use.Allocations = append(use.Allocations, al)
		}
		out = append(out, use)
	}
	slices.SortFunc(out, func(a, b ipam.BlockUse) int { return blockOrder(a.CIDR, b.CIDR) })
	return out, nil
}

// isTunnelHandleOf reports whether id is node's tunnel handle, of either
// type.
func isTunnelHandleOf(id, node string) bool {
	for _, t := range tunnelTypes {
		if h, _, err := calico.TunnelAllocation(node, t); err == nil && h == id {
			return true
		}
	}
	return false
}

// isTunnelHandle reports whether id is any node's tunnel handle: the
// prefix TunnelAllocation puts before the node's name.
func isTunnelHandle(id string) bool {
	for _, t := range tunnelTypes {
		if prefix, _, err := calico.TunnelAllocation("", t); err == nil && strings.HasPrefix(id, prefix) {
			return true
		}
	}
	return false
}
