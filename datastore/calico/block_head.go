package calico

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// BlockHead is what routing reads of a block: its CIDR, its affinity and
// whether it is marked deleted. A watcher holds one per block of the
// cluster, so it keeps none of the allocation arrays a Block has (a /26
// block's value is about a kilobyte; its head is a few words).
type BlockHead struct {
	CIDR netip.Prefix
	// Host is the node of the block's "host:<node>" affinity; Affine is
	// false for a block without host affinity.
	Host    string
	Affine  bool
	Deleted bool
	// InUse is the number of allocated addresses, as Block.InUse counts.
	InUse int
}

// blockHead has Block's members with their types, so that a value decodes
// here exactly when DecodeBlock accepts it, but no Extra: it is decoded in
// one pass, where a Block is decoded once per Extra it keeps.
type blockHead struct {
	CIDR                        netip.Prefix      `json:"cidr"`
	Affinity                    *string           `json:"affinity"`
	AffinityClaimTime           *string           `json:"affinity_claim_time"`
	Allocations                 []*int            `json:"allocations"`
	Unallocated                 []int             `json:"unallocated"`
	Attributes                  []attributeHead   `json:"attributes"`
	SequenceNumber              uint64            `json:"sequenceNumber"`
	SequenceNumberForAllocation map[string]uint64 `json:"sequenceNumberForAllocation"`
	Deleted                     bool              `json:"deleted"`
	HostAffinity                *string           `json:"hostAffinity"`
}

// attributeHead has AllocationAttribute's members with their types, for the
// same reason.
type attributeHead struct {
	HandleID            *string           `json:"handle_id"`
	ActiveOwnerAttrs    map[string]string `json:"secondary"`
	AlternateOwnerAttrs map[string]string `json:"alternateOwnerAttrs"`
	ReleasedAt          *string           `json:"releasedAt"`
}

// DecodeBlockHead reads a block value as DecodeBlock does, with the same
// checks and the same refusals, and keeps its head only.
func DecodeBlockHead(data []byte) (BlockHead, error) {
	if err := checkObject(data); err != nil {
		return BlockHead{}, fmt.Errorf("block value: %w", err)
	}
	var v blockHead
	if err := json.Unmarshal(data, &v); err != nil {
		var syntax *json.SyntaxError
		var typ *json.UnmarshalTypeError
		if !errors.As(err, &syntax) && !errors.As(err, &typ) {
			err = fmt.Errorf("cidr: %w", err) // as Block.UnmarshalJSON says it
		}
		return BlockHead{}, fmt.Errorf("block value: %w", err)
	}
	if err := checkAllocations(v.CIDR, v.Allocations, v.Unallocated, len(v.Attributes)); err != nil {
		return BlockHead{}, fmt.Errorf("block %s: %w", v.CIDR, err)
	}
	h := BlockHead{CIDR: v.CIDR, Deleted: v.Deleted}
	if v.Affinity != nil {
		h.Host, h.Affine = strings.CutPrefix(*v.Affinity, affinityHostColon)
	}
	for _, idx := range v.Allocations {
		if idx != nil {
			h.InUse++
		}
	}
	return h, nil
}
