package main

import (
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/overlayd/overlayd/dataplane"
	"github.com/overlayd/overlayd/kernel"
	"github.com/overlayd/overlayd/plan"
)

// kernelSetup lists, as the shell commands that make it, everything
// `overlayd run` does in the kernel for plan p on TUN device dev: what
// whoever sets up the namespace must do when overlayd runs with
// --no-kernel-routes. The order matters: the link must be up before routes
// through it, and the NAT table's route before the rules that steer to it.
func kernelSetup(p *plan.Plan, dev string) []string {
	var cmds []string
	for _, s := range tunSysctls(dev) {
		cmds = append(cmds, fmt.Sprintf("sysctl -w %s=%s", s.key, s.value))
	}
	cmds = append(cmds, fmt.Sprintf("ip link set dev %s mtu %d up", dev, p.TunnelMTU))
	if p.TunnelAddr.IsValid() {
		cmds = append(cmds, fmt.Sprintf("ip addr replace %s/32 dev %s", p.TunnelAddr, dev))
	}
	for _, r := range dataplane.KernelRoutes(p, dev) {
		cmds = append(cmds, "ip route replace "+r.String())
	}
	if len(p.NATPools) > 0 {
		cmds = append(cmds, "ip route replace "+kernel.NATTableRoute(dev))
		for _, r := range natRules(p) {
			cmds = append(cmds, "ip rule add "+r.String())
		}
	}
	return cmds
}

// natRules are the policy rules that steer plan p's natOutgoing traffic to
// the TUN: from each natOutgoing pool to outside every pool, node addresses
// exempt under IPPoolsAndHostIPs.
func natRules(p *plan.Plan) []kernel.Rule {
	var all []netip.Prefix
	for _, pl := range p.Pools {
		all = append(all, pl.CIDR)
	}
	var exempt []netip.Addr
	if p.NATExcludeHostIPs {
		for _, peer := range p.Peers {
			exempt = append(exempt, peer.Addr)
		}
	}
	return kernel.NATRules(p.NATPools, all, exempt)
}

// printKernelSetup writes kernelSetup as a script to run in the node's
// network namespace, with a word on what needs what.
func printKernelSetup(w io.Writer, p *plan.Plan, dev string) {
	fmt.Fprintf(w, "# Kernel set-up for overlayd on %s with TUN device %s, for `overlayd run --no-kernel-routes`.\n", p.Node, dev)
	fmt.Fprintf(w, "# Run in the node's network namespace with CAP_NET_ADMIN there (e.g. by the container runtime).\n")
	if p.UsesIPIP {
		fmt.Fprintf(w, "# overlayd itself needs CAP_NET_RAW for IP-in-IP; VXLAN needs no capability.\n")
	}
	if p.UsesVXLAN && p.VXLANPort < 1024 {
		fmt.Fprintf(w, "# VXLAN port %d: overlayd needs CAP_NET_BIND_SERVICE, or: sysctl -w net.ipv4.ip_unprivileged_port_start=%d\n", p.VXLANPort, p.VXLANPort)
	}
	fmt.Fprintln(w, strings.Join(kernelSetup(p, dev), "\n"))
}
