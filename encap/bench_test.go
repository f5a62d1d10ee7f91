package encap

import (
	"encoding/binary"
	"fmt"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// The benchmarks loop over b.N rather than b.Loop: b.Loop keeps every result
// of the call in its body alive by spilling it to memory and copying it back
// with wide loads, which stalls store forwarding and adds 5-20 ns that no real
// caller pays. A caller uses the results, so the loops do too, through sinks.

// benchSizes are the inner packet sizes of the data-path benchmarks: a bare
// TCP ACK, a mid-size packet and a full one under a 1450/1480 tunnel MTU.
var benchSizes = []int{64, 512, 1400}

func BenchmarkEncap(b *testing.B) {
	for _, size := range benchSizes {
		inner := innerOfSize(b, size)
		e := newTestEncapsulator(b)
		buf, n := atHeadroom(inner)
		b.Run(fmt.Sprintf("IPIP/%d", size), func(b *testing.B) {
			b.SetBytes(int64(size))
			for range b.N {
				sinkBytes = e.IPIP(buf, n, nodeB)
			}
		})
		b.Run(fmt.Sprintf("VXLANPayload/%d", size), func(b *testing.B) {
			b.SetBytes(int64(size))
			for range b.N {
				sinkBytes = e.VXLANPayload(buf, n, vtepMACB)
			}
		})
	}
}

func BenchmarkDecap(b *testing.B) {
	for _, size := range benchSizes {
		inner := innerOfSize(b, size)
		e := newTestEncapsulator(b)
		buf, n := atHeadroom(inner)
		ipip := append([]byte(nil), e.IPIP(buf, n, nodeB)...)
		payload := append([]byte(nil), e.VXLANPayload(buf, n, vtepMACB)...)
		b.Run(fmt.Sprintf("IPIP/%d", size), func(b *testing.B) {
			b.SetBytes(int64(size))
			for range b.N {
				inner, _, r := DecapIPIP(ipip)
				if r != NoDrop {
					b.Fatal(r)
				}
				sinkBytes = inner
			}
		})
		b.Run(fmt.Sprintf("VXLANPayload/%d", size), func(b *testing.B) {
			b.SetBytes(int64(size))
			for range b.N {
				inner, _, r := DecapVXLANPayload(payload, testVNI, 0)
				if r != NoDrop {
					b.Fatal(r)
				}
				sinkBytes = inner
			}
		})
	}
}

func BenchmarkFlowHash(b *testing.B) {
	inner := innerOfSize(b, 64)
	for range b.N {
		sinkHash = FlowHash(inner)
	}
}

func BenchmarkFragNeeded(b *testing.B) {
	inner := innerOfSize(b, 1400)
	dst := make([]byte, MaxICMPErrorLen)
	for range b.N {
		sinkBytes = FragNeeded(dst, inner, routerAddr, 1400)
	}
}

// BenchmarkHeaderChecksum is why the outer header has its own sum: gVisor's
// general routine against the fixed 20-byte one.
func BenchmarkHeaderChecksum(b *testing.B) {
	h := innerOfSize(b, 64)[:20]
	b.Run("gvisor-checksum.Checksum", func(b *testing.B) {
		for range b.N {
			sinkSum = checksum.Checksum(h, 0)
		}
	})
	b.Run("ipv4HeaderSum", func(b *testing.B) {
		for range b.N {
			sinkSum = ipv4HeaderSum(h)
		}
	})
}

var (
	sinkSum   uint16
	sinkHash  uint32
	sinkBytes []byte
)

// BenchmarkOuterHeader compares ways of writing the outer IPv4 header:
// through gVisor's header.IPv4 accessors with the checksum summed from the
// field values (what putOuterIPv4 does), the same summing the header back
// from memory, and three wide stores by hand.
func BenchmarkOuterHeader(b *testing.B) {
	inner := innerOfSize(b, 64)
	e := newTestEncapsulator(b)
	h := make([]byte, 20)
	b.Run("header-views", func(b *testing.B) {
		for range b.N {
			e.putOuterIPv4(h, inner, ipProtoIPIP, nodeB, 84)
		}
	})
	b.Run("header-views-sum-from-memory", func(b *testing.B) {
		for range b.N {
			e.putOuterIPv4(h, inner, ipProtoIPIP, nodeB, 84)
			header.IPv4(h).SetChecksum(0)
			header.IPv4(h).SetChecksum(^ipv4HeaderSum(h))
		}
	})
	b.Run("wide-stores", func(b *testing.B) {
		for range b.N {
			putOuterIPv4Wide(e, h, inner, ipProtoIPIP, nodeB, 84)
		}
	})
}

// putOuterIPv4Wide is putOuterIPv4 written as three wide stores without
// header views, only for BenchmarkOuterHeader.
func putOuterIPv4Wide(e *Encapsulator, h, inner []byte, proto uint8, dst [4]byte, totalLen int) {
	_ = h[19]
	_ = inner[19]
	df := inner[6] & 0x40
	var id uint16
	if df == 0 {
		e.nextID++
		id = e.nextID
	}
	w0 := uint64(ipv4VersionIHL5)<<56 | uint64(inner[1])<<48 | uint64(totalLen)<<32 | uint64(id)<<16 | uint64(df)<<8
	w1 := uint32(OuterTTL)<<24 | uint32(proto)<<16
	w2 := uint64(binary.BigEndian.Uint32(e.cfg.Local[:]))<<32 | uint64(binary.BigEndian.Uint32(dst[:]))
	s := uint64(w0>>32) + w0&0xffffffff + uint64(w1) + w2>>32 + w2&0xffffffff
	s = s&0xffff + s>>16
	s = s&0xffff + s>>16
	s = s&0xffff + s>>16
	binary.BigEndian.PutUint64(h[0:], w0)
	binary.BigEndian.PutUint32(h[8:], w1|uint32(^uint16(s)))
	binary.BigEndian.PutUint64(h[12:], w2)
}

// BenchmarkOuterChecksumVerify is the cost of verifying the outer header
// checksum at decapsulation, which a raw socket has already done.
func BenchmarkOuterChecksumVerify(b *testing.B) {
	h := header.IPv4(innerOfSize(b, 64))
	for range b.N {
		sinkBool = ipv4HeaderSum(h) == 0xffff
	}
}

var sinkBool bool
