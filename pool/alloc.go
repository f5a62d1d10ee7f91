package pool

import (
	"fmt"
	"net/netip"
	"strings"
)

// NodeRequest is what allocation needs to know of a node.
type NodeRequest struct {
	Name   string
	Labels map[string]string
	// Blocks listed for the node in the file; empty means "allocate one".
	Blocks []netip.Prefix
}

// Block is one per-node block and the pool it was cut from.
type Block struct {
	Prefix netip.Prefix
	Pool   *IPPool
}

// NodeBlocks is the allocation result for one node, in the order of the
// request. Blocks may be empty when no enabled pool selects the node: such a
// node hosts no workloads but still takes part in the overlay.
type NodeBlocks struct {
	Node   string
	Blocks []Block
}

// BlockError is an allocation failure. Node and Index (into the node's
// listed blocks, -1 when the failure is not about a listed block) let a
// caller point at the line responsible.
type BlockError struct {
	Node  string
	Index int
	Msg   string
}

func (e *BlockError) Error() string {
	return fmt.Sprintf("node %q: blocks: %s", e.Node, e.Msg)
}

// Allocate gives every node its blocks. The pools must not overlap, as
// ValidateSet ensures.
//
// Listed blocks are taken as they are, once checked: each must be exactly a
// block of some pool (IPPool.HasBlock: of the pool's blockSize, aligned, and
// wholly inside the pool, as Calico's blockGenerator cuts them) and, if the pool is
// enabled, the pool's nodeSelector must select the node. A disabled pool's
// listed blocks are accepted whatever its selector says, because disabling
// (like a selector change in Calico) stops new allocations only: existing
// blocks keep routing.
//
// A node without listed blocks gets the first free block of the first
// enabled pool, in file order, whose nodeSelector selects it. Nodes are taken
// in file order and a block listed further down the file is not reserved in
// advance, so appending a node never moves an earlier node's block; a listed
// block that an earlier node was already given is an error instead.
func Allocate(pools []*IPPool, nodes []NodeRequest) ([]NodeBlocks, error) {
	owner := newBlockOwners()
	result := make([]NodeBlocks, 0, len(nodes))
	for _, n := range nodes {
		nb := NodeBlocks{Node: n.Name}
		if len(n.Blocks) > 0 {
			for i, b := range n.Blocks {
				blk, err := listedBlock(pools, n, i, b)
				if err != nil {
					return nil, err
				}
				if other, clash := owner.overlapping(b); clash {
					return nil, &BlockError{Node: n.Name, Index: i, Msg: fmt.Sprintf(
						"%s overlaps block %s of %s", b, other.prefix, describeOwner(other))}
				}
				owner.add(b, n.Name, false)
				nb.Blocks = append(nb.Blocks, blk)
			}
		} else {
			blk, ok, err := firstFreeBlock(pools, n, owner)
			if err != nil {
				return nil, err
			}
			if ok {
				owner.add(blk.Prefix, n.Name, true)
				nb.Blocks = append(nb.Blocks, blk)
			}
		}
		result = append(result, nb)
	}
	return result, nil
}

func listedBlock(pools []*IPPool, n NodeRequest, i int, b netip.Prefix) (Block, error) {
	fail := func(format string, args ...any) error {
		return &BlockError{Node: n.Name, Index: i, Msg: fmt.Sprintf(format, args...)}
	}
	if !b.Addr().Is4() {
		return Block{}, fail("%s is not an IPv4 block", b)
	}
	if b.Masked() != b {
		return Block{}, fail("%s is not strictly masked (did you mean %s?)", b, b.Masked())
	}
	for _, p := range pools {
		if !p.CIDR.Overlaps(b) {
			continue
		}
		if !p.HasBlock(b) {
			// b overlaps the pool, so it lies outside only if it is larger.
			if b.Bits() < p.CIDR.Bits() {
				return Block{}, fail("%s is not a block of pool %q: it does not lie wholly inside %s", b, p.Name, p.CIDR)
			}
			return Block{}, fail("%s is not a block of pool %q (%s is cut into /%d blocks)", b, p.Name, p.CIDR, p.BlockSize)
		}
		if !p.Disabled && !p.NodeSelector.Matches(n.Labels) {
			return Block{}, fail("%s is in pool %q, whose nodeSelector %s does not select this node", b, p.Name, p.NodeSelector)
		}
		return Block{Prefix: b, Pool: p}, nil
	}
	return Block{}, fail("%s lies in no pool", b)
}

func firstFreeBlock(pools []*IPPool, n NodeRequest, owner *blockOwners) (Block, bool, error) {
	var exhausted []string
	for _, p := range pools {
		if p.Disabled || !p.NodeSelector.Matches(n.Labels) {
			continue
		}
		if b, ok := owner.firstFree(p); ok {
			return Block{Prefix: b, Pool: p}, true, nil
		}
		exhausted = append(exhausted, fmt.Sprintf("pool %q (%s in /%d blocks)", p.Name, p.CIDR, p.BlockSize))
	}
	if len(exhausted) > 0 {
		return Block{}, false, &BlockError{Node: n.Name, Index: -1, Msg: fmt.Sprintf(
			"no free block: exhausted: %s; add a pool, use a larger blockSize (smaller blocks), or list blocks for the node",
			strings.Join(exhausted, ", "))}
	}
	return Block{}, false, nil
}

type blockOwner struct {
	prefix netip.Prefix
	node   string
	auto   bool
}

func describeOwner(o blockOwner) string {
	if o.auto {
		return fmt.Sprintf("node %q (allocated automatically, because that node lists no blocks)", o.node)
	}
	return fmt.Sprintf("node %q", o.node)
}

// blockOwners records the blocks handed out so far. The pools do not
// overlap (ValidateSet) and every block is exactly a block of its pool, so
// two blocks overlap only when they are the same block: a map by prefix
// answers in the same time with ten nodes or ten thousand.
type blockOwners struct {
	taken map[netip.Prefix]blockOwner
	// next is, per pool, the index of the first block that may be free.
	// Blocks are only ever added during an allocation, so the first free
	// block of a pool never moves backwards and each pool is walked once.
	next map[*IPPool]uint64
}

func newBlockOwners() *blockOwners {
	return &blockOwners{taken: map[netip.Prefix]blockOwner{}, next: map[*IPPool]uint64{}}
}

func (o *blockOwners) add(p netip.Prefix, node string, auto bool) {
	o.taken[p] = blockOwner{prefix: p, node: node, auto: auto}
}

// overlapping returns the block already handed out that overlaps p: p
// itself, if it was.
func (o *blockOwners) overlapping(p netip.Prefix) (blockOwner, bool) {
	b, ok := o.taken[p]
	return b, ok
}

// firstFree returns the pool's first block, in address order, not handed
// out yet.
func (o *blockOwners) firstFree(p *IPPool) (netip.Prefix, bool) {
	step := uint64(1) << (32 - p.BlockSize)
	base := uint64(addrToUint32(p.CIDR.Addr()))
	count := uint64(1) << (p.BlockSize - p.CIDR.Bits())
	for i := o.next[p]; i < count; i++ {
		b := netip.PrefixFrom(uint32ToAddr(uint32(base+i*step)), p.BlockSize)
		if _, clash := o.overlapping(b); clash {
			continue
		}
		o.next[p] = i
		return b, true
	}
	o.next[p] = count
	return netip.Prefix{}, false
}

func addrToUint32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func uint32ToAddr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
