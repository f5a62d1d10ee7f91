// Package config reads the cluster file (TOML) and Calico IPPool manifests
// (YAML) into a typed, validated Cluster. Every error names the file, the
// line and the key, so a bad file is fixed at once, and nothing is returned
// half-validated: a Cluster either passes every rule or is not returned.
package config

import (
	"crypto/sha1"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/overlayd/overlayd/encap"
	"github.com/overlayd/overlayd/pool"
)

// Defaults of the cluster file, Calico's where Calico has one.
const (
	DefaultDevice        = "ovl0"
	DefaultVNI           = 4096 // Calico's default VXLAN VNI
	DefaultVXLANPort     = 4789
	DefaultMetricsListen = "127.0.0.1:9469"
)

// NAT exclusion modes, as Felix's natOutgoingExclusions.
const (
	ExcludeIPPoolsOnly       = "IPPoolsOnly"
	ExcludeIPPoolsAndHostIPs = "IPPoolsAndHostIPs"
)

// Cluster is a validated cluster file: the same on every node.
type Cluster struct {
	Source  string // the file it was read from
	Tunnel  Tunnel
	VXLAN   VXLAN
	Metrics Metrics
	Admin   Admin
	NAT     NAT
	// Datastore says where pools, nodes and blocks come from: this file
	// (the default) or etcd, in which case Pools is empty and Nodes holds
	// this file's entries, without blocks, until the datastore fills them.
	Datastore Datastore
	// Netstack and Forwards serve the workload side in netstack mode; they
	// are read whatever the file's mode, since `run --tunnel-mode netstack`
	// may choose it, and used only in that mode.
	Netstack Netstack
	Forwards []Forward
	Pools    []*pool.IPPool
	Nodes    []*Node
}

// Tunnel holds node-local defaults for the TUN device.
type Tunnel struct {
	Device string
	MTU    int // 0: derived from the underlay MTU and the encapsulations in use
	// Mode is ModeTUN (a kernel TUN device) or ModeNetstack (a gVisor
	// netstack in the process: no device, no routes, no privilege).
	Mode string
	// FD is a TUN file descriptor handed over by whoever started overlayd,
	// used instead of creating a device; -1 when there is none.
	FD int
	// BusyPoll is how long a packet loop that has just moved traffic may
	// keep polling for more before it sleeps, at most MaxBusyPoll; 0: it
	// sleeps at once. Read at start.
	BusyPoll time.Duration
}

// MaxBusyPoll bounds [tunnel] busyPoll: a loop that spins longer takes the
// CPU its workloads need, and waking a sleeping thread costs less.
const MaxBusyPoll = time.Millisecond

// VXLAN holds the VXLAN parameters shared by all nodes.
type VXLAN struct {
	VNI  uint32
	Port uint16
}

// Metrics holds where Prometheus's /metrics listens: that listener serves
// nothing else, since whoever scrapes it may be on another host; the admin
// API is on the admin socket.
type Metrics struct {
	Listen string
}

// NAT holds the natOutgoing settings. Zero limits and timeouts mean the
// NAT's defaults (Linux conntrack's timeouts).
type NAT struct {
	Exclude           string // ExcludeIPPoolsOnly or ExcludeIPPoolsAndHostIPs
	MaxFlows          int
	MaxFlowsPerSource int
	TCPTimeout        time.Duration // established TCP flows
	UDPTimeout        time.Duration // UDP flows without a reply
	UDPStreamTimeout  time.Duration // UDP flows with replies
	ICMPTimeout       time.Duration
}

// Node is one node of the cluster with its allocated blocks.
type Node struct {
	Name    string
	Address netip.Prefix // underlay address with its subnet
	Labels  map[string]string
	Blocks  []pool.Block
	VTEPMAC net.HardwareAddr
	// TunnelAddr is the first address of the node's first block in an
	// enabled pool with IP-in-IP or VXLAN on; invalid when there is none.
	TunnelAddr netip.Addr
}

// Node returns the node with the given name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// NodeNames lists the nodes' names in file order.
func (c *Cluster) NodeNames() []string {
	names := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		names[i] = n.Name
	}
	return names
}

// Error is a problem with an input file, pointing at the file, line and key.
type Error struct {
	File string
	Line int    // 0 when unknown
	Key  string // e.g. `pools[2] "ippool-1" ipipMode`; may be empty
	Msg  string
	Err  error // the underlying error, if any
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// VTEPMACFor derives a node's VTEP MAC as Felix does (vtepMACForHost): 0x66
// ('f') followed by the first five bytes of the SHA-1 of the node name, so
// overlayd and Calico nodes agree on each other's MACs without configuration.
func VTEPMACFor(nodeName string) net.HardwareAddr {
	sum := sha1.Sum([]byte(nodeName))
	return net.HardwareAddr{0x66, sum[0], sum[1], sum[2], sum[3], sum[4]}
}

// Load reads and validates a cluster file.
func Load(path string) (*Cluster, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading cluster file: %w", err)
	}
	return Parse(path, data)
}

// The file's shape. Pools is a Primitive because it is either an array of
// tables or the name of a Calico YAML file.
type fileRoot struct {
	Tunnel    fileTunnel     `toml:"tunnel"`
	VXLAN     fileVXLAN      `toml:"vxlan"`
	Metrics   fileMetrics    `toml:"metrics"`
	Admin     fileAdmin      `toml:"admin"`
	NAT       fileNAT        `toml:"nat"`
	Datastore fileDatastore  `toml:"datastore"`
	Netstack  fileNetstack   `toml:"netstack"`
	Forward   []fileForward  `toml:"forward"`
	Pools     toml.Primitive `toml:"pools"`
	Nodes     []fileNode     `toml:"nodes"`
}

type fileTunnel struct {
	Device string `toml:"device"`
	MTU    int    `toml:"mtu"`
	Mode   string `toml:"mode"`
	FD     *int   `toml:"fd"`
	// BusyPoll is a duration ("50us"); a string, as the NAT timeouts are.
	BusyPoll string `toml:"busyPoll"`
}

type fileVXLAN struct {
	VNI  *int `toml:"vni"`
	Port *int `toml:"port"`
}

type fileMetrics struct {
	Listen string `toml:"listen"`
}

type fileNAT struct {
	Exclude           string `toml:"exclude"`
	MaxFlows          int    `toml:"maxFlows"`
	MaxFlowsPerSource int    `toml:"maxFlowsPerSource"`
	TCPTimeout        string `toml:"tcpTimeout"`
	UDPTimeout        string `toml:"udpTimeout"`
	UDPStreamTimeout  string `toml:"udpStreamTimeout"`
	ICMPTimeout       string `toml:"icmpTimeout"`
}

type filePool struct {
	Name         string `toml:"name"`
	CIDR         string `toml:"cidr"`
	IPIPMode     string `toml:"ipipMode"`
	VXLANMode    string `toml:"vxlanMode"`
	NATOutgoing  bool   `toml:"natOutgoing"`
	Disabled     bool   `toml:"disabled"`
	NodeSelector string `toml:"nodeSelector"`
	BlockSize    int    `toml:"blockSize"`
}

type fileNode struct {
	Name    string            `toml:"name"`
	Address string            `toml:"address"`
	Labels  map[string]string `toml:"labels"`
	Blocks  []string          `toml:"blocks"`
	VTEPMAC string            `toml:"vtepMAC"`
}

// allowedKeys lists each table's keys, for unknown-key messages.
var allowedKeys = map[string][]string{
	"":          {"tunnel", "vxlan", "metrics", "admin", "nat", "datastore", "netstack", "forward", "pools", "nodes"},
	"datastore": {"type", "endpoints", "prefix", "caFile", "certFile", "keyFile", "stateDir", "maxBlocksPerNode"},
	"tunnel":    {"device", "mtu", "mode", "fd", "busyPoll"},
	"netstack":  {"socks5", "socks5User", "socks5PasswordFile", "socks5AllowUnauthenticated"},
	"forward":   {"listen", "to", "reverse"},
	"vxlan":     {"vni", "port"},
	"metrics":   {"listen"},
	"admin":     {"socket", "pprof"},
	"nat":       {"exclude", "maxFlows", "maxFlowsPerSource", "tcpTimeout", "udpTimeout", "udpStreamTimeout", "icmpTimeout"},
	"pools":     {"name", "cidr", "ipipMode", "vxlanMode", "natOutgoing", "disabled", "nodeSelector", "blockSize"},
	"nodes":     {"name", "address", "labels", "blocks", "vtepMAC"},
}

// parser carries one file's state through validation.
type parser struct {
	file string
	loc  *keyLocator
}

// errAt builds an error for key in the index-th element of table.
func (p *parser) errAt(table string, index int, elemName, key, format string, args ...any) *Error {
	return &Error{
		File: p.file,
		Line: p.loc.line(table, index, key),
		Key:  describeKey(table, index, elemName, key),
		Msg:  fmt.Sprintf(format, args...),
	}
}

func describeKey(table string, index int, elemName, key string) string {
	var where string
	switch table {
	case "":
		return key
	case "pools", "nodes", "forward":
		where = fmt.Sprintf("%s[%d]", table, index)
		if elemName != "" {
			where += fmt.Sprintf(" %q", elemName)
		}
	default:
		where = "[" + table + "]"
	}
	if key == "" {
		return where
	}
	return where + " " + key
}

var tomlLineRE = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]*)"\): (.*)$`)

// Parse validates a cluster file's contents; file names it in errors and
// anchors a relative `pools = "x.yaml"`.
func Parse(file string, data []byte) (*Cluster, error) {
	p := &parser{file: file, loc: newKeyLocator(data)}
	var root fileRoot
	md, err := toml.Decode(string(data), &root)
	if err != nil {
		return nil, p.decodeError(err)
	}
	var (
		poolSpecs []filePool
		poolsFile string
	)
	switch md.Type("pools") {
	case "":
	case "String":
		if err := md.PrimitiveDecode(root.Pools, &poolsFile); err != nil {
			return nil, p.decodeError(err)
		}
	case "ArrayHash":
		if err := md.PrimitiveDecode(root.Pools, &poolSpecs); err != nil {
			return nil, p.decodeError(err)
		}
	default:
		return nil, p.errAt("", 0, "", "pools", "must be [[pools]] tables or the name of a Calico IPPool YAML file, not a %s", strings.ToLower(md.Type("pools")))
	}
	if err := p.unknownKeys(md); err != nil {
		return nil, err
	}

	c := &Cluster{Source: file}
	if err := p.settings(root, c); err != nil {
		return nil, err
	}
	if err := p.datastore(root.Datastore, c); err != nil {
		return nil, err
	}
	if c.Datastore.Type == DatastoreEtcd {
		if poolsFile != "" || len(poolSpecs) > 0 {
			e := p.errAt("", 0, "", "pools", "with [datastore] type = %q the pools live in etcd: remove them here and write them with `overlayd apply -f ippools.yaml`", DatastoreEtcd)
			if p.loc.find("", 0, "pools") == 0 {
				e.Line = p.loc.line("pools", 0, "") // [[pools]] tables: their first header
			}
			return nil, e
		}
		if err := p.localNodes(root.Nodes, c); err != nil {
			return nil, err
		}
		return c, nil
	}
	if poolsFile != "" {
		if c.Pools, err = p.yamlPools(poolsFile); err != nil {
			return nil, err
		}
	} else {
		for i, fp := range poolSpecs {
			pl, err := pool.New(pool.Spec(fp))
			if err != nil {
				return nil, p.poolError(i, fp.Name, err)
			}
			c.Pools = append(c.Pools, pl)
		}
		if err := pool.ValidateSet(c.Pools); err != nil {
			return nil, p.poolSetError(c.Pools, err)
		}
	}
	if len(c.Pools) == 0 {
		return nil, &Error{File: file, Line: p.loc.end(), Msg: "no pools: add at least one [[pools]] table (or pools = \"ippools.yaml\")"}
	}
	if err := p.nodes(root.Nodes, c); err != nil {
		return nil, err
	}
	return c, nil
}

func (p *parser) decodeError(err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		line := pe.Position.Line
		if line <= 0 {
			// The decoder gives no position for some errors at the end
			// of the input, such as an escape cut off there.
			line = p.loc.end()
		}
		return &Error{File: p.file, Line: line, Key: pe.LastKey, Msg: pe.Message, Err: err}
	}
	if m := tomlLineRE.FindStringSubmatch(err.Error()); m != nil {
		line, _ := strconv.Atoi(m[1])
		msg := strings.Replace(m[3], "incompatible types: TOML value has type", "wrong type: the file has a", 1)
		msg = strings.Replace(msg, "; destination has type", ", the key takes a", 1)
		return &Error{File: p.file, Line: line, Key: m[2], Msg: msg, Err: err}
	}
	// An error the TOML decoder gives no position: the file as a whole.
	return &Error{File: p.file, Line: p.loc.end(), Msg: err.Error(), Err: err}
}

// unknownKeys reports the first key the file has that overlayd does not know,
// with its line and the keys allowed there.
func (p *parser) unknownKeys(md toml.MetaData) error {
	undecoded := map[string]bool{}
	for _, k := range md.Undecoded() {
		undecoded[k.String()] = true
	}
	if len(undecoded) == 0 {
		return nil
	}
	index := map[string]int{}
	for _, k := range md.Keys() {
		if len(k) == 1 && (k[0] == "pools" || k[0] == "nodes" || k[0] == "forward") && md.Type(k...) == "ArrayHash" {
			index[k[0]]++
			continue
		}
		if !undecoded[k.String()] {
			continue
		}
		// Labels are free-form: their keys are the user's.
		if len(k) >= 2 && k[0] == "nodes" && k[1] == "labels" {
			continue
		}
		table, key := "", k[0]
		if len(k) >= 2 {
			table, key = k[0], k[1]
		}
		i := max(index[table]-1, 0)
		allowed := allowedKeys[table]
		msg := fmt.Sprintf("unknown key %q", key)
		if s := Closest(key, allowed); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		}
		if allowed != nil {
			msg += "; allowed keys here: " + strings.Join(allowed, ", ")
		}
		e := p.errAt(table, i, "", key, "%s", msg)
		e.Key = describeKey(table, i, "", "")
		if len(k) == 1 && p.loc.find(table, i, key) == 0 {
			// An unknown table: point at its header.
			e.Line = p.loc.line(key, 0, "")
		}
		return e
	}
	return nil
}

// Closest suggests which of allowed a mistyped word was probably meant to
// be: the nearest by edit distance, ignoring case, at most two edits away;
// "" when none is that near. Commands use it for their "did you mean".
func Closest(key string, allowed []string) string {
	best, bestDist := "", 3
	for _, a := range allowed {
		if d := editDistance(strings.ToLower(key), strings.ToLower(a)); d < bestDist {
			best, bestDist = a, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// OneOf checks a setting that takes one of a few values: it returns value
// when it is one of allowed, def when value is empty, and otherwise an
// error listing the allowed values (`allowed values are "a" and "b"`),
// which the caller prefixes with the setting's name and the bad value.
func OneOf(value, def string, allowed ...string) (string, error) {
	if value == "" {
		return def, nil
	}
	if slices.Contains(allowed, value) {
		return value, nil
	}
	quoted := make([]string, len(allowed))
	for i, a := range allowed {
		quoted[i] = strconv.Quote(a)
	}
	list := quoted[len(quoted)-1]
	if len(quoted) > 1 {
		list = strings.Join(quoted[:len(quoted)-1], ", ") + " and " + list
	}
	return "", fmt.Errorf("allowed values are %s", list)
}

var ifNameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)

func (p *parser) settings(root fileRoot, c *Cluster) error {
	c.Tunnel = Tunnel{Device: root.Tunnel.Device, MTU: root.Tunnel.MTU}
	if c.Tunnel.Device == "" {
		c.Tunnel.Device = DefaultDevice
	} else if !ifNameRE.MatchString(c.Tunnel.Device) {
		return p.errAt("tunnel", 0, "", "device", "%q is not a valid interface name (1 to 15 of A-Z a-z 0-9 _ . -)", c.Tunnel.Device)
	}
	if m := c.Tunnel.MTU; m != 0 && (m < 576 || m > 65535) {
		return p.errAt("tunnel", 0, "", "mtu", "%d is out of range: 0 (derive from the underlay MTU) or 576 to 65535", m)
	}
	if v := root.Tunnel.BusyPoll; v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > MaxBusyPoll {
			return p.errAt("tunnel", 0, "", "busyPoll", "%q is not a duration from 0 (off) to %v (e.g. \"50us\")", v, MaxBusyPoll)
		}
		c.Tunnel.BusyPoll = d
	}

	if err := p.userspace(root, c); err != nil {
		return err
	}

	c.VXLAN = VXLAN{VNI: DefaultVNI, Port: DefaultVXLANPort}
	if v := root.VXLAN.VNI; v != nil {
		if *v < 0 || *v > encap.MaxVNI {
			return p.errAt("vxlan", 0, "", "vni", "%d is out of range: a VNI is 0 to %d (Calico's default is %d)", *v, encap.MaxVNI, DefaultVNI)
		}
		c.VXLAN.VNI = uint32(*v)
	}
	if v := root.VXLAN.Port; v != nil {
		if *v < 1 || *v > 65535 {
			return p.errAt("vxlan", 0, "", "port", "%d is out of range: a UDP port is 1 to 65535 (the IANA VXLAN port is 4789)", *v)
		}
		c.VXLAN.Port = uint16(*v)
	}

	c.Metrics.Listen = root.Metrics.Listen
	if c.Metrics.Listen == "" {
		c.Metrics.Listen = DefaultMetricsListen
	} else if _, err := netip.ParseAddrPort(c.Metrics.Listen); err != nil {
		return p.errAt("metrics", 0, "", "listen", "%q is not an address:port (e.g. %q)", c.Metrics.Listen, DefaultMetricsListen)
	}
	if err := p.admin(root.Admin, c); err != nil {
		return err
	}

	exclude, err := OneOf(root.NAT.Exclude, ExcludeIPPoolsOnly, ExcludeIPPoolsOnly, ExcludeIPPoolsAndHostIPs)
	if err != nil {
		return p.errAt("nat", 0, "", "exclude", "invalid value %q: %v (the default is %q)", root.NAT.Exclude, err, ExcludeIPPoolsOnly)
	}
	c.NAT.Exclude = exclude
	for _, lim := range []struct {
		key string
		v   int
		dst *int
	}{{"maxFlows", root.NAT.MaxFlows, &c.NAT.MaxFlows}, {"maxFlowsPerSource", root.NAT.MaxFlowsPerSource, &c.NAT.MaxFlowsPerSource}} {
		if lim.v < 0 {
			return p.errAt("nat", 0, "", lim.key, "%d is negative: a number of flows, or 0 for the default", lim.v)
		}
		*lim.dst = lim.v
	}
	for _, to := range []struct {
		key, v string
		dst    *time.Duration
	}{{"tcpTimeout", root.NAT.TCPTimeout, &c.NAT.TCPTimeout}, {"udpTimeout", root.NAT.UDPTimeout, &c.NAT.UDPTimeout},
		{"udpStreamTimeout", root.NAT.UDPStreamTimeout, &c.NAT.UDPStreamTimeout}, {"icmpTimeout", root.NAT.ICMPTimeout, &c.NAT.ICMPTimeout}} {
		if to.v == "" {
			continue
		}
		d, err := time.ParseDuration(to.v)
		if err != nil || d <= 0 {
			return p.errAt("nat", 0, "", to.key, "%q is not a positive duration (e.g. \"30s\", \"5m\", \"120h\")", to.v)
		}
		*to.dst = d
	}
	return nil
}

// poolError points a pool validation error at its key's line.
func (p *parser) poolError(i int, name string, err error) error {
	var fe *pool.FieldError
	if errors.As(err, &fe) {
		e := p.errAt("pools", i, name, fe.Field, "%s", fe.Msg)
		e.Err = err
		return e
	}
	return &Error{File: p.file, Line: p.loc.line("pools", i, ""), Key: describeKey("pools", i, name, ""), Msg: err.Error(), Err: err}
}

// poolSetError points a cross-pool error at the later pool of the pair.
func (p *parser) poolSetError(pools []*pool.IPPool, err error) error {
	var fe *pool.FieldError
	if errors.As(err, &fe) {
		for i := len(pools) - 1; i >= 0; i-- {
			if pools[i].Name == fe.Pool {
				return p.poolError(i, fe.Pool, err)
			}
		}
	}
	return &Error{File: p.file, Line: p.loc.line("pools", 0, ""), Msg: err.Error(), Err: err}
}

var nodeNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// nodes reads the [[nodes]] tables into c.Nodes and gives each node its
// blocks: those it lists, else the first free block of the first enabled
// pool that selects it.
func (p *parser) nodes(fileNodes []fileNode, c *Cluster) error {
	reqs, names, err := p.parseNodes(fileNodes, c)
	if err != nil {
		return err
	}
	return p.allocate(reqs, names, c)
}

// localNodes reads the [[nodes]] tables of a file whose pools and blocks
// live in a datastore: the nodes get their blocks from it, not here.
func (p *parser) localNodes(fileNodes []fileNode, c *Cluster) error {
	reqs, _, err := p.parseNodes(fileNodes, c)
	if err != nil {
		return err
	}
	for i, r := range reqs {
		if len(r.Blocks) > 0 {
			return p.errAt("nodes", i, r.Name, "blocks", "with [datastore] type = %q a node claims its blocks in etcd: remove them here", DatastoreEtcd)
		}
	}
	return nil
}

// parseNodes validates the [[nodes]] tables, fills c.Nodes in file order
// and returns each node's block request and index by name.
func (p *parser) parseNodes(fileNodes []fileNode, c *Cluster) ([]pool.NodeRequest, map[string]int, error) {
	if len(fileNodes) == 0 {
		return nil, nil, &Error{File: p.file, Line: p.loc.end(), Msg: "no nodes: add a [[nodes]] table for each node (name and address, e.g. address = \"198.18.1.10/24\")"}
	}
	names := map[string]int{}
	addrs := map[netip.Addr]int{}
	reqs := make([]pool.NodeRequest, 0, len(fileNodes))
	for i, fn := range fileNodes {
		fail := func(key, format string, args ...any) error {
			return p.errAt("nodes", i, fn.Name, key, format, args...)
		}
		if fn.Name == "" {
			return nil, nil, fail("name", "missing: every node needs a name (its Calico node name, usually the hostname)")
		}
		if len(fn.Name) > 253 || !nodeNameRE.MatchString(fn.Name) {
			return nil, nil, fail("name", "%q is not a valid node name (a lowercase RFC 1123 subdomain: lowercase letters, digits, '-' and '.')", fn.Name)
		}
		if j, dup := names[fn.Name]; dup {
			return nil, nil, fail("name", "duplicate node name %q (also nodes[%d])", fn.Name, j)
		}
		names[fn.Name] = i

		if fn.Address == "" {
			return nil, nil, fail("address", "missing: the node's underlay IPv4 address with its prefix length, e.g. \"198.18.1.10/24\"")
		}
		addr, err := netip.ParsePrefix(fn.Address)
		if err != nil {
			if a, aerr := netip.ParseAddr(fn.Address); aerr == nil {
				return nil, nil, fail("address", "%q has no prefix length: write the subnet too (e.g. \"%s/24\"); CrossSubnet needs it to tell which nodes share this node's subnet", fn.Address, a)
			}
			return nil, nil, fail("address", "%q is not an IPv4 address with a prefix length (e.g. \"198.18.1.10/24\")", fn.Address)
		}
		if !addr.Addr().Is4() {
			return nil, nil, fail("address", "%s is not IPv4: the underlay is IPv4", addr)
		}
		if addr.Bits() == 32 {
			return nil, nil, fail("address", "%s is a /32: write the underlay subnet's prefix length (e.g. /24); with /32 no node is ever in the same subnet", addr)
		}
		if j, dup := addrs[addr.Addr()]; dup {
			return nil, nil, fail("address", "duplicate node address %s (also nodes[%d] %q)", addr.Addr(), j, fileNodes[j].Name)
		}
		addrs[addr.Addr()] = i
		for _, pl := range c.Pools {
			if pl.CIDR.Contains(addr.Addr()) {
				return nil, nil, fail("address", "%s lies in pool %q (%s): underlay addresses must be outside every pool", addr.Addr(), pl.Name, pl.CIDR)
			}
		}

		mac := VTEPMACFor(fn.Name)
		if fn.VTEPMAC != "" {
			if mac, err = net.ParseMAC(fn.VTEPMAC); err != nil || len(mac) != 6 {
				return nil, nil, fail("vtepMAC", "%q is not a MAC address (e.g. \"66:12:34:56:78:9a\")", fn.VTEPMAC)
			}
			if mac[0]&1 != 0 {
				return nil, nil, fail("vtepMAC", "%s is a multicast MAC: a VTEP MAC must be unicast (first byte even)", mac)
			}
		}

		var blocks []netip.Prefix
		for _, b := range fn.Blocks {
			pfx, err := netip.ParsePrefix(b)
			if err != nil {
				return nil, nil, fail("blocks", "%q is not a CIDR block (e.g. \"192.168.0.0/26\")", b)
			}
			blocks = append(blocks, pfx)
		}
		reqs = append(reqs, pool.NodeRequest{Name: fn.Name, Labels: fn.Labels, Blocks: blocks})
		c.Nodes = append(c.Nodes, &Node{Name: fn.Name, Address: addr, Labels: fn.Labels, VTEPMAC: mac})
	}
	return reqs, names, nil
}

// allocate gives the nodes of c their blocks, as the file asks.
func (p *parser) allocate(reqs []pool.NodeRequest, names map[string]int, c *Cluster) error {
	alloc, err := pool.Allocate(c.Pools, reqs)
	if err != nil {
		var be *pool.BlockError
		if errors.As(err, &be) {
			i := names[be.Node]
			e := p.errAt("nodes", i, be.Node, "blocks", "%s", be.Msg)
			if be.Index < 0 {
				e.Line = p.loc.line("nodes", i, "")
				e.Key = describeKey("nodes", i, be.Node, "")
			}
			e.Err = err
			return e
		}
		return &Error{File: p.file, Line: p.loc.line("nodes", 0, ""), Msg: err.Error(), Err: err}
	}
	for i, nb := range alloc {
		n := c.Nodes[i]
		n.Blocks = nb.Blocks
		if j := slices.IndexFunc(nb.Blocks, func(b pool.Block) bool {
			return b.Pool.Encapsulated() && !b.Pool.Disabled
		}); j >= 0 {
			n.TunnelAddr = nb.Blocks[j].Prefix.Addr()
		}
	}
	return nil
}

// resolve makes a path named in the cluster file relative to that file.
func (p *parser) resolve(path string) string {
	if filepath.IsAbs(path) {
		return path
	}
	return filepath.Join(filepath.Dir(p.file), path)
}
