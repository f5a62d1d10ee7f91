package etcd

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/overlayd/overlayd/datastore/calico"
)

// heldBlock is a block the node holds: its confirmed affinity names it and
// the block's affinity is host:<node>. rev is the block's ModRevision as
// read or written, for the next update's compare.
type heldBlock struct {
	cidr  netip.Prefix
	block *calico.Block
	rev   int64
}

// affinityKV is one of a node's affinity keys, read.
type affinityKV struct {
	cidr netip.Prefix
	kv   *mvccpb.KeyValue
}

// nodeAffinities lists the node's IPv4 host affinities (any state).
func (m *IPAM) nodeAffinities(ctx context.Context, node string) ([]affinityKV, error) {
	resp, err := m.cli.Get(ctx, m.keys.Affinities()+node+"/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("listing the block affinities of node %q: %w", node, err)
	}
	var affs []affinityKV
	for _, kv := range resp.Kvs {
		k, err := m.keys.Parse(string(kv.Key))
		if err != nil || k.Kind != calico.KindAffinity || k.Name != node {
			continue // an IPv6 or malformed key: not a block this node routes
		}
		affs = append(affs, affinityKV{cidr: k.CIDR, kv: kv})
	}
	return affs, nil
}

// heldBlocks reads the blocks the node holds, by address. Affinities that
// are pending (or written without a state) and whose block names this node
// are confirmed, as Calico's getBlockFromAffinity does; an affinity whose
// block is missing or names another node is stale and deleted. An affinity
// pending deletion is left to whoever is releasing it.
func (m *IPAM) heldBlocks(ctx context.Context, node string) ([]heldBlock, error) {
	affs, err := m.nodeAffinities(ctx, node)
	if err != nil {
		return nil, err
	}
	var held []heldBlock
	for _, a := range affs {
		aff, err := calico.DecodeAffinity(a.kv.Value)
		if err != nil {
			m.log.Warn("IPAM skips a malformed affinity", "node", node, "block", a.cidr, "err", err)
			continue
		}
		if aff.State == calico.StatePendingDeletion {
			continue
		}
		blockKV, err := m.get(ctx, m.keys.Block(a.cidr))
		if err != nil {
			return nil, err
		}
		var block *calico.Block
		if blockKV != nil {
			if block, err = calico.DecodeBlock(blockKV.Value); err != nil {
				m.log.Warn("IPAM skips a malformed block", "node", node, "block", a.cidr, "err", err)
				continue
			}
		}
		if host, ok := hostOf(block); !ok || host != node {
			m.log.Info("IPAM deletes a stale affinity", "node", node, "block", a.cidr, "blockHost", host)
			if err := m.deleteIfUnchanged(ctx, a.kv); err != nil {
				return nil, err
			}
			continue
		}
		if !aff.Confirmed() {
			ok, err := m.confirmAffinity(ctx, a, blockKV)
			if err != nil {
				return nil, err
			}
			if !ok {
				m.log.Info("IPAM: an affinity changed while it was confirmed; a claim will adopt its block", "node", node, "block", a.cidr)
				continue
			}
		}
		held = append(held, heldBlock{cidr: a.cidr, block: block, rev: blockKV.ModRevision})
	}
	slices.SortFunc(held, func(a, b heldBlock) int { return blockOrder(a.cidr, b.cidr) })
	return held, nil
}

func hostOf(b *calico.Block) (string, bool) {
	if b == nil {
		return "", false
	}
	return b.Host()
}

// confirmAffinity writes a's affinity confirmed if neither it nor its block
// changed since they were read; ok is false when one did.
func (m *IPAM) confirmAffinity(ctx context.Context, a affinityKV, blockKV *mvccpb.KeyValue) (ok bool, err error) {
	val, err := marshal(calico.Affinity{State: calico.StateConfirmed})
	if err != nil {
		return false, err
	}
	key := string(a.kv.Key)
	resp, err := m.cli.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(key), "=", a.kv.ModRevision),
		clientv3.Compare(clientv3.ModRevision(string(blockKV.Key)), "=", blockKV.ModRevision),
	).Then(clientv3.OpPut(key, val)).Commit()
	if err != nil {
		return false, fmt.Errorf("confirming affinity %s: %w", key, err)
	}
	return resp.Succeeded, nil
}

// get reads one key; nil when it is absent.
func (m *IPAM) get(ctx context.Context, key string) (*mvccpb.KeyValue, error) {
	resp, err := m.cli.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	return resp.Kvs[0], nil
}

// deleteIfUnchanged deletes kv's key if it was not changed since read. A
// changed key is left: whoever changed it decides.
func (m *IPAM) deleteIfUnchanged(ctx context.Context, kv *mvccpb.KeyValue) error {
	key := string(kv.Key)
	_, err := m.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
		Then(clientv3.OpDelete(key)).Commit()
	if err != nil {
		return fmt.Errorf("deleting %s: %w", key, err)
	}
	return nil
}

// marshal encodes a calico value; the values are plain structs, so an error
// is a bug, reported rather than hidden.
func marshal(v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", fmt.Errorf("encoding %T: %w", v, err)
	}
	return string(b), nil
}
