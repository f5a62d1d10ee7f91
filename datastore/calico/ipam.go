package calico

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"time"
)

// Affinity states (libcalico-go/lib/backend/model/block_affinity.go). Only a
// confirmed affinity gives a block to its node; a pending one counts as
// absent (design/ipam/ipam-datastore.md).
const (
	StateConfirmed       = "confirmed"
	StatePending         = "pending"
	StatePendingDeletion = "pendingDeletion"
)

// Affinity is a BlockAffinity value, stored under Keys.Affinity(node, cidr).
type Affinity struct {
	State   string `json:"state"`
	Deleted bool   `json:"deleted"`
	Extra   Extra  `json:"-"`
}

// UnmarshalJSON keeps the members Affinity does not model in Extra.
func (a *Affinity) UnmarshalJSON(data []byte) error {
	type fields Affinity
	*a = Affinity{}
	extra, err := decodeObject(data, (*fields)(a))
	a.Extra = extra
	return err
}

// MarshalJSON writes the modelled members in Calico's order, then Extra.
func (a Affinity) MarshalJSON() ([]byte, error) {
	type fields Affinity
	return encodeObject(fields(a), a.Extra)
}

// DecodeAffinity reads an affinity value. An empty value is {} (old Calico
// stored affinities without a value: BlockAffinityKey.parseValue), that is,
// an affinity with no state, which is not confirmed.
func DecodeAffinity(data []byte) (*Affinity, error) {
	var a Affinity
	if len(bytes.TrimSpace(data)) == 0 {
		return &a, nil
	}
	if err := checkObject(data); err != nil {
		return nil, fmt.Errorf("affinity value: %w", err)
	}
	if err := json.Unmarshal(data, &a); err != nil {
		return nil, fmt.Errorf("affinity value: %w", err)
	}
	return &a, nil
}

// Confirmed reports whether the affinity gives the block to its node.
func (a *Affinity) Confirmed() bool { return a.State == StateConfirmed && !a.Deleted }

// Handle is an IPAMHandle value, stored under Keys.Handle(id): how many
// addresses the handle holds in each block, by block CIDR
// (libcalico-go/lib/backend/model/ipam_handle.go; the ID is the key's).
type Handle struct {
	Block   map[string]int `json:"block"`
	Deleted bool           `json:"deleted"`
	Extra   Extra          `json:"-"`
}

// UnmarshalJSON keeps the members Handle does not model in Extra.
func (h *Handle) UnmarshalJSON(data []byte) error {
	type fields Handle
	*h = Handle{}
	extra, err := decodeObject(data, (*fields)(h))
	h.Extra = extra
	return err
}

// MarshalJSON writes the modelled members in Calico's order, then Extra.
func (h Handle) MarshalJSON() ([]byte, error) {
	type fields Handle
	return encodeObject(fields(h), h.Extra)
}

// NewHandle is an empty handle, as Calico creates one before counting.
func NewHandle() *Handle { return &Handle{Block: map[string]int{}} }

// DecodeHandle reads a handle value and checks that every block is a CIDR
// and every count positive.
func DecodeHandle(data []byte) (*Handle, error) {
	var h Handle
	if err := checkObject(data); err != nil {
		return nil, fmt.Errorf("handle value: %w", err)
	}
	if err := json.Unmarshal(data, &h); err != nil {
		return nil, fmt.Errorf("handle value: %w", err)
	}
	for cidr, n := range h.Block {
		if _, err := netip.ParsePrefix(cidr); err != nil {
			return nil, fmt.Errorf("handle value: block %q is not a CIDR", cidr)
		}
		if n <= 0 {
			return nil, fmt.Errorf("handle value: block %s: count %d is not positive", cidr, n)
		}
	}
	return &h, nil
}

// Increment adds n addresses in block to the handle (ipam_handle.go
// incrementBlock).
func (h *Handle) Increment(block netip.Prefix, n int) {
	if h.Block == nil {
		h.Block = map[string]int{}
	}
	h.Block[block.String()] += n
}

// Decrement removes n addresses in block from the handle, dropping the
// block at zero; going below zero or naming a block the handle does not
// hold is an error and changes nothing (ipam_handle.go decrementBlock).
func (h *Handle) Decrement(block netip.Prefix, n int) error {
	k := block.String()
	cur, ok := h.Block[k]
	switch {
	case !ok:
		return fmt.Errorf("handle holds no address in block %s", k)
	case cur < n:
		return fmt.Errorf("handle holds %d addresses in block %s, cannot release %d", cur, k, n)
	case cur == n:
		delete(h.Block, k)
	default:
		h.Block[k] = cur - n
	}
	return nil
}

// Empty reports whether the handle holds no address; Calico then deletes it.
func (h *Handle) Empty() bool { return len(h.Block) == 0 }

// TunnelAllocation is the handle ID and allocation attributes calico-node
// uses for a node's tunnel address (allocateip.go generateHandleAndAttributes);
// attrType is AttrTypeIPIP or AttrTypeVXLAN.
func TunnelAllocation(node, attrType string) (handleID string, attrs map[string]string, err error) {
	switch attrType {
	case AttrTypeIPIP:
		handleID = "ipip-tunnel-addr-" + node
	case AttrTypeVXLAN:
		handleID = "vxlan-tunnel-addr-" + node
	default:
		return "", nil, fmt.Errorf("tunnel allocation type %q: want %q or %q", attrType, AttrTypeIPIP, AttrTypeVXLAN)
	}
	return handleID, map[string]string{AttrNode: node, AttrType: attrType}, nil
}

// Liveness is Felix's StatusReport, stored under Keys.Liveness(node) with a
// lease (libcalico-go/lib/backend/model/statusreports.go).
type Liveness struct {
	Time        string  `json:"time"`   // RFC 3339, UTC
	Uptime      float64 `json:"uptime"` // seconds
	FirstUpdate bool    `json:"first_update"`
	Extra       Extra   `json:"-"`
}

// UnmarshalJSON keeps the members Liveness does not model in Extra.
func (l *Liveness) UnmarshalJSON(data []byte) error {
	type fields Liveness
	*l = Liveness{}
	extra, err := decodeObject(data, (*fields)(l))
	l.Extra = extra
	return err
}

// MarshalJSON writes the modelled members in Calico's order, then Extra.
func (l Liveness) MarshalJSON() ([]byte, error) {
	type fields Liveness
	return encodeObject(fields(l), l.Extra)
}

// NewLiveness is the report Felix writes at now after uptime; first is true
// for the first report since the process started.
func NewLiveness(now time.Time, uptime time.Duration, first bool) *Liveness {
	return &Liveness{Time: Timestamp(now), Uptime: uptime.Seconds(), FirstUpdate: first}
}

// DecodeLiveness reads a liveness value.
func DecodeLiveness(data []byte) (*Liveness, error) {
	var l Liveness
	if err := checkObject(data); err != nil {
		return nil, fmt.Errorf("liveness value: %w", err)
	}
	if err := json.Unmarshal(data, &l); err != nil {
		return nil, fmt.Errorf("liveness value: %w", err)
	}
	return &l, nil
}
