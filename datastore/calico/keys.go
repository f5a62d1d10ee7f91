package calico

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// DefaultPrefix is the root of Calico's etcdv3 keys.
const DefaultPrefix = "/calico"

// Kind is the kind of object a key names.
type Kind int

// The kinds of key overlayd reads and writes.
const (
	KindIPPool   Kind = iota + 1 // <prefix>/resources/v3/projectcalico.org/ippools/<name>
	KindNode                     // <prefix>/resources/v3/projectcalico.org/nodes/<name>
	KindBlock                    // <prefix>/ipam/v2/assignment/ipv4/block/<a.b.c.d-n>
	KindAffinity                 // <prefix>/ipam/v2/host/<node>/ipv4/block/<a.b.c.d-n>
	KindHandle                   // <prefix>/ipam/v2/handle/<id>
	KindLiveness                 // <prefix>/felix/v2/no-region/host/<node>/status
)

func (k Kind) String() string {
	switch k {
	case KindIPPool:
		return "ippool"
	case KindNode:
		return "node"
	case KindBlock:
		return "block"
	case KindAffinity:
		return "affinity"
	case KindHandle:
		return "handle"
	case KindLiveness:
		return "liveness"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// ErrUnsupported marks a key that is well-formed in Calico's layout but names
// something overlayd does not model (an IPv6 block, a virtual affinity,
// another resource kind). A watcher skips it without counting it malformed.
var ErrUnsupported = errors.New("not modelled by overlayd")

// Key is a parsed key. Name is the pool's or node's name, the handle's ID, or
// for affinity and liveness keys the node's name; CIDR is set for blocks and
// affinities.
type Key struct {
	Kind Kind
	Name string
	CIDR netip.Prefix
}

// Keys builds and parses keys under one prefix. The zero value uses
// DefaultPrefix. Builders do not check their arguments: names come from
// validated objects.
type Keys struct {
	Prefix string // e.g. "/calico"; a trailing slash is ignored
}

// The path segments, from Calico's model package.
const (
	resourcesPath    = "/resources/v3/projectcalico.org/"
	ippoolsPlural    = "ippools"
	nodesPlural      = "nodes"
	blocksPath       = "/ipam/v2/assignment/ipv4/block/"
	affinityPath     = "/ipam/v2/host/"
	affinityBlock    = "/ipv4/block/"
	handlesPath      = "/ipam/v2/handle/"
	livenessPath     = "/felix/v2/no-region/host/"
	livenessSuffix   = "/status"
	affinityTypeHost = "host"
)

func (k Keys) root() string {
	if k.Prefix == "" {
		return DefaultPrefix
	}
	return strings.TrimSuffix(k.Prefix, "/")
}

// IPPool is the key of the IPPool resource with this name.
func (k Keys) IPPool(name string) string { return k.IPPools() + name }

// IPPools is the prefix under which all IPPool resources live.
func (k Keys) IPPools() string { return k.root() + resourcesPath + ippoolsPlural + "/" }

// Node is the key of the Node resource with this name.
func (k Keys) Node(name string) string { return k.Nodes() + name }

// Nodes is the prefix under which all Node resources live.
func (k Keys) Nodes() string { return k.root() + resourcesPath + nodesPlural + "/" }

// Block is the key of the IPv4 block with this CIDR ('/' written as '-').
func (k Keys) Block(cidr netip.Prefix) string { return k.Blocks() + cidrSegment(cidr) }

// Blocks is the prefix under which all IPv4 blocks live.
func (k Keys) Blocks() string { return k.root() + blocksPath }

// Affinity is the key of node's host affinity for the block with this CIDR.
func (k Keys) Affinity(node string, cidr netip.Prefix) string {
	return k.Affinities() + node + affinityBlock + cidrSegment(cidr)
}

// Affinities is the prefix under which all nodes' host affinities live.
func (k Keys) Affinities() string { return k.root() + affinityPath }

// Handle is the key of the IPAM handle with this ID.
func (k Keys) Handle(id string) string { return k.Handles() + id }

// Handles is the prefix under which all IPAM handles live.
func (k Keys) Handles() string { return k.root() + handlesPath }

// Liveness is the key of node's Felix status report, written under a lease.
func (k Keys) Liveness(node string) string { return k.root() + livenessPath + node + livenessSuffix }

// Livenesses is the prefix under which all nodes' liveness reports live.
func (k Keys) Livenesses() string { return k.root() + livenessPath }

// cidrSegment writes a block CIDR as Calico's keys do: masked, '/' as '-'.
func cidrSegment(cidr netip.Prefix) string {
	return strings.Replace(cidr.Masked().String(), "/", "-", 1)
}

// Parse reads a key back. It fails on a key outside the prefix, of a shape
// Calico does not write, with an empty or multi-segment name, or with a CIDR
// that is not a masked network; keys that are Calico's but that overlayd does
// not model fail with an error wrapping ErrUnsupported.
func (k Keys) Parse(key string) (Key, error) {
	parsed, err := k.parse(key)
	if err != nil {
		return Key{}, fmt.Errorf("datastore key %q: %w", key, err)
	}
	return parsed, nil
}

func (k Keys) parse(key string) (Key, error) {
	rest, ok := strings.CutPrefix(key, k.root()+"/")
	if !ok {
		return Key{}, fmt.Errorf("not under the prefix %q", k.root())
	}
	rest = "/" + rest
	switch {
	case strings.HasPrefix(rest, resourcesPath):
		plural, name, _ := strings.Cut(strings.TrimPrefix(rest, resourcesPath), "/")
		kind := map[string]Kind{ippoolsPlural: KindIPPool, nodesPlural: KindNode}[plural]
		if kind == 0 {
			return Key{}, fmt.Errorf("resource kind %q: %w", plural, ErrUnsupported)
		}
		if err := checkSegment("name", name); err != nil {
			return Key{}, err
		}
		return Key{Kind: kind, Name: name}, nil

	case strings.HasPrefix(rest, "/ipam/v2/assignment/"):
		seg, ok := strings.CutPrefix(rest, blocksPath)
		if !ok {
			if strings.HasPrefix(rest, "/ipam/v2/assignment/ipv6/block/") {
				return Key{}, fmt.Errorf("IPv6 block: %w", ErrUnsupported)
			}
			return Key{}, errors.New("a block key is <prefix>/ipam/v2/assignment/ipv4/block/<a.b.c.d-n>")
		}
		cidr, err := parseCIDRSegment(seg)
		if err != nil {
			return Key{}, err
		}
		return Key{Kind: KindBlock, CIDR: cidr}, nil

	case strings.HasPrefix(rest, "/ipam/v2/handle/"):
		id := strings.TrimPrefix(rest, handlesPath)
		if err := checkSegment("handle ID", id); err != nil {
			return Key{}, err
		}
		return Key{Kind: KindHandle, Name: id}, nil

	case strings.HasPrefix(rest, "/ipam/v2/"):
		// /ipam/v2/<type>/<node>/ipv4/block/<cidr>; the type is "host" or,
		// for KubeVirt, "virtual".
		parts := strings.Split(strings.TrimPrefix(rest, "/ipam/v2/"), "/")
		if parts[0] != affinityTypeHost {
			return Key{}, fmt.Errorf("IPAM key of type %q: %w", parts[0], ErrUnsupported)
		}
		if len(parts) != 5 || parts[3] != "block" || (parts[2] != "ipv4" && parts[2] != "ipv6") {
			return Key{}, errors.New("an affinity key is <prefix>/ipam/v2/host/<node>/ipv4/block/<a.b.c.d-n>")
		}
		if err := checkSegment("node name", parts[1]); err != nil {
			return Key{}, err
		}
		if parts[2] == "ipv6" {
			return Key{}, fmt.Errorf("IPv6 affinity: %w", ErrUnsupported)
		}
		cidr, err := parseCIDRSegment(parts[4])
		if err != nil {
			return Key{}, err
		}
		return Key{Kind: KindAffinity, Name: parts[1], CIDR: cidr}, nil

	case strings.HasPrefix(rest, livenessPath):
		node, ok := strings.CutSuffix(strings.TrimPrefix(rest, livenessPath), livenessSuffix)
		if !ok {
			return Key{}, errors.New("a liveness key is <prefix>/felix/v2/no-region/host/<node>/status")
		}
		if err := checkSegment("node name", node); err != nil {
			return Key{}, err
		}
		return Key{Kind: KindLiveness, Name: node}, nil
	}
	return Key{}, fmt.Errorf("not a key of an IPPool, Node, block, affinity, handle or liveness report: %w", ErrUnsupported)
}

func checkSegment(what, s string) error {
	if s == "" {
		return fmt.Errorf("empty %s", what)
	}
	if strings.Contains(s, "/") {
		return fmt.Errorf("%s %q contains '/'", what, s)
	}
	return nil
}

// parseCIDRSegment reads "a.b.c.d-n", an IPv4 network address.
func parseCIDRSegment(s string) (netip.Prefix, error) {
	cidr, err := netip.ParsePrefix(strings.Replace(s, "-", "/", 1))
	if err != nil || !cidr.Addr().Is4() || strings.Contains(s, "/") {
		return netip.Prefix{}, fmt.Errorf("block %q is not an IPv4 CIDR written a.b.c.d-n", s)
	}
	if cidr.Masked() != cidr {
		return netip.Prefix{}, fmt.Errorf("block %q is not a network address (did you mean %s?)", s, cidrSegment(cidr))
	}
	return cidr, nil
}
