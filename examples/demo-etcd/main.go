// Command demo-etcd is `make demo-etcd`: the cluster of `make demo`, grown
// through a real etcd instead of one shared file. It builds the standard bed
// and a three-member etcd on hosts of its own, applies Calico's VXLAN
// CrossSubnet IPPool with `overlayd apply`, and starts overlayd on nodes A,
// B and C with files that hold only the datastore and the node's own entry.
// The nodes claim their blocks in etcd and learn each other from it; the
// demo pings and moves data between their workloads as `make demo` does.
// Then a fourth node joins live and the others route to it with nobody
// touching their files, and `overlayd delete node` removes it and its
// routes disappear everywhere. Everything is torn down at the end. It needs
// root; it touches nothing outside the namespaces and the temporary
// directory it makes.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/daemon"
	"github.com/overlayd/overlayd/internal/testbed"
	"github.com/overlayd/overlayd/plan"
)

// The nodes of the standard bed, which join first, and the one that joins
// live, on node-a and node-b's subnet.
var firstNodes = []string{"node-a", "node-b", "node-c"}

const (
	lateNode     = "node-d"
	lateNodeAddr = "198.18.1.12/24"
)

// etcdMembers is the size of the etcd cluster, one member per etcd host.
const etcdMembers = 3

func main() {
	var o options
	flag.StringVar(&o.bin, "overlayd", "bin/overlayd", "the overlayd binary")
	flag.StringVar(&o.pools, "pools", "examples/demo-etcd/pools.yaml", "the Calico IPPool manifest that overlayd apply writes to etcd (the demo checks VXLAN CrossSubnet routes)")
	flag.IntVar(&o.size, "bytes", 50<<20, "bytes each TCP transfer moves each way")
	flag.DurationVar(&o.converge, "converge", 30*time.Second, "how long the nodes may take to learn a change from etcd")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintf(os.Stderr, "demo-etcd: %v\n", err)
		os.Exit(1)
	}
}

type options struct {
	bin, pools string
	size       int
	converge   time.Duration
}

func step(format string, args ...any) {
	fmt.Printf("\n==> "+format+"\n", args...)
}

// demo is the cluster as the demo grows it.
type demo struct {
	o     options
	dir   string // the nodes' files, the admin file, the state directories
	bed   *testbed.Bed
	etcd  *testbed.Etcd
	admin string // the commands' cluster file: etcd through its unix sockets

	files    map[string]string   // node: its cluster file
	sums     map[string][32]byte // node: its file's SHA-256 when it started
	procs    map[string]*testbed.Process
	workload map[string]*testbed.Host
	addr     map[string]netip.Addr   // node: its workload's address
	block    map[string]netip.Prefix // node: the block it claimed

	pings, transfers int // that passed
}

func run(ctx context.Context, o options) (err error) {
	start := time.Now()
	d := &demo{
		o:     o,
		files: map[string]string{}, sums: map[string][32]byte{}, procs: map[string]*testbed.Process{},
		workload: map[string]*testbed.Host{}, addr: map[string]netip.Addr{}, block: map[string]netip.Prefix{},
	}
	if d.o.bin, err = filepath.Abs(o.bin); err != nil {
		return err
	}
	if d.o.pools, err = filepath.Abs(o.pools); err != nil {
		return err
	}
	if d.dir, err = os.MkdirTemp("", "overlayd-demo-etcd-"); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			d.printLogs()
		}
		step("tearing down")
		if terr := d.teardown(err != nil); terr != nil {
			err = errors.Join(err, fmt.Errorf("teardown: %w", terr))
		}
		took := time.Since(start).Round(100 * time.Millisecond)
		if err != nil {
			fmt.Printf("\ndemo-etcd: FAILED after %s\n", took)
			return
		}
		fmt.Printf("\ndemo-etcd: passed: %d nodes joined through etcd (%s live), %s deleted; %d pings and %d TCP transfers checked; done in %s\n",
			len(firstNodes)+1, lateNode, lateNode, d.pings, d.transfers, took)
	}()

	if err := d.build(ctx); err != nil {
		return err
	}

	step("applying Calico's IPPool manifest %s with overlayd apply", filepath.Base(d.o.pools))
	if _, err := d.overlayd(ctx, "apply", "-f", d.o.pools); err != nil {
		return err
	}
	if _, err := d.overlayd(ctx, "get", "ippools", "-o", "wide"); err != nil {
		return err
	}

	step("nodes join: overlayd run on %s, each file holding only the datastore and the node's own entry", strings.Join(firstNodes, ", "))
	for i, n := range firstNodes {
		if _, err := d.join(ctx, n, i == 0); err != nil {
			return err
		}
	}
	if _, err := d.awaitMesh(ctx, time.Now(), firstNodes, firstNodes); err != nil {
		return err
	}
	if err := d.printRoutes(ctx, firstNodes, ""); err != nil {
		return err
	}
	if _, err := d.overlayd(ctx, "get", "nodes"); err != nil {
		return err
	}
	if _, err := d.overlayd(ctx, "ipam", "show", "--show-blocks"); err != nil {
		return err
	}

	for i, peer := range []string{"node-b", "node-c"} {
		step("node-a's workload %s -> %s's workload %s (%s)", d.addr["node-a"], peer, d.addr[peer], carriage(d.wantEncap("node-a", peer)))
		if err := d.ping(ctx, "node-a", peer); err != nil {
			return err
		}
		if err := d.transfer(ctx, "node-a", peer, uint16(5201+i)); err != nil {
			return err
		}
	}

	if err := d.joinLive(ctx); err != nil {
		return err
	}
	return d.leave(ctx)
}

// build makes the standard bed, the etcd hosts and the etcd cluster, and
// the admin file the commands use.
func (d *demo) build(ctx context.Context) error {
	step("building the bed: node-a, node-b on 198.18.1.0/24; node-c on 198.18.2.0/24 behind a router; etcd hosts on 198.18.5.0/24")
	bed, err := testbed.New(testbed.Options{WorkloadMTU: testbed.DefaultMTU - plan.EncapVXLAN.Overhead()})
	if err != nil {
		return err
	}
	d.bed = bed
	if err := testbed.BuildStandard(bed); err != nil {
		return err
	}
	hosts, err := bed.AddEtcdHosts(etcdMembers)
	if err != nil {
		return err
	}

	step("starting a %d-member etcd cluster (Debian's etcd-server), one member on each etcd host", etcdMembers)
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if d.etcd, err = bed.StartEtcd(sctx, hosts, testbed.EtcdOptions{UnixSockets: true}); err != nil {
		return err
	}
	for _, m := range d.etcd.Members() {
		fmt.Printf("    %s: %s for the nodes, %s for the commands here\n", m.Name, m.ClientURL, m.UnixEndpoint())
	}
	// The commands run in this machine's own namespace, which reaches etcd
	// only through the unix sockets. The node entry is there because a
	// cluster file needs one; the commands act on the datastore.
	d.admin, err = d.writeFile("admin", d.etcd.UnixEndpoints(), "node-a")
	return err
}

// writeFile writes NAME.toml, a cluster file in etcd mode that holds
// nothing but the [datastore] section (endpoints, a state directory of its
// own) and node's own [[nodes]] entry: its name and underlay address.
func (d *demo) writeFile(name string, endpoints []string, node string) (string, error) {
	quoted := make([]string, len(endpoints))
	for i, e := range endpoints {
		quoted[i] = fmt.Sprintf("%q", e)
	}
	src := fmt.Sprintf("[datastore]\ntype = %q\nendpoints = [%s]\nstateDir = %q\n\n[[nodes]]\nname = %q\naddress = %q\n",
		config.DatastoreEtcd, strings.Join(quoted, ", "), filepath.Join(d.dir, "state-"+name), node, d.bed.Host(node).Addr)
	path := filepath.Join(d.dir, name+".toml")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		return "", err
	}
	return path, nil
}

// overlayd runs `overlayd ARGS --config ADMIN` in this machine's own
// namespace, against etcd, and prints the command and its output.
func (d *demo) overlayd(ctx context.Context, args ...string) (string, error) {
	argv := append(slices.Clone(args), "--config", d.admin)
	shown := make([]string, len(argv))
	for i, a := range argv {
		shown[i] = d.shortPath(a)
	}
	line := "overlayd " + strings.Join(shown, " ")
	fmt.Printf("    $ %s\n", line)
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(cctx, d.o.bin, argv...).CombinedOutput()
	fmt.Print(indent(string(out), "      "))
	if err != nil {
		return "", fmt.Errorf("%s: %w", line, err)
	}
	return string(out), nil
}

// shortPath shows a path of the demo's by its name, and others as given.
func (d *demo) shortPath(a string) string {
	if filepath.Dir(a) == d.dir || a == d.o.pools {
		return filepath.Base(a)
	}
	return a
}

// join starts overlayd on node with a file of its own entry only, waits
// until it runs and has claimed a block in etcd, and puts a workload in
// that block. show prints the node's file. It returns when overlayd said
// it was running.
func (d *demo) join(ctx context.Context, node string, show bool) (time.Time, error) {
	file, err := d.writeFile(node, d.etcd.Endpoints(), node)
	if err != nil {
		return time.Time{}, err
	}
	src, err := os.ReadFile(file)
	if err != nil {
		return time.Time{}, err
	}
	d.files[node], d.sums[node] = file, sha256.Sum256(src)
	if show {
		fmt.Printf("    %s (the others differ only in the node's name, its address and the state directory):\n%s", filepath.Base(file), indent(string(src), "      "))
	}
	proc, err := d.bed.Host(node).Start(d.o.bin, "run", "--config", file, "--node", node, "--admin-socket", d.adminSocket(node))
	if err != nil {
		return time.Time{}, err
	}
	d.procs[node] = proc
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	err = proc.WaitOutput(wctx, "overlayd running")
	cancel()
	if err != nil {
		return time.Time{}, fmt.Errorf("overlayd on %s: %w", node, err)
	}
	running := time.Now()
	res, err := d.awaitPlans(ctx, running, []string{node}, "hold a block of its own", func(_ string, p *nodePlan) bool {
		return len(p.LocalBlocks) > 0
	})
	if err != nil {
		return time.Time{}, err
	}
	block := res[0].plan.LocalBlocks[0].Block
	addr := testbed.WorkloadAddr(block)
	w, err := d.bed.AddWorkload(node, "w"+node[len(node)-1:], addr)
	if err != nil {
		return time.Time{}, err
	}
	d.block[node], d.workload[node], d.addr[node] = block, w, addr
	fmt.Printf("    %s: running, claimed %s in etcd; workload %s at %s\n", node, block, w.Name, addr)
	return running, nil
}

// joinLive adds node-d to the bed on node-a and node-b's subnet, starts
// overlayd on it, and shows that the nodes already running route to it and
// reach its workload, their files untouched.
func (d *demo) joinLive(ctx context.Context) error {
	step("%s joins live on 198.18.1.0/24 with a file of its own; nobody touches %s", lateNode, strings.Join(firstNodes, ", "))
	if err := addBridgedNode(d.bed, lateNode, netip.MustParsePrefix(lateNodeAddr)); err != nil {
		return err
	}
	running, err := d.join(ctx, lateNode, false)
	if err != nil {
		return err
	}
	all := append(slices.Clone(firstNodes), lateNode)
	res, err := d.awaitMesh(ctx, running, firstNodes, all)
	if err != nil {
		return err
	}
	for i, n := range firstNodes {
		fmt.Printf("    %s routes %s's block within %s of %s's overlayd running (plans polled every 100 ms)\n", n, lateNode, res[i].took.Round(10*time.Millisecond), lateNode)
	}
	if _, err := d.awaitMesh(ctx, running, []string{lateNode}, all); err != nil {
		return err
	}
	if err := d.printRoutes(ctx, all, lateNode); err != nil {
		return err
	}
	for _, n := range firstNodes {
		if err := d.ping(ctx, n, lateNode); err != nil {
			return err
		}
	}
	for _, n := range firstNodes {
		src, err := os.ReadFile(d.files[n])
		if err != nil {
			return err
		}
		if sha256.Sum256(src) != d.sums[n] {
			return fmt.Errorf("%s changed while %s joined", d.files[n], lateNode)
		}
	}
	fmt.Printf("    the files of %s: unchanged since they started\n", strings.Join(firstNodes, ", "))
	_, err = d.overlayd(ctx, "get", "nodes")
	return err
}

// leave stops overlayd on node-d, deletes the node with `overlayd delete
// node`, and waits until no other node's plan routes to it any more.
func (d *demo) leave(ctx context.Context) error {
	step("%s leaves: overlayd stopped on it, then overlayd delete node %s", lateNode, lateNode)
	if err := d.procs[lateNode].Stop(); err != nil {
		return err
	}
	fmt.Printf("    %s: overlayd stopped\n", lateNode)
	deleted := time.Now()
	if _, err := d.overlayd(ctx, "delete", "node", lateNode); err != nil {
		return err
	}
	res, err := d.awaitPlans(ctx, deleted, firstNodes, "drop every route to "+lateNode, func(_ string, p *nodePlan) bool {
		return !slices.ContainsFunc(p.Routes, func(r plan.Route) bool { return r.Node == lateNode })
	})
	if err != nil {
		return err
	}
	for i, n := range firstNodes {
		fmt.Printf("    %s: %s's routes gone within %s of the delete (%d routes left)\n", n, lateNode, res[i].took.Round(10*time.Millisecond), len(res[i].plan.Routes))
	}
	if _, err := d.overlayd(ctx, "get", "nodes"); err != nil {
		return err
	}
	_, err = d.overlayd(ctx, "ipam", "show", "--show-blocks")
	return err
}

// addBridgedNode adds a node host on the standard bed's shared segment, as
// BuildStandard adds node-a and node-b: eth0 into the router's bridge br1,
// the default route through the router, forwarding on.
func addBridgedNode(bed *testbed.Bed, name string, addr netip.Prefix) error {
	router := bed.Host("router")
	h, err := bed.AddHost(name)
	if err != nil {
		return err
	}
	h.Addr = addr
	if err := bed.Link(testbed.Endpoint{Host: h, Iface: "eth0", Addr: addr}, testbed.Endpoint{Host: router, Iface: "to-" + name, Bridge: "br1"}); err != nil {
		return err
	}
	if err := h.IP("route", "add", "default", "via", router.Addr.Addr().String()); err != nil {
		return err
	}
	return h.Sysctl("net.ipv4.ip_forward", "1")
}

// nodePlan is the part of a node's plan (GET daemon.APIPlan) the demo reads.
type nodePlan struct {
	Node        string            `json:"node"`
	LocalBlocks []plan.LocalBlock `json:"localBlocks"`
	Routes      []plan.Route      `json:"routes"`
}

// adminSocket is node's admin socket: in the demo's directory, since the
// bed's nodes share the filesystem.
func (d *demo) adminSocket(node string) string { return filepath.Join(d.dir, node+".sock") }

// plan asks node's overlayd for its plan, through its admin socket.
func (d *demo) plan(ctx context.Context, node string) (*nodePlan, error) {
	client := daemon.AdminClient(d.adminSocket(node), 5*time.Second)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, daemon.AdminURL+daemon.APIPlan, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s on %s: %s", daemon.APIPlan, node, resp.Status)
	}
	var p nodePlan
	if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
		return nil, fmt.Errorf("the plan of %s: %w", node, err)
	}
	return &p, nil
}

// polled is one node's plan once it met a condition, and how long after
// the start of the wait that was.
type polled struct {
	plan *nodePlan
	took time.Duration
}

// awaitPlans polls the plans of nodes, each every 100 ms, until ok holds of
// every one, or options.converge after since; what says what ok wants, for
// the error ("hold a block of its own"). The results are in the order
// of nodes; the error names each node that did not get there and what its
// plan routed instead.
func (d *demo) awaitPlans(ctx context.Context, since time.Time, nodes []string, what string, ok func(node string, p *nodePlan) bool) ([]polled, error) {
	ctx, cancel := context.WithDeadline(ctx, since.Add(d.o.converge))
	defer cancel()
	res := make([]polled, len(nodes))
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() {
			var last *nodePlan
			var lastErr error
			for {
				p, err := d.plan(ctx, n)
				if err == nil && ok(n, p) {
					res[i] = polled{plan: p, took: time.Since(since)}
					return
				}
				if err == nil {
					last = p
				}
				if ctx.Err() == nil {
					lastErr = err // not the deadline's doing
				}
				select {
				case <-ctx.Done():
					msg := fmt.Sprintf("%s's plan did not %s within %s; it routes %s", n, what, d.o.converge, describeRoutes(last))
					if lastErr != nil {
						msg += fmt.Sprintf(" (the last poll: %v)", lastErr)
					}
					errs[i] = errors.New(msg)
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
		})
	}
	wg.Wait()
	return res, errors.Join(errs...)
}

// awaitMesh waits until each of nodes routes the block of every other
// member of mesh with the encapsulation the pool promises (wantEncap).
func (d *demo) awaitMesh(ctx context.Context, since time.Time, nodes, mesh []string) ([]polled, error) {
	return d.awaitPlans(ctx, since, nodes, "route the blocks of "+strings.Join(mesh, ", "), func(node string, p *nodePlan) bool {
		for _, peer := range mesh {
			if peer == node {
				continue
			}
			want := d.wantEncap(node, peer)
			if !slices.ContainsFunc(p.Routes, func(r plan.Route) bool {
				return r.Node == peer && r.Block == d.block[peer] && r.Encap == want
			}) {
				return false
			}
		}
		return true
	})
}

// wantEncap is what the demo's VXLAN CrossSubnet pool promises for traffic
// from node to peer: unencapsulated when the peer's underlay address is in
// node's subnet, VXLAN otherwise.
func (d *demo) wantEncap(node, peer string) plan.Encap {
	if d.bed.Host(node).Addr.Contains(d.bed.Host(peer).Addr.Addr()) {
		return plan.EncapNone
	}
	return plan.EncapVXLAN
}

// carriage says in words how the pool carries traffic with encapsulation e.
func carriage(e plan.Encap) string {
	if e == plan.EncapNone {
		return "same subnet: unencapsulated"
	}
	return "other subnet: " + strings.ToUpper(e.String())
}

// printRoutes prints the routes in the plans of nodes, only those to node
// to if it is set.
func (d *demo) printRoutes(ctx context.Context, nodes []string, to string) error {
	fmt.Println()
	for _, n := range nodes {
		p, err := d.plan(ctx, n)
		if err != nil {
			return err
		}
		for _, r := range p.Routes {
			if to == "" || r.Node == to || n == to {
				fmt.Printf("    %s -> %-7s %-18s %-5s (%s)\n", n, r.Node, r.Block, r.Encap, r.Reason())
			}
		}
	}
	fmt.Println()
	return nil
}

func describeRoutes(p *nodePlan) string {
	if p == nil {
		return "(no plan)"
	}
	if len(p.Routes) == 0 {
		return "nothing"
	}
	var s []string
	for _, r := range p.Routes {
		s = append(s, fmt.Sprintf("%s %s %s", r.Node, r.Block, r.Encap))
	}
	return strings.Join(s, ", ")
}

func (d *demo) ping(ctx context.Context, from, to string) error {
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := d.workload[from].Ping(pctx, d.addr[to], 3); err != nil {
		return fmt.Errorf("ping %s's workload -> %s's: %w", from, to, err)
	}
	d.pings++
	fmt.Printf("    ping %s (%s) -> %s (%s): 3 of 3 answered\n", d.workload[from], d.addr[from], d.workload[to], d.addr[to])
	return nil
}

func (d *demo) transfer(ctx context.Context, from, to string, port uint16) error {
	tctx, cancel := context.WithTimeout(ctx, 120*time.Second)
	defer cancel()
	res, err := testbed.TCPTransfer(tctx, d.workload[from], d.workload[to], netip.AddrPortFrom(d.addr[to], port), d.o.size)
	if err != nil {
		return fmt.Errorf("TCP transfer %s's workload -> %s's: %w", from, to, err)
	}
	d.transfers++
	fmt.Printf("    TCP: %v, content checked\n", res)
	return nil
}

// printLogs prints the end of every overlayd's and etcd member's output,
// after a failure.
func (d *demo) printLogs() {
	for _, n := range slices.Sorted(maps.Keys(d.procs)) {
		printTail("overlayd on "+n, d.procs[n], 30)
	}
	if d.etcd != nil {
		for _, m := range d.etcd.Members() {
			if p := m.Process(); p != nil {
				printTail("etcd member "+m.Name, p, 5)
			}
		}
	}
}

func printTail(name string, p *testbed.Process, lines int) {
	fmt.Printf("\n---- %s, the last lines of its output:\n%s", name, indent(lastLines(p.Output(), lines), "    "))
}

// teardown stops overlayd everywhere, then etcd (removing its data), then
// the bed, and checks that none of it is left: no namespace of the bed and
// no etcd member running. An overlayd that fails to stop cleanly is an
// error; one that had already exited is too, unless the demo failed,
// which then says why.
func (d *demo) teardown(failed bool) error {
	// overlayd first, while etcd still answers whatever it does on its way out.
	procs := slices.Collect(maps.Values(d.procs))
	errs := make([]error, len(procs))
	var wg sync.WaitGroup
	for i, p := range procs {
		wg.Go(func() {
			select {
			case <-p.Exited():
				if failed {
					return
				}
			default:
			}
			errs[i] = p.Stop()
		})
	}
	wg.Wait()
	if d.etcd != nil {
		errs = append(errs, d.etcd.Close())
		for _, m := range d.etcd.Members() {
			if m.Running() {
				errs = append(errs, fmt.Errorf("etcd member %s still runs", m.Name))
			}
		}
		if _, err := os.Stat(d.etcd.Dir); !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("etcd's data %s is still there", d.etcd.Dir))
		}
	}
	if d.bed != nil {
		n := len(d.bed.HostNames())
		errs = append(errs, d.bed.Close())
		left, err := namespacesOf(d.bed.ID())
		errs = append(errs, err)
		if len(left) > 0 {
			errs = append(errs, fmt.Errorf("namespaces left: %s", strings.Join(left, ", ")))
		}
		if err == nil && len(left) == 0 {
			fmt.Printf("    %d namespaces removed", n)
			if d.etcd != nil {
				fmt.Printf(", %d etcd members stopped and their data removed", len(d.etcd.Members()))
			}
			fmt.Println()
		}
	}
	errs = append(errs, os.RemoveAll(d.dir))
	return errors.Join(errs...)
}

// namespacesOf lists the network namespaces (`ip netns list`) of bed id.
func namespacesOf(id string) ([]string, error) {
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("ip netns list: %w: %s", err, out)
	}
	var left []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], id+"-") {
			left = append(left, f[0])
		}
	}
	return left, nil
}

func indent(s, prefix string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return ""
	}
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix) + "\n"
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
