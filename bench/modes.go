package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/internal/testbed"
	routeplan "github.com/overlayd/overlayd/plan"
)

// mode is one way of carrying traffic between node A and node C (other
// subnets, through the bed's router) that the harness measures.
type mode struct {
	Name     string `json:"name"`
	What     string `json:"what"`
	Overhead int    `json:"overheadBytes"` // bytes each packet gains on the wire
	MTU      int    `json:"mtu"`           // the MTU traffic sees
	// setup builds the mode on a fresh standard bed and says where to
	// measure: a client and a server host and the server's address.
	setup func(e *env, bed *testbed.Bed) (*endpoints, error)
}

// endpoints is what a mode's setup hands the measurements.
type endpoints struct {
	client, server *testbed.Host
	addr           netip.Addr
	routers        []*testbed.Process // userspace routers whose CPU and RSS count
}

// env is what the modes need from the command line.
type env struct {
	overlayd    string
	wireguardGo string
	examples    string
	profileDir  string // "": no profiles
}

func modes() []mode {
	return []mode{
		{Name: "underlay", What: "plain veth routing between the nodes, no overlay: the ceiling", MTU: 1500,
			setup: setupUnderlay},
		// The reference first: the paced UDP test offers the others a share
		// of its rate.
		{Name: "kernel VXLAN", What: "Linux vxlan devices set up as Calico's Felix does: the in-kernel reference", Overhead: 50, MTU: 1450,
			setup: setupKernelVXLAN},
		{Name: "overlayd direct", What: "overlayd, ipipMode and vxlanMode Never (the underlay routes the pool)", MTU: 1500,
			setup: overlaydMode("never.toml")},
		{Name: "overlayd IP-in-IP", What: "overlayd, ipipMode Always", Overhead: 20, MTU: 1480,
			setup: overlaydMode("ipip-always.toml")},
		{Name: "overlayd VXLAN", What: "overlayd, vxlanMode Always", Overhead: 50, MTU: 1450,
			setup: overlaydMode("vxlan-always.toml")},
		{Name: "wireguard-go", What: "wireguard-go between the nodes (encrypting, TUN offloads)", Overhead: 60, MTU: 1420,
			setup: setupWireguardGo},
		{Name: "overlayd NAT", What: "workload to the outside host through natOutgoing", MTU: 1480,
			setup: setupNAT},
	}
}

// errNotMeasured marks a mode that cannot run here, with the reason shown in
// the results instead of a number.
type errNotMeasured string

func (e errNotMeasured) Error() string { return string(e) }

func setupUnderlay(_ *env, bed *testbed.Bed) (*endpoints, error) {
	return &endpoints{client: bed.Host("node-a"), server: bed.Host("node-c"), addr: bed.Host("node-c").Addr.Addr()}, nil
}

// workloads adds a workload at .5 of node A's and node C's first block.
func workloads(bed *testbed.Bed, cfg *config.Cluster) (a, c *testbed.Host, err error) {
	var hosts [2]*testbed.Host
	for i, name := range []string{"node-a", "node-c"} {
		addr := cfg.Node(name).Blocks[0].Prefix.Addr().Next().Next().Next().Next().Next()
		if hosts[i], err = bed.AddWorkload(name, "w"+name[len(name)-1:], addr); err != nil {
			return nil, nil, err
		}
	}
	return hosts[0], hosts[1], nil
}

func overlaydMode(file string) func(*env, *testbed.Bed) (*endpoints, error) {
	return func(e *env, bed *testbed.Bed) (*endpoints, error) {
		path := filepath.Join(e.examples, file)
		cfg, err := config.Load(path)
		if err != nil {
			return nil, err
		}
		wa, wc, err := workloads(bed, cfg)
		if err != nil {
			return nil, err
		}
		ep := &endpoints{client: wa, server: wc, addr: wc.Addr.Addr()}
		for _, name := range []string{"node-a", "node-c"} {
			// Blocks sent unencapsulated across subnets: the router must
			// know them, as BGP would tell it.
			p, err := routeplan.Build(cfg, name, testbed.DefaultMTU)
			if err != nil {
				return nil, err
			}
			for _, r := range p.Routes {
				if r.UnderlayRouted() {
					if err := bed.Host("router").IP("route", "replace", r.Block.String(), "via", r.NodeAddr.String()); err != nil {
						return nil, err
					}
				}
			}
			metrics := []string{"--no-metrics"}
			if e.profileDir != "" {
				metrics = []string{"--metrics-listen", profileListen}
			}
			proc, err := bed.Host(name).Start(e.overlayd, append([]string{"run", "--config", path, "--node", name}, metrics...)...)
			if err != nil {
				return nil, err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			err = proc.WaitOutput(ctx, "overlayd running")
			cancel()
			if err != nil {
				return nil, err
			}
			ep.routers = append(ep.routers, proc)
		}
		return ep, nil
	}
}

// setupNAT measures a workload on node A reaching the outside host through
// overlayd's natOutgoing.
func setupNAT(e *env, bed *testbed.Bed) (*endpoints, error) {
	ep, err := overlaydMode("nat-outgoing.toml")(e, bed)
	if err != nil {
		return nil, err
	}
	outside := bed.Host("outside")
	return &endpoints{client: ep.client, server: outside, addr: outside.Addr.Addr(), routers: ep.routers}, nil
}

func setupKernelVXLAN(e *env, bed *testbed.Bed) (*endpoints, error) {
	cfg, err := config.Load(filepath.Join(e.examples, "vxlan-always.toml"))
	if err != nil {
		return nil, err
	}
	wa, wc, err := workloads(bed, cfg)
	if err != nil {
		return nil, err
	}
	self := map[string]*config.Node{"node-a": cfg.Node("node-a"), "node-c": cfg.Node("node-c")}
	for name, n := range self {
		peer := self["node-a"]
		if name == "node-a" {
			peer = self["node-c"]
		}
		h := bed.Host(name)
		for _, args := range [][]string{
			{"link", "add", "vxlan.calico", "type", "vxlan", "id", strconv.Itoa(int(cfg.VXLAN.VNI)), "local", n.Address.Addr().String(),
				"dev", "eth0", "dstport", strconv.Itoa(int(cfg.VXLAN.Port)), "nolearning"},
			{"link", "set", "vxlan.calico", "address", n.VTEPMAC.String(), "mtu", "1450", "up"},
			{"addr", "add", n.TunnelAddr.String() + "/32", "dev", "vxlan.calico"},
			{"neigh", "add", peer.TunnelAddr.String(), "lladdr", peer.VTEPMAC.String(), "dev", "vxlan.calico", "nud", "permanent"},
			{"route", "add", peer.Blocks[0].Prefix.String(), "via", peer.TunnelAddr.String(), "dev", "vxlan.calico", "onlink"},
		} {
			if err := h.IP(args...); err != nil {
				return nil, err
			}
		}
		if _, err := h.Run(context.Background(), "bridge", "fdb", "append", peer.VTEPMAC.String(), "dev", "vxlan.calico", "dst", peer.Address.Addr().String()); err != nil {
			return nil, err
		}
	}
	return &endpoints{client: wa, server: wc, addr: wc.Addr.Addr()}, nil
}

func setupWireguardGo(e *env, bed *testbed.Bed) (*endpoints, error) {
	if e.wireguardGo == "" {
		return nil, errNotMeasured("no wireguard-go binary (make bench builds it)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, c := bed.Host("node-a"), bed.Host("node-c")
	keys := map[string][2]string{} // private, public
	for _, h := range []*testbed.Host{a, c} {
		priv, err := h.Run(ctx, "wg", "genkey")
		if err != nil {
			return nil, err
		}
		pub, err := runWithStdin(ctx, h, strings.TrimSpace(string(priv)), "wg", "pubkey")
		if err != nil {
			return nil, err
		}
		keys[h.Name] = [2]string{strings.TrimSpace(string(priv)), strings.TrimSpace(pub)}
	}
	ep := &endpoints{client: a, server: c, addr: netip.MustParseAddr("10.99.0.3")}
	wgAddr := map[string]string{"node-a": "10.99.0.1", "node-c": "10.99.0.3"}
	for _, pair := range [][2]*testbed.Host{{a, c}, {c, a}} {
		h, peer := pair[0], pair[1]
		// wireguard-go's control socket is /var/run/wireguard/NAME.sock on
		// the shared filesystem: each node needs its own name.
		dev := "wg" + h.Name[len(h.Name)-1:]
		proc, err := h.Start(e.wireguardGo, "-f", dev)
		if err != nil {
			return nil, err
		}
		ep.routers = append(ep.routers, proc)
		deadline := time.Now().Add(10 * time.Second)
		for h.IP("link", "show", dev) != nil {
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("wireguard-go on %s made no %s: %s", h.Name, dev, strings.TrimSpace(proc.Output()))
			}
			time.Sleep(50 * time.Millisecond)
		}
		keyFile := filepath.Join(os.TempDir(), "overlayd-bench-"+bed.ID()+"-"+h.Name+".key")
		if err := os.WriteFile(keyFile, []byte(keys[h.Name][0]), 0o600); err != nil {
			return nil, err
		}
		defer os.Remove(keyFile)
		if _, err := h.Run(ctx, "wg", "set", dev, "listen-port", "51820", "private-key", keyFile,
			"peer", keys[peer.Name][1], "endpoint", peer.Addr.Addr().String()+":51820", "allowed-ips", wgAddr[peer.Name]+"/32"); err != nil {
			return nil, err
		}
		for _, args := range [][]string{
			{"addr", "add", wgAddr[h.Name] + "/24", "dev", dev},
			{"link", "set", dev, "mtu", "1420", "up"},
		} {
			if err := h.IP(args...); err != nil {
				return nil, err
			}
		}
	}
	return ep, nil
}

func runWithStdin(ctx context.Context, h *testbed.Host, stdin string, name string, args ...string) (string, error) {
	out, err := h.Run(ctx, "sh", "-c", fmt.Sprintf("printf '%%s' %q | %s %s", stdin, name, strings.Join(args, " ")))
	return string(out), err
}
