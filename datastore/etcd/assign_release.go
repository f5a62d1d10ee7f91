package etcd

import (
	"context"
	"fmt"
	"net/netip"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/overlayd/overlayd/datastore/calico"
	"github.com/overlayd/overlayd/ipam"
)

// Release implements ipam.Store (ReleaseHandle).
func (s *WorkloadStore) Release(ctx context.Context, handle string) ([]netip.Addr, error) {
	return s.m.ReleaseHandle(ctx, handle)
}

// ReleaseAddr releases one address wherever it is allocated: the repair of
// `overlayd ipam release ADDRESS` (IPAM.ReleaseAddr).
func (s *WorkloadStore) ReleaseAddr(ctx context.Context, addr netip.Addr) (ipam.Allocation, error) {
	return s.m.ReleaseAddr(ctx, addr)
}

// ReleaseHandle frees every address of handle id and returns them, as
// Calico's ReleaseByHandle does: it reads the handle and, for each block it
// counts, frees the block's ordinals of id (to the back of the block's free
// list) and takes the block off the handle, deleting the handle when it
// counts nothing more. Each block is one transaction comparing the block
// and the handle as read; a conflict reads both again. A block that is
// empty and affine to no node afterwards is deleted, as Calico deletes it.
//
// A handle that does not exist is not an error: a DEL runs again, or after
// an ADD that never allocated. Where the handle counts a block that holds
// none (or fewer) of its addresses, the count is dropped all the same, so a
// handle never outlives its addresses. Nodes' tunnel handles are refused:
// the tunnel address stays until the node is deleted.
func (m *IPAM) ReleaseHandle(ctx context.Context, id string) ([]netip.Addr, error) {
	if isTunnelHandle(id) {
		return nil, fmt.Errorf("IPAM release: handle %q is a node's tunnel address, which stays reserved while the node exists (overlayd delete node releases it)", id)
	}
	kv, err := m.get(ctx, m.keys.Handle(id))
	if err != nil || kv == nil {
		return nil, err
	}
	h, err := calico.DecodeHandle(kv.Value)
	if err != nil {
		return nil, fmt.Errorf("IPAM handle %s: %w", id, err)
	}
	if h.Empty() {
		// Counts nothing: left behind by a writer that stopped between
		// its writes. Nothing to free; the handle goes.
		return nil, m.deleteIfUnchanged(ctx, kv)
	}
	var freed []netip.Addr
	for _, cidr := range handleBlocks(h) {
		addrs, err := m.releaseHandleIn(ctx, id, cidr)
		freed = append(freed, addrs...)
		if err != nil {
			return freed, fmt.Errorf("IPAM release of %q: %w", id, err)
		}
	}
	if len(freed) > 0 {
		m.log.Info("IPAM released a workload's addresses", "handle", id, "addrs", freed)
	}
	return freed, nil
}

// releaseHandleIn frees id's addresses in block cidr and takes the block
// off the handle, in one transaction.
func (m *IPAM) releaseHandleIn(ctx context.Context, id string, cidr netip.Prefix) ([]netip.Addr, error) {
	handleKey, blockKey := m.keys.Handle(id), m.keys.Block(cidr)
	for range releaseRetries {
		// Both read at one revision.
		resp, err := m.cli.Txn(ctx).Then(clientv3.OpGet(handleKey), clientv3.OpGet(blockKey)).Commit()
		if err != nil {
			return nil, fmt.Errorf("reading handle and block %s: %w", cidr, err)
		}
		handleKV := firstKV(resp.Responses[0].GetResponseRange())
		blockKV := firstKV(resp.Responses[1].GetResponseRange())
		if handleKV == nil {
			return nil, nil // released meanwhile by another process
		}
		h, err := calico.DecodeHandle(handleKV.Value)
		if err != nil {
			return nil, err
		}
		counted, ok := h.Block[cidr.String()]
		if !ok {
			return nil, nil
		}
		cmps := []clientv3.Cmp{unchangedSince(blockKey, blockKV)}
		var ops []clientv3.Op
		var freed []netip.Addr
		if blockKV != nil {
			block, err := calico.DecodeBlock(blockKV.Value)
			if err != nil {
				return nil, err
			}
			if ords := block.OrdinalsOf(id); len(ords) > 0 {
				if _, err := block.Release(ords); err != nil {
					return nil, err
				}
				block.SequenceNumber++
				for _, ord := range ords {
					freed = append(freed, block.Addr(ord))
				}
				op, err := m.blockWrite(blockKey, block)
				if err != nil {
					return nil, err
				}
				ops = append(ops, op)
			}
		}
		if counted != len(freed) {
			m.log.Warn("IPAM: a handle's count of a block is not what the block holds; dropping the block from the handle", "handle", id, "block", cidr, "counted", counted, "held", len(freed))
		}
		delete(h.Block, cidr.String())
		cmp, op, _, err := m.handleWrite(handleKey, handleKV, h)
		if err != nil {
			return nil, err
		}
		resp, err = m.cli.Txn(ctx).If(append(cmps, cmp)...).Then(append(ops, op)...).Commit()
		if err != nil {
			return nil, fmt.Errorf("releasing in block %s: %w", cidr, err)
		}
		if resp.Succeeded {
			return freed, nil
		}
	}
	return nil, fmt.Errorf("block %s or the handle kept changing (%d tries)", cidr, releaseRetries)
}

// blockWrite is the write of a block after a release: deleted when it is
// empty and affine to no node (Calico's releaseByHandle), else put.
func (m *IPAM) blockWrite(key string, block *calico.Block) (clientv3.Op, error) {
	if _, affine := block.Host(); !affine && block.InUse() == 0 {
		return clientv3.OpDelete(key), nil
	}
	val, err := marshal(block)
	if err != nil {
		return clientv3.Op{}, err
	}
	return clientv3.OpPut(key, val), nil
}

// ReleaseAddr frees one allocated address and takes it off its handle (the
// handle deleted when it counts nothing more): the repair of
// `overlayd ipam release ADDRESS`, for an address whose handle is lost or
// wrong. It finds the block among those that exist, whichever node holds
// it, and returns the allocation it freed. An address in no block, or not
// allocated, wraps ErrNotFound; a node's tunnel address is refused.
func (m *IPAM) ReleaseAddr(ctx context.Context, addr netip.Addr) (ipam.Allocation, error) {
	blocks, err := m.existingBlocks(ctx)
	if err != nil {
		return ipam.Allocation{}, err
	}
	var cidr netip.Prefix
	for b := range blocks {
		if b.Contains(addr) && (!cidr.IsValid() || b.Bits() > cidr.Bits()) {
			cidr = b // blocks do not overlap; should they, the smaller is the more specific
		}
	}
	if !cidr.IsValid() {
		return ipam.Allocation{}, fmt.Errorf("IPAM release: no block holds %s: %w", addr, ErrNotFound)
	}
	blockKey := m.keys.Block(cidr)
	for range releaseRetries {
		blockKV, err := m.get(ctx, blockKey)
		if err != nil {
			return ipam.Allocation{}, err
		}
		if blockKV == nil {
			return ipam.Allocation{}, fmt.Errorf("IPAM release: block %s of %s was deleted: %w", cidr, addr, ErrNotFound)
		}
		block, err := calico.DecodeBlock(blockKV.Value)
		if err != nil {
			return ipam.Allocation{}, fmt.Errorf("IPAM release: %w", err)
		}
		ord, err := block.Ordinal(addr)
		if err != nil {
			return ipam.Allocation{}, fmt.Errorf("IPAM release: %w", err)
		}
		if block.Allocations[ord] == nil {
			return ipam.Allocation{}, fmt.Errorf("IPAM release: %s is not allocated (block %s): %w", addr, cidr, ErrNotFound)
		}
		a := allocation(block, ord)
		if isTunnelHandle(a.Handle) {
			return ipam.Allocation{}, fmt.Errorf("IPAM release: %s is the tunnel address of handle %q, which stays reserved while its node exists (overlayd delete node releases it)", addr, a.Handle)
		}
		byHandle, err := block.Release([]int{ord})
		if err != nil {
			return ipam.Allocation{}, fmt.Errorf("IPAM release: %w", err)
		}
		block.SequenceNumber++
		op, err := m.blockWrite(blockKey, block)
		if err != nil {
			return ipam.Allocation{}, err
		}
		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(blockKey), "=", blockKV.ModRevision)}
		ops := []clientv3.Op{op}
		if a.Handle != "" {
			cmp, op, found, err := m.decrementHandle(ctx, a.Handle, cidr, byHandle[a.Handle])
			if err != nil {
				return ipam.Allocation{}, fmt.Errorf("IPAM release of %s: %w", addr, err)
			}
			if found {
				cmps, ops = append(cmps, cmp), append(ops, op)
			}
		}
		resp, err := m.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return ipam.Allocation{}, fmt.Errorf("IPAM release of %s: %w", addr, err)
		}
		if resp.Succeeded {
			m.log.Info("IPAM released an address", "addr", addr, "handle", a.Handle, "block", cidr)
			return a, nil
		}
	}
	return ipam.Allocation{}, fmt.Errorf("IPAM release of %s: block %s or its handle kept changing (%d tries)", addr, cidr, releaseRetries)
}
