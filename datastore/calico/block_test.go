package calico

import (
	"net/netip"
	"reflect"
	"testing"
)

func newTestBlock(t *testing.T, cidr string) *Block {
	t.Helper()
	b, err := NewBlock(netip.MustParsePrefix(cidr), "node-a", testNow)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestNewBlockHasEveryAddressFreeInOrdinalOrder(t *testing.T) {
	b := newTestBlock(t, "10.1.0.0/28")
	if b.Size() != 16 || len(b.Allocations) != 16 || b.InUse() != 0 || b.Free() != 16 {
		t.Fatalf("Size, allocations, InUse, Free = %d, %d, %d, %d", b.Size(), len(b.Allocations), b.InUse(), b.Free())
	}
	for i, ord := range b.Unallocated {
		if ord != i {
			t.Fatalf("unallocated = %v; want 0..15 in order", b.Unallocated)
		}
	}
	if host, ok := b.Host(); !ok || host != "node-a" || *b.Affinity != "host:node-a" {
		t.Errorf("affinity = %q", *b.Affinity)
	}
	if _, err := NewBlock(netip.MustParsePrefix("10.1.0.1/28"), "n", testNow); err == nil {
		t.Error("NewBlock accepted a CIDR that is not a network address")
	}
}

func TestOrdinalsAndAddresses(t *testing.T) {
	b := newTestBlock(t, "10.1.0.64/26")
	for _, c := range []struct {
		ord  int
		addr string
	}{{0, "10.1.0.64"}, {1, "10.1.0.65"}, {63, "10.1.0.127"}} {
		if got := b.Addr(c.ord); got.String() != c.addr {
			t.Errorf("Addr(%d) = %s; want %s", c.ord, got, c.addr)
		}
		if got, err := b.Ordinal(netip.MustParseAddr(c.addr)); err != nil || got != c.ord {
			t.Errorf("Ordinal(%s) = %d, %v; want %d", c.addr, got, err, c.ord)
		}
	}
	if _, err := b.Ordinal(netip.MustParseAddr("10.1.0.128")); err == nil {
		t.Error("Ordinal accepted an address outside the block")
	}
	// Ordinals carry across octets.
	big := newTestBlock(t, "10.1.16.0/20")
	if got := big.Addr(300); got.String() != "10.1.17.44" {
		t.Errorf("Addr(300) in a /20 = %s; want 10.1.17.44", got)
	}
}

func TestAssignAndReleaseFollowCalicosOrder(t *testing.T) {
	b := newTestBlock(t, "10.1.0.0/29")
	tunnel, tunnelAttrs, _ := TunnelAllocation("node-a", AttrTypeVXLAN)

	t.Run("assign takes the front of unallocated and records the sequence number", func(t *testing.T) {
		got, err := b.Assign(1, tunnel, tunnelAttrs)
		if err != nil || !reflect.DeepEqual(got, []netip.Addr{netip.MustParseAddr("10.1.0.0")}) {
			t.Fatalf("Assign = %v, %v; want [10.1.0.0]", got, err)
		}
		if b.SequenceNumberForAllocation["0"] != b.SequenceNumber {
			t.Errorf("sequenceNumberForAllocation = %v", b.SequenceNumberForAllocation)
		}
		got, _ = b.Assign(3, "pod-1", map[string]string{AttrNode: "node-a"})
		if want := []netip.Addr{netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.1.0.3")}; !reflect.DeepEqual(got, want) {
			t.Errorf("Assign(3) = %v; want %v", got, want)
		}
		if b.InUse() != 4 || b.Free() != 4 || len(b.Attributes) != 2 {
			t.Errorf("InUse, Free, attributes = %d, %d, %d; want 4, 4, 2", b.InUse(), b.Free(), len(b.Attributes))
		}
	})

	t.Run("the same owner shares one attribute, as findOrAddAttribute does", func(t *testing.T) {
		if _, err := b.Assign(1, "pod-1", map[string]string{AttrNode: "node-a"}); err != nil {
			t.Fatal(err)
		}
		if len(b.Attributes) != 2 || *b.Allocations[4] != 1 {
			t.Errorf("attributes = %d, allocations[4] = %d; want 2 and 1", len(b.Attributes), *b.Allocations[4])
		}
	})

	t.Run("release frees at once, appends in ordinal order and drops unused attributes", func(t *testing.T) {
		byHandle, err := b.Release([]int{4, 2, 1, 3, 6}) // 6 is free: ignored
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(byHandle, map[string]int{"pod-1": 4}) {
			t.Errorf("released by handle = %v; want pod-1: 4", byHandle)
		}
		if want := []int{5, 6, 7, 1, 2, 3, 4}; !reflect.DeepEqual(b.Unallocated, want) {
			t.Errorf("unallocated = %v; want %v", b.Unallocated, want)
		}
		if len(b.Attributes) != 1 || *b.Allocations[0] != 0 || b.InUse() != 1 {
			t.Errorf("attributes = %+v, InUse = %d; want only the tunnel's", b.Attributes, b.InUse())
		}
		if _, ok := b.SequenceNumberForAllocation["1"]; ok {
			t.Error("a released ordinal kept its sequence number")
		}
	})

	t.Run("FIFO: the next assignment takes the addresses free longest", func(t *testing.T) {
		got, _ := b.Assign(1, "pod-2", nil)
		if got[0] != netip.MustParseAddr("10.1.0.5") {
			t.Errorf("Assign = %v; want 10.1.0.5, not a just-released address", got)
		}
	})

	t.Run("asking for more than is free changes nothing", func(t *testing.T) {
		before := cloneBlock(t, b)
		if _, err := b.Assign(b.Free()+1, "pod-3", nil); err == nil {
			t.Fatal("Assign handed out more addresses than are free")
		}
		if !reflect.DeepEqual(b, before) {
			t.Error("a failed Assign changed the block")
		}
	})

	t.Run("an ordinal out of range is an error and changes nothing", func(t *testing.T) {
		before := cloneBlock(t, b)
		if _, err := b.Release([]int{5, 8}); err == nil {
			t.Fatal("Release accepted ordinal 8 in a /29")
		}
		if !reflect.DeepEqual(b, before) {
			t.Error("a failed Release changed the block")
		}
	})
}

func TestHandleCounts(t *testing.T) {
	cidr := netip.MustParsePrefix("10.1.0.0/26")
	h := NewHandle()
	h.Increment(cidr, 2)
	h.Increment(cidr, 1)
	if h.Block["10.1.0.0/26"] != 3 {
		t.Fatalf("Block = %v; want 3", h.Block)
	}
	if err := h.Decrement(cidr, 4); err == nil || h.Block["10.1.0.0/26"] != 3 {
		t.Errorf("Decrement below zero = %v, count %d; want an error and no change", err, h.Block["10.1.0.0/26"])
	}
	if err := h.Decrement(netip.MustParsePrefix("10.1.0.64/26"), 1); err == nil {
		t.Error("Decrement of a block the handle does not hold succeeded")
	}
	if err := h.Decrement(cidr, 3); err != nil || !h.Empty() {
		t.Errorf("Decrement to zero = %v, Block = %v; want the block dropped", err, h.Block)
	}
}

func TestTunnelAllocationNamesCalicosHandles(t *testing.T) {
	for _, c := range []struct{ typ, handle string }{
		{AttrTypeIPIP, "ipip-tunnel-addr-node-a"},
		{AttrTypeVXLAN, "vxlan-tunnel-addr-node-a"},
	} {
		h, attrs, err := TunnelAllocation("node-a", c.typ)
		if err != nil || h != c.handle || !reflect.DeepEqual(attrs, map[string]string{"node": "node-a", "type": c.typ}) {
			t.Errorf("TunnelAllocation(%s) = %q, %v, %v", c.typ, h, attrs, err)
		}
	}
	if _, _, err := TunnelAllocation("node-a", "wireguardTunnelAddress"); err == nil {
		t.Error("TunnelAllocation accepted a type overlayd does not allocate")
	}
}
