package etcd

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/datastore/calico"
	"github.com/overlayd/overlayd/pool"
)

// entry is one key of the layout as read from etcd: its value, and what the
// value decodes to or why it cannot be used. Values are decoded once, when
// they arrive, so a rebuild reads decoded entries only.
type entry struct {
	value  []byte
	modRev int64
	key    calico.Key
	err    error // malformed: why; the other members are unset

	// KindIPPool
	ippool *calico.IPPool
	pool   *pool.IPPool
	// KindNode
	node calico.NodeInfo
	// KindBlock: the block's affinity, "host:<node>" read as host.
	host    string
	affine  bool
	deleted bool
	// KindAffinity
	state     string
	confirmed bool
}

// readPrefixes are the parts of the layout a node reads: pools, nodes,
// blocks and their affinities. Handles and liveness reports are left out.
func readPrefixes(keys calico.Keys) []string {
	return []string{keys.IPPools(), keys.Nodes(), keys.Blocks(), keys.Affinities()}
}

// decodeEntry reads one key and value of the layout. It returns nil for a
// key overlayd does not read (a handle, a liveness report, an IPv6 block,
// anything outside readPrefixes); a key or value it cannot use is an entry
// with err set, to be skipped and counted by build.
func decodeEntry(keys calico.Keys, key string, value []byte, modRev int64) *entry {
	if !slices.ContainsFunc(readPrefixes(keys), func(p string) bool { return strings.HasPrefix(key, p) }) {
		return nil
	}
	e := &entry{value: value, modRev: modRev}
	k, err := keys.Parse(key)
	if errors.Is(err, calico.ErrUnsupported) {
		return nil
	}
	if err != nil {
		e.err = err
		return e
	}
	e.key = k
	switch k.Kind {
	case calico.KindIPPool:
		e.err = e.decodePool(value)
	case calico.KindNode:
		e.err = e.decodeNode(value)
	case calico.KindBlock:
		e.err = e.decodeBlock(value)
	case calico.KindAffinity:
		a, err := calico.DecodeAffinity(value)
		if err != nil {
			e.err = err
			break
		}
		e.state, e.confirmed = a.State, a.Confirmed()
	default:
		return nil
	}
	return e
}

// decodePool reads and validates an IPPool with Calico's rules. The key
// names the pool, as in Calico; a value naming another pool is refused.
func (e *entry) decodePool(value []byte) error {
	p, err := calico.DecodeIPPool(value)
	if err != nil {
		return err
	}
	if err := nameMatches("IPPool", p.Metadata.Name, e.key.Name); err != nil {
		return err
	}
	p.Metadata.Name = e.key.Name
	v, err := p.Pool()
	if err != nil {
		return err
	}
	e.ippool, e.pool = p, v
	return nil
}

func (e *entry) decodeNode(value []byte) error {
	n, err := calico.DecodeNode(value)
	if err != nil {
		return err
	}
	if err := nameMatches("Node", n.Metadata.Name, e.key.Name); err != nil {
		return err
	}
	n.Metadata.Name = e.key.Name
	if e.node, err = n.Info(); err != nil {
		return err
	}
	return nil
}

// decodeBlock keeps the block's head: a node routes whole blocks and never
// reads their allocations, which are most of a block's value.
func (e *entry) decodeBlock(value []byte) error {
	b, err := calico.DecodeBlockHead(value)
	if err != nil {
		return err
	}
	if b.CIDR != e.key.CIDR {
		return fmt.Errorf("block value's cidr %s is not its key's %s", b.CIDR, e.key.CIDR)
	}
	e.host, e.affine, e.deleted = b.Host, b.Affine, b.Deleted
	return nil
}

// nameMatches refuses a resource whose metadata.name (when set) is not its
// key's name.
func nameMatches(kind, name, key string) error {
	if name != "" && name != key {
		return fmt.Errorf("metadata.name %q of the %s is not its key's name %q", name, kind, key)
	}
	return nil
}

// built is a cluster made from the datastore's entries.
type built struct {
	cluster *config.Cluster
	// skipped says, by key, why an entry was left out of the cluster.
	skipped map[string]string
	// claimPools are the pools this node may get blocks from, in the order
	// they are tried (IPAM.EnsureBlocks).
	claimPools []*calico.IPPool
}

// build makes the cluster of node self from the datastore's entries and the
// node-local sections of the file (local), whose entry for self is
// authoritative for self's address, labels and VTEP MAC. It is pure: the
// same entries give the same cluster.
//
// It follows Felix (calc/l3_route_resolver.go, vxlan_resolver.go) and
// Calico's IPAM: a block goes to the node its affinity names when the block
// says so too and the affinity is confirmed (a pending one counts as
// absent), and only inside a known pool. Nothing malformed or inconsistent
// refuses the rest: the entry is skipped and its reason kept in skipped.
func build(keys calico.Keys, local *config.Cluster, self string, entries map[string]*entry) (built, error) {
	me := local.Node(self)
	if me == nil {
		return built{}, fmt.Errorf("node %q is not in %s (its nodes: %v): with [datastore] type = %q the file keeps this node's own [[nodes]] entry", self, local.Source, local.NodeNames(), config.DatastoreEtcd)
	}
	b := &builder{keys: keys, entries: entries, skipped: map[string]string{}}
	for _, k := range slices.Sorted(maps.Keys(entries)) {
		e := entries[k]
		if e.err != nil {
			b.skipped[k] = e.err.Error()
			continue
		}
		switch e.key.Kind {
		case calico.KindIPPool:
			b.pools = append(b.pools, keyed{k, e})
		case calico.KindNode:
			b.nodes = append(b.nodes, keyed{k, e})
		case calico.KindBlock:
			b.blocks = append(b.blocks, keyed{k, e})
		case calico.KindAffinity:
			b.affinities = append(b.affinities, keyed{k, e})
		}
	}
	c := *local
	c.Pools, c.Nodes = nil, nil
	claim := b.buildPools(&c)
	b.buildNodes(&c, me)
	b.routeBlocks(&c)
	return built{cluster: &c, skipped: b.skipped, claimPools: claim}, nil
}

// keyed is an entry with its key as etcd has it.
type keyed struct {
	id string
	*entry
}

type builder struct {
	keys                             calico.Keys
	entries                          map[string]*entry
	pools, nodes, blocks, affinities []keyed
	skipped                          map[string]string
	byName                           map[string]*config.Node
}

// buildPools keeps the valid pools. Of two that overlap the one created
// first stays (Calico refuses the second when it is created; one written
// past Calico's checks is the intruder), then the one first by name. It
// returns the pools blocks may be claimed from, in that order.
func (b *builder) buildPools(c *config.Cluster) []*calico.IPPool {
	slices.SortStableFunc(b.pools, func(x, y keyed) int {
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
func (b *builder) buildNodes(c *config.Cluster, me *config.Node) {
	self := &config.Node{Name: me.Name, Address: me.Address, Labels: me.Labels, VTEPMAC: me.VTEPMAC}
	if e, ok := b.entries[b.keys.Node(me.Name)]; ok && e.err == nil {
		self.TunnelAddr = tunnelAddr(e.node)
	}
	c.Nodes = []*config.Node{self}
	b.byName = map[string]*config.Node{self.Name: self}
	addrs := map[netip.Addr]string{self.Address.Addr(): self.Name}
	for _, n := range b.nodes {
		info := n.node
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

// tunnelAddr is the node's VXLAN tunnel address, else its IP-in-IP one.
func tunnelAddr(info calico.NodeInfo) netip.Addr {
	if info.VXLANTunnelAddr.IsValid() {
		return info.VXLANTunnelAddr
	}
	return info.IPIPTunnelAddr
}

// routeBlocks gives each block to its node, and says why each block or
// affinity that routes nothing was skipped.
func (b *builder) routeBlocks(c *config.Cluster) {
	used := map[string]bool{} // affinity keys that gave a block its node
	var last netip.Prefix     // the last block kept, to refuse overlaps
	slices.SortFunc(b.blocks, func(x, y keyed) int {
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

// sameRouting reports whether two clusters route alike: the same pools and
// nodes with the same blocks. The node-local sections come from the file
// and are not compared: a reload handles them.
func sameRouting(a, b *config.Cluster) bool {
	if a == nil || b == nil {
		return a == b
	}
	return slices.EqualFunc(a.Pools, b.Pools, (*pool.IPPool).Equal) && slices.EqualFunc(a.Nodes, b.Nodes, sameNode)
}

func sameNode(a, b *config.Node) bool {
	return a.Name == b.Name && a.Address == b.Address && maps.Equal(a.Labels, b.Labels) &&
		bytes.Equal(a.VTEPMAC, b.VTEPMAC) && a.TunnelAddr == b.TunnelAddr &&
		slices.EqualFunc(a.Blocks, b.Blocks, func(x, y pool.Block) bool { return x.Prefix == y.Prefix && x.Pool.Equal(y.Pool) })
}
