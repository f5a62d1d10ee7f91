package encap

import "fmt"

// Headroom is where a packet starts in every data-path buffer. The bytes in
// front of it take the outer headers written in place (IPIPOverhead,
// VXLANPayloadLen, the 28 bytes of IPv4 and ICMP headers of an ICMP error)
// and, when the buffer goes to a TUN device with offloads, the 10-byte
// virtio-net header wireguard-go's tun.Device.Write puts just before the
// packet. 64 keeps the packet start aligned.
//
// On receive, reading the underlay packet into buf[Headroom-overhead:] (with
// overhead IPIPOverhead for a raw IP-in-IP socket, VXLANPayloadLen for a UDP
// socket) lands the inner packet at Headroom after decapsulation, ready for
// a TUN write with offset Headroom.
const Headroom = 64

// Batch is a set of data-path buffers owned and reused by one packet loop. It
// matches the (bufs, sizes, offset) arguments of wireguard-go's tun.Device
// Read and Write with offset Headroom: packet i is
// Bufs[i][Headroom:Headroom+Sizes[i]].
type Batch struct {
	// Bufs are the buffers, each of the size given to NewBatch. Their
	// capacity ends where the buffer does, so growing one in place (as TUN
	// GRO does) never spills into its neighbour.
	Bufs [][]byte
	// Sizes are the packet lengths, one per buffer, counted from Headroom.
	Sizes []int
}

// NewBatch allocates count buffers of bufSize bytes each, bufSize counting
// the headroom: a buffer holds a packet of up to bufSize-Headroom bytes. A TUN
// with offloads wants 65535+Headroom so GRO can coalesce in place. The
// buffers share one allocation. It panics if count is negative or bufSize
// leaves no room for a packet, which is a programming error.
func NewBatch(count, bufSize int) *Batch {
	if count < 0 || bufSize <= Headroom {
		panic(fmt.Sprintf("encap.NewBatch(%d, %d): need count >= 0 and bufSize > Headroom (%d)", count, bufSize, Headroom))
	}
	slab := make([]byte, count*bufSize)
	b := &Batch{Bufs: make([][]byte, count), Sizes: make([]int, count)}
	for i := range b.Bufs {
		b.Bufs[i] = slab[i*bufSize : (i+1)*bufSize : (i+1)*bufSize]
	}
	return b
}

// Packet returns packet i of the batch, which starts at Headroom.
func (b *Batch) Packet(i int) []byte {
	return b.Bufs[i][Headroom : Headroom+b.Sizes[i]]
}
