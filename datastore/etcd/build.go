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

// entry is one key of the layout as read from etcd: what its value decodes
// to, or why it cannot be used. Values are decoded once, when they arrive,
// and only what routing needs is kept: not the value itself.
type entry struct {
	id     string // its key
	modRev int64
	key    calico.Key
	err    error // malformed: why; the other members are unset

	// KindIPPool
	ippool *calico.IPPool
	pool   *pool.IPPool
	// KindNode, behind a pointer: a node has one entry, a block two, and
	// every entry would carry its size.
	node *calico.NodeInfo
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
	e := &entry{modRev: modRev}
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
	info, err := n.Info()
	if err != nil {
		return err
	}
	e.node = &info
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
// node-local sections of the file (local), all at once: an index of them,
// built. It is pure: the same entries give the same cluster.
func build(keys calico.Keys, local *config.Cluster, self string, entries map[string]*entry) (built, error) {
	ix := newIndex(keys, local, self)
	for k, e := range entries {
		ix.put(k, e)
	}
	return ix.build()
}

// index is the datastore as node self reads it, decoded, with the cluster
// last built from it. A watch batch changes a few keys of some hundred
// thousand; put and remove note what each change touches, and build
// recomputes only that: a block and its affinities, the blocks of a node
// that came or went, the node list when a Node changed. A pool or the file
// changing recomputes everything (it is rare, and every block's pool and
// every node's address check depend on it).
//
// The cluster follows Felix (calc/l3_route_resolver.go, vxlan_resolver.go)
// and Calico's IPAM: a block goes to the node its affinity names when the
// block says so too and the affinity is confirmed (a pending one counts as
// absent), and only inside a known pool. Nothing malformed or inconsistent
// refuses the rest: the entry is skipped and its reason kept in skipped.
//
// Clusters handed out are never changed: a build makes new Node values for
// the nodes whose blocks changed and shares the others with the last one.
type index struct {
	keys  calico.Keys
	self  string
	local *config.Cluster // the file: node-local sections, self's entry

	// entries are the pools, the Nodes and the keys that do not parse;
	// blocks and affinities are in blocks, by CIDR.
	entries  map[string]*entry
	poolKeys map[string]bool
	nodeKeys []string // sorted: the order of the nodes, and of the address rule
	blocks   map[netip.Prefix]*blockState
	// hostBlocks are the decoded blocks by the host their affinity names;
	// sizes counts the decoded blocks by prefix length (a block can only
	// nest in another when two lengths are present).
	hostBlocks map[string][]netip.Prefix
	sizes      [33]int

	// What the last build made: the pools, the nodes, and each node's
	// blocks in address order.
	pools   []*pool.IPPool
	claim   []*calico.IPPool
	nodes   []*config.Node
	pos     map[string]int // index in nodes, by name: the known nodes
	routed  map[string][]pool.Block
	skipped map[string]string

	// What changed since the last build.
	allDirty, nodesDirty bool
	dirty                map[netip.Prefix]bool
}

// blockState is one block CIDR: its block and affinity keys, and what the
// last build made of them.
type blockState struct {
	block      *entry   // nil: only affinities name the CIDR
	affinities []*entry // one per node that has one
	// fits says the block would route if no other block held it (of
	// nested blocks, only the outermost that fits routes); routedTo is the
	// node it went to.
	fits     bool
	routedTo string
}

func newIndex(keys calico.Keys, local *config.Cluster, self string) *index {
	return &index{
		keys: keys, self: self, local: local,
		entries: map[string]*entry{}, poolKeys: map[string]bool{},
		blocks: map[netip.Prefix]*blockState{}, hostBlocks: map[string][]netip.Prefix{},
		skipped: map[string]string{}, dirty: map[netip.Prefix]bool{},
		allDirty: true,
	}
}

// setLocal takes the file read again: this node's address, labels and MAC
// may have changed, and with its address which other node is refused.
func (ix *index) setLocal(local *config.Cluster) {
	ix.local = local
	ix.nodesDirty = true
}

// get is the entry of key, nil when there is none.
func (ix *index) get(key string) *entry {
	k, err := ix.keys.Parse(key)
	if err != nil {
		return ix.entries[key]
	}
	return ix.find(key, k)
}

// find is the entry of key, parsed as k.
func (ix *index) find(key string, k calico.Key) *entry {
	if k.Kind != calico.KindBlock && k.Kind != calico.KindAffinity {
		return ix.entries[key]
	}
	bs := ix.blocks[k.CIDR]
	switch {
	case bs == nil:
		return nil
	case k.Kind == calico.KindBlock:
		return bs.block
	}
	return bs.affinity(k.Name)
}

// affinity is node's affinity entry for the block, nil when it has none.
func (bs *blockState) affinity(node string) *entry {
	for _, a := range bs.affinities {
		if a.key.Name == node {
			return a
		}
	}
	return nil
}

// all lists every entry by key.
func (ix *index) all() map[string]*entry {
	out := maps.Clone(ix.entries)
	for _, bs := range ix.blocks {
		if bs.block != nil {
			out[bs.block.id] = bs.block
		}
		for _, a := range bs.affinities {
			out[a.id] = a
		}
	}
	return out
}

// put adds or replaces the entry of key.
func (ix *index) put(key string, e *entry) {
	e.id = key
	if old := ix.find(key, e.key); old != nil { // e.key is the zero Key when key does not parse
		ix.unindex(old)
	}
	switch e.key.Kind {
	case calico.KindIPPool:
		ix.entries[key] = e
		ix.poolKeys[key] = true
		ix.allDirty = true
	case calico.KindNode:
		ix.entries[key] = e
		if i, found := slices.BinarySearch(ix.nodeKeys, key); !found {
			ix.nodeKeys = slices.Insert(ix.nodeKeys, i, key)
		}
		ix.nodesDirty = true
	case calico.KindBlock:
		cidr := e.key.CIDR
		ix.state(cidr).block = e
		ix.markDirty(cidr)
		if e.err == nil {
			ix.sizes[cidr.Bits()]++
			if e.affine {
				ix.hostBlocks[e.host] = append(ix.hostBlocks[e.host], cidr)
			}
		}
	case calico.KindAffinity:
		bs := ix.state(e.key.CIDR)
		bs.affinities = append(bs.affinities, e)
		ix.markDirty(e.key.CIDR)
	default: // a key that does not parse: nothing depends on it
		ix.entries[key] = e
		ix.skipped[key] = e.err.Error()
	}
}

// remove deletes the entry of key, and says whether there was one.
func (ix *index) remove(key string) bool {
	old := ix.get(key)
	if old == nil {
		return false
	}
	ix.unindex(old)
	delete(ix.skipped, key)
	return true
}

// markDirty has the block judged again by the next build, which judges
// every block anyway when allDirty.
func (ix *index) markDirty(cidr netip.Prefix) {
	if !ix.allDirty {
		ix.dirty[cidr] = true
	}
}

func (ix *index) state(cidr netip.Prefix) *blockState {
	bs := ix.blocks[cidr]
	if bs == nil {
		bs = &blockState{}
		ix.blocks[cidr] = bs
	}
	return bs
}

// unindex takes e out, as the entry of its key.
func (ix *index) unindex(e *entry) {
	switch e.key.Kind {
	case calico.KindIPPool:
		delete(ix.entries, e.id)
		delete(ix.poolKeys, e.id)
		ix.allDirty = true
	case calico.KindNode:
		delete(ix.entries, e.id)
		if i, found := slices.BinarySearch(ix.nodeKeys, e.id); found {
			ix.nodeKeys = slices.Delete(ix.nodeKeys, i, i+1)
		}
		ix.nodesDirty = true
	case calico.KindBlock:
		cidr := e.key.CIDR
		ix.blocks[cidr].block = nil
		ix.markDirty(cidr)
		if e.err == nil {
			ix.sizes[cidr.Bits()]--
			if e.affine {
				hb := slices.DeleteFunc(ix.hostBlocks[e.host], func(c netip.Prefix) bool { return c == cidr })
				if len(hb) == 0 {
					delete(ix.hostBlocks, e.host)
				} else {
					ix.hostBlocks[e.host] = hb
				}
			}
		}
	case calico.KindAffinity:
		bs := ix.blocks[e.key.CIDR]
		bs.affinities = slices.DeleteFunc(bs.affinities, func(a *entry) bool { return a == e })
		ix.markDirty(e.key.CIDR)
	default:
		delete(ix.entries, e.id)
	}
}

// skip records why key is left out; why "" means it is not.
func (ix *index) skip(key, why string) {
	switch {
	case why != "":
		ix.skipped[key] = why
	case len(ix.skipped) > 0:
		delete(ix.skipped, key)
	}
}

// build brings the cluster up to date with the changes since the last
// build and returns it.
func (ix *index) build() (built, error) {
	me := ix.local.Node(ix.self)
	if me == nil {
		return built{}, fmt.Errorf("node %q is not in %s (its nodes: %v): with [datastore] type = %q the file keeps this node's own [[nodes]] entry", ix.self, ix.local.Source, ix.local.NodeNames(), config.DatastoreEtcd)
	}
	all := ix.allDirty
	if all {
		ix.buildPools()
		ix.routed = map[string][]pool.Block{}
		for _, bs := range ix.blocks {
			bs.fits, bs.routedTo = false, ""
		}
		ix.nodesDirty = true
	}
	nodesBuilt := ix.nodesDirty
	if ix.nodesDirty {
		ix.buildNodes(me)
	}
	changed := ix.route(all)
	nodes := ix.nodes
	if nodesBuilt {
		for _, n := range nodes {
			n.Blocks = ix.routed[n.Name] // new values, not handed out yet
		}
	} else if len(changed) > 0 {
		nodes = slices.Clone(nodes)
		for name := range changed {
			if i, ok := ix.pos[name]; ok {
				n := *nodes[i]
				n.Blocks = ix.routed[name]
				nodes[i] = &n
			}
		}
	}
	ix.nodes = nodes
	ix.allDirty, ix.nodesDirty = false, false
	c := *ix.local
	c.Pools, c.Nodes = ix.pools, nodes
	return built{cluster: &c, skipped: maps.Clone(ix.skipped), claimPools: ix.claim}, nil
}

// buildPools keeps the valid pools. Of two that overlap the one created
// first stays (Calico refuses the second when it is created; one written
// past Calico's checks is the intruder), then the one first by name. It
// keeps the pools blocks may be claimed from, in that order.
func (ix *index) buildPools() {
	var valid []keyed
	for k := range ix.poolKeys {
		e := ix.entries[k]
		if e.err != nil {
			ix.skip(k, e.err.Error())
			continue
		}
		valid = append(valid, keyed{k, e})
	}
	slices.SortFunc(valid, func(x, y keyed) int {
		tx, ty := x.ippool.Metadata.CreationTimestamp, y.ippool.Metadata.CreationTimestamp
		if (tx == "") != (ty == "") {
			return cmp.Compare(ty, tx) // one without a creation time goes after
		}
		return cmp.Or(cmp.Compare(tx, ty), cmp.Compare(x.key.Name, y.key.Name), cmp.Compare(x.id, y.id))
	})
	ix.pools, ix.claim = nil, nil
	for _, p := range valid {
		if err := pool.ValidateSet(append(slices.Clip(ix.pools), p.pool)); err != nil {
			ix.skip(p.id, err.Error())
			continue
		}
		ix.skip(p.id, "")
		ix.pools = append(ix.pools, p.pool)
		if !p.pool.Disabled && p.ippool.AutoAssign() && (p.ippool.Allows(calico.AllowedUseWorkload) || p.ippool.Allows(calico.AllowedUseTunnel)) {
			ix.claim = append(ix.claim, p.ippool)
		}
	}
}

// keyed is an entry with its key as etcd has it.
type keyed struct {
	id string
	*entry
}

// buildNodes makes this node from the file, with its tunnel address from
// its Node in the datastore, and every other node from its Node resource,
// all as new values without blocks. Felix cannot route to a node without
// spec.bgp.ipv4Address; an underlay address inside a pool or another
// node's is refused as the file refuses it. The blocks of a node that came
// or went are routed again.
func (ix *index) buildNodes(me *config.Node) {
	self := &config.Node{Name: me.Name, Address: me.Address, Labels: me.Labels, VTEPMAC: me.VTEPMAC}
	if e, ok := ix.entries[ix.keys.Node(me.Name)]; ok && e.err == nil {
		self.TunnelAddr = tunnelAddr(*e.node)
	}
	nodes := []*config.Node{self}
	pos := map[string]int{self.Name: 0}
	addrs := map[netip.Addr]string{self.Address.Addr(): self.Name}
	for _, k := range ix.nodeKeys {
		e := ix.entries[k]
		if e.err != nil {
			ix.skip(k, e.err.Error())
			continue
		}
		info := *e.node
		if info.Name == self.Name {
			ix.skip(k, "")
			continue
		}
		why := ""
		other, dup := addrs[info.Address.Addr()]
		i := slices.IndexFunc(ix.pools, func(p *pool.IPPool) bool { return p.CIDR.Contains(info.Address.Addr()) })
		switch {
		case !info.Address.IsValid():
			why = fmt.Sprintf("Node %q has no spec.bgp.ipv4Address: nothing can be routed to it", info.Name)
		case dup:
			why = fmt.Sprintf("Node %q: address %s is also node %q's", info.Name, info.Address.Addr(), other)
		case i >= 0:
			p := ix.pools[i]
			why = fmt.Sprintf("Node %q: address %s lies in pool %q (%s): underlay addresses must be outside every pool", info.Name, info.Address.Addr(), p.Name, p.CIDR)
		}
		ix.skip(k, why)
		if why != "" {
			continue
		}
		addrs[info.Address.Addr()] = info.Name
		pos[info.Name] = len(nodes)
		nodes = append(nodes, &config.Node{Name: info.Name, Address: info.Address, Labels: info.Labels, VTEPMAC: info.VTEPMAC, TunnelAddr: tunnelAddr(info)})
	}
	for name := range ix.pos {
		if _, ok := pos[name]; !ok {
			ix.dirtyHost(name)
		}
	}
	for name := range pos {
		if _, ok := ix.pos[name]; !ok {
			ix.dirtyHost(name)
		}
	}
	ix.nodes, ix.pos = nodes, pos
}

func (ix *index) dirtyHost(name string) {
	for _, cidr := range ix.hostBlocks[name] {
		ix.markDirty(cidr)
	}
}

// tunnelAddr is the node's VXLAN tunnel address, else its IP-in-IP one.
func tunnelAddr(info calico.NodeInfo) netip.Addr {
	if info.VXLANTunnelAddr.IsValid() {
		return info.VXLANTunnelAddr
	}
	return info.IPIPTunnelAddr
}

// verdict is what a block's own checks say: the node it goes to, or why
// not, and its pool (nil: in none). used is the affinity that gave the
// block its node, or says why not (the block's reason covers it).
type verdict struct {
	host, why string
	used      *entry
	pool      *pool.IPPool
}

func (v verdict) fits() bool { return v.why == "" && v.pool != nil }

// judge runs the checks of a decoded block that do not depend on other
// blocks.
func (ix *index) judge(cidr netip.Prefix, bs *blockState) verdict {
	blk := bs.block
	v := verdict{host: blk.host}
	v.why = func() string {
		if !blk.affine {
			return fmt.Sprintf("block %s has no host affinity: overlayd routes whole blocks to nodes", cidr)
		}
		if blk.deleted {
			return fmt.Sprintf("block %s is marked deleted", cidr)
		}
		aff := bs.affinity(blk.host)
		switch {
		case aff == nil:
			return fmt.Sprintf("block %s names host %q, which has no affinity for it", cidr, blk.host)
		case aff.err != nil:
			return fmt.Sprintf("block %s: host %q's affinity for it is malformed", cidr, blk.host)
		case !aff.confirmed:
			v.used = aff
			return fmt.Sprintf("block %s: host %q's affinity is %q, not confirmed", cidr, blk.host, aff.state)
		}
		v.used = aff
		if _, known := ix.pos[blk.host]; !known {
			return fmt.Sprintf("block %s: its node %q is not a known node", cidr, blk.host)
		}
		return ""
	}()
	if i := slices.IndexFunc(ix.pools, func(p *pool.IPPool) bool {
		return p.CIDR.Bits() <= cidr.Bits() && p.CIDR.Contains(cidr.Addr())
	}); i >= 0 {
		v.pool = ix.pools[i]
	}
	return v
}

// judged is a block CIDR and its verdict, for the length of a build.
type judged struct {
	cidr netip.Prefix
	bs   *blockState
	v    verdict
}

// route judges the blocks marked dirty (all: every block), routes or
// skips each, says why each of their affinities that routes nothing is
// skipped, and returns the nodes whose blocks changed.
//
// Of nested blocks, the outermost that fits routes and the ones inside it
// are skipped: what routing the blocks in address order, each unless it
// overlaps the last routed, gives. So when whether a block fits changes,
// the blocks inside it are judged again too (all judges them anyway).
func (ix *index) route(all bool) map[string]bool {
	var items []judged
	judgeOne := func(cidr netip.Prefix, bs *blockState) {
		v := verdict{why: "no block"}
		if bs.block != nil && bs.block.err == nil {
			v = ix.judge(cidr, bs)
		}
		items = append(items, judged{cidr, bs, v})
		if v.fits() == bs.fits {
			return
		}
		bs.fits = v.fits()
		if all {
			return
		}
		for _, inner := range ix.inside(cidr) {
			ix.dirty[inner] = true // judged below, after the ones marked before
		}
	}
	if all {
		items = make([]judged, 0, len(ix.blocks))
		for cidr, bs := range ix.blocks {
			judgeOne(cidr, bs)
		}
	} else {
		done := make(map[netip.Prefix]bool, len(ix.dirty))
		for len(done) < len(ix.dirty) {
			for cidr := range ix.dirty {
				if done[cidr] {
					continue
				}
				done[cidr] = true
				if bs := ix.blocks[cidr]; bs != nil {
					judgeOne(cidr, bs)
				}
			}
		}
	}
	changed := map[string]bool{}
	owned := map[string]bool{} // nodes whose routed slice is new in this build
	for _, it := range items {
		cidr, bs, v := it.cidr, it.bs, it.v
		routeTo := ""
		if blk := bs.block; blk != nil {
			why := v.why
			if blk.err != nil {
				why = blk.err.Error()
			}
			if why == "" {
				if outer, ok := ix.outermostFit(cidr); ok {
					why = fmt.Sprintf("block %s overlaps block %s", cidr, outer)
				} else if v.pool == nil {
					why = fmt.Sprintf("block %s lies in no known IPPool", cidr)
				} else {
					routeTo = v.host
				}
			}
			ix.skip(blk.id, why)
		}
		if all {
			// Every node's list is new: sorted once below.
			if routeTo != "" {
				ix.routed[routeTo] = append(ix.routed[routeTo], pool.Block{Prefix: cidr, Pool: v.pool})
			}
			bs.routedTo = routeTo
		} else {
			ix.reroute(cidr, bs, routeTo, v.pool, changed, owned)
		}
		ix.judgeAffinities(cidr, bs, v.used)
		if bs.block == nil && len(bs.affinities) == 0 {
			delete(ix.blocks, cidr)
		}
	}
	if all {
		for _, bs := range ix.routed {
			slices.SortFunc(bs, func(a, b pool.Block) int { return blockCompare(a, b.Prefix) })
		}
	}
	clear(ix.dirty)
	return changed
}

// reroute moves cidr's block to node to ("": no node), keeping each
// node's blocks in address order. A node's slice may be in a cluster
// handed out: it is copied before its first change in a build (owned).
func (ix *index) reroute(cidr netip.Prefix, bs *blockState, to string, p *pool.IPPool, changed, owned map[string]bool) {
	from := bs.routedTo
	if from == to && to != "" {
		i, _ := slices.BinarySearchFunc(ix.routed[to], cidr, blockCompare)
		if ix.routed[to][i].Pool == p {
			return
		}
	}
	edit := func(node string, f func([]pool.Block) []pool.Block) {
		bs := ix.routed[node]
		if !owned[node] {
			bs = slices.Clone(bs)
			owned[node] = true
		}
		if bs = f(bs); len(bs) == 0 {
			delete(ix.routed, node)
		} else {
			ix.routed[node] = bs
		}
		changed[node] = true
	}
	if from != "" {
		edit(from, func(bs []pool.Block) []pool.Block {
			i, _ := slices.BinarySearchFunc(bs, cidr, blockCompare)
			return slices.Delete(bs, i, i+1)
		})
	}
	if to != "" {
		edit(to, func(bs []pool.Block) []pool.Block {
			i, _ := slices.BinarySearchFunc(bs, cidr, blockCompare)
			return slices.Insert(bs, i, pool.Block{Prefix: cidr, Pool: p})
		})
	}
	bs.routedTo = to
}

// blockCompare orders blocks by address, then size.
func blockCompare(b pool.Block, cidr netip.Prefix) int {
	return cmp.Or(b.Prefix.Addr().Compare(cidr.Addr()), cmp.Compare(b.Prefix.Bits(), cidr.Bits()))
}

// judgeAffinities says why each affinity of cidr that gave the block no
// node is skipped; used is the one the block's verdict covers.
func (ix *index) judgeAffinities(cidr netip.Prefix, bs *blockState, used *entry) {
	for _, a := range bs.affinities {
		if a.err != nil {
			ix.skip(a.id, a.err.Error())
			continue
		}
		why := ""
		if a != used {
			switch blk := bs.block; {
			case !a.confirmed:
				why = fmt.Sprintf("node %q's affinity for %s is %q, not confirmed", a.key.Name, cidr, a.state)
			case blk == nil:
				why = fmt.Sprintf("node %q's affinity for %s has no block", a.key.Name, cidr)
			case blk.err == nil:
				why = fmt.Sprintf("node %q's affinity for %s: the block is host %q's", a.key.Name, cidr, blk.host)
			}
			// A malformed block is skipped under its own key.
		}
		ix.skip(a.id, why)
	}
}

// outermostFit is the largest block that fits and holds cidr, if any.
func (ix *index) outermostFit(cidr netip.Prefix) (netip.Prefix, bool) {
	for bits := range cidr.Bits() {
		if ix.sizes[bits] == 0 {
			continue
		}
		outer, _ := cidr.Addr().Prefix(bits)
		if bs := ix.blocks[outer]; bs != nil && bs.fits {
			return outer, true
		}
	}
	return netip.Prefix{}, false
}

// inside lists the decoded blocks held by cidr. Blocks all of one size,
// as a pool's are, nest in none.
func (ix *index) inside(cidr netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	decoded := func(c netip.Prefix) bool {
		bs := ix.blocks[c]
		return bs != nil && bs.block != nil && bs.block.err == nil
	}
	for bits := cidr.Bits() + 1; bits <= 32; bits++ {
		if ix.sizes[bits] == 0 {
			continue
		}
		if 1<<(bits-cidr.Bits()) > len(ix.blocks) {
			// Fewer blocks than places to look: look at the blocks.
			for c := range ix.blocks {
				if c.Bits() == bits && cidr.Contains(c.Addr()) && decoded(c) {
					out = append(out, c)
				}
			}
			continue
		}
		step := netip.PrefixFrom(cidr.Addr(), bits)
		for range 1 << (bits - cidr.Bits()) {
			if decoded(step) {
				out = append(out, step)
			}
			step = netip.PrefixFrom(addAddr(step.Addr(), 1<<(32-bits)), bits)
		}
	}
	return out
}

// addAddr is a plus n, wrapping.
func addAddr(a netip.Addr, n uint32) netip.Addr {
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) + n
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
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
	if a == b {
		return true // a build shares the nodes whose blocks did not change
	}
	return a.Name == b.Name && a.Address == b.Address && maps.Equal(a.Labels, b.Labels) &&
		bytes.Equal(a.VTEPMAC, b.VTEPMAC) && a.TunnelAddr == b.TunnelAddr && sameBlocks(a.Blocks, b.Blocks)
}

// sameBlocks compares two nodes' blocks; a node list built again shares
// each node's unchanged blocks with the last, which need no comparing.
func sameBlocks(a, b []pool.Block) bool {
	if len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0]) {
		return true
	}
	return slices.EqualFunc(a, b, func(x, y pool.Block) bool { return x.Prefix == y.Prefix && x.Pool.Equal(y.Pool) })
}
