package testbed

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/overlayd/overlayd/config"
)

// What the beds build from a cluster file: the nodes of the file are the
// hosts of the same name (the standard bed's "node-a", "node-b", "node-c").

// WorkloadAddr is where the beds put a node's workload in a block: its
// fifth address (192.168.0.5 in 192.168.0.0/26).
func WorkloadAddr(block netip.Prefix) netip.Addr {
	a := block.Addr()
	for range 5 {
		a = a.Next()
	}
	return a
}

// AddNodeWorkload adds a workload (AddWorkload) on the host of node n at
// WorkloadAddr of n's first block, named "w" and the last character of the
// node's name ("wa" on node-a).
func (b *Bed) AddNodeWorkload(n *config.Node) (*Host, error) {
	if len(n.Blocks) == 0 {
		return nil, fmt.Errorf("testbed: node %s has no block to put a workload in", n.Name)
	}
	return b.AddWorkload(n.Name, "w"+n.Name[len(n.Name)-1:], WorkloadAddr(n.Blocks[0].Prefix))
}

// FelixVXLANDevice is the name Calico's Felix gives its VXLAN device.
const FelixVXLANDevice = "vxlan.calico"

// ErrNoKernelVXLAN is wrapped by AddFelixVXLAN's error when the kernel
// makes no vxlan device here.
var ErrNoKernelVXLAN = errors.New("the kernel makes no vxlan device here")

// AddFelixVXLAN sets up the kernel's own VXLAN in the host of a node of
// cluster c the way Calico's Felix does: FelixVXLANDevice on eth0 with the
// cluster's VNI and port and no learning, the node's VTEP MAC and tunnel
// address, and the bed's workload MTU; and for each peer node a permanent
// neighbour entry for its tunnel address, an FDB entry toward its underlay
// address and an onlink route to its first block through its tunnel
// address.
func (h *Host) AddFelixVXLAN(c *config.Cluster, peers ...string) error {
	self := c.Node(h.Name)
	if self == nil {
		return fmt.Errorf("testbed: %s: the cluster file has no node of that name", h.Name)
	}
	dev := FelixVXLANDevice
	if err := h.IP("link", "add", dev, "type", "vxlan", "id", strconv.Itoa(int(c.VXLAN.VNI)),
		"local", self.Address.Addr().String(), "dev", "eth0", "dstport", strconv.Itoa(int(c.VXLAN.Port)), "nolearning"); err != nil {
		return fmt.Errorf("testbed: %w: %w", ErrNoKernelVXLAN, err)
	}
	steps := [][]string{
		{"link", "set", dev, "address", self.VTEPMAC.String(), "mtu", strconv.Itoa(h.bed.opts.workloadMTU()), "up"},
		{"addr", "add", netip.PrefixFrom(self.TunnelAddr, 32).String(), "dev", dev},
	}
	var fdb [][]string
	for _, name := range peers {
		p := c.Node(name)
		if p == nil || len(p.Blocks) == 0 {
			return fmt.Errorf("testbed: %s: VXLAN peer %q is no node with a block in the cluster file", h.Name, name)
		}
		steps = append(steps,
			[]string{"neigh", "add", p.TunnelAddr.String(), "lladdr", p.VTEPMAC.String(), "dev", dev, "nud", "permanent"},
			[]string{"route", "add", p.Blocks[0].Prefix.String(), "via", p.TunnelAddr.String(), "dev", dev, "onlink"})
		fdb = append(fdb, []string{"fdb", "append", p.VTEPMAC.String(), "dev", dev, "dst", p.Address.Addr().String()})
	}
	for _, args := range steps {
		if err := h.IP(args...); err != nil {
			return fmt.Errorf("testbed: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	for _, args := range fdb {
		if _, err := h.Run(ctx, "bridge", args...); err != nil {
			return fmt.Errorf("testbed: %w", err)
		}
	}
	return nil
}
