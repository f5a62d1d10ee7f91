package encap

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// The fast sums agree with the plain one on random data of every length up
// to 300 bytes (odd ones included) and at every alignment within a word,
// which gVisor's routine handles separately.
func TestFastSumsMatchReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	backing := make([]byte, 320)
	for length := 0; length <= 300; length++ {
		for align := range 8 {
			b := backing[align : align+length]
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
			if got, want := checksum.Checksum(b, 0), refSum(b); got != want {
				t.Fatalf("checksum.Checksum(%d bytes at +%d) = %#x, reference %#x", length, align, got, want)
			}
			if length == 20 {
				if got, want := ipv4HeaderSum(b), refSum(b); got != want {
					t.Fatalf("ipv4HeaderSum(%x) = %#x, reference %#x", b, got, want)
				}
			}
		}
	}
}

func TestIPv4HeaderSumEdgeCases(t *testing.T) {
	fill := func(v byte) []byte { return bytes.Repeat([]byte{v}, 20) }
	cases := []struct {
		name string
		b    []byte
	}{
		{"all zero", fill(0x00)},
		{"all ones (largest carries)", fill(0xff)},
		{"0x80 (carry out of every word)", fill(0x80)},
		// 0xffffffff + 0x00010000 = 0x1_0000_ffff needs a third fold.
		{"carry out of the second fold", append([]byte{0xff, 0xff, 0xff, 0xff, 0, 1, 0, 0}, make([]byte, 12)...)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.b
			if got, want := ipv4HeaderSum(b), refSum(b); got != want {
				t.Errorf("ipv4HeaderSum = %#x, reference %#x", got, want)
			}
		})
	}
}

// ChecksumUpdate gives the checksum a full recomputation gives, for random
// headers and random changes of one aligned word (RFC 1624).
func TestChecksumUpdateMatchesRecompute(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 20000 {
		length := 2 * (2 + rng.IntN(40)) // even: the field and word are aligned
		b := make([]byte, length)
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		if i%10 == 0 { // runs of 0x00 and 0xff stress the +0/-0 corner
			for j := range b {
				b[j] = 0xff * byte(rng.IntN(2))
			}
		}
		binary.BigEndian.PutUint16(b, 0)
		binary.BigEndian.PutUint16(b, ^refSum(b))
		word := 2 * (1 + rng.IntN(length/2-1)) // any word but the checksum
		old := binary.BigEndian.Uint16(b[word:])
		next := uint16(rng.Uint32())
		if i%7 == 0 {
			next = 0
		}
		binary.BigEndian.PutUint16(b[word:], next)

		updated := ChecksumUpdate(binary.BigEndian.Uint16(b), old, next)
		binary.BigEndian.PutUint16(b, 0)
		full := ^refSum(b)
		if full == 0xffff {
			// All-zero data: a case no IPv4 header reaches (its version is
			// never 0) and the one where equation 3 yields +0, which does
			// not verify.
			continue
		}
		binary.BigEndian.PutUint16(b, updated)
		if s := refSum(b); s != 0xffff {
			t.Fatalf("case %d: after update the data sums to %#x, not 0xffff (updated %#x, full %#x)", i, s, updated, full)
		}
		if updated != full {
			t.Fatalf("case %d: ChecksumUpdate = %#x, recomputation %#x", i, updated, full)
		}
	}
}

func TestChecksumUpdateExamples(t *testing.T) {
	// RFC 1624 section 4: the example where eqn 2 gives -0 and eqn 3 the
	// right 0x0000: HC = 0xdd2f, m = 0x5555, m' = 0x3285.
	cases := []struct {
		xsum, old, new, want uint16
	}{
		{0xdd2f, 0x5555, 0x3285, 0x0000},
		{0x1234, 0xabcd, 0xabcd, 0x1234}, // no change, no change
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%#x/%#x->%#x", tc.xsum, tc.old, tc.new), func(t *testing.T) {
			if got := ChecksumUpdate(tc.xsum, tc.old, tc.new); got != tc.want {
				t.Errorf("ChecksumUpdate = %#x, want %#x", got, tc.want)
			}
		})
	}
}
