package etcd

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/datastore/calico"
	"github.com/overlayd/overlayd/pool"
)

// referenceBuild is build as it was before the index (commit 9ac2246),
// kept as the reference the index is checked against: it sorts every key
// and routes the blocks in address order, each unless it overlaps the last
// routed.
//
// It makes the cluster of node self from the datastore's entries and the
// node-local sections of the file (local), whose entry for self is
// authoritative for self's address, labels and VTEP MAC. It is pure: the
// same entries give the same cluster.
//
// It follows Felix (calc/l3_route_resolver.go, vxlan_resolver.go) and
// Calico's IPAM: a block goes to the node its affinity names when the block
// says so too and the affinity is confirmed (a pending one counts as
// absent), and only inside a known pool. Nothing malformed or inconsistent
// refuses the rest: the entry is skipped and its reason kept in skipped.
func referenceBuild(keys calico.Keys, local *config.Cluster, self string, entries map[string]*entry) (built, error) {
	me := local.Node(self)
	if me == nil {
		return built{}, fmt.Errorf("node %q is not in %s (its nodes: %v): with [datastore] type = %q the file keeps this node's own [[nodes]] entry", self, local.Source, local.NodeNames(), config.DatastoreEtcd)
	}
	b := &refBuilder{keys: keys, entries: entries, skipped: map[string]string{}}
	for _, k := range slices.Sorted(maps.Keys(entries)) {
		e := entries[k]
		if e.err != nil {
			b.skipped[k] = e.err.Error()
			continue
		}
		switch e.key.Kind {
		case calico.KindIPPool:
			b.pools = append(b.pools, refKeyed{k, e})
		case calico.KindNode:
			b.nodes = append(b.nodes, refKeyed{k, e})
		case calico.KindBlock:
			b.blocks = append(b.blocks, refKeyed{k, e})
		case calico.KindAffinity:
			b.affinities = append(b.affinities, refKeyed{k, e})
		}
	}
	c := *local
	c.Pools, c.Nodes = nil, nil
	claim := b.buildPools(&c)
	b.buildNodes(&c, me)
	b.routeBlocks(&c)
	return built{cluster: &c, skipped: b.skipped, claimPools: claim}, nil
}

// refKeyed is an entry with its key as etcd has it.
type refKeyed struct {
	id string
	*entry
}

type refBuilder struct {
	keys                             calico.Keys
	entries                          map[string]*entry
	pools, nodes, blocks, affinities []refKeyed
	skipped                          map[string]string
	byName                           map[string]*config.Node
}

// buildPools keeps the valid pools. Of two that overlap the one created
// first stays (Calico refuses the second when it is created; one written
// past Calico's checks is the intruder), then the one first by name. It
// returns the pools blocks may be claimed from, in that order.
func (b *refBuilder) buildPools(c *config.Cluster) []*calico.IPPool {
	slices.SortStableFunc(b.pools, func(x, y refKeyed) int {
		tx, ty := x.ippool.Metadata.CreationTimestamp, y.ippool.Metadata.CreationTimestamp
		if (tx == "") != (ty == "") {
			return cmp.Compare(ty, tx) // one without a creation time goes after
		}
		return cmp.Or(cmp.Compare(tx, ty), cmp.Compare(x.key.Name, y.key.Name))
	})
	var claim []*calico.IPPool
	for _, p := range b.pools {
		if err := pool.ValidateSet(append(slices.Clip(c.Pools), p.pool)); err != nil {
			b.skipped[p.id] = err.Error()
			continue
		}
		c.Pools = append(c.Pools, p.pool)
		if !p.pool.Disabled && p.ippool.AutoAssign() && (p.ippool.Allows(calico.AllowedUseWorkload) || p.ippool.Allows(calico.AllowedUseTunnel)) {
			claim = append(claim, p.ippool)
		}
	}
	return claim
}

// buildNodes makes this node from the file, with its tunnel address from
// its Node in the datastore, and every other node from its Node resource.
// Felix cannot route to a node without spec.bgp.ipv4Address; an underlay
// address inside a pool or another node's is refused as the file refuses it.
func (b *refBuilder) buildNodes(c *config.Cluster, me *config.Node) {
	self := &config.Node{Name: me.Name, Address: me.Address, Labels: me.Labels, VTEPMAC: me.VTEPMAC}
	if e, ok := b.entries[b.keys.Node(me.Name)]; ok && e.err == nil {
		self.TunnelAddr = tunnelAddr(*e.node)
	}
	c.Nodes = []*config.Node{self}
	b.byName = map[string]*config.Node{self.Name: self}
	addrs := map[netip.Addr]string{self.Address.Addr(): self.Name}
	for _, n := range b.nodes {
		info := *n.node
		if info.Name == self.Name {
			continue
		}
		if !info.Address.IsValid() {
			b.skipped[n.id] = fmt.Sprintf("Node %q has no spec.bgp.ipv4Address: nothing can be routed to it", info.Name)
			continue
		}
		if other, dup := addrs[info.Address.Addr()]; dup {
			b.skipped[n.id] = fmt.Sprintf("Node %q: address %s is also node %q's", info.Name, info.Address.Addr(), other)
			continue
		}
		if i := slices.IndexFunc(c.Pools, func(p *pool.IPPool) bool { return p.CIDR.Contains(info.Address.Addr()) }); i >= 0 {
			p := c.Pools[i]
			b.skipped[n.id] = fmt.Sprintf("Node %q: address %s lies in pool %q (%s): underlay addresses must be outside every pool", info.Name, info.Address.Addr(), p.Name, p.CIDR)
			continue
		}
		addrs[info.Address.Addr()] = info.Name
		node := &config.Node{Name: info.Name, Address: info.Address, Labels: info.Labels, VTEPMAC: info.VTEPMAC, TunnelAddr: tunnelAddr(info)}
		c.Nodes = append(c.Nodes, node)
		b.byName[node.Name] = node
	}
}

// routeBlocks gives each block to its node, and says why each block or
// affinity that routes nothing was skipped.
func (b *refBuilder) routeBlocks(c *config.Cluster) {
	used := map[string]bool{} // affinity keys that gave a block its node
	var last netip.Prefix     // the last block kept, to refuse overlaps
	slices.SortFunc(b.blocks, func(x, y refKeyed) int {
		return cmp.Or(x.key.CIDR.Addr().Compare(y.key.CIDR.Addr()), cmp.Compare(x.key.CIDR.Bits(), y.key.CIDR.Bits()))
	})
	for _, blk := range b.blocks {
		cidr := blk.key.CIDR
		why := func() string {
			if !blk.affine {
				return fmt.Sprintf("block %s has no host affinity: overlayd routes whole blocks to nodes", cidr)
			}
			if blk.deleted {
				return fmt.Sprintf("block %s is marked deleted", cidr)
			}
			affKey := b.keys.Affinity(blk.host, cidr)
			aff, ok := b.entries[affKey]
			switch {
			case !ok:
				return fmt.Sprintf("block %s names host %q, which has no affinity for it", cidr, blk.host)
			case aff.err != nil:
				return fmt.Sprintf("block %s: host %q's affinity for it is malformed", cidr, blk.host)
			case !aff.confirmed:
				used[affKey] = true // the block's reason covers it
				return fmt.Sprintf("block %s: host %q's affinity is %q, not confirmed", cidr, blk.host, aff.state)
			}
			used[affKey] = true
			if b.byName[blk.host] == nil {
				return fmt.Sprintf("block %s: its node %q is not a known node", cidr, blk.host)
			}
			if last.IsValid() && last.Overlaps(cidr) {
				return fmt.Sprintf("block %s overlaps block %s", cidr, last)
			}
			return ""
		}()
		if why != "" {
			b.skipped[blk.id] = why
			continue
		}
		i := slices.IndexFunc(c.Pools, func(p *pool.IPPool) bool {
			return p.CIDR.Bits() <= cidr.Bits() && p.CIDR.Contains(cidr.Addr())
		})
		if i < 0 {
			b.skipped[blk.id] = fmt.Sprintf("block %s lies in no known IPPool", cidr)
			continue
		}
		n := b.byName[blk.host]
		n.Blocks = append(n.Blocks, pool.Block{Prefix: cidr, Pool: c.Pools[i]})
		last = cidr // kept blocks are disjoint and sorted: only the last can overlap the next
	}
	for _, a := range b.affinities {
		if used[a.id] {
			continue
		}
		blk, ok := b.entries[b.keys.Block(a.key.CIDR)]
		switch {
		case !a.confirmed:
			b.skipped[a.id] = fmt.Sprintf("node %q's affinity for %s is %q, not confirmed", a.key.Name, a.key.CIDR, a.state)
		case !ok:
			b.skipped[a.id] = fmt.Sprintf("node %q's affinity for %s has no block", a.key.Name, a.key.CIDR)
		case blk.err == nil:
			b.skipped[a.id] = fmt.Sprintf("node %q's affinity for %s: the block is host %q's", a.key.Name, a.key.CIDR, blk.host)
		}
		// A malformed block is skipped under its own key.
	}
}
