package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/overlayd/overlayd/internal/testbed"
)

// The NAT's peers: other ways a workload on node A reaches the outside
// host, doing the job overlayd's natOutgoing does on the same bed. Each
// workload runs the iperf3 client and the outside host the server, as for
// overlayd NAT. No route on the bed leads back to a workload's own
// address, so a reply that reaches the workload has been translated.

// userspaceStackMTU is the MTU pasta and slirp4netns give the namespace
// by default and rootless podman asks of them: the largest Ethernet frame
// their tap takes, since the namespace's packets never meet a wire.
const userspaceStackMTU = 65520

// stackReady is how long pasta or slirp4netns may take to configure the
// workload's namespace.
const stackReady = 10 * time.Second

// setupKernelNAT gives node A's workload the kernel's own source NAT: a
// MASQUERADE rule in node A's namespace (conntrack tracks the flows), as
// Calico's Felix writes for a natOutgoing pool.
func setupKernelNAT(_ *env, bed *testbed.Bed, m mode) (*endpoints, error) {
	if err := m.installed(); err != nil {
		return nil, err
	}
	node := bed.Host("node-a")
	workload, err := bed.AddNodeWorkload(m.cfg.Node(node.Name))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, p := range m.cfg.Pools {
		if !p.NATOutgoing || p.Disabled {
			continue
		}
		pool := p.CIDR.String()
		if _, err := node.Run(ctx, "iptables", "-w", "-t", "nat", "-A", "POSTROUTING",
			"-s", pool, "!", "-d", pool, "-j", "MASQUERADE"); err != nil {
			return nil, fmt.Errorf("kernel NAT on %s: %w", node.Name, err)
		}
	}
	outside := bed.Host("outside")
	return &endpoints{client: workload, server: outside, addr: outside.Addr.Addr()}, nil
}

// pastaRunAs keeps pasta root: this pasta (Debian's, 2023) drops to nobody
// before it joins the workload's namespace, which nobody may not enter
// here, where no user namespace owns it. Rootless podman's pasta runs as
// the user who owns the container's user namespace; the data path is the
// same.
const pastaRunAs = "0"

// setupPasta gives a workload namespace its network through pasta run in
// node A's namespace, as rootless podman does: pasta copies node A's
// address and default route into the namespace and carries the
// namespace's flows on its own sockets in node A's. No port is forwarded
// either way: only the workload's outbound flows are measured. IPv4 only:
// the bed has no IPv6 route to copy.
func setupPasta(_ *env, bed *testbed.Bed, m mode) (*endpoints, error) {
	return setupUserspaceStack(bed, m, func(workload *testbed.Host) []string {
		return []string{"--foreground", "--quiet", "--ipv4-only", "--runas", pastaRunAs, "--config-net", "--mtu", fmt.Sprint(userspaceStackMTU),
			"--tcp-ports", "none", "--udp-ports", "none", "--tcp-ns", "none", "--udp-ns", "none",
			"--netns", workload.NetnsPath()}
	})
}

// setupSlirp4netns gives a workload namespace its network through
// slirp4netns run in node A's namespace, with the options rootless podman
// passes it: the namespace gets tap0 with 10.0.2.100/24 and a default
// route through slirp's 10.0.2.2.
func setupSlirp4netns(_ *env, bed *testbed.Bed, m mode) (*endpoints, error) {
	return setupUserspaceStack(bed, m, func(workload *testbed.Host) []string {
		return []string{"--configure", fmt.Sprintf("--mtu=%d", userspaceStackMTU), "--disable-host-loopback",
			"--netns-type=path", workload.NetnsPath(), "tap0"}
	})
}

// setupUserspaceStack adds a workload namespace with no link of its own,
// starts the mode's command with args(workload) in node A's namespace to
// give it one, and waits for the workload's default route. The command's
// process counts as the mode's router.
func setupUserspaceStack(bed *testbed.Bed, m mode, args func(workload *testbed.Host) []string) (*endpoints, error) {
	if err := m.installed(); err != nil {
		return nil, err
	}
	command := m.needs
	workload, err := bed.AddHost("wa")
	if err != nil {
		return nil, err
	}
	proc, err := bed.Host("node-a").Start(command, args(workload)...)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), stackReady)
	defer cancel()
	for {
		out, err := workload.Run(ctx, "ip", "-4", "route", "show", "default")
		if err == nil && strings.TrimSpace(string(out)) != "" {
			break
		}
		select {
		case <-proc.Exited():
			return nil, fmt.Errorf("%s exited before configuring the workload: %s", command, said(proc))
		case <-ctx.Done():
			return nil, fmt.Errorf("%s gave the workload no default route in %v: %s", command, stackReady, said(proc))
		case <-time.After(50 * time.Millisecond):
		}
	}
	outside := bed.Host("outside")
	return &endpoints{client: workload, server: outside, addr: outside.Addr.Addr(), routers: []*testbed.Process{proc}}, nil
}

// said is what a process wrote, on one line, without pasta's complaints
// that it has no syslog to write to.
func said(proc *testbed.Process) string {
	var lines []string
	for _, line := range strings.Split(proc.Output(), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.Contains(line, "to syslog") {
			lines = append(lines, line)
		}
	}
	return strings.Join(lines, "; ")
}
