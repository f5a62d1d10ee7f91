package daemon

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

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/dataplane"
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
		// wireguard-go words a missing clone device without its error;
		// asking the file system gives the error back its type.
		if _, serr := os.Stat(tunCloneDevice); errors.Is(serr, fs.ErrNotExist) {
			err = fmt.Errorf("%v: %w", err, serr)
		}
		return workloadSide{}, tunCreateError(d.device, err)
	}
	if !d.dev.programsKernel() {
		d.log.Info("--no-kernel-routes: the TUN's address, state, routes, rules and sysctls are left to whoever set up the namespace (overlayd check --print-routes lists them)", "device", d.device)
	}
	d.log.Info("TUN device created", "device", d.device, "mtu", p.TunnelMTU, "batch", dev.BatchSize(), "underlayMTU", d.underlayMTU)
	return workloadSide{dev: dev}, nil
}

// tunCloneDevice is the device a TUN is created through.
const tunCloneDevice = "/dev/net/tun"

// tunCreateError says what is missing when the TUN cannot be made.
func tunCreateError(name string, err error) error {
	const otherWays = "; without it, hand over a TUN opened by the runtime (--tun-fd) or run without one ([tunnel] mode = \"netstack\")"
	switch {
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("creating TUN device %q: %w: overlayd needs CAP_NET_ADMIN in this network namespace (the root of a user namespace that owns it has it)%s", name, err, otherWays)
	case errors.Is(err, unix.EACCES) || errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("creating TUN device %q: %w: /dev/net/tun must be readable and writable by this user (rootless runtimes pass it with --device /dev/net/tun)%s", name, err, otherWays)
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("creating TUN device %q: %w: there is no /dev/net/tun here (containers need it passed in)%s", name, err, otherWays)
	}
	return fmt.Errorf("creating TUN device %q: %w", name, err)
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
				"block", r.Block, "node", r.Node, "why", r.Reason())
		}
	}
	dev, stack, err := netstack.CreateNetTUN([]netip.Addr{addr}, nil, p.TunnelMTU)
	if err != nil {
		return workloadSide{}, fmt.Errorf("netstack mode: creating the netstack: %w", err)
	}
	d.log.Info("netstack created", "address", addr, "mtu", p.TunnelMTU)
	return workloadSide{dev: dataplane.NewBatchedDevice(dev, p.TunnelMTU), stack: stack, addr: addr}, nil
}
