package testbed

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/vishvananda/netns"
)

// Host is one network namespace of a bed: a node, a router, an outside host
// or a workload.
type Host struct {
	// Name is the host's name in the bed ("node-a", "router", a workload's name).
	Name string
	// NS is the name of its network namespace (as `ip netns list` shows it).
	NS string
	// Addr is the host's main address: the underlay address with its subnet
	// for nodes and the outside host, the first address for the router, the
	// /32 for a workload. Zero if nothing set it.
	Addr netip.Prefix
	// Node is, for a workload, the node its veth leads into.
	Node *Host
	// NodeIface is, for a workload, the name of its veth's end on the node
	// (Calico style, "cali" and a hash).
	NodeIface string

	bed *Bed

	mu     sync.RWMutex
	handle netns.NsHandle // open while the host lives; Do enters through it
	closed bool
}

// String returns the host's name.
func (h *Host) String() string { return h.Name }

// hostNamePattern keeps host names usable in namespace names, interface
// names and the sweep's pattern.
var hostNamePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

// AddHost makes a new, empty host: a namespace with lo up, IPv6 off on new
// interfaces unless Options.IPv6, and reverse-path filtering off, so that
// beds behave the same whatever the machine's own sysctls are.
func (b *Bed) AddHost(name string) (*Host, error) {
	return b.addHost(name, func(ctx context.Context, ns string) error {
		_, err := runIP(ctx, "netns", "add", ns)
		return err
	})
}

// addHost is AddHost with the way the named namespace is made.
func (b *Bed) addHost(name string, create func(ctx context.Context, ns string) error) (*Host, error) {
	if !hostNamePattern.MatchString(name) {
		return nil, fmt.Errorf("testbed: host name %q: want lower-case letters, digits and dashes, at most 32", name)
	}
	h := &Host{Name: name, NS: b.id + "-" + name, bed: b, handle: netns.None()}
	err := b.register(func() {
		if _, dup := b.hosts[name]; dup {
			h = nil
			return
		}
		b.hosts[name] = h
		b.order = append(b.order, h)
	})
	if err != nil {
		return nil, fmt.Errorf("testbed: add host %s: %w", name, err)
	}
	if h == nil {
		return nil, fmt.Errorf("testbed: add host %s: the bed already has one", name)
	}
	// From here on the host is registered, so Close removes whatever part
	// of it exists even if the rest of the set-up fails.
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	if err := create(ctx, h.NS); err != nil {
		return nil, fmt.Errorf("testbed: add host %s: %w", name, err)
	}
	handle, err := netns.GetFromName(h.NS)
	if err != nil {
		return nil, fmt.Errorf("testbed: add host %s: open namespace: %w", name, err)
	}
	h.mu.Lock()
	h.handle = handle
	h.mu.Unlock()
	if err := h.IP("link", "set", "lo", "up"); err != nil {
		return nil, fmt.Errorf("testbed: add host %s: %w", name, err)
	}
	sysctls := [][2]string{
		{"net.ipv4.conf.all.rp_filter", "0"},
		{"net.ipv4.conf.default.rp_filter", "0"},
	}
	if !b.opts.IPv6 {
		sysctls = append(sysctls, [2]string{"net.ipv6.conf.default.disable_ipv6", "1"})
	}
	if err := h.setSysctls(sysctls...); err != nil {
		return nil, fmt.Errorf("testbed: add host %s: %w", name, err)
	}
	return h, nil
}

func (h *Host) closeHandle() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.closed {
		h.closed = true
		h.handle.Close()
	}
}

// IP runs `ip -n NS args...` (iproute2 inside the host's namespace), for
// set-up the package has no helper for.
func (h *Host) IP(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	if _, err := runIP(ctx, append([]string{"-n", h.NS}, args...)...); err != nil {
		return fmt.Errorf("%s: %w", h.Name, err)
	}
	return nil
}

// Run runs a command inside the host's namespace (through `ip netns exec`,
// which also shows the namespace's own /sys) and returns its combined output.
// The error includes the output.
func (h *Host) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return h.RunWith(ctx, StartOptions{}, name, args...)
}

// Do runs fn on an OS thread that is inside the host's namespace. Sockets fn
// opens belong to that namespace for good, so a listener or connection made
// in fn can be used from any goroutine afterwards. Goroutines fn starts run
// in the machine's namespace, not the host's. A panic in fn is re-raised in
// the caller.
func (h *Host) Do(fn func() error) error {
	type outcome struct {
		err      error
		panicked bool
		value    any
		stack    []byte
	}
	done := make(chan outcome, 1)
	go func() {
		// Lock for good: the thread is only unlocked once it is back in
		// its original namespace; otherwise the runtime retires it when
		// this goroutine ends, and no other goroutine ever runs in the
		// wrong namespace.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- outcome{err: fmt.Errorf("%s: current namespace: %w", h.Name, err)}
			return
		}
		defer orig.Close()
		if err := h.enter(); err != nil {
			runtime.UnlockOSThread()
			done <- outcome{err: err}
			return
		}
		var res outcome
		func() {
			defer func() {
				if r := recover(); r != nil {
					res = outcome{panicked: true, value: r, stack: debug.Stack()}
				}
			}()
			res.err = fn()
		}()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		done <- res
	}()
	res := <-done
	if res.panicked {
		panic(fmt.Sprintf("testbed: panic in %s.Do: %v\n%s", h.Name, res.value, res.stack))
	}
	return res.err
}

// enter moves the calling (locked) thread into the host's namespace.
func (h *Host) enter() error {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.closed || !h.handle.IsOpen() {
		return fmt.Errorf("%s: host is closed", h.Name)
	}
	if err := netns.Set(h.handle); err != nil {
		return fmt.Errorf("%s: enter namespace: %w", h.Name, err)
	}
	return nil
}

// Sysctl sets a sysctl (dotted name, e.g. "net.ipv4.ip_forward") inside the
// host's namespace. Network sysctls are per namespace; the few global ones
// would change the machine, so only net.* keys are accepted.
func (h *Host) Sysctl(key, value string) error {
	return h.setSysctls([2]string{key, value})
}

// SysctlValue reads a net.* sysctl inside the host's namespace.
func (h *Host) SysctlValue(key string) (string, error) {
	path, err := sysctlPath(key)
	if err != nil {
		return "", fmt.Errorf("%s: %w", h.Name, err)
	}
	var value string
	err = h.Do(func() error {
		data, err := os.ReadFile(path)
		value = strings.TrimSpace(string(data))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("%s: read sysctl %s: %w", h.Name, key, err)
	}
	return value, nil
}

func (h *Host) setSysctls(pairs ...[2]string) error {
	paths := make([]string, len(pairs))
	for i, kv := range pairs {
		p, err := sysctlPath(kv[0])
		if err != nil {
			return fmt.Errorf("%s: %w", h.Name, err)
		}
		paths[i] = p
	}
	// /proc/sys/net resolves against the namespace of the thread that
	// opens the file, so writing from inside Do sets the host's value.
	return h.Do(func() error {
		for i, kv := range pairs {
			if err := os.WriteFile(paths[i], []byte(kv[1]), 0o644); err != nil {
				return fmt.Errorf("%s: sysctl %s=%s: %w", h.Name, kv[0], kv[1], err)
			}
		}
		return nil
	})
}

func sysctlPath(key string) (string, error) {
	if !strings.HasPrefix(key, "net.") || strings.Contains(key, "/") || strings.Contains(key, "..") {
		return "", fmt.Errorf("sysctl %q: only net.* keys are per namespace", key)
	}
	return filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/")), nil
}

// Endpoint is one end of a veth pair made by Link.
type Endpoint struct {
	Host  *Host
	Iface string       // interface name inside Host, at most 15 characters
	Addr  netip.Prefix // optional address to put on it
	// Bridge, if set, names a bridge in Host (see AddBridge) to attach the
	// interface to, instead of giving it an address.
	Bridge string
	// MTU of the interface; 0 means the bed's Options.MTU.
	MTU int
}

// Link connects two hosts with a veth pair. Each end is created directly in
// its own namespace (never in the machine's), brought up with its MTU, and
// given its address or bridge.
func (b *Bed) Link(x, y Endpoint) error {
	for _, e := range []Endpoint{x, y} {
		if err := e.check(); err != nil {
			return fmt.Errorf("testbed: link: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	_, err := runIP(ctx, "link", "add", x.Iface, "mtu", strconv.Itoa(x.mtu(b)), "netns", x.Host.NS,
		"type", "veth", "peer", "name", y.Iface, "mtu", strconv.Itoa(y.mtu(b)), "netns", y.Host.NS)
	if err != nil {
		return fmt.Errorf("testbed: link %s:%s - %s:%s: %w", x.Host, x.Iface, y.Host, y.Iface, err)
	}
	for _, e := range []Endpoint{x, y} {
		if err := e.configure(); err != nil {
			return fmt.Errorf("testbed: link %s:%s - %s:%s: %w", x.Host, x.Iface, y.Host, y.Iface, err)
		}
	}
	return nil
}

func (e Endpoint) mtu(b *Bed) int {
	if e.MTU > 0 {
		return e.MTU
	}
	return b.opts.mtu()
}

func (e Endpoint) check() error {
	if e.Host == nil {
		return errors.New("endpoint without a host")
	}
	if err := checkIfaceName(e.Iface); err != nil {
		return fmt.Errorf("%s: %w", e.Host, err)
	}
	if e.Bridge != "" && e.Addr.IsValid() {
		return fmt.Errorf("%s:%s: give an address or a bridge, not both", e.Host, e.Iface)
	}
	return nil
}

func (e Endpoint) configure() error {
	up := []string{"link", "set", e.Iface, "up"}
	if e.Bridge != "" {
		up = append(up, "master", e.Bridge)
	}
	if err := e.Host.IP(up...); err != nil {
		return err
	}
	if e.Addr.IsValid() {
		return e.Host.IP("addr", "add", e.Addr.String(), "dev", e.Iface)
	}
	return nil
}

func checkIfaceName(name string) error {
	if name == "" || len(name) > 15 || strings.ContainsAny(name, "/: \t\n") {
		return fmt.Errorf("interface name %q: want 1 to 15 characters, no '/', ':' or spaces", name)
	}
	return nil
}

// AddBridge makes a bridge in the host, up, with the bed's MTU and, if addr
// is valid, that address. Link's Endpoint.Bridge attaches veths to it.
func (h *Host) AddBridge(name string, addr netip.Prefix) error {
	if err := checkIfaceName(name); err != nil {
		return fmt.Errorf("testbed: %s: bridge: %w", h, err)
	}
	if err := h.IP("link", "add", name, "mtu", strconv.Itoa(h.bed.opts.mtu()), "type", "bridge"); err != nil {
		return fmt.Errorf("testbed: %w", err)
	}
	if err := h.IP("link", "set", name, "up"); err != nil {
		return fmt.Errorf("testbed: %w", err)
	}
	if addr.IsValid() {
		if err := h.IP("addr", "add", addr.String(), "dev", name); err != nil {
			return fmt.Errorf("testbed: %w", err)
		}
	}
	return nil
}

// calicoGateway is the fake next hop every Calico workload routes through;
// the node answers ARP for it by proxy ARP on the workload's veth.
const calicoGateway = "169.254.1.1"

// AddWorkload makes a workload namespace attached to a node the way Calico's
// CNI plugin does it: in the workload, eth0 with addr/32, a link route to
// 169.254.1.1 and the default route through it; on the node, the veth's end
// (see WorkloadIface) up with proxy ARP and a /32 route to addr. Only IPv4.
func (b *Bed) AddWorkload(node, name string, addr netip.Addr) (*Host, error) {
	if !addr.Is4() {
		return nil, fmt.Errorf("testbed: workload %s: address %v: only IPv4 workloads", name, addr)
	}
	n, ok := b.Lookup(node)
	if !ok {
		return nil, fmt.Errorf("testbed: workload %s: the bed has no node %q", name, node)
	}
	w, err := b.AddHost(name)
	if err != nil {
		return nil, err
	}
	iface := WorkloadIface(name)
	w.Addr = netip.PrefixFrom(addr, 32)
	w.Node = n
	w.NodeIface = iface
	mtu := b.opts.workloadMTU()
	if err := b.Link(Endpoint{Host: w, Iface: "eth0", Addr: w.Addr, MTU: mtu}, Endpoint{Host: n, Iface: iface, MTU: mtu}); err != nil {
		return nil, err
	}
	steps := []func() error{
		func() error { return w.IP("route", "add", calicoGateway, "dev", "eth0", "scope", "link") },
		func() error { return w.IP("route", "add", "default", "via", calicoGateway, "dev", "eth0") },
		func() error {
			// proxy_delay 0: answer at once rather than after a random
			// delay of up to 0.8 s, as Calico does.
			return n.setSysctls(
				[2]string{"net.ipv4.conf." + iface + ".proxy_arp", "1"},
				[2]string{"net.ipv4.neigh." + iface + ".proxy_delay", "0"})
		},
		func() error { return n.IP("route", "add", w.Addr.String(), "dev", iface, "scope", "link") },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, fmt.Errorf("testbed: workload %s on %s: %w", name, node, err)
		}
	}
	return w, nil
}

// WorkloadIface is the node-side name of a workload's veth: "cali" and the
// first 11 hex digits of the SHA-1 of the workload's name, 15 characters in
// all, like Calico's.
func WorkloadIface(workload string) string {
	sum := sha1.Sum([]byte(workload))
	return "cali" + hex.EncodeToString(sum[:])[:11]
}

// NetnsPath is the path of the host's network namespace, as a container
// runtime hands it to a CNI plugin (CNI_NETNS).
func (h *Host) NetnsPath() string { return "/run/netns/" + h.NS }

// RemoveHost deletes a host's namespace before the bed ends, as a container
// runtime does when a container goes: its veths go with it.
func (b *Bed) RemoveHost(name string) error {
	var h *Host
	if err := b.register(func() {
		h = b.hosts[name]
		if h != nil {
			delete(b.hosts, name)
			b.order = slices.DeleteFunc(b.order, func(o *Host) bool { return o == h })
		}
	}); err != nil {
		return fmt.Errorf("testbed: remove host %s: %w", name, err)
	}
	if h == nil {
		return fmt.Errorf("testbed: remove host %s: the bed has none", name)
	}
	h.closeHandle()
	if err := deleteNamespace(h.NS); err != nil {
		return fmt.Errorf("testbed: remove host %s: %w", name, err)
	}
	return nil
}
