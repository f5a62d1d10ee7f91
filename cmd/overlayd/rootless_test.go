package main

// Tests of the unprivileged ways to run overlayd (issue 9), on beds of real
// namespaces: as root of a user namespace that owns the node's network
// namespace, with a TUN handed over to a process with no capability at
// all, and in netstack mode with no TUN and no root. Each proves the lack
// of privilege from the kernel's own account of the process, not from how
// it was started.

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/proxy"
	"golang.org/x/sys/unix"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/internal/testbed"
)

// The two-node cluster of these tests: both nodes on one underlay segment,
// the pool's encapsulation Always, so every workload packet crosses the
// underlay encapsulated by overlayd; natOutgoing, so the policy rules and
// the TUN's rp_filter are part of what must work without host privilege.
const rootlessNodes = `
[[nodes]]
name = "node-a"
address = "198.18.1.10/24"

[[nodes]]
name = "node-b"
address = "198.18.1.11/24"
`

func rootlessCluster(encapKey, extra string) string {
	return extra + `
[[pools]]
name = "ippool-1"
cidr = "192.168.0.0/16"
natOutgoing = true
` + encapKey + ` = "Always"
` + rootlessNodes
}

// Workload addresses: .5 of each node's block (node-a 192.168.0.0/26,
// node-b 192.168.0.64/26); node-a's tunnel (and netstack) address is the
// block's first.
var (
	workloadA = netip.MustParseAddr("192.168.0.5")
	workloadB = netip.MustParseAddr("192.168.0.69")
	tunnelA   = netip.MustParseAddr("192.168.0.0")
)

// unprivilegedDir makes a directory any user can read, holding a copy of
// the test binary and the cluster file: go test's build directory is
// root's alone (0700), and overlayd runs as nobody in some of these tests.
func unprivilegedDir(t *testing.T, cluster string) (exe, file string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "overlayd-rootless-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	exe = filepath.Join(dir, "overlayd.test")
	dst, err := os.OpenFile(exe, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	file = filepath.Join(dir, "cluster.toml")
	if err := os.WriteFile(file, []byte(cluster), 0o644); err != nil {
		t.Fatal(err)
	}
	return exe, file
}

// twoNodeBed builds an "underlay" host with a bridge (198.18.1.1, the
// nodes' default gateway) and nodes A and B,
// each made by addNode, whose eth0 is created in the underlay host and
// moved into the node from outside, as a container runtime does. The nodes
// forward; each gets one workload in its block.
func twoNodeBed(t *testing.T, file string, addNode func(*testbed.Bed, string) (*testbed.Host, error)) (*testbed.Bed, map[string]*testbed.Host) {
	t.Helper()
	cfg, tunnelMTU := loadForBed(t, file)
	bed := testbed.NewForTest(t, testbed.Options{WorkloadMTU: tunnelMTU})
	underlay, err := bed.AddHost("underlay")
	if err != nil {
		t.Fatal(err)
	}
	if err := underlay.AddBridge("br0", netip.MustParsePrefix("198.18.1.1/24")); err != nil {
		t.Fatal(err)
	}
	workloads := map[string]*testbed.Host{}
	for i, n := range cfg.Nodes {
		h, err := addNode(bed, n.Name)
		if err != nil {
			t.Fatal(err)
		}
		outer, inner := fmt.Sprintf("u%d", i), fmt.Sprintf("n%d", i)
		steps := [][]string{
			{"link", "add", outer, "type", "veth", "peer", "name", inner},
			{"link", "set", inner, "netns", h.NS},
			{"link", "set", outer, "master", "br0", "up"},
		}
		for _, s := range steps {
			if err := underlay.IP(s...); err != nil {
				t.Fatal(err)
			}
		}
		for _, s := range [][]string{
			{"link", "set", inner, "name", "eth0"},
			{"addr", "add", n.Address.String(), "dev", "eth0"},
			{"link", "set", "eth0", "up"},
			// A default route, as any node has: Calico's proxy ARP for the
			// workloads' gateway 169.254.1.1 answers only for a routable one.
			{"route", "add", "default", "via", "198.18.1.1"},
		} {
			if err := h.IP(s...); err != nil {
				t.Fatal(err)
			}
		}
		if err := h.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
			t.Fatal(err)
		}
		w, err := bed.AddNodeWorkload(n)
		if err != nil {
			t.Fatal(err)
		}
		workloads[n.Name] = w
	}
	return bed, workloads
}

// waitRunning waits until overlayd says it runs.
func waitRunning(t *testing.T, proc *testbed.Process) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := proc.WaitOutput(ctx, "overlayd running"); err != nil {
		t.Fatalf("overlayd did not start: %v\n%s", err, proc.Output())
	}
}

// carry pings both ways and moves 10 MB each way over TCP between the two
// workloads, and checks on node-a's underlay link that it all went
// encapsulated as kind (testbed.CarriedVXLAN or CarriedIPIP).
func carry(t *testing.T, bed *testbed.Bed, workloads map[string]*testbed.Host, kind string) {
	t.Helper()
	capture, err := bed.Host("node-a").Capture("eth0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		got := wireKinds(capture.Stop(), workloadA, workloadB, config.DefaultVNI)
		if got[kind] == 0 || len(got) != 1 {
			t.Errorf("workload traffic on node-a's eth0: %v, want only %q", got, kind)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, b := workloads["node-a"], workloads["node-b"]
	if err := a.Ping(ctx, b.Addr.Addr(), 3); err != nil {
		t.Errorf("ping %s -> %s: %v", a, b, err)
	}
	if err := b.Ping(ctx, a.Addr.Addr(), 3); err != nil {
		t.Errorf("ping %s -> %s: %v", b, a, err)
	}
	res, err := testbed.TCPTransfer(ctx, a, b, netip.AddrPortFrom(b.Addr.Addr(), 5001), 10<<20)
	if err != nil {
		t.Errorf("TCP %s <-> %s: %v", a, b, err)
		return
	}
	t.Logf("TCP %s <-> %s: %v", a, b, res)
}

// procStatus returns a field of /proc/PID/status.
func procStatus(t *testing.T, pid int, field string) string {
	t.Helper()
	v, err := testbed.ProcStatus(pid, field)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestRootlessUserNamespace runs overlayd as root of a user namespace that
// owns each node's network namespace: it makes its TUN, routes and sockets
// there with that namespace's capabilities, and has none on the machine.
// As nobody on the machine it needs a /dev/net/tun that any user may open,
// as hosts that run rootless containers have; it gets one of its own, so
// the test does not depend on the machine's (0600 on some VMs).
func TestRootlessUserNamespace(t *testing.T) {
	testbed.RequireUserNS(t)
	for _, encap := range []struct{ name, key string }{{testbed.CarriedVXLAN, "vxlanMode"}, {testbed.CarriedIPIP, "ipipMode"}} {
		t.Run(encap.name, func(t *testing.T) {
			exe, file := unprivilegedDir(t, rootlessCluster(encap.key, ""))
			bed, workloads := twoNodeBed(t, file, (*testbed.Bed).AddUserNSHost)
			for _, node := range []string{"node-a", "node-b"} {
				h := bed.Host(node)
				// Root of its user namespace, but not of the machine's /run.
				socket := filepath.Join(runtimeDir(t, testbed.UserNSOwner), node+".sock")
				proc, err := h.StartWith(testbed.StartOptions{InUserNS: true, TUNMode: 0o666},
					"env", childEnv+"=1", exe, "run", "--config", file, "--node", node, "--admin-socket", socket, "--log-level", "debug")
				if err != nil {
					t.Fatal(err)
				}
				waitRunning(t, proc)
				proveRootlessOnly(t, bed, h, proc)
			}
			carry(t, bed, workloads, encap.name)
		})
	}
}

// proveRootlessOnly checks, from the kernel's side, that overlayd runs in
// the node's own user namespace with no privilege over the machine, and
// that it did its kernel work itself.
func proveRootlessOnly(t *testing.T, bed *testbed.Bed, h *testbed.Host, proc *testbed.Process) {
	t.Helper()
	mine, err := testbed.UserNamespace(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	its, err := testbed.UserNamespace(proc.Pid())
	if err != nil {
		t.Fatal(err)
	}
	if its == mine {
		t.Fatalf("overlayd on %s runs in the machine's user namespace %s", h, mine)
	}
	// Seen from the machine, root inside is nobody.
	if uid := strings.Fields(procStatus(t, proc.Pid(), "Uid")); len(uid) < 2 || uid[1] != strconv.Itoa(testbed.UserNSOwner) {
		t.Errorf("overlayd on %s has uids %v on the machine, want %d", h, uid, testbed.UserNSOwner)
	}
	// Capabilities are held in the process's own user namespace only; a
	// process in a child user namespace has none in the machine's. The
	// kernel's answer to "enter a namespace the machine owns" shows it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := h.RunWith(ctx, testbed.StartOptions{InUserNS: true}, "ip", "-n", bed.Host("underlay").NS, "link", "show")
	if err == nil || !strings.Contains(string(out), "Operation not permitted") {
		t.Errorf("a process with overlayd's privileges reached the machine's side: %v\n%s", err, out)
	}
	for _, want := range []struct{ what, want string }{
		{"route show proto 211", "192.168.0.0/16 dev ovl0"},
		{"rule show", "from 192.168.0.0/16 lookup 211 proto 211"},
		{"-d link show ovl0", "tun type tun"},
	} {
		out, err := h.Run(ctx, "ip", strings.Fields(want.what)...)
		if err != nil || !strings.Contains(string(out), want.want) {
			t.Errorf("ip %s on %s lacks %q (%v):\n%s", want.what, h, want.want, err, out)
		}
	}
	if v, err := h.SysctlValue("net.ipv4.conf.ovl0.rp_filter"); err != nil || v != "2" {
		t.Errorf("overlayd did not set the TUN's rp_filter on %s: %q %v", h, v, err)
	}
	noWarnings(t, proc)
	t.Logf("overlayd on %s: user namespace %s (the machine's: %s), CapEff %s within it, uid map %q, uid on the machine %s",
		h, its, mine, procStatus(t, proc.Pid(), "CapEff"), readUIDMap(proc.Pid()), strings.Fields(procStatus(t, proc.Pid(), "Uid"))[1])
}

// noWarnings fails the test if overlayd warned or logged an error: a
// privilege it lacked shows there first (a sysctl, a route, a rule).
func noWarnings(t *testing.T, proc *testbed.Process) {
	t.Helper()
	out := proc.Output()
	if strings.Contains(out, "level=WARN") || strings.Contains(out, "level=ERROR") {
		t.Errorf("%s logged a warning or an error:\n%s", proc, out)
	}
}

func readUIDMap(pid int) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/uid_map")
	return strings.Join(strings.Fields(string(b)), " ")
}

// openTUN is the runtime's part: it opens a TUN device in the host's
// namespace (with IFF_VNET_HDR, as overlayd's own) and returns its
// descriptor for handing over.
func openTUN(t *testing.T, h *testbed.Host, name string) *os.File {
	t.Helper()
	var f *os.File
	err := h.Do(func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			unix.Close(fd)
			return err
		}
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return fmt.Errorf("TUNSETIFF %s: %w", name, err)
		}
		f = os.NewFile(uintptr(fd), "/dev/net/tun")
		return nil
	})
	if err != nil {
		t.Fatalf("opening a TUN in %s: %v", h, err)
	}
	return f
}

// applyKernelSetup is the rest of the runtime's part: it runs in the node
// what `overlayd check --print-routes` prints.
func applyKernelSetup(t *testing.T, h *testbed.Host, file, node string) {
	t.Helper()
	code, out, errOut := run(t, "check", "--print-routes", "--config", file, "--node", node)
	if code != 0 {
		t.Fatalf("check --print-routes: exit %d: %s", code, errOut)
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		switch {
		case strings.HasPrefix(line, "#"):
		case len(f) == 3 && f[0] == "sysctl" && f[1] == "-w":
			key, value, _ := strings.Cut(f[2], "=")
			if err := h.Sysctl(key, value); err != nil {
				t.Fatal(err)
			}
		case f[0] == "ip":
			if err := h.IP(f[1:]...); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("check --print-routes printed %q, neither a sysctl nor an ip command", line)
		}
	}
}

// requireSetpriv skips a test that drops privileges with setpriv(1) when
// beds cannot be built or setpriv (util-linux) is missing.
func requireSetpriv(t *testing.T) {
	t.Helper()
	testbed.Require(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("skipping: setpriv (util-linux) is not installed; it drops overlayd's privileges")
	}
}

// noPrivileges are setpriv's arguments for a process with no capability
// in any set, as nobody, unable to gain any.
var noPrivileges = []string{"--reuid=65534", "--regid=65534", "--clear-groups",
	"--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"}

// nobody is the user noPrivileges runs as.
const nobody = 65534

// runtimeDir makes a directory only uid may use, as a user's
// $XDG_RUNTIME_DIR is, inside one every user may enter: where an overlayd
// without root keeps its admin socket, since it cannot write /run.
func runtimeDir(t *testing.T, uid int) string {
	t.Helper()
	parent := socketDir(t)
	if err := os.Chmod(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(parent, "run")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, uid, uid); err != nil {
		t.Fatal(err)
	}
	return dir
}

// proveNoPrivileges checks, from /proc, that a process holds no capability
// and is not root.
func proveNoPrivileges(t *testing.T, proc *testbed.Process) {
	t.Helper()
	for _, set := range []string{"CapEff", "CapPrm", "CapBnd", "CapAmb"} {
		if v := procStatus(t, proc.Pid(), set); strings.Trim(v, "0") != "" {
			t.Errorf("overlayd's %s is %s, want none", set, v)
		}
	}
	if uid := strings.Fields(procStatus(t, proc.Pid(), "Uid")); len(uid) < 2 || uid[1] != "65534" {
		t.Errorf("overlayd's uids are %v, want nobody (65534)", uid)
	}
}

// TestHandedOverTUNNoCapabilities: a runtime (here, the test) opens each
// node's TUN and sets up its link and routes from check --print-routes;
// overlayd gets the descriptor (node-a: --tun-fd 3, node-b: [tunnel] fd = 3
// in its file) and runs as nobody with no capability at all, carrying a
// VXLAN pool.
func TestHandedOverTUNNoCapabilities(t *testing.T) {
	requireSetpriv(t)
	exe, file := unprivilegedDir(t, rootlessCluster("vxlanMode", ""))
	fdFile := filepath.Join(filepath.Dir(exe), "fd.toml")
	if err := os.WriteFile(fdFile, []byte(rootlessCluster("vxlanMode", "[tunnel]\nfd = 3\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	bed, workloads := twoNodeBed(t, file, (*testbed.Bed).AddHost)
	var procs []*testbed.Process
	for _, run := range []struct {
		node string
		args []string
	}{
		{"node-a", []string{"--config", file, "--tun-fd", "3"}},
		{"node-b", []string{"--config", fdFile}},
	} {
		node := run.node
		h := bed.Host(node)
		tunFile := openTUN(t, h, "ovl0")
		applyKernelSetup(t, h, file, node)
		// No --admin-socket: as nobody, overlayd puts it in $XDG_RUNTIME_DIR.
		args := append(append(append(append([]string{}, noPrivileges...), "env", childEnv+"=1", "XDG_RUNTIME_DIR="+runtimeDir(t, nobody),
			exe, "run", "--node", node), run.args...), "--no-kernel-routes", "--log-level", "debug")
		proc, err := h.StartWith(testbed.StartOptions{ExtraFiles: []*os.File{tunFile}}, "setpriv", args...)
		tunFile.Close() // overlayd holds it now
		if err != nil {
			t.Fatal(err)
		}
		waitRunning(t, proc)
		proveNoPrivileges(t, proc)
		noWarnings(t, proc)
		if !strings.Contains(proc.Output(), "programsKernel=false") {
			t.Errorf("overlayd did not say it leaves the kernel set-up alone:\n%s", proc.Output())
		}
		if link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/3", proc.Pid())); err != nil || link != "/dev/net/tun" {
			t.Errorf("overlayd's descriptor 3 is %q (%v), want the handed-over /dev/net/tun", link, err)
		}
		procs = append(procs, proc)
	}
	carry(t, bed, workloads, testbed.CarriedVXLAN)
	// A reload must not try the link or routes either.
	for _, proc := range procs {
		reloadCleanly(t, proc)
	}
}

// reloadCleanly sends SIGHUP and waits for the reload, which must apply
// with no warning or error (a privilege it lacks would show there).
func reloadCleanly(t *testing.T, proc *testbed.Process) {
	t.Helper()
	if err := proc.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := proc.WaitOutput(ctx, "reload applied"); err != nil {
		t.Error(err)
	}
	noWarnings(t, proc)
}

// serveHTTP serves, in a host's namespace, a page naming the server and
// the client's address as the server saw it.
func serveHTTP(t *testing.T, h *testbed.Host, addr string) {
	t.Helper()
	var ln net.Listener
	if err := h.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "hello from %s to %s", h.Name, host)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
}

// httpGet fetches http://to/ from a host's namespace, through a SOCKS5
// proxy if socks5 is set, giving auth if set (golang.org/x/net/proxy's
// client: an implementation independent of overlayd's server). The
// connection is made inside the namespace, then handed to the HTTP client,
// whose own dials would run on threads outside it.
func httpGet(ctx context.Context, from *testbed.Host, socks5 string, auth *proxy.Auth, to string) (string, error) {
	var conn net.Conn
	err := from.Do(func() error {
		var d proxy.ContextDialer = &net.Dialer{Timeout: 10 * time.Second}
		if socks5 != "" {
			sd, err := proxy.SOCKS5("tcp4", socks5, auth, proxy.Direct)
			if err != nil {
				return err
			}
			d = sd.(proxy.ContextDialer)
		}
		var err error
		conn, err = d.DialContext(ctx, "tcp4", to)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("connect from %s to %s (SOCKS5 %q): %w", from, to, socks5, err)
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext:       func(context.Context, string, string) (net.Conn, error) { return conn, nil },
	}}
	resp, err := client.Get("http://" + to + "/")
	if err != nil {
		conn.Close()
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return string(body), err
}

// TestNetstackMode: node-a runs overlayd in netstack mode as nobody with no
// capability and no TUN; node-b runs it with a kernel TUN. A client on
// node-a reaches an HTTP server on node-b's workload through the SOCKS5
// listener (with a username and password; a wrong password is refused) and
// through a port forward, and node-b's workload reaches a server on
// node-a's host through a reverse forward, all across VXLAN.
func TestNetstackMode(t *testing.T) {
	requireSetpriv(t)
	cluster := rootlessCluster("vxlanMode", `
[netstack]
socks5 = "127.0.0.1:1080"
socks5User = "alice"
socks5PasswordFile = "socks5.password"

[[forward]]
listen = "127.0.0.1:8080"
to = "192.168.0.69:8000"

[[forward]]
reverse = true
listen = ":9000"
to = "127.0.0.1:9001"
`)
	exe, file := unprivilegedDir(t, cluster)
	// The password is for overlayd's user alone: nobody on node-a.
	password := filepath.Join(filepath.Dir(file), "socks5.password")
	if err := os.WriteFile(password, []byte("correct horse\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(password, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	auth := &proxy.Auth{User: "alice", Password: "correct horse"}
	bed, workloads := twoNodeBed(t, file, (*testbed.Bed).AddHost)
	a, b := bed.Host("node-a"), bed.Host("node-b")

	// As nobody, overlayd and its clients find the admin socket in
	// $XDG_RUNTIME_DIR.
	xdg := "XDG_RUNTIME_DIR=" + runtimeDir(t, nobody)
	args := append(append([]string{}, noPrivileges...), "env", childEnv+"=1", xdg, exe, "run", "--config", file, "--node", "node-a",
		"--tunnel-mode", "netstack", "--log-level", "debug")
	procA, err := a.Start("setpriv", args...)
	if err != nil {
		t.Fatal(err)
	}
	procB, err := b.Start("env", childEnv+"=1", exe, "run", "--config", file, "--node", "node-b",
		"--admin-socket", filepath.Join(socketDir(t), "node-b.sock"), "--log-level", "debug")
	if err != nil {
		t.Fatal(err)
	}
	waitRunning(t, procA)
	waitRunning(t, procB)
	proveNoPrivileges(t, procA)
	noWarnings(t, procA)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	status, err := a.Run(ctx, "setpriv", append(append([]string{}, noPrivileges...), "env", childEnv+"=1", xdg, exe, "status", "--node", "node-a")...)
	if err != nil || !strings.Contains(string(status), "node node-a, running since") {
		t.Errorf("overlayd status as nobody, the socket in $XDG_RUNTIME_DIR: %v\n%s", err, status)
	}
	// No TUN (nor any other new device) on node-a: only lo, eth0 and the
	// workload's veth the bed made.
	links, err := a.Run(ctx, "ip", "-o", "link", "show")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(strings.TrimSpace(string(links)), "\n") + 1; n != 3 || strings.Contains(string(links), "ovl0") {
		t.Errorf("node-a has devices other than lo, eth0 and its workload's veth:\n%s", links)
	}
	if strings.Contains(string(links), "tun") {
		t.Errorf("node-a has a TUN device:\n%s", links)
	}

	capture, err := a.Capture("eth0")
	if err != nil {
		t.Fatal(err)
	}
	serveHTTP(t, workloads["node-b"], workloadB.String()+":8000")
	serveHTTP(t, a, "127.0.0.1:9001")
	serveHTTP(t, bed.Host("underlay"), "198.18.1.1:8001")
	want := "hello from wb to " + tunnelA.String()
	tests := []struct {
		name   string
		from   *testbed.Host
		socks5 string // the SOCKS5 proxy to go through; "": none
		auth   *proxy.Auth
		to     string
		want   string // "": the connection is refused
	}{
		{"node-a through SOCKS5 to node-b's workload", a, "127.0.0.1:1080", auth, "192.168.0.69:8000", want},
		{"node-a through SOCKS5 with a wrong password", a, "127.0.0.1:1080", &proxy.Auth{User: "alice", Password: "wrong horse"}, "192.168.0.69:8000", ""},
		{"node-a through SOCKS5 without credentials", a, "127.0.0.1:1080", nil, "192.168.0.69:8000", ""},
		{"node-a through the port forward to node-b's workload", a, "", nil, "127.0.0.1:8080", want},
		{"node-b's workload through the reverse forward to node-a's host", workloads["node-b"], "", nil, tunnelA.String() + ":9000", "hello from node-a to 127.0.0.1"},
		// natOutgoing: the netstack's traffic to an address in no pool is
		// NATed to node-a's address, as a workload's would be.
		{"node-a through SOCKS5 to a host outside every pool, NATed", a, "127.0.0.1:1080", auth, "198.18.1.1:8001", "hello from underlay to 198.18.1.10"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := httpGet(ctx, tc.from, tc.socks5, tc.auth, tc.to)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("the proxy let the client through: %q", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
	pingCtx, cancelPing := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancelPing()
	if err := workloads["node-b"].Ping(pingCtx, tunnelA, 3); err != nil {
		t.Errorf("ping from node-b's workload to the netstack: %v", err)
	}
	if got := wireKinds(capture.Stop(), tunnelA, workloadB, config.DefaultVNI); got[testbed.CarriedVXLAN] == 0 || len(got) != 1 {
		t.Errorf("netstack <-> node-b's workload traffic on node-a's eth0: %v, want only VXLAN", got)
	}
	reloadCleanly(t, procA)
}

// TestUnprivilegedSaysWhatIsMissing: where a privilege is missing, overlayd
// names it and what works without it; and a low VXLAN port works once the
// namespace's owner lowers net.ipv4.ip_unprivileged_port_start.
func TestUnprivilegedSaysWhatIsMissing(t *testing.T) {
	requireSetpriv(t)
	exe, vxlanFile := unprivilegedDir(t, rootlessCluster("vxlanMode", ""))
	dir := filepath.Dir(exe)
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	ipipFile := write("ipip.toml", rootlessCluster("ipipMode", ""))
	lowPortFile := write("low-port.toml", rootlessCluster("vxlanMode", "[vxlan]\nport = 999\n"))
	bed := testbed.NewForTest(t, testbed.Options{})
	node, err := bed.AddHost("node-a")
	if err != nil {
		t.Fatal(err)
	}
	// The node address on lo is all overlayd needs to find its underlay.
	if err := node.IP("addr", "add", "198.18.1.10/24", "dev", "lo"); err != nil {
		t.Fatal(err)
	}
	// uid 0 but no capability: root's own /dev/net/tun opens, and the
	// kernel refuses TUNSETIFF.
	rootNoCaps := []string{"--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"}
	// The TUN cases give overlayd a /dev/net/tun of a set mode, so what it
	// lacks is the same whatever the machine's node is: 0666 lets anyone
	// open it and leaves CAP_NET_ADMIN missing; 0600 (as on some VMs)
	// stops nobody at the open.
	tests := []struct {
		name    string
		priv    []string
		tunMode fs.FileMode // 0: the machine's /dev/net/tun, which the case does not open
		file    string
		extra   []string
		want    []string
	}{
		{"a TUN without CAP_NET_ADMIN", rootNoCaps, 0o600, vxlanFile, nil,
			[]string{"needs CAP_NET_ADMIN in this network namespace", "--tun-fd", `mode = "netstack"`}},
		{"a TUN as nobody", noPrivileges, 0o666, vxlanFile, nil,
			[]string{"needs CAP_NET_ADMIN in this network namespace", "--tun-fd", `mode = "netstack"`}},
		{"a TUN as nobody when the TUN device is root's alone", noPrivileges, 0o600, vxlanFile, nil,
			[]string{"/dev/net/tun must be readable and writable by this user", "--tun-fd", `mode = "netstack"`}},
		{"IP-in-IP without CAP_NET_RAW", noPrivileges, 0, ipipFile, []string{"--tunnel-mode", "netstack"},
			[]string{"IP-in-IP needs CAP_NET_RAW in this network namespace", "VXLAN pools work without it"}},
		{"VXLAN below the unprivileged ports", noPrivileges, 0, lowPortFile, []string{"--tunnel-mode", "netstack"},
			[]string{"binding UDP port 999 needs CAP_NET_BIND_SERVICE", "net.ipv4.ip_unprivileged_port_start <= 999", "it is 1024 here"}},
		{"the admin socket as nobody without XDG_RUNTIME_DIR", noPrivileges, 0, vxlanFile, []string{"--tunnel-mode", "netstack", "--admin-socket", ""},
			[]string{"admin socket directory /run/overlayd", "set XDG_RUNTIME_DIR", "--admin-socket or [admin] socket"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			// An admin socket in a directory of the case's user (root
			// without capabilities cannot enter nobody's); a later
			// --admin-socket "" in extra asks for the default place.
			owner := 0
			if slices.Contains(tc.priv, "--reuid=65534") {
				owner = nobody
			}
			args := append(append(append([]string{}, tc.priv...), "env", "-u", "XDG_RUNTIME_DIR", childEnv+"=1", exe, "run", "--config", tc.file, "--node", "node-a",
				"--no-metrics", "--admin-socket", filepath.Join(runtimeDir(t, owner), "node-a.sock")), tc.extra...)
			out, err := node.RunWith(ctx, testbed.StartOptions{TUNMode: tc.tunMode}, "setpriv", args...)
			if err == nil {
				t.Fatalf("overlayd started:\n%s", out)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("the error lacks %q:\n%s", w, out)
				}
			}
		})
	}
	t.Run("a handed-over TUN without --no-kernel-routes", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		tunFile := openTUN(t, node, "ovl0")
		defer tunFile.Close()
		args := append(append([]string{}, noPrivileges...), "env", childEnv+"=1", exe, "run", "--config", vxlanFile, "--node", "node-a",
			"--no-metrics", "--admin-socket", filepath.Join(runtimeDir(t, nobody), "node-a.sock"), "--tun-fd", "3")
		out, err := node.RunWith(ctx, testbed.StartOptions{ExtraFiles: []*os.File{tunFile}}, "setpriv", args...)
		if err == nil {
			t.Fatalf("overlayd started:\n%s", out)
		}
		for _, w := range []string{"needs CAP_NET_ADMIN in this network namespace", "with --no-kernel-routes"} {
			if !strings.Contains(string(out), w) {
				t.Errorf("the error lacks %q:\n%s", w, out)
			}
		}
	})
	t.Run("VXLAN below the unprivileged ports once the namespace allows them", func(t *testing.T) {
		if err := node.Sysctl("net.ipv4.ip_unprivileged_port_start", "999"); err != nil {
			t.Fatal(err)
		}
		args := append(append([]string{}, noPrivileges...), "env", childEnv+"=1", exe, "run", "--config", lowPortFile, "--node", "node-a",
			"--no-metrics", "--admin-socket", filepath.Join(runtimeDir(t, nobody), "node-a.sock"), "--tunnel-mode", "netstack")
		proc, err := node.Start("setpriv", args...)
		if err != nil {
			t.Fatal(err)
		}
		waitRunning(t, proc)
		if !strings.Contains(proc.Output(), "VXLAN socket open") {
			t.Errorf("no VXLAN socket:\n%s", proc.Output())
		}
	})
}
