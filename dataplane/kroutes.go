package dataplane

import (
	"github.com/overlayd/overlayd/kernel"
	"github.com/overlayd/overlayd/plan"
)

// KernelRoutes are the routes a plan needs in the kernel, as Calico programs
// them: every pool to the TUN device (sourced from the tunnel address, so
// host-originated traffic to remote workloads carries it), each remote block
// sent unencapsulated via its node on the underlay, and this node's own
// blocks unreachable, so a packet for an address with no workload (whose /32
// route would be more specific) is answered, never sent back out.
func KernelRoutes(p *plan.Plan, tunDev string) []kernel.Route {
	var rs []kernel.Route
	for _, pl := range p.Pools {
		rs = append(rs, kernel.Route{Dst: pl.CIDR, Kind: kernel.KindDevice, Dev: tunDev, Src: p.TunnelAddr})
	}
	for _, b := range p.LocalBlocks {
		rs = append(rs, kernel.Route{Dst: b.Block, Kind: kernel.KindUnreachable})
	}
	for _, r := range p.Routes {
		if r.Encap == plan.EncapNone {
			rs = append(rs, kernel.Route{Dst: r.Block, Kind: kernel.KindVia, Via: r.NodeAddr})
		}
	}
	return rs
}
