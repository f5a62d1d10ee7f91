package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
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
	// file is the example cluster file the mode runs ("": none); node A's
	// plan from it gives MTU and Overhead. cfg and path are the file once
	// loaded.
	file string
	cfg  *config.Cluster
	path string
	// outside: the traffic goes to the outside host, which no route of the
	// plan reaches, so nothing encapsulates it.
	outside bool
	// natFlows: the mode also measures the NAT flows section, for which
	// node A's overlayd serves its metrics.
	natFlows bool
	// flood: the mode also measures the forged flood section, for which
	// node C's overlayd, where it runs one, serves its metrics.
	flood bool
	// needs is a command the mode runs that make bench installs ("":
	// none); without it the mode is not measured.
	needs string
	// setup builds the mode on a fresh standard bed and says where to
	// measure: a client and a server host and the server's address.
	setup func(e *env, bed *testbed.Bed, m mode) (*endpoints, error)
}

// endpoints is what a mode's setup hands the measurements.
type endpoints struct {
	client, server *testbed.Host
	addr           netip.Addr
	routers        []*testbed.Process // userspace routers whose CPU and RSS count
	// adminSockets are the overlayd routers' admin sockets, by node.
	adminSockets map[string]string
}

// env is what the modes need from the command line.
type env struct {
	overlayd    string
	wireguardGo string
	examples    string
	profileDir  string // "": no profiles
}

// WireGuard's figures: 60 bytes over IPv4 (outer IPv4 and UDP, then its
// own 32: header and authentication tag), and wg-quick's default MTU,
// which leaves room for an IPv6 underlay's 40-byte header.
const (
	wireguardOverhead = 60
	wireguardMTU      = testbed.DefaultMTU - 80
)

// modes lists the modes, with the cluster files of those that run one
// loaded from the examples directory.
func modes(examples string) ([]mode, error) {
	ms := []mode{
		{Name: "underlay", What: "plain veth routing between the nodes, no overlay: the ceiling", MTU: testbed.DefaultMTU,
			setup: setupUnderlay},
		// The reference first: the paced UDP test offers the others a share
		// of its rate.
		{Name: "kernel VXLAN", What: "Linux vxlan devices set up as Calico's Felix does: the in-kernel reference",
			file: "vxlan-always.toml", flood: true, setup: setupKernelVXLAN},
		{Name: "overlayd direct", What: "overlayd, ipipMode and vxlanMode Never (the underlay routes the pool)",
			file: "never.toml", setup: setupOverlayd},
		{Name: "overlayd IP-in-IP", What: "overlayd, ipipMode Always",
			file: "ipip-always.toml", setup: setupOverlayd},
		{Name: "overlayd VXLAN", What: "overlayd, vxlanMode Always",
			file: "vxlan-always.toml", flood: true, setup: setupOverlayd},
		{Name: "wireguard-go", What: "wireguard-go between the nodes (encrypting, TUN offloads)", Overhead: wireguardOverhead, MTU: wireguardMTU,
			setup: setupWireguardGo},
		{Name: "overlayd NAT", What: "workload to the outside host through natOutgoing",
			file: "nat-outgoing.toml", outside: true, natFlows: true, setup: setupNAT},
		// The NAT's peers (peers.go), from the same workload on node A to
		// the same outside host.
		{Name: "kernel NAT", What: "workload to the outside host through iptables MASQUERADE on node A (conntrack)",
			file: "nat-outgoing.toml", outside: true, needs: "iptables", setup: setupKernelNAT},
		{Name: "pasta", What: "workload namespace to the outside host through pasta in node A (rootless podman's default)",
			MTU: userspaceStackMTU, needs: "pasta", setup: setupPasta},
		{Name: "slirp4netns", What: "workload namespace to the outside host through slirp4netns in node A",
			MTU: userspaceStackMTU, needs: "slirp4netns", setup: setupSlirp4netns},
	}
	for i := range ms {
		if err := ms[i].load(examples); err != nil {
			return nil, err
		}
	}
	return ms, nil
}

// load reads the mode's cluster file and takes the MTU traffic sees and
// the bytes each packet gains from node A's plan: its tunnel MTU on the
// bed's underlay, and the encapsulation of its route to node C.
func (m *mode) load(examples string) error {
	if m.file == "" {
		return nil
	}
	m.path = filepath.Join(examples, m.file)
	cfg, err := config.Load(m.path)
	if err != nil {
		return err
	}
	p, err := routeplan.Build(cfg, "node-a", testbed.DefaultMTU)
	if err != nil {
		return err
	}
	m.cfg, m.MTU = cfg, p.TunnelMTU
	if !m.outside {
		for _, r := range p.Routes {
			if r.Node == "node-c" {
				m.Overhead = r.Encap.Overhead()
			}
		}
	}
	return nil
}

// installed says, as errNotMeasured, when the command the mode needs is
// missing.
func (m mode) installed() error {
	if m.needs == "" {
		return nil
	}
	if _, err := exec.LookPath(m.needs); err != nil {
		return errNotMeasured(m.needs + " is not installed (make bench installs it)")
	}
	return nil
}

// errNotMeasured marks a mode that cannot run here, with the reason shown in
// the results instead of a number.
type errNotMeasured string

func (e errNotMeasured) Error() string { return string(e) }

func setupUnderlay(_ *env, bed *testbed.Bed, _ mode) (*endpoints, error) {
	return &endpoints{client: bed.Host("node-a"), server: bed.Host("node-c"), addr: bed.Host("node-c").Addr.Addr()}, nil
}

// workloads adds a workload on node A and one on node C.
func workloads(bed *testbed.Bed, cfg *config.Cluster) (a, c *testbed.Host, err error) {
	if a, err = bed.AddNodeWorkload(cfg.Node("node-a")); err != nil {
		return nil, nil, err
	}
	if c, err = bed.AddNodeWorkload(cfg.Node("node-c")); err != nil {
		return nil, nil, err
	}
	return a, c, nil
}

// setupOverlayd runs overlayd with the mode's cluster file on node A and
// node C.
func setupOverlayd(e *env, bed *testbed.Bed, m mode) (*endpoints, error) {
	wa, wc, err := workloads(bed, m.cfg)
	if err != nil {
		return nil, err
	}
	ep := &endpoints{client: wa, server: wc, addr: wc.Addr.Addr(), adminSockets: map[string]string{}}
	for _, name := range []string{"node-a", "node-c"} {
		// Blocks sent unencapsulated across subnets: the router must
		// know them, as BGP would tell it.
		p, err := routeplan.Build(m.cfg, name, testbed.DefaultMTU)
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
		// The admin socket in /tmp, per bed and node: the bed's nodes share
		// the filesystem; pprof is served on it only for a profiled run.
		ep.adminSockets[name] = filepath.Join(os.TempDir(), "overlayd-bench-"+bed.ID()+"-"+name+".sock")
		metrics := []string{"--no-metrics", "--admin-socket", ep.adminSockets[name]}
		if m.natFlows || m.flood {
			// The NAT flows and forged flood sections read /metrics in
			// the node's namespace.
			metrics = []string{"--metrics-listen", metricsListen, "--admin-socket", ep.adminSockets[name]}
		}
		if e.profileDir != "" {
			metrics = append(metrics, "--pprof")
		}
		proc, err := bed.Host(name).Start(e.overlayd, append([]string{"run", "--config", m.path, "--node", name}, metrics...)...)
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

// setupNAT measures a workload on node A reaching the outside host through
// overlayd's natOutgoing.
func setupNAT(e *env, bed *testbed.Bed, m mode) (*endpoints, error) {
	// The NAT flows section opens more flows from one workload than the
	// default per-source limit lets it.
	path, err := natFlowsConfig(m.path)
	if err != nil {
		return nil, err
	}
	defer os.Remove(path) // read once, at start
	m.path = path
	ep, err := setupOverlayd(e, bed, m)
	if err != nil {
		return nil, err
	}
	outside := bed.Host("outside")
	return &endpoints{client: ep.client, server: outside, addr: outside.Addr.Addr(), routers: ep.routers, adminSockets: ep.adminSockets}, nil
}

// setupKernelVXLAN sets up the kernel's VXLAN on node A and node C from the
// mode's cluster file, as Felix would.
func setupKernelVXLAN(_ *env, bed *testbed.Bed, m mode) (*endpoints, error) {
	wa, wc, err := workloads(bed, m.cfg)
	if err != nil {
		return nil, err
	}
	if err := bed.Host("node-a").AddFelixVXLAN(m.cfg, "node-c"); err != nil {
		return nil, err
	}
	if err := bed.Host("node-c").AddFelixVXLAN(m.cfg, "node-a"); err != nil {
		return nil, err
	}
	return &endpoints{client: wa, server: wc, addr: wc.Addr.Addr()}, nil
}

func setupWireguardGo(e *env, bed *testbed.Bed, _ mode) (*endpoints, error) {
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
			{"link", "set", dev, "mtu", strconv.Itoa(wireguardMTU), "up"},
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
