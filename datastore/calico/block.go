package calico

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/overlayd/overlayd/pool"
)

// Allocation attributes Calico writes (libcalico-go/lib/backend/model/block.go
// IPAMBlockAttribute*; node/pkg/allocateip/allocateip.go).
const (
	AttrNode          = "node"
	AttrType          = "type"
	AttrTypeIPIP      = "ipipTunnelAddress"
	AttrTypeVXLAN     = "vxlanTunnelAddress"
	affinityHostColon = affinityTypeHost + ":"
)

// Block is Calico's AllocationBlock as stored under Keys.Block(cidr)
// (libcalico-go/lib/backend/model/block.go), members in Calico's order.
//
// Allocations has one entry per address of the block: nil when free, else the
// index in Attributes of the allocation's owner. Unallocated lists the free
// ordinals in the order they are handed out (FIFO: released ordinals go to
// the back). The methods assume a block that NewBlock made or DecodeBlock
// checked.
type Block struct {
	CIDR     netip.Prefix `json:"cidr"`
	Affinity *string      `json:"affinity"` // "host:<node>"; null when not affine
	// AffinityClaimTime is RFC 3339 (metav1.Time), kept as text.
	AffinityClaimTime           *string               `json:"affinity_claim_time,omitempty"`
	Allocations                 []*int                `json:"allocations"`
	Unallocated                 []int                 `json:"unallocated"`
	Attributes                  []AllocationAttribute `json:"attributes"`
	SequenceNumber              uint64                `json:"sequenceNumber"`
	SequenceNumberForAllocation map[string]uint64     `json:"sequenceNumberForAllocation"`
	Deleted                     bool                  `json:"deleted"`
	HostAffinity                *string               `json:"hostAffinity,omitempty"` // deprecated by Calico
	Extra                       Extra                 `json:"-"`
}

// AllocationAttribute is the owner of one or more allocations.
type AllocationAttribute struct {
	HandleID            *string           `json:"handle_id,omitempty"`
	ActiveOwnerAttrs    map[string]string `json:"secondary,omitempty"`
	AlternateOwnerAttrs map[string]string `json:"alternateOwnerAttrs,omitempty"`
	// ReleasedAt marks an allocation in Calico's release cooldown: it is
	// neither in use by an owner nor free yet. RFC 3339, kept as text.
	ReleasedAt *string `json:"releasedAt,omitempty"`
	Extra      Extra   `json:"-"`
}

// UnmarshalJSON keeps the members Block does not model in Extra.
func (b *Block) UnmarshalJSON(data []byte) error {
	type fields Block
	*b = Block{}
	extra, err := decodeObject(data, (*fields)(b))
	b.Extra = extra
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	if err != nil && !errors.As(err, &syntax) && !errors.As(err, &typ) {
		// The one member decoded as text is the CIDR; netip's error does
		// not say which member it read.
		return fmt.Errorf("cidr: %w", err)
	}
	return err
}

// MarshalJSON writes the modelled members in Calico's order, then Extra.
func (b Block) MarshalJSON() ([]byte, error) {
	type fields Block
	return encodeObject(fields(b), b.Extra)
}

// UnmarshalJSON keeps the members AllocationAttribute does not model in Extra.
func (a *AllocationAttribute) UnmarshalJSON(data []byte) error {
	type fields AllocationAttribute
	*a = AllocationAttribute{}
	extra, err := decodeObject(data, (*fields)(a))
	a.Extra = extra
	return err
}

// MarshalJSON writes the modelled members in Calico's order, then Extra.
func (a AllocationAttribute) MarshalJSON() ([]byte, error) {
	type fields AllocationAttribute
	return encodeObject(fields(a), a.Extra)
}

// DecodeBlock reads a block value and checks that it is consistent: an IPv4
// network CIDR, one allocation per address, attribute indexes in range, and
// free ordinals in range, listed once and not allocated.
func DecodeBlock(data []byte) (*Block, error) {
	var b Block
	if err := checkObject(data); err != nil {
		return nil, fmt.Errorf("block value: %w", err)
	}
	if err := json.Unmarshal(data, &b); err != nil {
		return nil, fmt.Errorf("block value: %w", err)
	}
	if err := b.check(); err != nil {
		return nil, fmt.Errorf("block %s: %w", b.CIDR, err)
	}
	return &b, nil
}

func (b *Block) check() error {
	return checkAllocations(b.CIDR, b.Allocations, b.Unallocated, len(b.Attributes))
}

// checkAllocations is Block.check on a block's members, shared with
// DecodeBlockHead.
func checkAllocations(cidr netip.Prefix, allocations []*int, unallocated []int, attributes int) error {
	if !cidr.IsValid() || !cidr.Addr().Is4() {
		return errors.New("cidr: not an IPv4 CIDR")
	}
	if cidr.Masked() != cidr {
		return fmt.Errorf("cidr: not a network address (did you mean %s?)", cidr.Masked())
	}
	n := 1 << (32 - cidr.Bits())
	if len(allocations) != n {
		return fmt.Errorf("allocations: %d entries for a block of %d addresses", len(allocations), n)
	}
	for ord, idx := range allocations {
		if idx != nil && (*idx < 0 || *idx >= attributes) {
			return fmt.Errorf("allocations[%d]: attribute index %d out of range (%d attributes)", ord, *idx, attributes)
		}
	}
	seen := make([]bool, n)
	for i, ord := range unallocated {
		switch {
		case ord < 0 || ord >= n:
			return fmt.Errorf("unallocated[%d]: ordinal %d out of range 0..%d", i, ord, n-1)
		case seen[ord]:
			return fmt.Errorf("unallocated[%d]: ordinal %d listed twice", i, ord)
		case allocations[ord] != nil:
			return fmt.Errorf("unallocated[%d]: ordinal %d is also allocated", i, ord)
		}
		seen[ord] = true
	}
	return nil
}

// NewBlock is the block Calico's claimAffineBlock creates for host: every
// address free, in ordinal order; affinity "host:<host>" claimed at now; the
// sequence number started at now in nanoseconds (ipam_block.go newBlock).
func NewBlock(cidr netip.Prefix, host string, now time.Time) (*Block, error) {
	b := &Block{
		CIDR:                        cidr,
		SequenceNumber:              uint64(now.UnixNano()),
		SequenceNumberForAllocation: map[string]uint64{},
	}
	if !cidr.Addr().Is4() || cidr.Masked() != cidr {
		return nil, fmt.Errorf("new block %s: not an IPv4 network address", cidr)
	}
	if cidr.Bits() < pool.MinBlockSize || cidr.Bits() > pool.MaxBlockSize {
		return nil, fmt.Errorf("new block %s: block sizes are /%d to /%d", cidr, pool.MinBlockSize, pool.MaxBlockSize)
	}
	n := b.Size()
	b.Allocations = make([]*int, n)
	b.Unallocated = make([]int, n)
	for i := range n {
		b.Unallocated[i] = i
	}
	affinity := affinityHostColon + host
	claimed := Timestamp(now)
	b.Affinity, b.AffinityClaimTime = &affinity, &claimed
	return b, nil
}

// Size is the number of addresses in the block.
func (b *Block) Size() int { return 1 << (32 - b.CIDR.Bits()) }

// Host is the node the block is affine to, from "host:<node>"; ok is false
// for a block without host affinity.
func (b *Block) Host() (node string, ok bool) {
	if b.Affinity == nil {
		return "", false
	}
	return strings.CutPrefix(*b.Affinity, affinityHostColon)
}

// Addr is the address with this ordinal (0: the block's first address). It
// does not check the range.
func (b *Block) Addr(ordinal int) netip.Addr {
	a := b.CIDR.Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += uint32(ordinal)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// Ordinal is the position of addr in the block.
func (b *Block) Ordinal(addr netip.Addr) (int, error) {
	if !b.CIDR.Contains(addr) {
		return 0, fmt.Errorf("%s is not in block %s", addr, b.CIDR)
	}
	return int(addrUint(addr) - addrUint(b.CIDR.Addr())), nil
}

func addrUint(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// InUse is the number of allocated addresses, counting those in Calico's
// release cooldown.
func (b *Block) InUse() int {
	n := 0
	for _, idx := range b.Allocations {
		if idx != nil {
			n++
		}
	}
	return n
}

// Free is the number of addresses Assign can still hand out.
func (b *Block) Free() int { return len(b.Unallocated) }

// Assign allocates n addresses to handleID ("" for none) with attrs, taking
// the first n of Unallocated as Calico's autoAssign does, and records the
// block's sequence number for each. It allocates all n or, when fewer are
// free, nothing. The caller writes the block back after incrementing
// SequenceNumber, as Calico's updateBlock does.
func (b *Block) Assign(n int, handleID string, attrs map[string]string) ([]netip.Addr, error) {
	if n <= 0 {
		return nil, fmt.Errorf("block %s: asked for %d addresses", b.CIDR, n)
	}
	if n > len(b.Unallocated) {
		return nil, fmt.Errorf("block %s: %d addresses asked for, %d free", b.CIDR, n, len(b.Unallocated))
	}
	idx := b.findOrAddAttribute(handleID, attrs)
	addrs := make([]netip.Addr, n)
	for i, ord := range b.Unallocated[:n] {
		b.Allocations[ord] = &idx
		if b.SequenceNumberForAllocation == nil {
			b.SequenceNumberForAllocation = map[string]uint64{}
		}
		b.SequenceNumberForAllocation[strconv.Itoa(ord)] = b.SequenceNumber
		addrs[i] = b.Addr(ord)
	}
	b.Unallocated = slices.Delete(b.Unallocated, 0, n)
	return addrs, nil
}

// findOrAddAttribute reuses an attribute with the same handle and owner, as
// Calico's does (it compares with reflect.DeepEqual).
func (b *Block) findOrAddAttribute(handleID string, attrs map[string]string) int {
	var h *string
	if handleID != "" {
		h = &handleID
	}
	for i, a := range b.Attributes {
		if ptrEqual(a.HandleID, h) && maps.Equal(a.ActiveOwnerAttrs, attrs) && (a.ActiveOwnerAttrs == nil) == (attrs == nil) &&
			a.AlternateOwnerAttrs == nil && a.ReleasedAt == nil && a.Extra == nil {
			return i
		}
	}
	b.Attributes = append(b.Attributes, AllocationAttribute{HandleID: h, ActiveOwnerAttrs: maps.Clone(attrs)})
	return len(b.Attributes) - 1
}

func ptrEqual(a, b *string) bool {
	return a == b || (a != nil && b != nil && *a == *b)
}

// OrdinalsOf lists the ordinals allocated to handleID, in ordinal order.
func (b *Block) OrdinalsOf(handleID string) []int {
	var ords []int
	for ord, idx := range b.Allocations {
		if idx != nil && *idx < len(b.Attributes) {
			if h := b.Attributes[*idx].HandleID; h != nil && *h == handleID {
				ords = append(ords, ord)
			}
		}
	}
	return ords
}

// Release frees the given ordinals at once (Calico with a cooldown of 0:
// release, then garbageCollect): freed ordinals go to the back of
// Unallocated in ordinal order, their sequence numbers are cleared and
// attributes no allocation uses any more are removed. Ordinals already free
// are ignored, as Calico does. It returns how many addresses each handle
// lost, for the handles' Decrement. An ordinal out of range is an error and
// changes nothing.
func (b *Block) Release(ordinals []int) (map[string]int, error) {
	n := b.Size()
	for _, ord := range ordinals {
		if ord < 0 || ord >= n {
			return nil, fmt.Errorf("block %s: ordinal %d out of range 0..%d", b.CIDR, ord, n-1)
		}
	}
	release := make([]bool, n)
	byHandle := map[string]int{}
	for _, ord := range ordinals {
		idx := b.Allocations[ord]
		if idx == nil || release[ord] {
			continue
		}
		release[ord] = true
		if h := b.Attributes[*idx].HandleID; h != nil {
			byHandle[*h]++
		}
	}
	used := make([]bool, len(b.Attributes))
	for ord := range n {
		switch {
		case release[ord]:
			b.Allocations[ord] = nil
			b.Unallocated = append(b.Unallocated, ord)
			delete(b.SequenceNumberForAllocation, strconv.Itoa(ord))
		case b.Allocations[ord] != nil:
			used[*b.Allocations[ord]] = true
		}
	}
	b.compactAttributes(used)
	return byHandle, nil
}

// compactAttributes drops attributes no allocation uses and renumbers the
// allocations, as Calico's garbageCollect does.
func (b *Block) compactAttributes(used []bool) {
	if !slices.Contains(used, false) {
		return
	}
	newIndex := make([]int, len(b.Attributes))
	kept := b.Attributes[:0:0]
	for i, a := range b.Attributes {
		if used[i] {
			newIndex[i] = len(kept)
			kept = append(kept, a)
		}
	}
	b.Attributes = kept
	for ord, idx := range b.Allocations {
		if idx != nil {
			v := newIndex[*idx]
			b.Allocations[ord] = &v
		}
	}
}
