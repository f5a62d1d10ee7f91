// Package pool models Calico's IPPool resource (projectcalico.org/v3): its
// fields, defaults and validation rules, kept as Calico has them so that a
// Calico IPPool can be written down for overlayd unchanged.
package pool

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/overlayd/overlayd/pool/selector"
)

// EncapMode is the value of ipipMode and vxlanMode.
type EncapMode string

// The encapsulation modes, spelled as Calico spells them (case-sensitive).
const (
	ModeNever       EncapMode = "Never"
	ModeAlways      EncapMode = "Always"
	ModeCrossSubnet EncapMode = "CrossSubnet"
)

// Calico's defaults (api/pkg/apis/projectcalico/v3/ippool.go and
// libcalico-go/lib/clientv3/ippool.go).
const (
	DefaultBlockSize    = 26
	MinBlockSize        = 20
	MaxBlockSize        = 32
	DefaultNodeSelector = "all()"
)

// Spec is an IPPool as written in a file, before validation: strings where
// the file has strings, so that every value can be checked and reported.
type Spec struct {
	Name         string
	CIDR         string
	IPIPMode     string
	VXLANMode    string
	NATOutgoing  bool
	Disabled     bool
	NodeSelector string
	BlockSize    int // 0: default
}

// IPPool is a validated pool with Calico's defaults filled in. It is
// immutable once built by New.
type IPPool struct {
	Name         string
	CIDR         netip.Prefix
	IPIPMode     EncapMode
	VXLANMode    EncapMode
	NATOutgoing  bool
	Disabled     bool
	NodeSelector *selector.Selector
	BlockSize    int
}

// Equal reports whether two pools are the same in every field overlayd
// uses.
func (p *IPPool) Equal(q *IPPool) bool {
	return p.Name == q.Name && p.CIDR == q.CIDR && p.IPIPMode == q.IPIPMode && p.VXLANMode == q.VXLANMode &&
		p.NATOutgoing == q.NATOutgoing && p.Disabled == q.Disabled && p.BlockSize == q.BlockSize &&
		p.NodeSelector.String() == q.NodeSelector.String()
}

// HasBlock reports whether b is one of the blocks the pool is cut into: of
// the pool's block size, aligned to it, and wholly inside the pool. A
// disabled pool may be smaller than its block size, and then has no blocks.
func (p *IPPool) HasBlock(b netip.Prefix) bool {
	return b.Bits() == p.BlockSize && b.Masked() == b && p.CIDR.Bits() <= b.Bits() && p.CIDR.Contains(b.Addr())
}

// Encapsulated reports whether the pool uses any encapsulation at all.
func (p *IPPool) Encapsulated() bool {
	return p.IPIPMode != ModeNever || p.VXLANMode != ModeNever
}

// FieldError is a validation failure of one field of one pool. Field is the
// key as written in a file (Calico's camelCase), so that callers can point at
// the line that holds it.
type FieldError struct {
	Pool  string // the pool's name; may be empty when the name itself is wrong
	Field string
	Msg   string
}

func (e *FieldError) Error() string {
	if e.Pool == "" {
		return fmt.Sprintf("%s: %s", e.Field, e.Msg)
	}
	return fmt.Sprintf("pool %q: %s: %s", e.Pool, e.Field, e.Msg)
}

// Calico resource names are lowercase RFC 1123 subdomains
// (validator.go nameSubdomainFmt).
const nameFmt = `[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*`

var nameRE = regexp.MustCompile("^" + nameFmt + "$")

// Limits of Calico's object metadata and IPPool schema: a resource name is at
// most 253 bytes (validator.go validateObjectMeta), a nodeSelector at most
// 1024 characters (ippool.go, +kubebuilder:validation:MaxLength).
const (
	maxNameLen     = 253
	maxSelectorLen = 1024
)

// Special-purpose IPv4 ranges no pool may overlap: Calico rejects link-local;
// loopback and multicast could never be workload addresses either.
var reservedV4 = []struct {
	prefix netip.Prefix
	msg    string
}{
	{netip.MustParsePrefix("169.254.0.0/16"), "IPPool CIDR overlaps with IPv4 link local range 169.254.0.0/16"},
	{netip.MustParsePrefix("127.0.0.0/8"), "IPPool CIDR overlaps with IPv4 loopback range 127.0.0.0/8"},
	{netip.MustParsePrefix("224.0.0.0/4"), "IPPool CIDR overlaps with IPv4 multicast range 224.0.0.0/4"},
}

// New validates one pool and fills Calico's defaults. Rules that involve
// other pools (overlap, unique names) are checked by ValidateSet.
func New(spec Spec) (*IPPool, error) {
	fail := func(field, format string, args ...any) error {
		return &FieldError{Pool: spec.Name, Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if spec.Name == "" {
		return nil, fail("name", "missing: every pool needs a name (a lowercase RFC 1123 subdomain, e.g. \"ippool-1\")")
	}
	if len(spec.Name) > maxNameLen {
		return nil, fail("name", "name is too long by %d bytes", len(spec.Name)-maxNameLen)
	}
	if !nameRE.MatchString(spec.Name) {
		return nil, fail("name", "name must consist of lower case alphanumeric characters, '-' or '.' (regex: %s); got %q", nameFmt, spec.Name)
	}
	p := &IPPool{Name: spec.Name, NATOutgoing: spec.NATOutgoing, Disabled: spec.Disabled}

	var err error
	if p.IPIPMode, err = parseMode(spec.IPIPMode); err != nil {
		return nil, fail("ipipMode", "%v", err)
	}
	if p.VXLANMode, err = parseMode(spec.VXLANMode); err != nil {
		return nil, fail("vxlanMode", "%v", err)
	}
	if p.IPIPMode != ModeNever && p.VXLANMode != ModeNever {
		return nil, fail("vxlanMode", "ipipMode and vxlanMode cannot both be enabled "+
			"(encapsulation types cannot be mixed within one pool: set ipipMode or vxlanMode to Never, "+
			"or split the range into two pools)")
	}

	if spec.CIDR == "" {
		return nil, fail("cidr", "IPPool CIDR must be specified (every pool needs a cidr, e.g. \"192.168.0.0/16\")")
	}
	cidr, err := netip.ParsePrefix(spec.CIDR)
	if err != nil {
		return nil, fail("cidr", "IPPool CIDR must be a valid subnet: %q is not an address/prefix length such as \"192.168.0.0/16\"", spec.CIDR)
	}
	if !cidr.Addr().Is4() {
		if p.IPIPMode != ModeNever {
			return nil, fail("ipipMode", "IPIP is not supported on IPv6 pools (%s is IPv6)", cidr)
		}
		// Calico allows VXLAN and plain routing on IPv6 pools; overlayd
		// does not carry IPv6 at all.
		return nil, fail("cidr", "IPv6 pools are not supported: overlayd's underlay and data path are IPv4 (%s is IPv6)", cidr)
	}
	if masked := cidr.Masked(); masked != cidr {
		return nil, fail("cidr", "IPPool CIDR is not strictly masked: %s has host bits set (did you mean %s?)", cidr, masked)
	}
	for _, r := range reservedV4 {
		if r.prefix.Overlaps(cidr) {
			return nil, fail("cidr", "%s", r.msg)
		}
	}
	p.CIDR = cidr

	p.BlockSize = spec.BlockSize
	if p.BlockSize == 0 {
		p.BlockSize = DefaultBlockSize
	}
	if p.BlockSize < MinBlockSize || p.BlockSize > MaxBlockSize {
		return nil, fail("blockSize", "blockSize must be between %d and %d for IPv4 pools, and between 116 and 128 for IPv6 pools (got %d)",
			MinBlockSize, MaxBlockSize, p.BlockSize)
	}
	// A disabled pool gives out no blocks, so Calico lets it be smaller
	// than one: the rule guards allocation, not routing.
	if !p.Disabled && p.BlockSize < cidr.Bits() {
		return nil, fail("blockSize", "IP pool size is too small for use with Calico IPAM. It must be equal to or greater than the block size. "+
			"(%s is a /%d, the blocks are /%d)", cidr, cidr.Bits(), p.BlockSize)
	}

	expr := spec.NodeSelector
	if n := utf8.RuneCountInString(expr); n > maxSelectorLen {
		return nil, fail("nodeSelector", "Too long: may not be more than %d bytes (got %d characters)", maxSelectorLen, n)
	}
	if strings.TrimSpace(expr) == "" {
		expr = DefaultNodeSelector
	}
	sel, err := selector.Parse(expr)
	if err != nil {
		return nil, fail("nodeSelector", "%v", err)
	}
	// Calico's rule is textual, not grammatical: "global(" anywhere, even
	// inside a quoted value, is refused, so a pool Calico refuses is
	// refused here too.
	if strings.Contains(expr, "global(") {
		return nil, fail("nodeSelector", "global() selector is not valid for IPPool nodeSelector (use all() to select every node)")
	}
	p.NodeSelector = sel
	return p, nil
}

func parseMode(s string) (EncapMode, error) {
	switch m := EncapMode(s); m {
	case "":
		return ModeNever, nil
	case ModeNever, ModeAlways, ModeCrossSubnet:
		return m, nil
	}
	hint := ""
	for _, m := range []EncapMode{ModeNever, ModeAlways, ModeCrossSubnet} {
		if strings.EqualFold(s, string(m)) || strings.EqualFold(strings.ReplaceAll(s, "-", ""), string(m)) {
			hint = fmt.Sprintf(" (modes are case-sensitive: did you mean %q?)", m)
		}
	}
	return "", fmt.Errorf("invalid value %q: allowed values are \"Never\", \"Always\", \"CrossSubnet\" (empty means Never)%s", s, hint)
}

// ValidateSet checks the rules that span pools: unique names and no overlap.
// The error names the later pool of a clashing pair, as Calico does when the
// second one is created.
func ValidateSet(pools []*IPPool) error {
	for i, p := range pools {
		for _, earlier := range pools[:i] {
			if p.Name == earlier.Name {
				return &FieldError{Pool: p.Name, Field: "name", Msg: fmt.Sprintf("duplicate pool name %q", p.Name)}
			}
			if p.CIDR.Overlaps(earlier.CIDR) {
				return &FieldError{Pool: p.Name, Field: "cidr", Msg: fmt.Sprintf(
					"IPPool(%s) CIDR overlaps with IPPool(%s) CIDR %s", p.Name, earlier.Name, earlier.CIDR)}
			}
		}
	}
	return nil
}
