package etcd

import (
	"hash/fnv"
	"iter"
	"math/big"
	"math/rand"
	"net/netip"
)

// candidates yields every block of the pool (cidr cut into /blockSize
// blocks) once, in address order, starting at the block Calico's
// randomBlockGenerator starts at for host and wrapping around
// (libcalico-go/lib/ipam/ipam_block_reader_writer.go). Nodes with different
// names start at different points, so thousands of nodes joining at once do
// not all race for the first free block, and an overlayd node starts where a
// calico-node of the same name would.
func candidates(cidr netip.Prefix, blockSize int, host string) iter.Seq[netip.Prefix] {
	n := uint64(1) << (blockSize - cidr.Bits())
	base := addrUint32(cidr.Addr())
	step := uint64(1) << (32 - blockSize)
	start := candidateStart(host, n)
	return func(yield func(netip.Prefix) bool) {
		for i := range n {
			idx := (start + i) % n
			if !yield(netip.PrefixFrom(uint32Addr(uint32(uint64(base)+idx*step)), blockSize)) {
				return
			}
		}
	}
}

// candidateStart is the index of the first candidate among n blocks:
// Calico's determineSeed (FNV-1 32 of the host name) seeding math/rand, and
// big.Int.Rand drawing the index, exactly as randomBlockGenerator does.
// Calico seeds /32 blocks from the clock instead; overlayd keeps the name
// for every block size, so that a node's first candidate does not change
// between runs.
func candidateStart(host string, n uint64) uint64 {
	h := fnv.New32()
	h.Write([]byte(host)) // a hash.Hash never fails to write
	r := rand.New(rand.NewSource(int64(h.Sum32())))
	return new(big.Int).Rand(r, new(big.Int).SetUint64(n)).Uint64()
}

func addrUint32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func uint32Addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
