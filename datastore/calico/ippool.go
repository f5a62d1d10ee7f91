package calico

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/overlayd/overlayd/pool"
	"github.com/overlayd/overlayd/pool/selector"
)

// IPPool is a projectcalico.org/v3 IPPool as stored under
// Keys.IPPool(name) (api/pkg/apis/projectcalico/v3/ippool.go).
type IPPool struct {
	Kind       string          `json:"kind,omitempty"`
	APIVersion string          `json:"apiVersion,omitempty"`
	Metadata   ObjectMeta      `json:"metadata"`
	Spec       IPPoolSpec      `json:"spec"`
	Status     json.RawMessage `json:"status,omitempty"` // *IPPoolStatus; nil is left out
	Extra      Extra           `json:"-"`
}

// IPPoolSpec is IPPoolSpec, member for member, in Calico's order.
type IPPoolSpec struct {
	CIDR              string   `json:"cidr"`
	VXLANMode         string   `json:"vxlanMode,omitempty"`
	IPIPMode          string   `json:"ipipMode,omitempty"`
	NATOutgoing       bool     `json:"natOutgoing,omitempty"`
	Disabled          bool     `json:"disabled,omitempty"`
	DisableBGPExport  bool     `json:"disableBGPExport,omitempty"`
	BlockSize         int      `json:"blockSize,omitempty"`
	NodeSelector      string   `json:"nodeSelector,omitempty"`
	NamespaceSelector string   `json:"namespaceSelector,omitempty"`
	AllowedUses       []string `json:"allowedUses,omitempty"`
	AssignmentMode    string   `json:"assignmentMode,omitempty"` // *AssignmentMode in Calico
	Extra             Extra    `json:"-"`
}

// Allowed uses of a pool (ippool.go IPPoolAllowedUse).
const (
	AllowedUseWorkload     = "Workload"
	AllowedUseTunnel       = "Tunnel"
	AllowedUseLoadBalancer = "LoadBalancer"
)

// The assignment mode calicoctl stores when none is given (clientv3/ippool.go
// validateAndSetDefaults); "Manual" pools are not used for automatic
// assignment.
const (
	defaultAssignmentMode = "Automatic"
	manualAssignmentMode  = "Manual"
)

// UnmarshalJSON keeps the members IPPool does not model in Extra.
func (p *IPPool) UnmarshalJSON(data []byte) error {
	type fields IPPool
	*p = IPPool{}
	extra, err := decodeObject(data, (*fields)(p))
	p.Extra = extra
	return err
}

// MarshalJSON writes the modelled members in Calico's order, then Extra.
func (p IPPool) MarshalJSON() ([]byte, error) {
	type fields IPPool
	return encodeObject(fields(p), p.Extra)
}

// UnmarshalJSON keeps the members IPPoolSpec does not model in Extra.
func (s *IPPoolSpec) UnmarshalJSON(data []byte) error {
	type fields IPPoolSpec
	*s = IPPoolSpec{}
	extra, err := decodeObject(data, (*fields)(s))
	s.Extra = extra
	return err
}

// MarshalJSON writes the modelled members in Calico's order, then Extra.
func (s IPPoolSpec) MarshalJSON() ([]byte, error) {
	type fields IPPoolSpec
	return encodeObject(fields(s), s.Extra)
}

// DecodeIPPool reads an IPPool value. It checks the JSON and the type
// members only; Pool applies Calico's validation.
func DecodeIPPool(data []byte) (*IPPool, error) {
	var p IPPool
	if err := checkObject(data); err != nil {
		return nil, fmt.Errorf("IPPool value: %w", err)
	}
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, fmt.Errorf("IPPool value: %w", err)
	}
	if err := checkType(p.Kind, p.APIVersion, KindNameIPPool); err != nil {
		return nil, fmt.Errorf("IPPool %q: %w", p.Metadata.Name, err)
	}
	return &p, nil
}

// NewIPPool is the IPPool calicoctl would store for spec: validated by
// pool.New, with Calico's defaults written out, and the uid and creation time
// clientv3 gives every new resource.
func NewIPPool(spec pool.Spec, uid string, created time.Time) (*IPPool, error) {
	v, err := pool.New(spec)
	if err != nil {
		return nil, fmt.Errorf("IPPool %q: %w", spec.Name, err)
	}
	selector := strings.TrimSpace(spec.NodeSelector)
	if selector == "" {
		selector = pool.DefaultNodeSelector
	}
	return &IPPool{
		Kind:       KindNameIPPool,
		APIVersion: APIVersion,
		Metadata:   newMeta(v.Name, uid, created),
		Spec: IPPoolSpec{
			CIDR:           v.CIDR.String(),
			VXLANMode:      string(v.VXLANMode),
			IPIPMode:       string(v.IPIPMode),
			NATOutgoing:    v.NATOutgoing,
			Disabled:       v.Disabled,
			BlockSize:      v.BlockSize,
			NodeSelector:   selector,
			AllowedUses:    []string{AllowedUseWorkload, AllowedUseTunnel},
			AssignmentMode: defaultAssignmentMode,
		},
	}, nil
}

// PoolSpec is the pool in overlayd's terms, before validation. Members
// overlayd does not use (allowedUses, namespaceSelector, disableBGPExport,
// assignmentMode) are not carried.
func (p *IPPool) PoolSpec() pool.Spec {
	return pool.Spec{
		Name:         p.Metadata.Name,
		CIDR:         p.Spec.CIDR,
		IPIPMode:     p.Spec.IPIPMode,
		VXLANMode:    p.Spec.VXLANMode,
		NATOutgoing:  p.Spec.NATOutgoing,
		Disabled:     p.Spec.Disabled,
		NodeSelector: p.Spec.NodeSelector,
		BlockSize:    p.Spec.BlockSize,
	}
}

// Pool validates the pool with Calico's rules: pool.New for the members
// overlayd uses, then Calico's rules on the members it carries but does not
// use, so that a pool Calico would refuse is not routed here either.
func (p *IPPool) Pool() (*pool.IPPool, error) {
	v, err := pool.New(p.PoolSpec())
	if err == nil {
		err = p.checkUnusedMembers()
	}
	if err != nil {
		return nil, fmt.Errorf("IPPool in the datastore: %w", err)
	}
	return v, nil
}

// Limits of the IPPool schema (api/pkg/apis/projectcalico/v3/ippool.go).
const (
	maxAllowedUses          = 10   // allowedUses MaxItems
	maxNamespaceSelectorLen = 1024 // namespaceSelector MaxLength
)

// checkUnusedMembers applies Calico's rules on allowedUses,
// namespaceSelector, disableBGPExport and assignmentMode: the enum and
// set checks of the schema, validator.go validateIPPoolSpec, and the CEL
// rules above IPPoolSpec in ippool.go. As clientv3's validateAndSetDefaults
// does, an empty allowedUses means Workload and Tunnel.
func (p *IPPool) checkUnusedMembers() error {
	s := p.Spec
	fail := func(field, format string, args ...any) error {
		return &pool.FieldError{Pool: p.Metadata.Name, Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if len(s.AllowedUses) > maxAllowedUses {
		return fail("allowedUses", "Too many: %d: must have at most %d items", len(s.AllowedUses), maxAllowedUses)
	}
	for i, u := range s.AllowedUses {
		switch u {
		case AllowedUseWorkload, AllowedUseTunnel, AllowedUseLoadBalancer:
		default:
			return fail("allowedUses", "unknown use: %s (allowed: %s, %s, %s)", u, AllowedUseWorkload, AllowedUseTunnel, AllowedUseLoadBalancer)
		}
		if slices.Contains(s.AllowedUses[:i], u) {
			return fail("allowedUses", "Duplicate value: %q", u)
		}
	}
	if p.Allows(AllowedUseLoadBalancer) {
		on := func(mode string) bool { return mode != "" && mode != string(pool.ModeNever) }
		switch {
		case on(s.IPIPMode) || on(s.VXLANMode):
			return fail("allowedUses", "LoadBalancer IP pool cannot have IPIP or VXLAN enabled")
		case p.Allows(AllowedUseWorkload) || p.Allows(AllowedUseTunnel):
			return fail("allowedUses", "LoadBalancer cannot be combined with Workload or Tunnel allowed uses")
		case s.DisableBGPExport:
			return fail("disableBGPExport", "LoadBalancer IP pools cannot disable BGP export")
		case s.NodeSelector != "" && s.NodeSelector != pool.DefaultNodeSelector:
			return fail("nodeSelector", "IP Pool with AllowedUse LoadBalancer must have nodeSelector set to all()")
		}
	}
	if ns := s.NamespaceSelector; ns != "" {
		if p.Allows(AllowedUseTunnel) {
			return fail("namespaceSelector", "IP Pool with AllowedUse Tunnel cannot have namespaceSelector")
		}
		if n := utf8.RuneCountInString(ns); n > maxNamespaceSelectorLen {
			return fail("namespaceSelector", "Too long: may not be more than %d bytes (got %d characters)", maxNamespaceSelectorLen, n)
		}
		if _, err := selector.Parse(ns); err != nil {
			return fail("namespaceSelector", "%v", err)
		}
		if strings.Contains(ns, "global(") {
			return fail("namespaceSelector", "global() selector is not valid for IPPool namespaceSelector")
		}
	}
	switch s.AssignmentMode {
	case "", defaultAssignmentMode, manualAssignmentMode:
	default:
		return fail("assignmentMode", "Unsupported value: %q: supported values: %q, %q", s.AssignmentMode, defaultAssignmentMode, manualAssignmentMode)
	}
	return nil
}

// Allows reports whether the pool may be used for use (AllowedUseWorkload,
// AllowedUseTunnel, AllowedUseLoadBalancer). A pool that lists no use allows
// workloads and tunnels, as Calico reads it (clientv3/ippool.go
// convertIpPoolFromStorage). pool.Spec does not carry this: callers that
// hand out addresses check it.
func (p *IPPool) Allows(use string) bool {
	if len(p.Spec.AllowedUses) == 0 {
		return use == AllowedUseWorkload || use == AllowedUseTunnel
	}
	return slices.Contains(p.Spec.AllowedUses, use)
}

// AutoAssign reports whether blocks and addresses may be assigned from the
// pool automatically: assignmentMode unset or "Automatic", not "Manual".
func (p *IPPool) AutoAssign() bool {
	return p.Spec.AssignmentMode == "" || p.Spec.AssignmentMode == defaultAssignmentMode
}
