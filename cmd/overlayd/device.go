package main

// The workload side of a node: what overlayd's router reads the node's
// outgoing overlay packets from and writes the incoming ones to. Three
// ways, from most to least privilege:
//
//   - a kernel TUN device overlayd creates, configures and routes to
//     (CAP_NET_ADMIN in the node's network namespace: the root of a user
//     namespace that owns it is enough);
//   - a TUN device handed over as a file descriptor (--tun-fd), with the
//     link, routes and rules left to whoever set up the namespace
//     (--no-kernel-routes): no capability at all;
//   - a gVisor netstack in the process ([tunnel] mode = "netstack"): no
//     device, no kernel routes, no privilege; the host's applications reach
//     it through SOCKS5 and port forwards.
//
// The router is the same in all three: only the tun.Device differs.

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/plan"
)

// deviceSettings are the flags and keys that choose the workload side.
type deviceSettings struct {
	mode string // config.ModeTUN or config.ModeNetstack
	// tunFD is a handed-over TUN descriptor; -1: overlayd creates the TUN.
	tunFD int
	// noKernel leaves the TUN's link, addresses, routes, rules and sysctls
	// to whoever set up the namespace.
	noKernel bool
}

// programsKernel says whether overlayd configures the TUN device and
// programs routes and rules: never in netstack mode or with
// --no-kernel-routes.
func (s deviceSettings) programsKernel() bool {
	return s.mode == config.ModeTUN && !s.noKernel
}

// resolveDeviceSettings merges the run flags over the cluster file's
// [tunnel] keys; flags win, as for --device.
func resolveDeviceSettings(c *config.Cluster, modeFlag string, fdFlag int, noKernel bool) (deviceSettings, error) {
	s := deviceSettings{mode: c.Tunnel.Mode, tunFD: c.Tunnel.FD, noKernel: noKernel}
	mode, err := config.OneOf(modeFlag, s.mode, config.ModeTUN, config.ModeNetstack)
	if err != nil {
		return s, fmt.Errorf("--tunnel-mode %q: %w", modeFlag, err)
	}
	s.mode = mode
	if fdFlag >= 0 {
		if fdFlag < 3 {
			return s, fmt.Errorf("--tun-fd %d: 0, 1 and 2 are stdin, stdout and stderr; a handed-over descriptor is 3 or more", fdFlag)
		}
		s.tunFD = fdFlag
	}
	if s.mode == config.ModeNetstack && s.tunFD >= 0 {
		return s, fmt.Errorf("a TUN descriptor (--tun-fd or [tunnel] fd) is of no use in netstack mode, which has no device")
	}
	return s, nil
}

// workloadSide is the device the router runs on, and in netstack mode the
// stack behind it.
type workloadSide struct {
	dev   tun.Device
	stack *netstack.Net // netstack mode only
	addr  netip.Addr    // netstack mode: the stack's address
}

// openWorkloadSide makes the device plan p runs on, as d.dev says.
func (d *daemon) openWorkloadSide(p *plan.Plan) (workloadSide, error) {
	switch {
	case d.dev.mode == config.ModeNetstack:
		return d.openNetstack(p)
	case d.dev.tunFD >= 0:
		return d.adoptTUN(p)
	}
	checkForwarding(d.log)
	dev, err := tun.CreateTUN(d.device, p.TunnelMTU)
	if err != nil {
		return workloadSide{}, tunCreateError(d.device, err)
	}
	if d.dev.programsKernel() {
		d.tunSysctls(d.device)
	} else {
		d.log.Info("--no-kernel-routes: the TUN's address, state, routes, rules and sysctls are left to whoever set up the namespace (overlayd check --print-routes lists them)", "device", d.device)
	}
	d.log.Info("TUN device created", "device", d.device, "mtu", p.TunnelMTU, "batch", dev.BatchSize(), "underlayMTU", d.underlayMTU)
	return workloadSide{dev: dev}, nil
}

// tunCreateError says what is missing when the TUN cannot be made.
func tunCreateError(name string, err error) error {
	const otherWays = "; without it, hand over a TUN opened by the runtime (--tun-fd) or run without one ([tunnel] mode = \"netstack\")"
	switch {
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("creating TUN device %q: %w: overlayd needs CAP_NET_ADMIN in this network namespace (the root of a user namespace that owns it has it)%s", name, err, otherWays)
	case errors.Is(err, unix.EACCES) || errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("creating TUN device %q: %w: /dev/net/tun must be readable and writable by this user (rootless runtimes pass it with --device /dev/net/tun)%s", name, err, otherWays)
	case errors.Is(err, fs.ErrNotExist) || strings.Contains(err.Error(), "does not exist"):
		return fmt.Errorf("creating TUN device %q: %w: there is no /dev/net/tun here (containers need it passed in)%s", name, err, otherWays)
	}
	return fmt.Errorf("creating TUN device %q: %w", name, err)
}

// tunSysctls sets the TUN's per-namespace sysctls (which the root of a user
// namespace owning the network namespace may write).
func (d *daemon) tunSysctls(dev string) {
	for _, s := range tunSysctls(dev) {
		err := os.WriteFile(s.file, []byte(s.value), 0)
		switch {
		case err == nil, errors.Is(err, fs.ErrNotExist) && s.optional:
		case s.optional:
			d.log.Debug("could not set "+s.key, "why", s.why, "err", err)
		default:
			d.log.Warn(fmt.Sprintf("could not set %s=%s on the TUN device: %s", s.key, s.value, s.why), "err", err)
		}
	}
}

// sysctl is one per-namespace setting the TUN device needs.
type sysctl struct {
	key   string // as sysctl(8) takes it
	file  string // under /proc/sys
	value string
	why   string
	// optional: things are only tidier with it.
	optional bool
}

// tunSysctls lists the TUN's sysctls; `overlayd check --print-routes`
// prints them for whoever sets up the namespace. rp_filter is set whether
// or not a pool has natOutgoing now: a reload may turn it on.
func tunSysctls(dev string) []sysctl {
	// In a sysctl(8) key dots separate levels, so a device name's own dots
	// are written as slashes (net.ipv4.conf.eth0/100.rp_filter).
	devKey := strings.ReplaceAll(dev, ".", "/")
	return []sysctl{
		{
			key: "net.ipv6.conf." + devKey + ".disable_ipv6", file: "/proc/sys/net/ipv6/conf/" + dev + "/disable_ipv6", value: "1", optional: true,
			why: "overlayd carries IPv4 only; otherwise the kernel's IPv6 router solicitations on the device show up as drops",
		},
		{
			key: "net.ipv4.conf." + devKey + ".rp_filter", file: "/proc/sys/net/ipv4/conf/" + dev + "/rp_filter", value: "2",
			why: "NAT replies enter through the TUN from outside addresses whose route is the underlay: strict reverse-path filtering would drop them",
		},
	}
}

// adoptTUN uses the TUN descriptor a runtime handed over.
func (d *daemon) adoptTUN(p *plan.Plan) (workloadSide, error) {
	fd := d.dev.tunFD
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
		return workloadSide{}, fmt.Errorf("--tun-fd %d: no such open descriptor (%w): the runtime must pass the TUN's descriptor as that number", fd, err)
	}
	var (
		dev  tun.Device
		name string
		err  error
	)
	if d.dev.programsKernel() {
		// CreateTUNFromFile sets the MTU itself (CAP_NET_ADMIN).
		dev, err = tun.CreateTUNFromFile(os.NewFile(uintptr(fd), "tun-fd-"+strconv.Itoa(fd)), p.TunnelMTU)
		if err == nil {
			name, err = dev.Name()
		}
	} else {
		// No link changes at all, so no capability: the unmonitored
		// device does not set the MTU (overlayd never reads link events).
		dev, name, err = tun.CreateUnmonitoredTUNFromFD(fd)
	}
	if err != nil {
		if permissionDenied(err) {
			return workloadSide{}, fmt.Errorf("--tun-fd %d: %w: configuring the handed-over TUN (its MTU, address, routes) needs CAP_NET_ADMIN in this network namespace; "+
				"with --no-kernel-routes overlayd leaves all that to the runtime (overlayd check --print-routes) and needs no capability", fd, err)
		}
		return workloadSide{}, fmt.Errorf("--tun-fd %d is not a usable TUN device: %w", fd, err)
	}
	d.device = name
	if mtu, err := dev.MTU(); err == nil && mtu != p.TunnelMTU {
		d.log.Warn("the handed-over TUN's MTU differs from the plan's: set it where the namespace is set up (see overlayd check --print-routes)",
			"device", name, "mtu", mtu, "planMTU", p.TunnelMTU)
	}
	if d.dev.programsKernel() {
		d.tunSysctls(name)
	}
	d.log.Info("TUN device handed over", "fd", fd, "device", name, "mtu", p.TunnelMTU, "batch", dev.BatchSize(), "programsKernel", d.dev.programsKernel())
	return workloadSide{dev: dev}, nil
}

// netstackAddr is the netstack's one address: the node's tunnel address
// (the first address of its first block in an encapsulated pool, as Calico
// gives the host), or else the first address of its first block.
func netstackAddr(p *plan.Plan) (netip.Addr, error) {
	if p.TunnelAddr.IsValid() {
		return p.TunnelAddr, nil
	}
	if len(p.LocalBlocks) > 0 {
		return p.LocalBlocks[0].Block.Addr(), nil
	}
	return netip.Addr{}, fmt.Errorf("netstack mode: node %s has no block, so the netstack has no address: give it blocks, or a pool whose nodeSelector selects it", p.Node)
}

// openNetstack makes the gVisor netstack the node's workloads live in.
func (d *daemon) openNetstack(p *plan.Plan) (workloadSide, error) {
	addr, err := netstackAddr(p)
	if err != nil {
		return workloadSide{}, badInput(err)
	}
	for _, r := range p.Routes {
		if r.Encap == plan.EncapNone {
			// A direct route is the kernel's forwarding, and a netstack
			// node has no kernel path to its workloads.
			d.log.Warn("netstack mode: this block is reached unencapsulated, which needs a kernel route to a device; traffic with it will not flow (use ipipMode or vxlanMode Always)",
				"block", r.Block, "node", r.Node, "why", r.Reason)
		}
	}
	dev, stack, err := netstack.CreateNetTUN([]netip.Addr{addr}, nil, p.TunnelMTU)
	if err != nil {
		return workloadSide{}, fmt.Errorf("netstack mode: creating the netstack: %w", err)
	}
	d.log.Info("netstack created", "address", addr, "mtu", p.TunnelMTU)
	return workloadSide{dev: newBatchedDevice(dev, p.TunnelMTU), stack: stack, addr: addr}, nil
}

// configureLink gives the TUN its MTU and tunnel address and brings it up,
// unless someone else owns the link (netstack mode, --no-kernel-routes).
func (d *daemon) configureLink(p *plan.Plan) error {
	if !d.dev.programsKernel() {
		return nil
	}
	return d.routes.ConfigureLink(d.device, p.TunnelMTU, p.TunnelAddr)
}
