package etcd

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/overlayd/overlayd/datastore/calico"
)

// claimPasses bounds how often claim re-lists the pool's blocks after
// losing every free candidate of the previous list to other nodes; Calico
// gives up after as many datastore retries.
const claimPasses = 100

// claim claims a new block of p for node, with its tunnel address of
// attrType allocated in it when attrType is not empty. It first tries the
// node's seeded candidate blind (the common case when nodes are spread),
// then lists the blocks that exist and walks the free candidates in order.
// It returns the block and how many candidates it lost to other nodes.
//
// The list is of keys only (at 100,000 blocks the values would be tens of
// megabytes per joining node), so a block that names this node but has no
// affinity key (a Calico claim interrupted before its affinity) is adopted
// only when it is the seeded candidate; elsewhere it counts as taken.
func (m *IPAM) claim(ctx context.Context, node string, p *ipamPool, attrType string) (heldBlock, int, error) {
	conflicts := 0
	first := true
	for range claimPasses {
		var taken map[netip.Prefix]bool
		if !first {
			var err error
			if taken, err = m.existingBlocks(ctx); err != nil {
				return heldBlock{}, conflicts, err
			}
		}
		free := 0
		for cidr := range candidates(p.pool.CIDR, p.pool.BlockSize, node) {
			if taken[cidr] {
				continue
			}
			free++
			b, won, err := m.tryClaim(ctx, node, cidr, attrType)
			if err != nil {
				return heldBlock{}, conflicts, err
			}
			if won {
				return b, conflicts, nil
			}
			conflicts++
			if first {
				break
			}
		}
		if !first && free == 0 {
			return heldBlock{}, conflicts, fmt.Errorf("node %q: pool %q (%s in /%d blocks): all %d blocks are held by other nodes: %w",
				node, p.pool.Name, p.pool.CIDR, p.pool.BlockSize, 1<<(p.pool.BlockSize-p.pool.CIDR.Bits()), ErrPoolFull)
		}
		first = false
	}
	return heldBlock{}, conflicts, fmt.Errorf("node %q: pool %q: lost every free block to other nodes %d times over; too many concurrent claims",
		node, p.pool.Name, claimPasses)
}

// existingBlocks lists the IPv4 blocks that exist, keys only.
func (m *IPAM) existingBlocks(ctx context.Context) (map[netip.Prefix]bool, error) {
	resp, err := m.cli.Get(ctx, m.keys.Blocks(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("listing the blocks: %w", err)
	}
	taken := make(map[netip.Prefix]bool, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if k, err := m.keys.Parse(string(kv.Key)); err == nil && k.Kind == calico.KindBlock {
			taken[k.CIDR] = true
		}
	}
	return taken, nil
}

// claimRetries bounds how often tryClaim retries one candidate whose block
// is still absent but whose affinity or tunnel handle changed under it.
const claimRetries = 5

// tryClaim claims cidr for node in one transaction: the affinity
// (confirmed), the block (affine to node, with the tunnel address of
// attrType allocated at its first ordinal when attrType is set) and the
// tunnel handle, the affinity and block only if absent, the handle only if
// absent or unchanged since read. won is true when node holds the block
// afterwards: it claimed it, or the block was already its own (another
// process for the same node claimed it) and is adopted. won is false when
// another node holds it.
func (m *IPAM) tryClaim(ctx context.Context, node string, cidr netip.Prefix, attrType string) (b heldBlock, won bool, err error) {
	affKey, blockKey := m.keys.Affinity(node, cidr), m.keys.Block(cidr)
	affVal, err := marshal(calico.Affinity{State: calico.StateConfirmed})
	if err != nil {
		return heldBlock{}, false, err
	}
	var handleKey string
	var handleKV *mvccpb.KeyValue // the handle as last read; nil: assumed absent
	for range claimRetries {
		block, err := calico.NewBlock(cidr, node, time.Now())
		if err != nil {
			return heldBlock{}, false, fmt.Errorf("node %q: claiming %s: %w", node, cidr, err)
		}
		cmps := []clientv3.Cmp{
			clientv3.Compare(clientv3.Version(affKey), "=", 0),
			clientv3.Compare(clientv3.Version(blockKey), "=", 0),
		}
		var then []clientv3.Op
		elseOps := []clientv3.Op{clientv3.OpGet(blockKey), clientv3.OpGet(affKey)}
		if attrType != "" {
			handleID, attrs, err := calico.TunnelAllocation(node, attrType)
			if err != nil {
				return heldBlock{}, false, err
			}
			handleKey = m.keys.Handle(handleID)
			handle := calico.NewHandle()
			if handleKV != nil {
				if handle, err = calico.DecodeHandle(handleKV.Value); err != nil {
					return heldBlock{}, false, fmt.Errorf("node %q: tunnel handle %s: %w", node, handleID, err)
				}
			}
			if _, err := block.Assign(1, handleID, attrs); err != nil {
				return heldBlock{}, false, err
			}
			// Calico creates the block, then assigns the tunnel address in
			// an update, which increments the sequence number.
			block.SequenceNumber++
			handle.Increment(cidr, 1)
			handleVal, err := marshal(handle)
			if err != nil {
				return heldBlock{}, false, err
			}
			cmps = append(cmps, unchangedSince(handleKey, handleKV))
			then = append(then, clientv3.OpPut(handleKey, handleVal))
			elseOps = append(elseOps, clientv3.OpGet(handleKey))
		}
		blockVal, err := marshal(block)
		if err != nil {
			return heldBlock{}, false, err
		}
		then = append([]clientv3.Op{clientv3.OpPut(affKey, affVal), clientv3.OpPut(blockKey, blockVal)}, then...)
		resp, err := m.cli.Txn(ctx).If(cmps...).Then(then...).Else(elseOps...).Commit()
		if err != nil {
			return heldBlock{}, false, fmt.Errorf("node %q: claiming block %s: %w", node, cidr, err)
		}
		if resp.Succeeded {
			m.log.Info("IPAM claimed a block", "node", node, "block", cidr)
			return heldBlock{cidr: cidr, block: block, rev: resp.Header.Revision}, true, nil
		}

		gotBlock := firstKV(resp.Responses[0].GetResponseRange())
		gotAff := firstKV(resp.Responses[1].GetResponseRange())
		if gotBlock != nil {
			return m.adoptOnConflict(ctx, node, cidr, gotBlock, gotAff)
		}
		// The block is still free: our own affinity or the tunnel handle
		// was in the way. A leftover affinity without its block is stale.
		if gotAff != nil {
			if err := m.deleteIfUnchanged(ctx, gotAff); err != nil {
				return heldBlock{}, false, err
			}
		}
		if attrType != "" {
			handleKV = firstKV(resp.Responses[2].GetResponseRange())
		}
	}
	return heldBlock{}, false, fmt.Errorf("node %q: claiming block %s: its affinity or tunnel handle kept changing (%d tries)", node, cidr, claimRetries)
}

// adoptOnConflict handles a claim that found the block existing: adopt it
// when it is already node's (confirming its affinity), else report it lost.
func (m *IPAM) adoptOnConflict(ctx context.Context, node string, cidr netip.Prefix, blockKV, affKV *mvccpb.KeyValue) (heldBlock, bool, error) {
	block, err := calico.DecodeBlock(blockKV.Value)
	if err != nil {
		m.log.Warn("IPAM: a candidate block is malformed; trying the next", "node", node, "block", cidr, "err", err)
		return heldBlock{}, false, nil
	}
	if host, ok := block.Host(); !ok || host != node {
		return heldBlock{}, false, nil
	}
	if affKV != nil {
		if aff, err := calico.DecodeAffinity(affKV.Value); err == nil && aff.Confirmed() {
			m.log.Info("IPAM adopted a block already the node's", "node", node, "block", cidr)
			return heldBlock{cidr: cidr, block: block, rev: blockKV.ModRevision}, true, nil
		}
	}
	affKey := m.keys.Affinity(node, cidr)
	affVal, err := marshal(calico.Affinity{State: calico.StateConfirmed})
	if err != nil {
		return heldBlock{}, false, err
	}
	resp, err := m.cli.Txn(ctx).If(
		unchangedSince(affKey, affKV),
		clientv3.Compare(clientv3.ModRevision(string(blockKV.Key)), "=", blockKV.ModRevision),
	).Then(clientv3.OpPut(affKey, affVal)).Commit()
	if err != nil {
		return heldBlock{}, false, fmt.Errorf("node %q: confirming the affinity of its block %s: %w", node, cidr, err)
	}
	if !resp.Succeeded {
		// Changed again under us: another process of this node is at
		// work on it; leave it and try the next candidate.
		return heldBlock{}, false, nil
	}
	m.log.Info("IPAM adopted a block already the node's and confirmed its affinity", "node", node, "block", cidr)
	return heldBlock{cidr: cidr, block: block, rev: blockKV.ModRevision}, true, nil
}

// unchangedSince compares key with how it was read: absent (kv nil) or at
// the same ModRevision.
func unchangedSince(key string, kv *mvccpb.KeyValue) clientv3.Cmp {
	if kv == nil {
		return clientv3.Compare(clientv3.Version(key), "=", 0)
	}
	return clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)
}

func firstKV(r interface{ GetKvs() []*mvccpb.KeyValue }) *mvccpb.KeyValue {
	if kvs := r.GetKvs(); len(kvs) > 0 {
		return kvs[0]
	}
	return nil
}
