package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/overlayd/overlayd/cni"
	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/internal/testbed"
	"github.com/overlayd/overlayd/ipam"
)

// cniCycles is how many ADD/DEL cycles TestE2ECNI runs in a row; `make
// test-cni-cycles` runs the issue's thousand.
func cniCycles(t *testing.T) int {
	if s := os.Getenv("OVERLAYD_CNI_CYCLES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("OVERLAYD_CNI_CYCLES=%q: %v", s, err)
		}
		return n
	}
	return 100
}

// cniBed is the standard bed with overlayd on nodes A, B and C, the test
// binary linked as overlayd-cni and overlayd-ipam, and libcni driving them
// from inside the nodes' namespaces, as a runtime on each node would.
type cniBed struct {
	*cluster
	binDir, cacheDir string
	cninet           *libcni.CNIConfig
	seq              int
	mu               sync.Mutex
}

// withState copies an example cluster file with [datastore] stateDir set to
// a fresh directory, so the IPAM block files are the test's own.
func withState(t *testing.T, example string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "examples", example))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	data = append(data, fmt.Sprintf("\n[datastore]\nstateDir = %q\n", filepath.Join(dir, "state"))...)
	path := filepath.Join(dir, example)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func newCNIBed(t *testing.T, example string) *cniBed {
	t.Helper()
	testbed.Require(t)
	// The plugins are this race-built test binary; the race runtime sleeps
	// a second at exit unless told not to, which would make every plugin
	// call take a second.
	t.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	path := withState(t, example)
	cfg, tunnelMTU := loadForBed(t, path)
	bed := testbed.NewStandard(t, testbed.Options{WorkloadMTU: tunnelMTU})
	c := &cluster{t: t, bed: bed, file: path, cfg: cfg, sockets: socketDir(t), procs: map[string]*testbed.Process{},
		workload: map[string]*testbed.Host{}, addr: map[string]netip.Addr{}, extra: map[string][]*testbed.Host{}}
	for _, n := range nodeNames {
		c.start(n)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cb := &cniBed{cluster: c, binDir: t.TempDir(), cacheDir: t.TempDir()}
	for _, name := range []string{cni.PluginName, cni.IPAMName} {
		if err := os.Symlink(self, filepath.Join(cb.binDir, name)); err != nil {
			t.Fatal(err)
		}
	}
	cb.cninet = libcni.NewCNIConfigWithCacheDir([]string{cb.binDir}, cb.cacheDir, nil)
	return cb
}

// list is the conflist of node, as `overlayd cni install` writes it, at
// CNI 1.1.0 (GC and STATUS), taking addresses from pools (none: any).
func (cb *cniBed) list(node, network string, pools ...string) *libcni.NetworkConfigList {
	cb.t.Helper()
	data, err := cni.ConfList(cni.InstallOptions{Config: cb.file, Node: node, CNIVersion: "1.1.0", Pools: pools})
	if err != nil {
		cb.t.Fatal(err)
	}
	var m map[string]any
	_ = json.Unmarshal(data, &m)
	m["name"] = network
	data, _ = json.Marshal(m)
	l, err := libcni.ConfListFromBytes(data)
	if err != nil {
		cb.t.Fatal(err)
	}
	return l
}

// container is one container: its namespace and its attachment.
type container struct {
	host *testbed.Host
	node string
	rt   *libcni.RuntimeConf
	list *libcni.NetworkConfigList
	addr netip.Addr
}

// newContainer makes an empty namespace for a container on node.
func (cb *cniBed) newContainer(node string, list *libcni.NetworkConfigList) *container {
	cb.t.Helper()
	cb.mu.Lock()
	cb.seq++
	name := fmt.Sprintf("ct%d", cb.seq)
	cb.mu.Unlock()
	h, err := cb.bed.AddHost(name)
	if err != nil {
		cb.t.Fatal(err)
	}
	return &container{host: h, node: node, list: list,
		rt: &libcni.RuntimeConf{ContainerID: "id-" + cb.bed.ID() + "-" + name, NetNS: h.NetnsPath(), IfName: "eth0"}}
}

// inNode runs fn in node's namespace: libcni and the plugins it starts run
// there, as on a node.
func (cb *cniBed) inNode(node string, fn func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return cb.bed.Host(node).Do(func() error { return fn(ctx) })
}

func (cb *cniBed) add(ct *container) error {
	return cb.inNode(ct.node, func(ctx context.Context) error {
		r, err := cb.cninet.AddNetworkList(ctx, ct.list, ct.rt)
		if err != nil {
			return err
		}
		res, err := current.NewResultFromResult(r)
		if err != nil {
			return err
		}
		if len(res.IPs) != 1 {
			return fmt.Errorf("ADD gave %d addresses", len(res.IPs))
		}
		ct.addr, _ = netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
		ct.host.Addr = netip.PrefixFrom(ct.addr, 32)
		return nil
	})
}

func (cb *cniBed) del(ct *container) error {
	return cb.inNode(ct.node, func(ctx context.Context) error { return cb.cninet.DelNetworkList(ctx, ct.list, ct.rt) })
}

func (cb *cniBed) check(ct *container) error {
	return cb.inNode(ct.node, func(ctx context.Context) error { return cb.cninet.CheckNetworkList(ctx, ct.list, ct.rt) })
}

func (cb *cniBed) mustAdd(ct *container) {
	cb.t.Helper()
	if err := cb.add(ct); err != nil {
		cb.t.Fatalf("ADD %s on %s: %v", ct.rt.ContainerID, ct.node, err)
	}
}

// store opens node's IPAM store as the plugin does.
func (cb *cniBed) store(node string) ipam.Store {
	cb.t.Helper()
	c, err := config.Load(cb.file)
	if err != nil {
		cb.t.Fatal(err)
	}
	s, err := cni.OpenStore(context.Background(), c, node)
	if err != nil {
		cb.t.Fatal(err)
	}
	return s
}

// workloadAllocations lists node's allocations other than the tunnel
// address.
func (cb *cniBed) workloadAllocations(node string) []ipam.Allocation {
	cb.t.Helper()
	s := cb.store(node)
	defer s.Close()
	blocks, err := s.Blocks(context.Background())
	if err != nil {
		cb.t.Fatal(err)
	}
	var out []ipam.Allocation
	for _, b := range blocks {
		for _, a := range b.Allocations {
			if !a.Tunnel {
				out = append(out, a)
			}
		}
	}
	return out
}

// leftovers lists what overlayd-cni made on node that is still there: its
// veths and its routes.
func (cb *cniBed) leftovers(node string) []string {
	cb.t.Helper()
	var left []string
	err := cb.bed.Host(node).Do(func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if name := l.Attrs().Name; strings.HasPrefix(name, "ovl") && len(name) == len(cni.HostVeth("", "")) {
				left = append(left, "veth "+l.Attrs().Name)
			}
		}
		routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: cni.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			return err
		}
		for _, r := range routes {
			left = append(left, "route "+r.String())
		}
		return nil
	})
	if err != nil {
		cb.t.Fatal(err)
	}
	return left
}

// cacheEntries lists libcni's cached results.
func (cb *cniBed) cacheEntries() []string {
	entries, _ := os.ReadDir(filepath.Join(cb.cacheDir, "results"))
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func (cb *cniBed) ping(from *container, to netip.Addr) {
	cb.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := from.host.Ping(ctx, to, 2); err != nil {
		cb.t.Errorf("ping %v (on %s) -> %v: %v", from.addr, from.node, to, err)
	}
}

func (cb *cniBed) transfer(client, server *container, port uint16) {
	cb.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := testbed.TCPTransfer(ctx, client.host, server.host, netip.AddrPortFrom(server.addr, port), 4<<20)
	if err != nil {
		cb.t.Errorf("TCP %v (on %s) -> %v (on %s): %v", client.addr, client.node, server.addr, server.node, err)
		return
	}
	cb.t.Logf("TCP %v <-> %v: %v", client.addr, server.addr, res)
}

// TestE2ECNI attaches containers through libcni and the real plugins on
// the standard bed and checks what they get, what they leave behind and how
// they fail.
func TestE2ECNI(t *testing.T) {
	cb := newCNIBed(t, "two-pools.toml")
	vx := func(node string) *libcni.NetworkConfigList { return cb.list(node, "overlayd", "pool-vxlan") }
	ipip := func(node string) *libcni.NetworkConfigList { return cb.list(node, "overlayd-ipip", "pool-ipip") }

	t.Run("containers reach each other across the direct path, VXLAN and IP-in-IP", func(t *testing.T) {
		a, b, c := cb.newContainer("node-a", vx("node-a")), cb.newContainer("node-b", vx("node-b")), cb.newContainer("node-c", vx("node-c"))
		a2, c2 := cb.newContainer("node-a", ipip("node-a")), cb.newContainer("node-c", ipip("node-c"))
		for _, ct := range []*container{a, b, c, a2, c2} {
			cb.mustAdd(ct)
		}
		for _, x := range []struct {
			ct    *container
			block string
		}{{a, "192.168.0.0/26"}, {b, "192.168.0.64/26"}, {c, "192.168.0.128/26"}, {a2, "10.1.0.0/26"}, {c2, "10.1.0.128/26"}} {
			if !netip.MustParsePrefix(x.block).Contains(x.ct.addr) {
				t.Errorf("%s on %s got %v, not in its block %s", x.ct.rt.ContainerID, x.ct.node, x.ct.addr, x.block)
			}
		}
		cb.ping(a, b.addr)
		cb.ping(a, c.addr)
		cb.ping(a2, c2.addr)
		cb.transfer(a, b, 5201)
		cb.transfer(a, c, 5202)
		cb.transfer(a2, c2, 5203)
		for _, ct := range []*container{a, b, c, a2, c2} {
			if err := cb.check(ct); err != nil {
				t.Errorf("CHECK %s: %v", ct.rt.ContainerID, err)
			}
			if err := cb.del(ct); err != nil {
				t.Errorf("DEL %s: %v", ct.rt.ContainerID, err)
			}
		}
	})

	t.Run("CHECK names what is missing", func(t *testing.T) {
		breaks := []struct {
			name  string
			brk   func(ct *container) error
			wants string
		}{
			{"the node's route", func(ct *container) error {
				return cb.bed.Host(ct.node).IP("route", "del", ct.addr.String()+"/32")
			}, "node's route"},
			{"the workload's default route", func(ct *container) error {
				return ct.host.IP("route", "del", "default")
			}, "default route"},
			{"the veth", func(ct *container) error {
				return cb.bed.Host(ct.node).IP("link", "del", cni.HostVeth(ct.rt.ContainerID, ct.rt.IfName))
			}, "veth"},
			{"the reservation", func(ct *container) error {
				s := cb.store(ct.node)
				defer s.Close()
				_, err := s.Release(context.Background(), ipam.Handle(ct.list.Name, ct.rt.ContainerID, ct.rt.IfName))
				return err
			}, "reservation"},
		}
		for _, bk := range breaks {
			t.Run(bk.name, func(t *testing.T) {
				ct := cb.newContainer("node-a", vx("node-a"))
				cb.mustAdd(ct)
				if err := cb.check(ct); err != nil {
					t.Fatalf("CHECK right after ADD: %v", err)
				}
				if err := bk.brk(ct); err != nil {
					t.Fatal(err)
				}
				err := cb.check(ct)
				if err == nil || !strings.Contains(err.Error(), bk.wants) {
					t.Errorf("CHECK after removing %s: got %v, want an error naming %q", bk.name, err, bk.wants)
				}
				if err := cb.del(ct); err != nil {
					t.Errorf("DEL: %v", err)
				}
			})
		}
	})

	t.Run("DEL is idempotent", func(t *testing.T) {
		twice := cb.newContainer("node-b", vx("node-b"))
		cb.mustAdd(twice)
		for i := range 2 {
			if err := cb.del(twice); err != nil {
				t.Errorf("DEL %d: %v", i+1, err)
			}
		}
		gone := cb.newContainer("node-b", vx("node-b"))
		cb.mustAdd(gone)
		if err := cb.bed.RemoveHost(gone.host.Name); err != nil {
			t.Fatal(err)
		}
		if err := cb.del(gone); err != nil {
			t.Errorf("DEL after the namespace is gone: %v", err)
		}
		never := cb.newContainer("node-b", vx("node-b"))
		if err := cb.del(never); err != nil {
			t.Errorf("DEL without ADD: %v", err)
		}
		if a := cb.workloadAllocations("node-b"); len(a) != 0 {
			t.Errorf("allocations left on node-b: %+v", a)
		}
		if l := cb.leftovers("node-b"); len(l) != 0 {
			t.Errorf("left on node-b: %v", l)
		}
	})

	t.Run("ADD into an existing interface fails and keeps nothing", func(t *testing.T) {
		ct := cb.newContainer("node-b", vx("node-b"))
		if err := ct.host.IP("link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer"); err != nil {
			t.Fatal(err)
		}
		if err := cb.add(ct); err == nil || !strings.Contains(err.Error(), "already has an interface") {
			t.Errorf("ADD: got %v, want an error saying eth0 exists", err)
		}
		if a := cb.workloadAllocations("node-b"); len(a) != 0 {
			t.Errorf("allocations left: %+v", a)
		}
	})

	t.Run("sequential ADD/DEL cycles leave nothing behind", func(t *testing.T) {
		n := cniCycles(t)
		ct := cb.newContainer("node-a", vx("node-a"))
		start := time.Now()
		for i := range n {
			ct.rt.ContainerID = fmt.Sprintf("cycle-%s-%d", cb.bed.ID(), i)
			if err := cb.add(ct); err != nil {
				t.Fatalf("cycle %d ADD: %v", i, err)
			}
			if err := cb.del(ct); err != nil {
				t.Fatalf("cycle %d DEL: %v", i, err)
			}
		}
		t.Logf("%d ADD/DEL cycles in %v", n, time.Since(start).Round(time.Millisecond))
		if a := cb.workloadAllocations("node-a"); len(a) != 0 {
			t.Errorf("allocations left: %+v", a)
		}
		if l := cb.leftovers("node-a"); len(l) != 0 {
			t.Errorf("left on node-a: %v", l)
		}
		if c := cb.cacheEntries(); len(c) != 0 {
			t.Errorf("libcni's cache still holds %v", c)
		}
	})

	t.Run("70 concurrent ADDs into one /26: 63 working addresses and 7 block-full errors", func(t *testing.T) {
		const n = 70
		cts := make([]*container, n)
		for i := range cts {
			cts[i] = cb.newContainer("node-c", vx("node-c"))
		}
		errs := make([]error, n)
		var wg sync.WaitGroup
		_ = cb.cninet.GetVersionInfo // the shared CNIConfig was used already: libcni sets itself up lazily, unguarded
		for i, ct := range cts {
			wg.Go(func() { errs[i] = cb.add(ct) })
		}
		wg.Wait()
		seen := map[netip.Addr]bool{}
		full := 0
		var ok []*container
		for i, err := range errs {
			var cniErr *types.Error
			switch {
			case errors.As(err, &cniErr) && cniErr.Code == cni.ErrBlocksFull:
				full++
				if !strings.Contains(cniErr.Msg, "node-c") || !strings.Contains(cniErr.Msg, "192.168.0.128/26") {
					t.Errorf("the block-full error does not name the node and its block: %v", err)
				}
			case err != nil:
				t.Errorf("ADD %d: %v", i, err)
			case seen[cts[i].addr]:
				t.Errorf("%v handed out twice", cts[i].addr)
			default:
				seen[cts[i].addr] = true
				ok = append(ok, cts[i])
			}
		}
		if len(ok) != 63 || full != 7 {
			t.Errorf("got %d addresses and %d block-full errors, want 63 and 7", len(ok), full)
		}
		t.Run("STATUS says the node's blocks are full", func(t *testing.T) {
			err := cb.inNode("node-c", func(ctx context.Context) error { return cb.cninet.GetStatusNetworkList(ctx, vx("node-c")) })
			var cniErr *types.Error
			if !errors.As(err, &cniErr) || cniErr.Code != types.ErrPluginNotAvailable || !strings.Contains(cniErr.Msg, "full") {
				t.Errorf("STATUS with node-c's block full: got %v, want code 50 saying its blocks are full", err)
			}
		})
		from := cb.newContainer("node-a", vx("node-a"))
		cb.mustAdd(from)
		var pw sync.WaitGroup
		for _, ct := range ok {
			pw.Go(func() { cb.ping(from, ct.addr) })
		}
		pw.Wait()
		for _, ct := range append(cts, from) {
			if err := cb.del(ct); err != nil {
				t.Errorf("DEL: %v", err)
			}
		}
	})

	t.Run("a plugin killed mid-ADD leaves what DEL or GC cleans", func(t *testing.T) {
		keep := cb.newContainer("node-a", vx("node-a"))
		cb.mustAdd(keep)
		for _, point := range []string{cni.CrashAssigned, cni.CrashVethMade, cni.CrashRouted} {
			for _, cleaner := range []string{"DEL", "GC"} {
				t.Run(point+" then "+cleaner, func(t *testing.T) {
					ct := cb.newContainer("node-a", vx("node-a"))
					t.Setenv(cniCrashEnv, point)
					if err := cb.add(ct); err == nil {
						t.Fatalf("ADD with a crash at %s succeeded", point)
					}
					os.Unsetenv(cniCrashEnv)
					if a := cb.workloadAllocations("node-a"); len(a) != 2 {
						t.Errorf("after the crash: %d allocations, want 2 (the kept container's and the crashed one's)", len(a))
					}
					var err error
					if cleaner == "DEL" {
						err = cb.del(ct)
					} else {
						err = cb.inNode("node-a", func(ctx context.Context) error {
							return cb.cninet.GCNetworkList(ctx, ct.list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: keep.rt.ContainerID, IfName: "eth0"}}})
						})
					}
					if err != nil {
						t.Errorf("%s: %v", cleaner, err)
					}
					a := cb.workloadAllocations("node-a")
					if len(a) != 1 || a[0].Addr != keep.addr {
						t.Errorf("after %s: allocations %+v, want only the kept container's %v", cleaner, a, keep.addr)
					}
					if l := cb.leftovers("node-a"); len(l) != 2 {
						t.Errorf("after %s: left on node-a %v, want only the kept container's veth and route", cleaner, l)
					}
				})
			}
		}
		if err := cb.check(keep); err != nil {
			t.Errorf("the container kept through the crashes and GCs: CHECK: %v", err)
		}
		if err := cb.del(keep); err != nil {
			t.Error(err)
		}
	})

	t.Run("overlayd restarted under an ADD/DEL loop", func(t *testing.T) {
		live := cb.newContainer("node-a", vx("node-a"))
		cb.mustAdd(live)
		peer := cb.newContainer("node-c", vx("node-c"))
		cb.mustAdd(peer)
		ctx, cancel := context.WithCancel(context.Background())
		loopErr := make(chan error, 1)
		var cycles atomic.Int64
		go func() {
			ct := cb.newContainer("node-a", vx("node-a"))
			for i := 0; ctx.Err() == nil; i++ {
				ct.rt.ContainerID = fmt.Sprintf("restart-%s-%d", cb.bed.ID(), i)
				if err := cb.add(ct); err != nil {
					loopErr <- fmt.Errorf("cycle %d ADD: %w", i, err)
					return
				}
				if err := cb.del(ct); err != nil {
					loopErr <- fmt.Errorf("cycle %d DEL: %w", i, err)
					return
				}
				cycles.Add(1)
			}
			loopErr <- nil
		}()
		// At least three cycles before each stop, while overlayd is down
		// and after it is back: the loop runs through every phase.
		waitCycles := func(n int64) {
			for deadline := time.Now().Add(time.Minute); cycles.Load() < n && time.Now().Before(deadline); {
				time.Sleep(10 * time.Millisecond)
			}
		}
		for range 2 {
			waitCycles(cycles.Load() + 3)
			if err := cb.procs["node-a"].Stop(); err != nil {
				t.Logf("stopping overlayd: %v", err)
			}
			waitCycles(cycles.Load() + 3)
			cb.start("node-a")
		}
		waitCycles(cycles.Load() + 3)
		cancel()
		if err := <-loopErr; err != nil {
			t.Error(err)
		}
		if n := cycles.Load(); n < 15 {
			t.Errorf("only %d ADD/DEL cycles completed across the restarts", n)
		} else {
			t.Logf("%d ADD/DEL cycles ran across two restarts of overlayd", n)
		}
		if err := cb.check(live); err != nil {
			t.Errorf("the live container after the restarts: %v", err)
		}
		cb.ping(peer, live.addr)
		for _, ct := range []*container{live, peer} {
			if err := cb.del(ct); err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("STATUS says whether ADD can be served", func(t *testing.T) {
		status := func() error {
			return cb.inNode("node-b", func(ctx context.Context) error { return cb.cninet.GetStatusNetworkList(ctx, vx("node-b")) })
		}
		if err := status(); err != nil {
			t.Errorf("STATUS with overlayd running: %v", err)
		}
		if err := cb.procs["node-b"].Stop(); err != nil {
			t.Logf("stopping overlayd: %v", err)
		}
		err := status()
		var cniErr *types.Error
		if !errors.As(err, &cniErr) || cniErr.Code != types.ErrPluginNotAvailable || !strings.Contains(cniErr.Msg, "not running") {
			t.Errorf("STATUS with overlayd stopped: got %v, want code 50 saying it is not running", err)
		}
		cb.start("node-b")
	})
}

// TestCNIBadInput runs the plugins as a runtime would, with broken
// configurations, and checks the CNI error codes. No root needed: nothing
// gets as far as a namespace.
func TestCNIBadInput(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	binDir := t.TempDir()
	for _, name := range []string{cni.PluginName, cni.IPAMName} {
		if err := os.Symlink(self, filepath.Join(binDir, name)); err != nil {
			t.Fatal(err)
		}
	}
	good := withState(t, "two-pools.toml")
	broken := filepath.Join(t.TempDir(), "broken.toml")
	if err := os.WriteFile(broken, []byte("[[pools]]\nname = \"p\"\ncidr = \"192.168.0.0/16\"\nipipMode = \"Sometimes\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := func(version, extra string) string {
		return fmt.Sprintf(`{"cniVersion":%q,"name":"overlayd","type":"overlayd-cni","config":%q,"node":"node-a","ipam":{"type":"overlayd-ipam"}%s}`, version, good, extra)
	}
	tests := []struct {
		name   string
		plugin string
		stdin  string
		code   uint
		says   string
	}{
		{"malformed JSON", cni.PluginName, `{"cniVersion":"1.0.0",`, types.ErrDecodingFailure, ""},
		{"unsupported version", cni.PluginName, conf("9.9.9", ""), types.ErrIncompatibleCNIVersion, ""},
		{"unknown key, with a suggestion", cni.PluginName, conf("1.0.0", `,"nod":"x"`), types.ErrUnsupportedField, `did you mean "node"`},
		{"unknown ipam key", cni.PluginName, strings.Replace(conf("1.0.0", ""), `"ipam":{"type":"overlayd-ipam"}`, `"ipam":{"type":"overlayd-ipam","pool":["x"]}`, 1), types.ErrUnsupportedField, `did you mean "ipam.pools"`},
		{"reserved keys are tolerated", cni.IPAMName, conf("1.0.0", `,"runtimeConfig":{},"args":{},"cni.dev/valid-attachments":[]`), wantSuccess, ""},
		{"a node not in the cluster", cni.IPAMName, strings.Replace(conf("1.0.0", ""), `"node":"node-a"`, `"node":"node-z"`, 1), types.ErrInvalidNetworkConfig, `node "node-z" is not in the cluster file`},
		{"a cluster file that does not validate", cni.IPAMName, strings.Replace(conf("1.0.0", ""), good, broken, 1), types.ErrInvalidNetworkConfig, ""},
		{"an unknown pool", cni.IPAMName, strings.Replace(conf("1.0.0", ""), `"ipam":{"type":"overlayd-ipam"}`, `"ipam":{"type":"overlayd-ipam","pools":["nope"]}`, 1), types.ErrInvalidNetworkConfig, `pool "nope"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(filepath.Join(binDir, tt.plugin))
			cmd.Env = append(os.Environ(), "CNI_COMMAND=ADD", "CNI_CONTAINERID=bad-input", "CNI_NETNS=/proc/self/ns/net", "CNI_NETNS_OVERRIDE=1", "CNI_IFNAME=eth0", "CNI_PATH="+binDir)
			cmd.Stdin = strings.NewReader(tt.stdin)
			out, err := cmd.Output()
			if tt.code == wantSuccess {
				if err != nil {
					t.Fatalf("the plugin failed: %v: %s", err, out)
				}
				return
			}
			if err == nil {
				t.Fatalf("the plugin succeeded: %s", out)
			}
			var e types.Error
			if err := json.Unmarshal(out, &e); err != nil {
				t.Fatalf("stdout is not a CNI error: %q", out)
			}
			if e.Code != tt.code || !strings.Contains(e.Msg+" "+e.Details, tt.says) {
				t.Errorf("got code %d %q (%s), want code %d saying %q", e.Code, e.Msg, e.Details, tt.code, tt.says)
			}
			if tt.name == "a cluster file that does not validate" && !strings.Contains(e.Details, "broken.toml:4") {
				t.Errorf("the error does not name the file and line: %q", e.Details)
			}
		})
	}
}

// wantSuccess marks a row whose configuration is valid.
const wantSuccess = 0
