package dataplane

import (
	"encoding/binary"
	"net/netip"
)

// Limits of the block grids: beyond them the table answers with its trie.
// A grid is one pointer per block of its pool (2 MiB for a /8 of /26
// blocks), and pools are found by a linear scan.
const (
	maxGridSlots = 1 << 20
	maxGrids     = 8
)

// blockGrid finds the blocks of one pool by indexing: every block of an
// IPPool has the pool's blockSize and is aligned to it, so the address bits
// between the pool's prefix and the block size number its block. A lookup
// is a mask, a compare and a load, where a trie walks several levels.
type blockGrid struct {
	base, mask uint32 // the pool's network and netmask
	shift      uint8  // 32 - the blocks' prefix length
	slots      []*dest
	noBlock    *dest // a pool address in no block
}

// gridsFor builds a grid per pool when every pool qualifies: at most
// maxGrids pools, each of whose blocks has one prefix length and whose grid
// has at most maxGridSlots, and every block inside a pool. Otherwise it
// returns nil and the table keeps to its trie. blocks are the pools'
// blocks with their dest, as the trie has them.
func gridsFor(pools []netip.Prefix, noBlock []*dest, blocks []netip.Prefix, dests []*dest) []blockGrid {
	if len(pools) == 0 || len(pools) > maxGrids {
		return nil
	}
	grids := make([]blockGrid, len(pools))
	bits := make([]int, len(pools)) // the blocks' prefix length, per pool
	for i, p := range pools {
		grids[i] = blockGrid{base: u32(p.Addr()), mask: netmask(p.Bits()), noBlock: noBlock[i]}
		bits[i] = -1
	}
	owner := make([]int, len(blocks))
	for j, b := range blocks {
		owner[j] = -1
		for i, p := range pools {
			if p.Bits() <= b.Bits() && p.Contains(b.Addr()) {
				owner[j] = i
				break
			}
		}
		i := owner[j]
		if i < 0 || (bits[i] >= 0 && bits[i] != b.Bits()) {
			return nil // a block outside the pools, or two block sizes in one
		}
		bits[i] = b.Bits()
	}
	for i, p := range pools {
		if bits[i] < 0 {
			bits[i] = p.Bits() // no blocks: every address is noBlock
		}
		n := 1 << (bits[i] - p.Bits())
		if n > maxGridSlots {
			return nil
		}
		grids[i].shift = uint8(32 - bits[i])
		grids[i].slots = make([]*dest, n)
	}
	for j, b := range blocks {
		g := &grids[owner[j]]
		g.slots[(u32(b.Addr())-g.base)>>g.shift] = dests[j]
	}
	return grids
}

// lookup returns the dest of a, and whether a is in this grid's pool.
func (g *blockGrid) lookup(a uint32) (*dest, bool) {
	if a&g.mask != g.base {
		return nil, false
	}
	if d := g.slots[(a-g.base)>>g.shift]; d != nil {
		return d, true
	}
	return g.noBlock, true
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func netmask(bits int) uint32 {
	if bits == 0 {
		return 0
	}
	return ^uint32(0) << (32 - bits)
}
