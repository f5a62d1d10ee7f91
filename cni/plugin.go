package cni

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	cniipam "github.com/containernetworking/plugins/pkg/ipam"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/ipam"
	"github.com/overlayd/overlayd/kernel"
	"github.com/overlayd/overlayd/plan"
)

// Main runs the plugin the binary's name asks for (PluginName or IPAMName)
// with the CNI environment and stdin, prints its result or error and
// returns the process's exit status.
func Main(name, about string) int { return MainWithHooks(name, about, Hooks{}) }

// Hooks let tests reach into a plugin process.
type Hooks struct {
	// Crash is called at each crash point (after the address is committed,
	// after the veth is made, after the node's route is added) with its
	// name; a test makes it kill the process there, as the OOM killer or
	// a reboot would.
	Crash func(point string)
}

// The crash points Hooks.Crash is called at.
const (
	CrashAssigned = "assigned"
	CrashVethMade = "veth-made"
	CrashRouted   = "routed"
)

func (h Hooks) crash(point string) {
	if h.Crash != nil {
		h.Crash(point)
	}
}

// plugin is one plugin process.
type plugin struct{ hooks Hooks }

// MainWithHooks is Main with test hooks.
func MainWithHooks(name, about string, hooks Hooks) int {
	p := plugin{hooks}
	funcs := skel.CNIFuncs{Add: p.cmdAdd, Del: p.cmdDel, Check: p.cmdCheck, GC: p.cmdGC, Status: p.cmdStatus}
	if name == IPAMName {
		funcs = skel.CNIFuncs{Add: p.ipamAdd, Del: p.ipamDel, Check: p.ipamCheck, GC: p.ipamGC, Status: p.ipamStatus}
	}
	if e := skel.PluginMainFuncsWithError(funcs, version.All, about); e != nil {
		if err := e.Print(); err != nil {
			fmt.Fprintln(os.Stderr, "writing the error:", err)
		}
		return 1
	}
	return 0
}

// workloadMTU is the MTU the plan gives the node's workloads, unless the
// configuration sets one: the MTU of overlayd's TUN device when it runs
// (overlayd set it from the plan), else the plan's tunnel MTU computed here
// for the node's underlay interface. With etcd, whose pools this plugin
// does not read, that is the underlay's MTU less VXLAN's overhead, the
// largest any pool can add.
func workloadMTU(conf *NetConf, c *config.Cluster, n *config.Node) (int, error) {
	if conf.MTU != 0 {
		return conf.MTU, nil
	}
	if tun, err := netlink.LinkByName(c.Tunnel.Device); err == nil && tun.Attrs().MTU > 0 {
		return tun.Attrs().MTU, nil
	}
	k, err := kernel.Open()
	if err != nil {
		return 0, err
	}
	defer k.Close()
	_, underlay, err := k.InterfaceOf(n.Address.Addr())
	if err != nil {
		return 0, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("node %q: its underlay address %v is not on this host", n.Name, n.Address.Addr()), err.Error())
	}
	if c.Datastore.Type == config.DatastoreEtcd {
		return underlay - plan.EncapVXLAN.Overhead(), nil
	}
	mtu, _ := plan.TunnelMTU(c, underlay)
	return mtu, nil
}

func (p plugin) cmdAdd(args *skel.CmdArgs) error {
	conf, err := parsePlugin(args.StdinData)
	if err != nil {
		return err
	}
	c, n, err := loadCluster(conf)
	if err != nil {
		return err
	}
	mtu, err := workloadMTU(conf, c, n)
	if err != nil {
		return err
	}
	if err := ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
		if _, err := netlink.LinkByName(args.IfName); err == nil {
			return types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("the container already has an interface %q (CNI_IFNAME)", args.IfName), "")
		}
		return nil
	}); err != nil {
		return err
	}

	// The address first, committed, then the links: a crash in between
	// leaves an allocation DEL or GC releases, never a link without one.
	r, err := cniipam.ExecAdd(conf.IPAMConf.Type, args.StdinData)
	if err != nil {
		return err
	}
	release := func() {
		if err := cniipam.ExecDel(conf.IPAMConf.Type, args.StdinData); err != nil {
			fmt.Fprintf(os.Stderr, "overlayd-cni: releasing the address after a failed ADD: %v\n", err)
		}
	}
	ipamResult, err := current.NewResultFromResult(r)
	if err != nil {
		release()
		return types.NewError(types.ErrDecodingFailure, "decoding the IPAM result", err.Error())
	}
	if len(ipamResult.IPs) != 1 || ipamResult.IPs[0].Address.IP.To4() == nil {
		release()
		return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("IPAM plugin %q gave %d addresses; overlayd-cni wants one IPv4 address", conf.IPAMConf.Type, len(ipamResult.IPs)), "")
	}
	addr, _ := netip.AddrFromSlice(ipamResult.IPs[0].Address.IP.To4())

	w := &wiring{crash: p.hooks.crash, hostVeth: HostVeth(args.ContainerID, args.IfName), contIface: args.IfName, addr: addr, mtu: mtu, netnsPath: args.Netns}
	if err := wire(w); err != nil {
		if uerr := unwire(args.Netns, args.IfName, w.hostVeth); uerr != nil {
			fmt.Fprintf(os.Stderr, "overlayd-cni: removing the links after a failed ADD: %v\n", uerr)
		}
		release()
		return fmt.Errorf("wiring %s: %w", args.IfName, err)
	}

	gw := Gateway.AsSlice()
	result := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: w.hostVeth, Mac: w.hostMAC.String()},
			{Name: args.IfName, Mac: w.contMAC.String(), Mtu: mtu, Sandbox: args.Netns},
		},
		IPs:    []*current.IPConfig{{Interface: current.Int(1), Address: hostNet(addr), Gateway: gw}},
		Routes: []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: gw}},
	}
	return types.PrintResult(result, conf.CNIVersion)
}

func (p plugin) cmdDel(args *skel.CmdArgs) error {
	conf, err := parsePlugin(args.StdinData)
	if err != nil {
		return err
	}
	var errs []error
	if err := unwire(args.Netns, args.IfName, HostVeth(args.ContainerID, args.IfName)); err != nil {
		errs = append(errs, err)
	}
	if err := cniipam.ExecDel(conf.IPAMConf.Type, args.StdinData); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// cmdCheck verifies what ADD made and names the first thing missing.
func (p plugin) cmdCheck(args *skel.CmdArgs) error {
	conf, err := parsePlugin(args.StdinData)
	if err != nil {
		return err
	}
	want, err := prevAddrs(conf)
	if err != nil {
		return err
	}
	if len(want) != 1 {
		return fmt.Errorf("CHECK: the previous result has %d addresses, want one", len(want))
	}
	addr := want[0]
	hostVeth := HostVeth(args.ContainerID, args.IfName)
	var problems []string
	host, err := netlink.LinkByName(hostVeth)
	switch {
	case err != nil:
		problems = append(problems, fmt.Sprintf("the node side veth %s is missing", hostVeth))
	default:
		if host.Attrs().OperState != netlink.OperUp && host.Attrs().Flags&net.FlagUp == 0 {
			problems = append(problems, fmt.Sprintf("the node side veth %s is down", hostVeth))
		}
		if !hasRoute(host, hostNet(addr), nil) {
			problems = append(problems, fmt.Sprintf("the node's route to %v via %s is missing", addr, hostVeth))
		}
	}
	if err := ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
		cont, err := netlink.LinkByName(args.IfName)
		if err != nil {
			problems = append(problems, fmt.Sprintf("the container's interface %s is missing", args.IfName))
			return nil
		}
		addrs, err := netlink.AddrList(cont, netlink.FAMILY_V4)
		if err != nil {
			return fmt.Errorf("listing %s's addresses: %w", args.IfName, err)
		}
		if !slices.ContainsFunc(addrs, func(a netlink.Addr) bool { return a.IPNet.String() == netip.PrefixFrom(addr, 32).String() }) {
			problems = append(problems, fmt.Sprintf("the container's address %v/32 on %s is missing", addr, args.IfName))
		}
		if !hasRoute(cont, hostNet(Gateway), nil) {
			problems = append(problems, fmt.Sprintf("the container's route to the gateway %v is missing", Gateway))
		}
		if !hasRoute(cont, net.IPNet{}, Gateway.AsSlice()) {
			problems = append(problems, fmt.Sprintf("the container's default route via %v is missing", Gateway))
		}
		return nil
	}); err != nil {
		return err
	}
	if err := cniipam.ExecCheck(conf.IPAMConf.Type, args.StdinData); err != nil {
		problems = append(problems, err.Error())
	}
	if len(problems) > 0 {
		return fmt.Errorf("CHECK %s: %s", args.ContainerID, strings.Join(problems, "; "))
	}
	return nil
}

// hasRoute reports whether link has a route to dst (the default route when
// dst is empty) through gw (none when nil).
func hasRoute(link netlink.Link, dst net.IPNet, gw net.IP) bool {
	routes, err := netlink.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		return false
	}
	for _, r := range routes {
		isDefault := r.Dst == nil || r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask)
		dstOK := (dst.IP == nil && isDefault) || (dst.IP != nil && r.Dst != nil && r.Dst.String() == dst.String())
		if dstOK && (gw == nil || r.Gw.Equal(gw)) {
			return true
		}
	}
	return false
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}

// cmdGC removes the links of stale attachments and has the IPAM plugin
// release their addresses.
func (p plugin) cmdGC(args *skel.CmdArgs) error {
	conf, err := parsePlugin(args.StdinData)
	if err != nil {
		return err
	}
	s, ctx, done, err := openNodeStore(conf)
	if err != nil {
		return err
	}
	defer done()
	stale, err := gcStore(ctx, s, conf)
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	for _, a := range stale {
		if id, ifname := a.Attrs[ipam.AttrContainerID], a.Attrs[ipam.AttrIfName]; id != "" && ifname != "" {
			if err := deleteLink(HostVeth(id, ifname)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if conf.IPAMConf.Type != IPAMName {
		if err := invoke.DelegateGC(ctx, conf.IPAMConf.Type, args.StdinData, nil); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// cmdStatus says whether ADD can be served: overlayd runs on this node (its
// TUN device exists) and the node has a free address.
func (p plugin) cmdStatus(args *skel.CmdArgs) error {
	conf, err := parsePlugin(args.StdinData)
	if err != nil {
		return err
	}
	c, _, err := loadCluster(conf)
	if err != nil {
		return err
	}
	if _, err := netlink.LinkByName(c.Tunnel.Device); err != nil {
		return types.NewError(types.ErrPluginNotAvailable,
			fmt.Sprintf("overlayd is not running on node %q: its device %s does not exist", conf.Node, c.Tunnel.Device),
			"start it: overlayd run --config "+conf.Config+" --node "+conf.Node)
	}
	return cniipam.ExecStatus(conf.IPAMConf.Type, args.StdinData)
}
