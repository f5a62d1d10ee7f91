package etcd

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/overlayd/overlayd/datastore/calico"
)

// tunnel is a node's tunnel address and its allocation type.
type tunnel struct {
	addr     netip.Addr
	attrType string
}

// tunnelTypes are the tunnel allocations a node may hold, in the order
// findTunnel looks for them.
var tunnelTypes = [...]string{calico.AttrTypeVXLAN, calico.AttrTypeIPIP}

// findTunnel finds the node's tunnel address among the held blocks: an
// allocation under the tunnel handle of a type the block's pool still gives
// (calico-node's "current address is still valid, do nothing"). An
// allocation in a pool that no longer gives that type is not the node's
// tunnel address any more; it stays allocated until the node is released.
func findTunnel(node Member, held []heldBlock, pools []ipamPool) (tunnel, bool) {
	for _, attrType := range tunnelTypes {
		handleID, _, err := calico.TunnelAllocation(node.Name, attrType)
		if err != nil {
			continue // tunnelTypes holds only valid types
		}
		for _, b := range held {
			ords := b.block.OrdinalsOf(handleID)
			if len(ords) == 0 {
				continue
			}
			p := poolOf(pools, b.cidr)
			if p == nil {
				continue
			}
			if t, ok := p.tunnelType(node.Labels); ok && t == attrType {
				return tunnel{addr: b.block.Addr(ords[0]), attrType: attrType}, true
			}
		}
	}
	return tunnel{}, false
}

// firstTunnelBlock is the index of the first held block (held is by
// address) whose pool gives the node a tunnel address and that has a free
// address; -1 when there is none.
func firstTunnelBlock(node Member, held []heldBlock, pools []ipamPool) int {
	for i, b := range held {
		p := poolOf(pools, b.cidr)
		if p == nil || b.block.Free() == 0 {
			continue
		}
		if _, ok := p.tunnelType(node.Labels); ok {
			return i
		}
	}
	return -1
}

// tunnelRetries bounds how often allocateTunnel re-reads a block that
// changed under it (a workload's address allocated meanwhile).
const tunnelRetries = 10

// allocateTunnel allocates node's tunnel address of attrType in a block it
// already holds (a block made before it needed one, or by calico-node): a
// block update (its ModRevision compared, SequenceNumber incremented, as
// Calico's updateBlock does) and the handle created or incremented in one
// transaction. b is updated to what was written.
func (m *IPAM) allocateTunnel(ctx context.Context, node string, b *heldBlock, attrType string) (tunnel, error) {
	handleID, attrs, err := calico.TunnelAllocation(node, attrType)
	if err != nil {
		return tunnel{}, err
	}
	blockKey, handleKey := m.keys.Block(b.cidr), m.keys.Handle(handleID)
	for range tunnelRetries {
		handleKV, err := m.get(ctx, handleKey)
		if err != nil {
			return tunnel{}, err
		}
		handle := calico.NewHandle()
		if handleKV != nil {
			if handle, err = calico.DecodeHandle(handleKV.Value); err != nil {
				return tunnel{}, fmt.Errorf("node %q: tunnel handle %s: %w", node, handleID, err)
			}
		}
		block := cloneBlock(b.block)
		addrs, err := block.Assign(1, handleID, attrs)
		if err != nil {
			return tunnel{}, fmt.Errorf("node %q: tunnel address: %w", node, err)
		}
		block.SequenceNumber++
		handle.Increment(b.cidr, 1)
		blockVal, err := marshal(block)
		if err != nil {
			return tunnel{}, err
		}
		handleVal, err := marshal(handle)
		if err != nil {
			return tunnel{}, err
		}
		resp, err := m.cli.Txn(ctx).If(
			clientv3.Compare(clientv3.ModRevision(blockKey), "=", b.rev),
			unchangedSince(handleKey, handleKV),
		).Then(
			clientv3.OpPut(blockKey, blockVal),
			clientv3.OpPut(handleKey, handleVal),
		).Else(clientv3.OpGet(blockKey)).Commit()
		if err != nil {
			return tunnel{}, fmt.Errorf("node %q: allocating its tunnel address in %s: %w", node, b.cidr, err)
		}
		if resp.Succeeded {
			b.block, b.rev = block, resp.Header.Revision
			m.log.Info("IPAM allocated the tunnel address", "node", node, "addr", addrs[0], "type", attrType)
			return tunnel{addr: addrs[0], attrType: attrType}, nil
		}
		kv := firstKV(resp.Responses[0].GetResponseRange())
		if kv == nil {
			return tunnel{}, fmt.Errorf("node %q: block %s was deleted while its tunnel address was being allocated", node, b.cidr)
		}
		fresh, err := calico.DecodeBlock(kv.Value)
		if err != nil {
			return tunnel{}, fmt.Errorf("node %q: %w", node, err)
		}
		if host, ok := fresh.Host(); !ok || host != node {
			return tunnel{}, fmt.Errorf("node %q: block %s was given to %q while its tunnel address was being allocated", node, b.cidr, host)
		}
		b.block, b.rev = fresh, kv.ModRevision
		if ords := fresh.OrdinalsOf(handleID); len(ords) > 0 {
			// Another process of this node allocated it meanwhile.
			return tunnel{addr: fresh.Addr(ords[0]), attrType: attrType}, nil
		}
	}
	return tunnel{}, fmt.Errorf("node %q: block %s kept changing while its tunnel address was being allocated (%d tries)", node, b.cidr, tunnelRetries)
}

// cloneBlock copies a block deeply enough for Assign and Release to change
// the copy only.
func cloneBlock(b *calico.Block) *calico.Block {
	c := *b
	c.Allocations = make([]*int, len(b.Allocations))
	for i, idx := range b.Allocations {
		if idx != nil {
			v := *idx
			c.Allocations[i] = &v
		}
	}
	c.Unallocated = append([]int(nil), b.Unallocated...)
	c.Attributes = append([]calico.AllocationAttribute(nil), b.Attributes...)
	c.SequenceNumberForAllocation = make(map[string]uint64, len(b.SequenceNumberForAllocation))
	for k, v := range b.SequenceNumberForAllocation {
		c.SequenceNumberForAllocation[k] = v
	}
	return &c
}

// releaseStaleTunnels releases the node's tunnel allocations other than cur
// (all of them when ok is false): those of a type no pool gives the node
// any more, as when a pool switches from IP-in-IP to VXLAN or turns
// encapsulation off, as calico-node's reconcileTunnelAddrs releases them.
// Each is a block update (ModRevision compared, SequenceNumber
// incremented) and the handle decremented or deleted, in one transaction.
// Blocks in no known pool are left alone: a pool missing from the list is
// not a reason to take an address away.
func (m *IPAM) releaseStaleTunnels(ctx context.Context, node string, held []heldBlock, pools []ipamPool, cur tunnel, ok bool) error {
	for i := range held {
		if poolOf(pools, held[i].cidr) == nil {
			continue
		}
		for _, attrType := range tunnelTypes {
			handleID, _, err := calico.TunnelAllocation(node, attrType)
			if err != nil {
				return err
			}
			stale := func(b *calico.Block) []int {
				return slices.DeleteFunc(b.OrdinalsOf(handleID), func(ord int) bool {
					return ok && attrType == cur.attrType && b.Addr(ord) == cur.addr
				})
			}
			if len(stale(held[i].block)) == 0 {
				continue
			}
			if err := m.releaseOrdinals(ctx, node, &held[i], handleID, stale); err != nil {
				return err
			}
		}
	}
	return nil
}

// releaseOrdinals frees the ordinals stale picks in b (all allocated to
// handleID), re-reading the block when it changed meanwhile.
func (m *IPAM) releaseOrdinals(ctx context.Context, node string, b *heldBlock, handleID string, stale func(*calico.Block) []int) error {
	blockKey := m.keys.Block(b.cidr)
	for range tunnelRetries {
		block := cloneBlock(b.block)
		ords := stale(block)
		if len(ords) == 0 {
			return nil
		}
		byHandle, err := block.Release(ords)
		if err != nil {
			return fmt.Errorf("node %q: %w", node, err)
		}
		block.SequenceNumber++
		blockVal, err := marshal(block)
		if err != nil {
			return err
		}
		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(blockKey), "=", b.rev)}
		ops := []clientv3.Op{clientv3.OpPut(blockKey, blockVal)}
		cmp, op, found, err := m.decrementHandle(ctx, handleID, b.cidr, byHandle[handleID])
		if err != nil {
			return fmt.Errorf("node %q: %w", node, err)
		}
		if found {
			cmps, ops = append(cmps, cmp), append(ops, op)
		}
		resp, err := m.cli.Txn(ctx).If(cmps...).Then(ops...).Else(clientv3.OpGet(blockKey)).Commit()
		if err != nil {
			return fmt.Errorf("node %q: releasing its old tunnel address in %s: %w", node, b.cidr, err)
		}
		if resp.Succeeded {
			b.block, b.rev = block, resp.Header.Revision
			m.log.Info("IPAM released an old tunnel address", "node", node, "handle", handleID, "block", b.cidr)
			return nil
		}
		kv := firstKV(resp.Responses[0].GetResponseRange())
		if kv == nil {
			return fmt.Errorf("node %q: block %s was deleted while its old tunnel address was being released", node, b.cidr)
		}
		fresh, err := calico.DecodeBlock(kv.Value)
		if err != nil {
			return fmt.Errorf("node %q: %w", node, err)
		}
		if host, ok := fresh.Host(); !ok || host != node {
			return fmt.Errorf("node %q: block %s was given to %q while its old tunnel address was being released", node, b.cidr, host)
		}
		b.block, b.rev = fresh, kv.ModRevision
	}
	return fmt.Errorf("node %q: block %s kept changing while its old tunnel address was being released (%d tries)", node, b.cidr, tunnelRetries)
}
