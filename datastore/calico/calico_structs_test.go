package calico

// Copies of Calico's Go structs, JSON tags and all, used as the reference
// for what Calico reads and writes: a value is "in Calico's field set" when
// it decodes into these with unknown members refused, and "written as Calico
// writes it" when these encode it to the same bytes. Each field names the
// Calico (or apimachinery) file and tag it is copied from. Types Calico
// encodes through a custom marshaller are written as what they produce:
// cnet.IPNet and metav1.Time become strings, *AssignmentMode a *string.

// k8s.io/apimachinery pkg/apis/meta/v1/types.go ObjectMeta.
type calicoObjectMeta struct {
	Name                       string            `json:"name,omitempty"`                       // types.go: json:"name,omitempty"
	GenerateName               string            `json:"generateName,omitempty"`               // types.go: json:"generateName,omitempty"
	Namespace                  string            `json:"namespace,omitempty"`                  // types.go: json:"namespace,omitempty"
	SelfLink                   string            `json:"selfLink,omitempty"`                   // types.go: json:"selfLink,omitempty"
	UID                        string            `json:"uid,omitempty"`                        // types.go: json:"uid,omitempty" (types.UID)
	ResourceVersion            string            `json:"resourceVersion,omitempty"`            // types.go: json:"resourceVersion,omitempty"
	Generation                 int64             `json:"generation,omitempty"`                 // types.go: json:"generation,omitempty"
	CreationTimestamp          string            `json:"creationTimestamp,omitempty"`          // types.go: json:"creationTimestamp,omitempty,omitzero" (metav1.Time, RFC 3339 UTC, time.go)
	DeletionTimestamp          *string           `json:"deletionTimestamp,omitempty"`          // types.go: json:"deletionTimestamp,omitempty"
	DeletionGracePeriodSeconds *int64            `json:"deletionGracePeriodSeconds,omitempty"` // types.go
	Labels                     map[string]string `json:"labels,omitempty"`                     // types.go: json:"labels,omitempty"
	Annotations                map[string]string `json:"annotations,omitempty"`                // types.go: json:"annotations,omitempty"
	OwnerReferences            []map[string]any  `json:"ownerReferences,omitempty"`            // types.go
	Finalizers                 []string          `json:"finalizers,omitempty"`                 // types.go
	ManagedFields              []map[string]any  `json:"managedFields,omitempty"`              // types.go
}

// api/pkg/apis/projectcalico/v3/ippool.go IPPool (TypeMeta inline:
// kind,omitempty and apiVersion,omitempty).
type calicoIPPool struct {
	Kind       string            `json:"kind,omitempty"`       // metav1.TypeMeta: json:"kind,omitempty"
	APIVersion string            `json:"apiVersion,omitempty"` // metav1.TypeMeta: json:"apiVersion,omitempty"
	Metadata   calicoObjectMeta  `json:"metadata"`             // ippool.go: json:"metadata"
	Spec       calicoIPPoolSpec  `json:"spec"`                 // ippool.go: json:"spec"
	Status     *calicoPoolStatus `json:"status,omitempty"`     // ippool.go: json:"status,omitempty"
}

// ippool.go IPPoolStatus.
type calicoPoolStatus struct {
	Conditions []map[string]any `json:"conditions,omitempty"` // ippool.go: json:"conditions,omitempty" ([]metav1.Condition)
}

// ippool.go IPPoolSpec.
type calicoIPPoolSpec struct {
	CIDR              string   `json:"cidr"`                        // ippool.go: json:"cidr"
	VXLANMode         string   `json:"vxlanMode,omitempty"`         // ippool.go: json:"vxlanMode,omitempty"
	IPIPMode          string   `json:"ipipMode,omitempty"`          // ippool.go: json:"ipipMode,omitempty"
	NATOutgoing       bool     `json:"natOutgoing,omitempty"`       // ippool.go: json:"natOutgoing,omitempty"
	Disabled          bool     `json:"disabled,omitempty"`          // ippool.go: json:"disabled,omitempty"
	DisableBGPExport  bool     `json:"disableBGPExport,omitempty"`  // ippool.go: json:"disableBGPExport,omitempty"
	BlockSize         int      `json:"blockSize,omitempty"`         // ippool.go: json:"blockSize,omitempty"
	NodeSelector      string   `json:"nodeSelector,omitempty"`      // ippool.go: json:"nodeSelector,omitempty"
	NamespaceSelector string   `json:"namespaceSelector,omitempty"` // ippool.go: json:"namespaceSelector,omitempty"
	AllowedUses       []string `json:"allowedUses,omitempty"`       // ippool.go: json:"allowedUses,omitempty"
	AssignmentMode    *string  `json:"assignmentMode,omitempty"`    // ippool.go: json:"assignmentMode,omitempty"
}

// libcalico-go/lib/apis/internalapi/node.go Node. Spec and Status are
// structs, so omitempty never leaves them out: Calico writes "status":{}.
type calicoNode struct {
	Kind       string           `json:"kind,omitempty"`       // metav1.TypeMeta
	APIVersion string           `json:"apiVersion,omitempty"` // metav1.TypeMeta
	Metadata   calicoObjectMeta `json:"metadata,omitempty"`   // node.go: json:"metadata,omitempty"
	Spec       calicoNodeSpec   `json:"spec,omitempty"`       // node.go: json:"spec,omitempty"
	Status     calicoNodeStatus `json:"status,omitempty"`     // node.go: json:"status,omitempty"
}

// node.go NodeSpec.
type calicoNodeSpec struct {
	BGP                  *calicoNodeBGPSpec `json:"bgp,omitempty"`                  // node.go: json:"bgp,omitempty"
	IPv4VXLANTunnelAddr  string             `json:"ipv4VXLANTunnelAddr,omitempty"`  // node.go: json:"ipv4VXLANTunnelAddr,omitempty"
	VXLANTunnelMACAddr   string             `json:"vxlanTunnelMACAddr,omitempty"`   // node.go: json:"vxlanTunnelMACAddr,omitempty"
	IPv6VXLANTunnelAddr  string             `json:"ipv6VXLANTunnelAddr,omitempty"`  // node.go: json:"ipv6VXLANTunnelAddr,omitempty"
	VXLANTunnelMACAddrV6 string             `json:"vxlanTunnelMACAddrV6,omitempty"` // node.go: json:"vxlanTunnelMACAddrV6,omitempty"
	OrchRefs             []calicoOrchRef    `json:"orchRefs,omitempty"`             // node.go: json:"orchRefs,omitempty"
	Wireguard            *struct {
		InterfaceIPv4Address string `json:"interfaceIPv4Address,omitempty"` // node.go NodeWireguardSpec
		InterfaceIPv6Address string `json:"interfaceIPv6Address,omitempty"` // node.go NodeWireguardSpec
	} `json:"wireguard,omitempty"` // node.go: json:"wireguard,omitempty"
	Addresses []struct {
		Address string `json:"address"`        // node.go NodeAddress: json:"address"
		Type    string `json:"type,omitempty"` // node.go NodeAddress: json:"type,omitempty"
	} `json:"addresses,omitempty"` // node.go: json:"addresses,omitempty"
	Interfaces []struct {
		Name      string   `json:"name,omitempty"`      // node.go NodeInterface
		Addresses []string `json:"addresses,omitempty"` // node.go NodeInterface
	} `json:"interfaces,omitempty"` // node.go: json:"interfaces,omitempty"
}

// node.go OrchRef.
type calicoOrchRef struct {
	NodeName     string `json:"nodeName,omitempty"` // node.go: json:"nodeName,omitempty"
	Orchestrator string `json:"orchestrator"`       // node.go: json:"orchestrator"
}

// node.go NodeBGPSpec.
type calicoNodeBGPSpec struct {
	ASNumber                *uint32 `json:"asNumber,omitempty"`                // node.go: json:"asNumber,omitempty" (numorstring.ASNumber)
	IPv4Address             string  `json:"ipv4Address,omitempty"`             // node.go: json:"ipv4Address,omitempty"
	IPv6Address             string  `json:"ipv6Address,omitempty"`             // node.go: json:"ipv6Address,omitempty"
	IPv4IPIPTunnelAddr      string  `json:"ipv4IPIPTunnelAddr,omitempty"`      // node.go: json:"ipv4IPIPTunnelAddr,omitempty"
	RouteReflectorClusterID string  `json:"routeReflectorClusterID,omitempty"` // node.go: json:"routeReflectorClusterID,omitempty"
}

// node.go NodeStatus.
type calicoNodeStatus struct {
	WireguardPublicKey   string   `json:"wireguardPublicKey,omitempty"`   // node.go: json:"wireguardPublicKey,omitempty"
	WireguardPublicKeyV6 string   `json:"wireguardPublicKeyV6,omitempty"` // node.go: json:"wireguardPublicKeyV6,omitempty"
	PodCIDRs             []string `json:"podCIDRs,omitempty"`             // node.go: json:"podCIDRs,omitempty"
}

// libcalico-go/lib/backend/model/block.go AllocationBlock.
type calicoAllocationBlock struct {
	CIDR                        string                      `json:"cidr"`                          // block.go: json:"cidr" (cnet.IPNet, a string)
	Affinity                    *string                     `json:"affinity"`                      // block.go: json:"affinity"
	AffinityClaimTime           *string                     `json:"affinity_claim_time,omitempty"` // block.go: json:"affinity_claim_time,omitempty" (*metav1.Time)
	Allocations                 []*int                      `json:"allocations"`                   // block.go: json:"allocations"
	Unallocated                 []int                       `json:"unallocated"`                   // block.go: json:"unallocated"
	Attributes                  []calicoAllocationAttribute `json:"attributes"`                    // block.go: json:"attributes"
	SequenceNumber              uint64                      `json:"sequenceNumber"`                // block.go: json:"sequenceNumber"
	SequenceNumberForAllocation map[string]uint64           `json:"sequenceNumberForAllocation"`   // block.go: json:"sequenceNumberForAllocation"
	Deleted                     bool                        `json:"deleted"`                       // block.go: json:"deleted"
	HostAffinity                *string                     `json:"hostAffinity,omitempty"`        // block.go: json:"hostAffinity,omitempty"
}

// block.go AllocationAttribute.
type calicoAllocationAttribute struct {
	HandleID            *string           `json:"handle_id,omitempty"`           // block.go: json:"handle_id,omitempty"
	ActiveOwnerAttrs    map[string]string `json:"secondary,omitempty"`           // block.go: json:"secondary,omitempty"
	AlternateOwnerAttrs map[string]string `json:"alternateOwnerAttrs,omitempty"` // block.go: json:"alternateOwnerAttrs,omitempty"
	ReleasedAt          *string           `json:"releasedAt,omitempty"`          // block.go: json:"releasedAt,omitempty" (*metav1.Time)
}

// libcalico-go/lib/backend/model/block_affinity.go BlockAffinity.
type calicoBlockAffinity struct {
	State   string `json:"state"`   // block_affinity.go: json:"state"
	Deleted bool   `json:"deleted"` // block_affinity.go: json:"deleted"
}

// libcalico-go/lib/backend/model/ipam_handle.go IPAMHandle (HandleID is
// json:"-": the ID lives in the key).
type calicoIPAMHandle struct {
	Block   map[string]int `json:"block"`   // ipam_handle.go: json:"block"
	Deleted bool           `json:"deleted"` // ipam_handle.go: json:"deleted"
}

// libcalico-go/lib/backend/model/statusreports.go StatusReport.
type calicoStatusReport struct {
	Timestamp     string  `json:"time"`         // statusreports.go: json:"time"
	UptimeSeconds float64 `json:"uptime"`       // statusreports.go: json:"uptime"
	FirstUpdate   bool    `json:"first_update"` // statusreports.go: json:"first_update"
}
