package etcd

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/overlayd/overlayd/datastore/calico"
)

// Released is what ReleaseNode removed.
type Released struct {
	// Blocks are the blocks deleted, by address.
	Blocks []netip.Prefix
	// Handles are the handles that lost addresses in those blocks (the
	// tunnel handle and workloads' handles), deleted when they held no
	// other address, by ID.
	Handles []string
}

// maxTxnOps is etcd's default limit on the operations of one transaction
// (--max-txn-ops), which applies to compares and to operations separately.
const maxTxnOps = 128

// releaseRetries bounds how often one block's release is retried after it
// or one of its handles changed under it.
const releaseRetries = 10

// errChanged marks a release transaction that lost to a concurrent change;
// the block is read again and the release retried.
var errChanged = errors.New("changed concurrently")

// ReleaseNode removes node's IPAM state: `overlayd delete node`'s share.
// For each of its affinities: the block (when it is the node's) with every
// address allocated in it, each handle decremented by the addresses it held
// there and deleted when that leaves it empty (ipam_handle.go
// decrementBlock), and the affinity, in one transaction comparing the
// ModRevision of each key read. This is what Calico's node deletion ends
// with (ReleaseIPs, then ReleaseHostAffinities, whose empty blocks are
// deleted). An affinity whose block is missing or names another node is
// deleted alone; the other node's block is left.
//
// It does not delete the Node resource or the liveness key: the caller
// (the admin command) does. Releasing a node that holds nothing is not an
// error and releases nothing.
func (m *IPAM) ReleaseNode(ctx context.Context, node string) (Released, error) {
	affs, err := m.nodeAffinities(ctx, node)
	if err != nil {
		return Released{}, err
	}
	var r Released
	handles := map[string]bool{}
	for _, a := range affs {
		var released bool
		var hs []string
		err := errChanged
		for i := 0; i < releaseRetries && errors.Is(err, errChanged); i++ {
			if i > 0 {
				if a.kv, err = m.get(ctx, string(a.kv.Key)); err != nil {
					return r, err
				}
				if a.kv == nil {
					break // someone else released it
				}
			}
			released, hs, err = m.releaseBlock(ctx, node, a)
		}
		if err != nil {
			return r, fmt.Errorf("releasing node %q: block %s: %w", node, a.cidr, err)
		}
		if released {
			r.Blocks = append(r.Blocks, a.cidr)
		}
		for _, h := range hs {
			handles[h] = true
		}
	}
	slices.SortFunc(r.Blocks, blockOrder)
	for h := range handles {
		r.Handles = append(r.Handles, h)
	}
	sort.Strings(r.Handles)
	if len(r.Blocks) > 0 {
		m.log.Info("IPAM released a node", "node", node, "blocks", r.Blocks, "handles", r.Handles)
	}
	return r, nil
}

// releaseBlock releases one of node's affinities and, when the block is the
// node's, the block and its addresses. It wraps errChanged when a key
// changed since it was read.
func (m *IPAM) releaseBlock(ctx context.Context, node string, a affinityKV) (released bool, handles []string, err error) {
	blockKey := m.keys.Block(a.cidr)
	blockKV, err := m.get(ctx, blockKey)
	if err != nil {
		return false, nil, err
	}
	affCmp := clientv3.Compare(clientv3.ModRevision(string(a.kv.Key)), "=", a.kv.ModRevision)
	affDel := clientv3.OpDelete(string(a.kv.Key))
	var block *calico.Block
	if blockKV != nil {
		if block, err = calico.DecodeBlock(blockKV.Value); err != nil {
			return false, nil, err
		}
	}
	if host, ok := hostOf(block); !ok || host != node {
		// A stale affinity: delete it alone.
		resp, err := m.cli.Txn(ctx).If(affCmp).Then(affDel).Commit()
		if err != nil {
			return false, nil, fmt.Errorf("deleting its stale affinity: %w", err)
		}
		if !resp.Succeeded {
			return false, nil, errChanged
		}
		return false, nil, nil
	}

	var allocated []int
	for ord, idx := range block.Allocations {
		if idx != nil {
			allocated = append(allocated, ord)
		}
	}
	byHandle, err := block.Release(allocated)
	if err != nil {
		return false, nil, err
	}
	cmps := []clientv3.Cmp{affCmp, clientv3.Compare(clientv3.ModRevision(blockKey), "=", blockKV.ModRevision)}
	var handleCmps []clientv3.Cmp
	var handleOps []clientv3.Op
	for id, n := range byHandle {
		cmp, op, ok, err := m.decrementHandle(ctx, id, a.cidr, n)
		if err != nil {
			return false, nil, err
		}
		if ok {
			handleCmps, handleOps = append(handleCmps, cmp), append(handleOps, op)
			handles = append(handles, id)
		}
	}
	final := []clientv3.Op{clientv3.OpDelete(blockKey), affDel}
	if len(cmps)+len(handleCmps) > maxTxnOps {
		// Too many handles for one transaction: update them in batches
		// while the block stays as read, then delete the block. A crash in
		// between leaves handles already counted down; a second release
		// then finds them short and drops the block from them.
		per := maxTxnOps - len(cmps)
		for i := 0; i < len(handleOps); i += per {
			j := min(i+per, len(handleOps))
			resp, err := m.cli.Txn(ctx).If(append(slices.Clone(cmps), handleCmps[i:j]...)...).Then(handleOps[i:j]...).Commit()
			if err != nil {
				return false, nil, fmt.Errorf("releasing its handles: %w", err)
			}
			if !resp.Succeeded {
				return false, nil, errChanged
			}
		}
		handleCmps, handleOps = nil, nil // the batches left the affinity and block as read
	}
	resp, err := m.cli.Txn(ctx).If(append(cmps, handleCmps...)...).Then(append(final, handleOps...)...).Commit()
	if err != nil {
		return false, nil, fmt.Errorf("deleting it with its affinity and handles: %w", err)
	}
	if !resp.Succeeded {
		return false, nil, errChanged
	}
	return true, handles, nil
}

// decrementHandle reads handle id and returns the compare and operation
// that take n addresses in block off it: delete when it then holds none,
// else put the decremented value. ok is false when the handle is gone
// (nothing to do). A handle that holds fewer addresses there than the block
// allocated (a leak, or a release interrupted before) drops the block.
func (m *IPAM) decrementHandle(ctx context.Context, id string, block netip.Prefix, n int) (cmp clientv3.Cmp, op clientv3.Op, ok bool, err error) {
	key := m.keys.Handle(id)
	kv, err := m.get(ctx, key)
	if err != nil || kv == nil {
		return cmp, op, false, err
	}
	h, err := calico.DecodeHandle(kv.Value)
	if err != nil {
		return cmp, op, false, fmt.Errorf("handle %s: %w", id, err)
	}
	if err := h.Decrement(block, n); err != nil {
		m.log.Warn("IPAM: a handle does not count a released block's addresses; dropping the block from it", "handle", id, "block", block, "err", err)
		delete(h.Block, block.String())
	}
	return m.handleWrite(key, kv, h)
}

func (m *IPAM) handleWrite(key string, kv *mvccpb.KeyValue, h *calico.Handle) (clientv3.Cmp, clientv3.Op, bool, error) {
	cmp := clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)
	if h.Empty() {
		return cmp, clientv3.OpDelete(key), true, nil
	}
	val, err := marshal(h)
	if err != nil {
		return cmp, clientv3.Op{}, false, err
	}
	return cmp, clientv3.OpPut(key, val), true, nil
}
