package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/plan"
)

// planFlags are the flags every command that builds a plan takes.
type planFlags struct {
	config      string
	node        string
	underlayMTU int
}

func (f *planFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.config, "config", "", "the cluster file (TOML)")
	fs.StringVar(&f.node, "node", "", "this node's name, as in the cluster file's [[nodes]]")
	fs.IntVar(&f.underlayMTU, "underlay-mtu", plan.DefaultUnderlayMTU, "MTU of the underlay interface")
}

// build loads the cluster file and makes this node's plan, on TUN device
// device ("": the file's [tunnel] device). Every failure is bad input.
func (f *planFlags) build(device string) (*plan.Plan, error) {
	if f.config == "" {
		return nil, badInput(errors.New("--config is required: the cluster file"))
	}
	if f.underlayMTU < 576 || f.underlayMTU > 65535 {
		return nil, badInput(fmt.Errorf("--underlay-mtu %d is out of range 576..65535", f.underlayMTU))
	}
	c, err := config.Load(f.config)
	if err != nil {
		return nil, badInput(err)
	}
	if device != "" {
		c.Tunnel.Device = device
	}
	if f.node == "" {
		return nil, badInput(fmt.Errorf("--node is required: one of %s", strings.Join(c.NodeNames(), ", ")))
	}
	p, err := plan.Build(c, f.node, f.underlayMTU)
	if err != nil {
		return nil, badInput(err)
	}
	return p, nil
}

func runCheck(env *cliEnv, args []string) error {
	fs := newFlagSet(env, "check", "--config FILE --node NAME [--underlay-mtu N] [--json | --print-routes [--device NAME]]", `
Validates the cluster file and prints this node's plan: its blocks and tunnel
address, each remote block with its node, encapsulation and why, the NAT rules
and the tunnel MTU. Exit status 2 when the file is invalid.

--print-routes prints instead the sysctl and ip commands that set up the TUN
device, its routes and the NAT rules: what a runtime runs in the node's
network namespace for 'overlayd run --tun-fd N --no-kernel-routes'.`)
	var pf planFlags
	pf.register(fs)
	asJSON := fs.Bool("json", false, "print the plan as JSON")
	printRoutes := fs.Bool("print-routes", false, "print the kernel set-up commands for --no-kernel-routes")
	device := fs.String("device", "", "with --print-routes: the TUN device's name (default: [tunnel] device)")
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return badInput(fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	if *printRoutes && *asJSON {
		return badInput(errors.New("--print-routes and --json: choose one"))
	}
	p, err := pf.build(*device)
	if err != nil {
		return err
	}
	if *printRoutes {
		printKernelSetup(env.stdout, p)
		return nil
	}
	if *asJSON {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(p)
	}
	printPlan(env.stdout, p)
	return nil
}

func printPlan(w io.Writer, p *plan.Plan) {
	tunnel := "none"
	if p.TunnelAddr.IsValid() {
		tunnel = p.TunnelAddr.String()
	}
	fmt.Fprintf(w, "node %s  address %s  tunnel address %s  VTEP MAC %s\n", p.Node, p.Address, tunnel, p.VTEPMAC)
	fmt.Fprintf(w, "tunnel MTU %d (%s)\n", p.TunnelMTU, p.MTUReason)
	if p.UsesVXLAN {
		fmt.Fprintf(w, "VXLAN: VNI %d, UDP port %d\n", p.VNI, p.VXLANPort)
	}

	fmt.Fprintf(w, "\npools:\n")
	tw := tabwriter.NewWriter(w, 2, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "  NAME\tCIDR\tIPIP\tVXLAN\tNAT OUTGOING\tDISABLED\n")
	for _, pl := range p.Pools {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%t\t%t\n", pl.Name, pl.CIDR, pl.IPIPMode, pl.VXLANMode, pl.NATOutgoing, pl.Disabled)
	}
	tw.Flush()

	fmt.Fprintf(w, "\nlocal blocks:\n")
	if len(p.LocalBlocks) == 0 {
		fmt.Fprintf(w, "  none\n")
	}
	for _, b := range p.LocalBlocks {
		fmt.Fprintf(w, "  %s  (pool %s)\n", b.Block, b.Pool)
	}

	fmt.Fprintf(w, "\nremote blocks:\n")
	if len(p.Routes) == 0 {
		fmt.Fprintf(w, "  none\n")
	} else {
		tw = tabwriter.NewWriter(w, 2, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "  BLOCK\tNODE\tVIA\tENCAP\tWHY\n")
		for _, r := range p.Routes {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", r.Block, r.Node, r.NodeAddr, r.Encap, r.Reason())
		}
		tw.Flush()
	}

	fmt.Fprintf(w, "\nNAT:\n")
	if len(p.NATPools) == 0 {
		fmt.Fprintf(w, "  none: no pool has natOutgoing\n")
	}
	for _, c := range p.NATPools {
		fmt.Fprintf(w, "  from %s to destinations outside every pool: source-NATed to %s\n", c, p.Address.Addr())
	}
	if len(p.NATPools) > 0 && p.NATExcludeHostIPs {
		fmt.Fprintf(w, "  node addresses are not NATed ([nat] exclude = \"IPPoolsAndHostIPs\")\n")
	}
	if len(p.Warnings) > 0 {
		fmt.Fprintf(w, "\nwarnings:\n")
		for _, warn := range p.Warnings {
			fmt.Fprintf(w, "  - %s\n", warn)
		}
	}
}

func runExplain(env *cliEnv, args []string) error {
	fs := newFlagSet(env, "explain", "--config FILE --node NAME [--json] SRC DST", `
Says what this node does with one IPv4 packet from SRC to DST: local delivery,
encapsulation to which node and why, direct, NAT, or drop and why.`)
	var pf planFlags
	pf.register(fs)
	asJSON := fs.Bool("json", false, "print the decision as JSON")
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return badInput(errors.New("want two addresses, SRC and DST (e.g. 192.168.0.5 192.168.0.70)"))
	}
	var addrs [2]netip.Addr
	for i, s := range fs.Args() {
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			return badInput(fmt.Errorf("%q is not an IPv4 address", s))
		}
		addrs[i] = a
	}
	p, err := pf.build("")
	if err != nil {
		return err
	}
	d := p.Explain(addrs[0], addrs[1])
	if *asJSON {
		return json.NewEncoder(env.stdout).Encode(d)
	}
	fmt.Fprintf(env.stdout, "%s -> %s on %s: %s", addrs[0], addrs[1], p.Node, d.Action)
	if d.Action == plan.ActionEncap {
		fmt.Fprintf(env.stdout, " (%s)", d.Encap)
	}
	if d.Node != "" {
		fmt.Fprintf(env.stdout, " to %s", d.Node)
	}
	fmt.Fprintf(env.stdout, "\n  why: %s\n  source: %s\n", d.Reason, d.Source)
	return nil
}

func runImport(env *cliEnv, args []string) error {
	fs := newFlagSet(env, "import", "FILE.yaml", `
Reads Calico IPPool manifests (projectcalico.org/v3, as calicoctl writes them;
IPPool or IPPoolList, one or more documents) and prints them as [[pools]]
tables for a cluster file, with every field and default written out.`)
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return badInput(errors.New("want one file: the IPPool manifest (YAML)"))
	}
	pools, err := config.LoadIPPools(fs.Arg(0))
	if err != nil {
		return badInput(err)
	}
	fmt.Fprintf(env.stdout, "# Imported from %s by overlayd import.\n", fs.Arg(0))
	fmt.Fprint(env.stdout, config.FormatPoolsTOML(pools))
	return nil
}

// printKernelSetup writes the plan's kernel part as a script to run in the
// node's network namespace, for `overlayd run --no-kernel-routes`, with a
// word on what needs what.
func printKernelSetup(w io.Writer, p *plan.Plan) {
	fmt.Fprintf(w, "# Kernel set-up for overlayd on %s with TUN device %s, for `overlayd run --no-kernel-routes`.\n", p.Node, p.Kernel.Link.Device)
	fmt.Fprintf(w, "# Run in the node's network namespace with CAP_NET_ADMIN there (e.g. by the container runtime).\n")
	if p.UsesIPIP {
		fmt.Fprintf(w, "# overlayd itself needs CAP_NET_RAW for IP-in-IP; VXLAN needs no capability.\n")
	}
	if p.UsesVXLAN && p.VXLANPort < 1024 {
		fmt.Fprintf(w, "# VXLAN port %d: overlayd needs CAP_NET_BIND_SERVICE, or: sysctl -w net.ipv4.ip_unprivileged_port_start=%d\n", p.VXLANPort, p.VXLANPort)
	}
	fmt.Fprintln(w, strings.Join(p.Kernel.Commands(), "\n"))
}
