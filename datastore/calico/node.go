package calico

import (
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/overlayd/overlayd/config"
)

// Node is a Calico Node resource as stored under Keys.Node(name)
// (libcalico-go/lib/apis/internalapi/node.go). Calico always writes spec,
// metadata and status, even empty.
type Node struct {
	Kind       string          `json:"kind,omitempty"`
	APIVersion string          `json:"apiVersion,omitempty"`
	Metadata   ObjectMeta      `json:"metadata"`
	Spec       NodeSpec        `json:"spec"`
	Status     json.RawMessage `json:"status,omitempty"` // NodeStatus; Calico writes {} when empty
	Extra      Extra           `json:"-"`
}

// NodeSpec is the part of NodeSpec overlayd uses, in Calico's order;
// ipv6 addresses, orchRefs, wireguard, addresses and interfaces stay in Extra.
type NodeSpec struct {
	BGP                 *NodeBGPSpec `json:"bgp,omitempty"`
	IPv4VXLANTunnelAddr string       `json:"ipv4VXLANTunnelAddr,omitempty"`
	VXLANTunnelMACAddr  string       `json:"vxlanTunnelMACAddr,omitempty"`
	Extra               Extra        `json:"-"`
}

// NodeBGPSpec is the part of NodeBGPSpec overlayd uses; asNumber,
// ipv6Address and routeReflectorClusterID stay in Extra.
type NodeBGPSpec struct {
	IPv4Address        string `json:"ipv4Address,omitempty"` // address/prefix length
	IPv4IPIPTunnelAddr string `json:"ipv4IPIPTunnelAddr,omitempty"`
	Extra              Extra  `json:"-"`
}

// UnmarshalJSON keeps the members Node does not model in Extra.
func (n *Node) UnmarshalJSON(data []byte) error {
	type fields Node
	*n = Node{}
	extra, err := decodeObject(data, (*fields)(n))
	n.Extra = extra
	return err
}

// MarshalJSON writes the modelled members in Calico's order, then Extra.
func (n Node) MarshalJSON() ([]byte, error) {
	type fields Node
	return encodeObject(fields(n), n.Extra)
}

// UnmarshalJSON keeps the members NodeSpec does not model in Extra.
func (s *NodeSpec) UnmarshalJSON(data []byte) error {
	type fields NodeSpec
	*s = NodeSpec{}
	extra, err := decodeObject(data, (*fields)(s))
	s.Extra = extra
	return err
}

// MarshalJSON writes the modelled members in Calico's order, then Extra.
func (s NodeSpec) MarshalJSON() ([]byte, error) {
	type fields NodeSpec
	return encodeObject(fields(s), s.Extra)
}

// UnmarshalJSON keeps the members NodeBGPSpec does not model in Extra.
func (s *NodeBGPSpec) UnmarshalJSON(data []byte) error {
	type fields NodeBGPSpec
	*s = NodeBGPSpec{}
	extra, err := decodeObject(data, (*fields)(s))
	s.Extra = extra
	return err
}

// MarshalJSON writes the modelled members in Calico's order, then Extra.
func (s NodeBGPSpec) MarshalJSON() ([]byte, error) {
	type fields NodeBGPSpec
	return encodeObject(fields(s), s.Extra)
}

// DecodeNode reads a Node value. It checks the JSON and the type members;
// Info reads and checks the addresses.
func DecodeNode(data []byte) (*Node, error) {
	var n Node
	if err := checkObject(data); err != nil {
		return nil, fmt.Errorf("Node value: %w", err)
	}
	if err := json.Unmarshal(data, &n); err != nil {
		return nil, fmt.Errorf("Node value: %w", err)
	}
	if err := checkType(n.Kind, n.APIVersion, KindNameNode); err != nil {
		return nil, fmt.Errorf("Node %q: %w", n.Metadata.Name, err)
	}
	return &n, nil
}

// NodeInfo is what overlayd needs of a node. Zero values mean unset.
type NodeInfo struct {
	Name            string
	Address         netip.Prefix // spec.bgp.ipv4Address: the underlay address and its subnet
	Labels          map[string]string
	IPIPTunnelAddr  netip.Addr // spec.bgp.ipv4IPIPTunnelAddr
	VXLANTunnelAddr netip.Addr // spec.ipv4VXLANTunnelAddr
	// VTEPMAC is spec.vxlanTunnelMACAddr or, when that is unset, Felix's
	// derivation from the name (config.VTEPMACFor). Info always sets it;
	// SetInfo writes it only when it differs from the derivation.
	VTEPMAC net.HardwareAddr
}

// Info reads the node in overlayd's terms. An address that is set but
// malformed is an error naming the member.
func (n *Node) Info() (NodeInfo, error) {
	info := NodeInfo{Name: n.Metadata.Name, Labels: n.Metadata.Labels}
	fail := func(field, value, want string) error {
		return fmt.Errorf("Node %q: %s %q is not %s", info.Name, field, value, want)
	}
	if bgp := n.Spec.BGP; bgp != nil {
		if s := bgp.IPv4Address; s != "" {
			// Felix reads it with ParseCIDROrIP: a bare address is a /32.
			p, err := parseCIDROrIP(s)
			if err != nil || !p.Addr().Is4() {
				return NodeInfo{}, fail("spec.bgp.ipv4Address", s, "an IPv4 address with its prefix length, e.g. 198.18.1.1/24")
			}
			info.Address = p
		}
		if s := bgp.IPv4IPIPTunnelAddr; s != "" {
			a, err := netip.ParseAddr(s)
			if err != nil || !a.Is4() {
				return NodeInfo{}, fail("spec.bgp.ipv4IPIPTunnelAddr", s, "an IPv4 address")
			}
			info.IPIPTunnelAddr = a
		}
	}
	if s := n.Spec.IPv4VXLANTunnelAddr; s != "" {
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			return NodeInfo{}, fail("spec.ipv4VXLANTunnelAddr", s, "an IPv4 address")
		}
		info.VXLANTunnelAddr = a
	}
	info.VTEPMAC = config.VTEPMACFor(info.Name)
	if s := n.Spec.VXLANTunnelMACAddr; s != "" {
		mac, err := net.ParseMAC(s)
		if err != nil || len(mac) != 6 {
			return NodeInfo{}, fail("spec.vxlanTunnelMACAddr", s, "a 48-bit MAC address, e.g. 66:0a:1b:2c:3d:4e")
		}
		info.VTEPMAC = mac
	}
	return info, nil
}

func parseCIDROrIP(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		return netip.ParsePrefix(s)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// NewNode is the Node calico-node would create for info, with the uid and
// creation time clientv3 gives every new resource.
func NewNode(info NodeInfo, uid string, created time.Time) *Node {
	n := &Node{
		Kind:       KindNameNode,
		APIVersion: APIVersion,
		Metadata:   newMeta(info.Name, uid, created),
		Status:     json.RawMessage("{}"),
	}
	n.SetInfo(info)
	return n
}

// SetInfo writes info's addresses, labels and MAC into the node and leaves
// every other member as it was, so that a Node Calico wrote keeps Calico's
// fields. Unset (zero) values clear their member. The name is not changed.
func (n *Node) SetInfo(info NodeInfo) {
	n.Metadata.Labels = maps.Clone(info.Labels)
	if n.Spec.BGP == nil {
		n.Spec.BGP = &NodeBGPSpec{}
	}
	n.Spec.BGP.IPv4Address = ""
	if info.Address.IsValid() {
		n.Spec.BGP.IPv4Address = info.Address.String()
	}
	n.Spec.BGP.IPv4IPIPTunnelAddr = addrString(info.IPIPTunnelAddr)
	n.Spec.IPv4VXLANTunnelAddr = addrString(info.VXLANTunnelAddr)
	n.Spec.VXLANTunnelMACAddr = ""
	if len(info.VTEPMAC) != 0 && info.VTEPMAC.String() != config.VTEPMACFor(n.Metadata.Name).String() {
		n.Spec.VXLANTunnelMACAddr = info.VTEPMAC.String()
	}
	if n.Spec.BGP.IPv4Address == "" && n.Spec.BGP.IPv4IPIPTunnelAddr == "" && len(n.Spec.BGP.Extra) == 0 {
		n.Spec.BGP = nil
	}
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}
