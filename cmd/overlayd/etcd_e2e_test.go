package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/overlayd/overlayd/cni"
	"github.com/overlayd/overlayd/daemon"
	"github.com/overlayd/overlayd/internal/testbed"
	"github.com/overlayd/overlayd/plan"
)

// etcdCluster is the standard bed with a real three-member etcd, one member
// on each of nodes A, B and C, and overlayd nodes that know only their own
// entry: they learn each other, their pools and blocks through etcd.
type etcdCluster struct {
	t        *testing.T
	bed      *testbed.Bed
	etcd     *testbed.Etcd
	dir      string
	admin    string // a cluster file for the commands, on etcd's unix sockets
	sockets  string // the directory of the nodes' admin sockets
	procs    map[string]*testbed.Process
	workload map[string]*testbed.Host
	addr     map[string]netip.Addr
}

const etcdPoolsYAML = `apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: ippool-vxlan-cross-subnet-1
spec:
  cidr: 192.168.0.0/16
  vxlanMode: %s
  natOutgoing: true
`

// etcdCNIPoolYAML is the pool the CNI part of the etcd test takes its
// containers' addresses from.
const etcdCNIPoolYAML = `apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: ippool-cni
spec:
  cidr: 10.1.0.0/16
  vxlanMode: Always
  blockSize: 26
`

func startEtcdCluster(t *testing.T) *etcdCluster {
	t.Helper()
	testbed.RequireEtcd(t)
	bed := testbed.NewStandard(t, testbed.Options{WorkloadMTU: testbed.DefaultMTU - plan.EncapVXLAN.Overhead()})
	var hosts []*testbed.Host
	for _, n := range nodeNames {
		hosts = append(hosts, bed.Host(n))
	}
	c := &etcdCluster{t: t, bed: bed, dir: t.TempDir(), sockets: socketDir(t),
		etcd:  testbed.StartEtcdForTest(t, bed, hosts, testbed.EtcdOptions{UnixSockets: true}),
		procs: map[string]*testbed.Process{}, workload: map[string]*testbed.Host{}, addr: map[string]netip.Addr{}}
	c.admin = c.writeFile("admin.toml", c.etcd.UnixEndpoints(), "node-a")
	return c
}

// writeFile writes a cluster file that holds the datastore section and one
// node's own entry, nothing else.
func (c *etcdCluster) writeFile(name string, endpoints []string, node string) string {
	c.t.Helper()
	quoted := make([]string, len(endpoints))
	for i, e := range endpoints {
		quoted[i] = fmt.Sprintf("%q", e)
	}
	src := fmt.Sprintf("[datastore]\ntype = \"etcd\"\nendpoints = [%s]\nstateDir = %q\n\n[[nodes]]\nname = %q\naddress = %q\n",
		strings.Join(quoted, ", "), filepath.Join(c.dir, "state-"+strings.TrimSuffix(name, ".toml")), node, c.bed.Host(node).Addr)
	path := filepath.Join(c.dir, name)
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		c.t.Fatal(err)
	}
	return path
}

// command runs an overlayd command (apply, get, delete) in-process against
// the cluster's etcd.
func (c *etcdCluster) command(args ...string) string {
	c.t.Helper()
	code, out, errOut := run(c.t, append(args, "--config", c.admin)...)
	if code != 0 {
		c.t.Fatalf("overlayd %s: exit %d: %s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// applyPool applies the VXLAN pool with the given mode.
func (c *etcdCluster) applyPool(mode string) string {
	c.t.Helper()
	path := filepath.Join(c.dir, "pool-"+mode+".yaml")
	if err := os.WriteFile(path, []byte(fmt.Sprintf(etcdPoolsYAML, mode)), 0o644); err != nil {
		c.t.Fatal(err)
	}
	return c.command("apply", "-f", path)
}

// start runs overlayd on a node with a file of its own entry only, waits
// until it runs, and adds a workload in the block it claimed.
func (c *etcdCluster) start(node string) {
	c.t.Helper()
	self, err := os.Executable()
	if err != nil {
		c.t.Fatal(err)
	}
	file := c.writeFile(node+".toml", c.etcd.Endpoints(), node)
	proc, err := c.bed.Host(node).Start("env", childEnv+"=1", self, "run", "--config", file, "--node", node,
		"--admin-socket", c.socket(node), "--log-level", "debug")
	if err != nil {
		c.t.Fatal(err)
	}
	c.procs[node] = proc
	waitRunning(c.t, proc)
	if c.workload[node] != nil {
		return // a restart: the workload keeps its address
	}
	p := c.plan(node)
	if len(p.LocalBlocks) == 0 {
		c.t.Fatalf("%s claimed no block:\n%s", node, proc.Output())
	}
	addr := testbed.WorkloadAddr(p.LocalBlocks[0].Block)
	w, err := c.bed.AddWorkload(node, "w"+node[len(node)-1:], addr)
	if err != nil {
		c.t.Fatal(err)
	}
	c.workload[node], c.addr[node] = w, addr
}

// socket is node's admin socket.
func (c *etcdCluster) socket(node string) string { return filepath.Join(c.sockets, node+".sock") }

// adminGet asks a node's admin API on its socket.
func (c *etcdCluster) adminGet(node, path string, v any) error {
	resp, err := daemon.AdminClient(c.socket(node), 10*time.Second).Get(daemon.AdminURL + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s on %s: %s", path, node, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func (c *etcdCluster) plan(node string) *plan.Plan {
	c.t.Helper()
	var p plan.Plan
	if err := c.adminGet(node, daemon.APIPlan, &p); err != nil {
		c.t.Fatalf("the plan of %s: %v", node, err)
	}
	return &p
}

func (c *etcdCluster) status(node string) daemon.StatusReply {
	c.t.Helper()
	var s daemon.StatusReply
	if err := c.adminGet(node, daemon.APIStatus, &s); err != nil {
		c.t.Fatalf("the status of %s: %v", node, err)
	}
	return s
}

// routesTo lists, as "node:encap", the routes a node's plan has to the
// others' blocks.
func (c *etcdCluster) routesTo(node string) []string {
	var out []string
	for _, r := range c.plan(node).Routes {
		out = append(out, r.Node+":"+r.Encap.String())
	}
	slices.Sort(out)
	return out
}

// waitFor polls cond until it holds or 30 s pass.
func (c *etcdCluster) waitFor(what string, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("waited 30 s for %s", what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (c *etcdCluster) ping(from, to string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.workload[from].Ping(ctx, c.addr[to], 3); err != nil {
		c.t.Errorf("ping %s (%s) -> %s (%s): %v", from, c.addr[from], to, c.addr[to], err)
	}
}

func (c *etcdCluster) transfer(client, server string, port uint16) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := testbed.TCPTransfer(ctx, c.workload[client], c.workload[server], netip.AddrPortFrom(c.addr[server], port), 4<<20); err != nil {
		c.t.Errorf("TCP transfer %s -> %s: %v", client, server, err)
	}
}

// TestE2EEtcdCluster grows and shrinks a cluster through a real
// three-member etcd: the nodes' files hold only their own entry.
func TestE2EEtcdCluster(t *testing.T) {
	c := startEtcdCluster(t)
	if out := c.applyPool("CrossSubnet"); !strings.Contains(out, "created") {
		t.Fatalf("apply: %s", out)
	}

	t.Run("nodes join and reach each other's workloads", func(t *testing.T) {
		c.start("node-a")
		c.start("node-b")
		c.waitFor("node-a to route node-b's block", func() bool { return slices.Equal(c.routesTo("node-a"), []string{"node-b:none"}) })
		c.waitFor("node-b to route node-a's block", func() bool { return slices.Equal(c.routesTo("node-b"), []string{"node-a:none"}) })
		c.ping("node-a", "node-b")
		c.transfer("node-a", "node-b", 7001)
	})

	t.Run("a node joins live and is reachable with nobody touching the others' files", func(t *testing.T) {
		c.start("node-c")
		for _, n := range []string{"node-a", "node-b"} {
			c.waitFor(n+" to route node-c's block over VXLAN", func() bool { return slices.Contains(c.routesTo(n), "node-c:vxlan") })
		}
		c.ping("node-a", "node-c")
		c.ping("node-b", "node-c")
		c.transfer("node-c", "node-a", 7002)
	})

	t.Run("a pool's mode changes with apply while a TCP stream runs", func(t *testing.T) {
		st := startStream(t, c.workload["node-a"], c.workload["node-b"], netip.AddrPortFrom(c.addr["node-b"], 7003))
		flowing := func(when string) {
			t.Helper()
			before := st.got.Load()
			time.Sleep(time.Second)
			if st.got.Load() <= before {
				t.Fatalf("%s: the stream stalled at %d bytes", when, before)
			}
		}
		flowing("before the switch")
		if out := c.applyPool("Always"); !strings.Contains(out, "configured") {
			t.Errorf("apply: %s", out)
		}
		c.waitFor("node-a to send to node-b over VXLAN", func() bool { return slices.Equal(c.routesTo("node-a"), []string{"node-b:vxlan", "node-c:vxlan"}) })
		c.waitFor("node-b to send to node-a over VXLAN", func() bool { return slices.Contains(c.routesTo("node-b"), "node-a:vxlan") })
		flowing("after the switch")
		st.finish(t, "the switch")
		if m := scrape(t, c.bed.Host("node-a")); m[`overlayd_tx_packets_total{encap="vxlan"}`] == 0 {
			t.Error("node-a sent nothing over VXLAN after the switch")
		}
	})

	t.Run("one etcd member killed: nothing changes", func(t *testing.T) {
		if err := c.etcd.Member("node-c").Kill(); err != nil {
			t.Fatal(err)
		}
		c.ping("node-a", "node-c")
		c.ping("node-c", "node-b")
		for _, n := range nodeNames {
			if s := c.status(n); !s.Datastore.Up {
				t.Errorf("%s says the datastore is down with two of three members: %+v", n, s.Datastore)
			}
		}
		if err := c.etcd.Member("node-c").Restart(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("all members killed: traffic flows, the datastore is down, and the nodes catch up when it returns", func(t *testing.T) {
		for _, m := range c.etcd.Members() {
			if err := m.Kill(); err != nil {
				t.Fatal(err)
			}
		}
		c.waitFor("node-a to notice etcd is gone", func() bool { return !c.status("node-a").Datastore.Up })
		if m := scrape(t, c.bed.Host("node-a")); m[`overlayd_datastore_up{type="etcd"}`] != 0 {
			t.Errorf("overlayd_datastore_up = %v with etcd down, want 0", m[`overlayd_datastore_up{type="etcd"}`])
		}
		c.ping("node-a", "node-c")
		c.ping("node-b", "node-a")
		for _, m := range c.etcd.Members() {
			if err := m.Restart(); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.etcd.WaitHealthy(ctx); err != nil {
			t.Fatal(err)
		}
		c.waitFor("node-a to see etcd again", func() bool { return c.status("node-a").Datastore.Up })
		c.applyPool("CrossSubnet")
		// node-c sends VXLAN to both under either mode, so only A and B
		// show the change: they go back to sending each other direct.
		for n, want := range map[string]string{"node-a": "node-b:none", "node-b": "node-a:none"} {
			c.waitFor(n+" to catch up with the pool's change", func() bool { return slices.Contains(c.routesTo(n), want) })
		}
		c.ping("node-a", "node-b")
	})

	t.Run("containers through CNI: a full block makes the node claim another, and peers route it", func(t *testing.T) {
		pools := filepath.Join(c.dir, "cni-pool.yaml")
		if err := os.WriteFile(pools, []byte(etcdCNIPoolYAML), 0o644); err != nil {
			t.Fatal(err)
		}
		c.command("apply", "-f", pools)
		self, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		binDir, cacheDir := t.TempDir(), t.TempDir()
		for _, name := range []string{cni.PluginName, cni.IPAMName} {
			if err := os.Symlink(self, filepath.Join(binDir, name)); err != nil {
				t.Fatal(err)
			}
		}
		t.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
		data, err := cni.ConfList(cni.InstallOptions{Config: filepath.Join(c.dir, "node-b.toml"), Node: "node-b", CNIVersion: "1.0.0", Pools: []string{"ippool-cni"}})
		if err != nil {
			t.Fatal(err)
		}
		list, err := libcni.ConfListFromBytes(data)
		if err != nil {
			t.Fatal(err)
		}
		cninet := libcni.NewCNIConfigWithCacheDir([]string{binDir}, cacheDir, nil)
		const n = 70
		hosts := make([]*testbed.Host, n)
		rts := make([]*libcni.RuntimeConf, n)
		addrs := make([]netip.Addr, n)
		errs := make([]error, n)
		for i := range n {
			h, err := c.bed.AddHost(fmt.Sprintf("ce%d", i))
			if err != nil {
				t.Fatal(err)
			}
			hosts[i] = h
			rts[i] = &libcni.RuntimeConf{ContainerID: fmt.Sprintf("etcd-%s-%d", c.bed.ID(), i), NetNS: h.NetnsPath(), IfName: "eth0"}
		}
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				// A CNIConfig per runtime call: libcni's sets itself up
				// lazily, unguarded.
				cninet := libcni.NewCNIConfigWithCacheDir([]string{binDir}, cacheDir, nil)
				errs[i] = c.bed.Host("node-b").Do(func() error {
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
					defer cancel()
					r, err := cninet.AddNetworkList(ctx, list, rts[i])
					if err != nil {
						return err
					}
					res, err := current.NewResultFromResult(r)
					if err != nil {
						return err
					}
					addrs[i], _ = netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
					return nil
				})
			})
		}
		wg.Wait()
		seen := map[netip.Addr]bool{}
		blocks := map[netip.Prefix]bool{}
		for i, err := range errs {
			if err != nil {
				t.Fatalf("ADD %d: %v", i, err)
			}
			if seen[addrs[i]] {
				t.Errorf("%v handed out twice", addrs[i])
			}
			seen[addrs[i]] = true
			blocks[netip.PrefixFrom(addrs[i], 26).Masked()] = true
			hosts[i].Addr = netip.PrefixFrom(addrs[i], 32)
		}
		if len(blocks) != 2 {
			t.Errorf("70 containers in %d blocks of ippool-cni, want 2 (a /26 holds 64)", len(blocks))
		}
		last := hosts[slices.IndexFunc(addrs, func(a netip.Addr) bool {
			return netip.PrefixFrom(a, 26).Masked() != netip.PrefixFrom(addrs[0], 26).Masked()
		})]
		c.waitFor("node-a to route node-b's new block", func() bool {
			return slices.ContainsFunc(c.plan("node-a").Routes, func(r plan.Route) bool { return r.Block.Contains(last.Addr.Addr()) })
		})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := c.workload["node-a"].Ping(ctx, last.Addr.Addr(), 3); err != nil {
			t.Errorf("node-a's workload -> the container %v in node-b's second block: %v", last.Addr.Addr(), err)
		}
		for i := range n {
			if err := c.bed.Host("node-b").Do(func() error { return cninet.DelNetworkList(context.Background(), list, rts[i]) }); err != nil {
				t.Errorf("DEL %d: %v", i, err)
			}
		}
		if out := c.command("ipam", "show", "--show-handles"); strings.Contains(out, "etcd-"+c.bed.ID()) {
			t.Errorf("handles left after DEL:\n%s", out)
		}
	})

	t.Run("a node deleted: its routes are gone on every peer", func(t *testing.T) {
		if err := c.procs["node-c"].Stop(); err != nil {
			t.Logf("stopping node-c: %v", err)
		}
		if out := c.command("delete", "node", "node-c"); !strings.Contains(out, "192.168.") {
			t.Errorf("delete node: %s, want the released block named", out)
		}
		for _, n := range []string{"node-a", "node-b"} {
			c.waitFor(n+" to forget node-c", func() bool {
				return !slices.ContainsFunc(c.routesTo(n), func(r string) bool { return strings.HasPrefix(r, "node-c:") })
			})
		}
	})
}
