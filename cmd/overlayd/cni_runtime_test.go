package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/overlayd/overlayd/cni"
	"github.com/overlayd/overlayd/internal/testbed"
)

// The runtime tests attach containers to overlayd through real CNI runtimes
// rather than through libcni in the test: podman (4.3.1 in Debian 12, its CNI
// network backend) and, always, cnitool. `make deps` installs podman, runc
// and busybox-static; cnitool is built from the module cache at the version
// go.mod pins (its tool directive).

// nodeABlock is node-a's block in pool-vxlan of two-pools.toml, where the
// conflist without a pool restriction takes its addresses from.
var nodeABlock = netip.MustParsePrefix("192.168.0.0/26")

// hostPaths are places on the machine a runtime writes to by default (its
// storage, its state, libcni's cache); the runtime tests point everything at
// temporary directories and check that none of these appeared.
var hostPaths = []string{"/var/lib/cni", "/var/lib/containers", "/run/containers", "/run/libpod", "/run/runc", "/run/crun", "/etc/cni/net.d/" + cni.ConfListFile}

func existingHostPaths() map[string]bool {
	m := map[string]bool{}
	for _, p := range hostPaths {
		if _, err := os.Lstat(p); err == nil {
			m[p] = true
		}
	}
	return m
}

// checkHostUntouched fails the test for any of hostPaths that exists now but
// did not before, and for podman network namespaces left in /run/netns.
func checkHostUntouched(t *testing.T, before map[string]bool) {
	t.Helper()
	for p := range existingHostPaths() {
		if !before[p] {
			t.Errorf("%s was created on the machine", p)
		}
	}
	if m, _ := filepath.Glob("/run/netns/cni-*"); len(m) > 0 {
		t.Errorf("network namespaces left in /run/netns: %v", m)
	}
}

// staticBusybox is the path of a statically linked busybox, or why there
// is none.
func staticBusybox() (string, error) {
	path, err := exec.LookPath("busybox")
	if err != nil {
		return "", fmt.Errorf("busybox is not installed (make deps installs busybox-static): %w", err)
	}
	f, err := elf.Open(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", fmt.Errorf("%s is dynamically linked; a root filesystem of it alone needs busybox-static", path)
		}
	}
	return path, nil
}

// busyboxRootfs makes a container's root filesystem of busybox alone, with
// the applets the container uses, plus files (path in the rootfs → content).
func busyboxRootfs(t *testing.T, busybox string, files map[string][]byte) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{"bin", "tmp", "etc", "proc", "sys", "dev"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, applet := range []string{"sh", "ip", "ping", "nc", "cmp", "cat", "sleep", "true"} {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// inNS runs argv in the named network namespace ns (an empty ns: the
// machine's) with env added to the test's environment, and returns its
// stdout and stderr apart. It enters the namespace with nsenter, not `ip
// netns exec`: that one also mounts the namespace's own /sys, without
// /sys/fs/cgroup, where runc finds no cgroup hierarchy ("runc create
// failed: no cgroup mount found in mountinfo"), and gives each command a
// mount namespace of its own.
func inNS(ctx context.Context, ns string, env []string, argv ...string) (stdout, stderr []byte, err error) {
	if ns != "" {
		argv = append([]string{"nsenter", "--net=/run/netns/" + ns, "--"}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	return o.Bytes(), e.Bytes(), err
}

// withPrivateVarLib wraps argv so that it runs in a mount namespace of its
// own where the directory varLib is /var/lib. libcni keeps its cache in
// /var/lib/cni and neither cnitool nor podman 4.3's CNI backend has a
// setting for another place; this way the machine's /var/lib stays as it
// was, and what libcni cached can be checked.
func withPrivateVarLib(varLib string, argv ...string) []string {
	return append([]string{"unshare", "--mount", "--propagation", "private", "--",
		"sh", "-c", `mount --bind "$0" /var/lib && exec "$@"`, varLib}, argv...)
}

// podman is podman with everything it keeps in temporary directories:
// storage (vfs, --root, --runroot), its own temporary files (--tmpdir),
// its events (a file), the CNI configuration directory and the plugin
// directory (a containers.conf of the test's own), runc's state (a
// wrapper giving runc --root: podman's --runtime-flag does not reach the
// `podman container cleanup` conmon runs, whose runc would use /run/runc)
// and libcni's cache (withPrivateVarLib).
type podman struct {
	env   []string
	flags []string
	// confDir is the CNI configuration directory podman reads networks from.
	confDir string
	// varLib is /var/lib for podman, so varLib/cni is libcni's cache.
	varLib string
}

func newPodman(t *testing.T, pluginDir string) *podman {
	t.Helper()
	base := t.TempDir()
	p := &podman{confDir: filepath.Join(base, "net.d"), varLib: filepath.Join(base, "varlib")}
	for _, d := range []string{"root", "runroot", "tmp", "net.d", "varlib", "runc"} {
		if err := os.MkdirAll(filepath.Join(base, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		t.Fatal(err)
	}
	wrapper := filepath.Join(base, "runc-wrapper")
	script := fmt.Sprintf("#!/bin/sh\nexec %s --root %s \"$@\"\n", runc, filepath.Join(base, "runc"))
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	// runc, not crun: Debian 12's crun refuses a machine with cgroup v1
	// controllers and a cgroup v2 hierarchy mounted side by side ("cgroups
	// in hybrid mode not supported"). The ulimits are below podman's
	// defaults for root, which a process without CAP_SYS_RESOURCE (as on
	// this test machine) may not set ("setrlimit RLIMIT_NOFILE: Operation
	// not permitted").
	conf := fmt.Sprintf(`[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = %q
runtime = "ovlrunc"

[engine.runtimes]
ovlrunc = [%q]

[network]
network_backend = "cni"
cni_plugin_dirs = [%q]
network_config_dir = %q
`, filepath.Join(base, "events.log"), wrapper, pluginDir, p.confDir)
	confPath := filepath.Join(base, "containers.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	p.env = []string{"CONTAINERS_CONF=" + confPath}
	p.flags = []string{"--root", filepath.Join(base, "root"), "--runroot", filepath.Join(base, "runroot"),
		"--tmpdir", filepath.Join(base, "tmp"), "--storage-driver", "vfs"}
	t.Cleanup(func() {
		// Everything runc knew of was deleted.
		if left, _ := os.ReadDir(filepath.Join(base, "runc")); len(left) != 0 {
			t.Errorf("runc's state still holds %d containers", len(left))
		}
	})
	return p
}

// run runs `podman ARGS` in namespace ns.
func (p *podman) run(ctx context.Context, ns string, args ...string) (stdout, stderr []byte, err error) {
	return inNS(ctx, ns, p.env, withPrivateVarLib(p.varLib, append(append([]string{"podman"}, p.flags...), args...)...)...)
}

// cmdline is how a podman command is shown in messages.
func (p *podman) cmdline(args ...string) string {
	return strings.Join(append(append([]string{strings.Join(p.env, " "), "podman"}, p.flags...), args...), " ") +
		" (with " + p.varLib + " as /var/lib)"
}

// podmanWorks runs a container with no network in the machine's namespace,
// and says exactly why if podman cannot.
func podmanWorks(t *testing.T, busybox string) error {
	t.Helper()
	if _, err := exec.LookPath("podman"); err != nil {
		return fmt.Errorf("podman is not installed (make deps installs it): %w", err)
	}
	if _, err := exec.LookPath("runc"); err != nil {
		return fmt.Errorf("runc is not installed (make deps installs it): %w", err)
	}
	p := newPodman(t, t.TempDir())
	rootfs := busyboxRootfs(t, busybox, nil)
	args := []string{"run", "--rm", "--network", "none", "--rootfs", rootfs, "/bin/true"}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, stderr, err := p.run(ctx, "", args...); err != nil {
		return fmt.Errorf("%s: %v: %s", p.cmdline(args...), err, strings.TrimSpace(string(stderr)))
	}
	return nil
}

// server listens on peer's address and, for one connection, checks it
// comes from a workload address allocated on node-a (while the client
// container is up), reads want, and answers reply.
type server struct {
	ln       net.Listener
	accepted chan net.Conn
}

func listenOn(t *testing.T, peer *container, port uint16) *server {
	t.Helper()
	s := &server{accepted: make(chan net.Conn, 1)}
	err := peer.host.Do(func() error {
		var err error
		s.ln, err = net.Listen("tcp", netip.AddrPortFrom(peer.addr, port).String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.ln.Close() })
	go func() {
		c, err := s.ln.Accept()
		if err != nil {
			close(s.accepted)
			return
		}
		s.accepted <- c
	}()
	return s
}

// exchange reads len(want) bytes from c, compares them with want, and
// answers reply; the client's nc exits when c closes.
func exchange(c net.Conn, want, reply []byte) error {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("reading the client's %d bytes: %w", len(want), err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("the %d bytes the client sent differ from what it was given", len(want))
	}
	if _, err := c.Write(reply); err != nil {
		return fmt.Errorf("answering: %w", err)
	}
	return nil
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

var inetAddr = regexp.MustCompile(`inet (\d+\.\d+\.\d+\.\d+)/`)

// TestE2ECNIPodman runs a busybox container with podman and its CNI backend
// inside node-a's namespace, on the overlayd network: it gets an address
// from node-a's block, pings a workload on node-c and exchanges a megabyte
// each way with it over TCP; once podman removed it, nothing of it is left.
func TestE2ECNIPodman(t *testing.T) {
	testbed.Require(t)
	busybox, err := staticBusybox()
	if err != nil {
		t.Skip(err)
	}
	start := time.Now()
	if err := podmanWorks(t, busybox); err != nil {
		t.Skipf("podman cannot run a container on this machine: %v", err)
	}
	t.Logf("podman ran a container without a network in %v", time.Since(start).Round(time.Millisecond))
	before := existingHostPaths()

	cb := newCNIBed(t, "two-pools.toml")
	peer := cb.peerOnNodeC(t)

	p := newPodman(t, cb.binDir)
	data, err := cni.ConfList(cni.InstallOptions{Config: cb.file, Node: "node-a", CNIVersion: "1.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.confDir, cni.ConfListFile), data, 0o644); err != nil {
		t.Fatal(err)
	}
	payload, reply := randomBytes(t, 1<<20), randomBytes(t, 1<<20)
	rootfs := busyboxRootfs(t, busybox, map[string][]byte{"payload": payload, "reply": reply})
	const port = 5301
	srv := listenOn(t, peer, port)

	name := "ovl-podman-" + cb.bed.ID()
	script := fmt.Sprintf(`set -e
ip -4 -o addr show dev eth0
ping -c 3 -W 2 %[1]s
nc %[1]s %[2]d < /payload > /tmp/recv
cmp /reply /tmp/recv
echo transfer-ok`, peer.addr, port)
	args := []string{"run", "--rm", "--name", name, "--network", cni.NetworkName, "--rootfs", rootfs, "/bin/sh", "-c", script}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	type outcome struct {
		stdout, stderr []byte
		err            error
	}
	done := make(chan outcome, 1)
	start = time.Now()
	go func() {
		o, e, err := p.run(ctx, cb.bed.Host("node-a").NS, args...)
		done <- outcome{o, e, err}
	}()
	// Cleanup runs before the bed's: nothing of podman's outlives the test.
	t.Cleanup(func() { _, _, _ = p.run(context.Background(), "", "rm", "--force", "--time", "0", "--all") })

	var res outcome
	var ctAddr netip.Addr
	select {
	case c, ok := <-srv.accepted:
		if !ok {
			t.Fatal("accepting the container's connection failed")
		}
		// The container is up, between its ping and its transfer: its
		// address is the one connecting, allocated on node-a.
		ctAddr = netip.MustParseAddrPort(c.RemoteAddr().String()).Addr()
		if !nodeABlock.Contains(ctAddr) {
			t.Errorf("the container connects from %v, not from node-a's block %v", ctAddr, nodeABlock)
		}
		if a := cb.workloadAllocations("node-a"); len(a) != 1 || a[0].Addr != ctAddr {
			t.Errorf("node-a's allocations while the container runs: %+v, want only %v", a, ctAddr)
		}
		if err := exchange(c, payload, reply); err != nil {
			t.Errorf("TCP %v (podman on node-a) <-> %v (node-c): %v", ctAddr, peer.addr, err)
		}
		res = <-done
	case res = <-done:
	}
	elapsed := time.Since(start)
	out := string(res.stdout)
	t.Logf("%s\nin %v:\n%s%s", p.cmdline(append(args[:len(args)-1:len(args)-1], "'…'")...), elapsed.Round(time.Millisecond), out, res.stderr)
	if res.err != nil {
		t.Fatalf("podman run: %v: %s", res.err, res.stderr)
	}
	m := inetAddr.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("the container's eth0 has no IPv4 address: %q", out)
	}
	if got := netip.MustParseAddr(m[1]); got != ctAddr {
		t.Errorf("the container's eth0 has %v but it connected from %v", got, ctAddr)
	}
	if !strings.Contains(out, "3 packets received") {
		t.Errorf("ping %v from the container: %q", peer.addr, out)
	}
	if !strings.Contains(out, "transfer-ok") {
		t.Errorf("the container's transfer did not complete: %q", out)
	}

	// podman run --rm has torn the network down and removed the container.
	if o, e, err := p.run(ctx, "", "ps", "--all", "--quiet"); err != nil || len(bytes.TrimSpace(o)) != 0 {
		t.Errorf("podman ps --all after run --rm: %q %v %s", o, err, e)
	}
	if a := cb.workloadAllocations("node-a"); len(a) != 0 {
		t.Errorf("allocations left on node-a after the container was removed: %+v", a)
	}
	if l := cb.leftovers("node-a"); len(l) != 0 {
		t.Errorf("left on node-a after the container was removed: %v", l)
	}
	if _, err := os.Stat(filepath.Join(p.varLib, "cni", "results")); err != nil {
		t.Errorf("podman's libcni cached nothing: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(p.varLib, "cni", "results")); len(entries) != 0 {
		t.Errorf("podman's libcni cache after the container was removed: %d entries", len(entries))
	}
	checkHostUntouched(t, before)
}

// TestE2ECNITool attaches a namespace on node-a with cnitool (ADD, then
// CHECK and DEL), the reference CNI runtime, run inside node-a's namespace
// with the installed conflist and the plugin directory.
func TestE2ECNITool(t *testing.T) {
	testbed.Require(t)
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command to build cnitool with: %v", err)
	}
	toolDir := t.TempDir()
	cnitool := filepath.Join(toolDir, "cnitool")
	start := time.Now()
	build := exec.Command(goBin, "build", "-o", cnitool, "github.com/containernetworking/cni/cnitool")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(build.Args, " "), err, out)
	}
	t.Logf("built cnitool in %v", time.Since(start).Round(time.Millisecond))
	before := existingHostPaths()

	cb := newCNIBed(t, "two-pools.toml")
	peer := cb.peerOnNodeC(t)
	confDir := t.TempDir()
	data, err := cni.ConfList(cni.InstallOptions{Config: cb.file, Node: "node-a", CNIVersion: "1.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(confDir, cni.ConfListFile), data, 0o644); err != nil {
		t.Fatal(err)
	}
	ct := cb.newContainer("node-a", nil)
	// libcni's cache, /var/lib/cni for cnitool (withPrivateVarLib).
	varLib := t.TempDir()
	env := []string{"NETCONFPATH=" + confDir, "CNI_PATH=" + cb.binDir}
	tool := func(command string) []byte {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		argv := withPrivateVarLib(varLib, cnitool, command, cni.NetworkName, ct.host.NetnsPath())
		start := time.Now()
		stdout, stderr, err := inNS(ctx, cb.bed.Host("node-a").NS, env, argv...)
		t.Logf("cnitool %s overlayd %s (in %s) in %v", command, ct.host.NetnsPath(), cb.bed.Host("node-a").NS, time.Since(start).Round(time.Millisecond))
		if err != nil {
			t.Fatalf("%s %s: %v\n%s%s", strings.Join(env, " "), strings.Join(argv, " "), err, stdout, stderr)
		}
		return stdout
	}

	var result struct {
		IPs []struct{ Address string }
	}
	out := tool("add")
	if err := json.Unmarshal(out, &result); err != nil || len(result.IPs) != 1 {
		t.Fatalf("cnitool add printed %q (%v), want a result with one address", out, err)
	}
	pfx, err := netip.ParsePrefix(result.IPs[0].Address)
	if err != nil {
		t.Fatal(err)
	}
	ct.addr = pfx.Addr()
	ct.host.Addr = netip.PrefixFrom(ct.addr, 32)
	if !nodeABlock.Contains(ct.addr) {
		t.Errorf("cnitool add gave %v, not in node-a's block %v", ct.addr, nodeABlock)
	}
	if a := cb.workloadAllocations("node-a"); len(a) != 1 || a[0].Addr != ct.addr {
		t.Errorf("node-a's allocations after cnitool add: %+v, want only %v", a, ct.addr)
	}
	if _, err := os.Stat(filepath.Join(varLib, "cni", "results")); err != nil {
		t.Errorf("libcni cached nothing for cnitool add: %v", err)
	}
	cb.ping(ct, peer.addr)
	cb.transfer(ct, peer, 5311)
	tool("check")
	tool("del")
	if a := cb.workloadAllocations("node-a"); len(a) != 0 {
		t.Errorf("allocations left on node-a after cnitool del: %+v", a)
	}
	if l := cb.leftovers("node-a"); len(l) != 0 {
		t.Errorf("left on node-a after cnitool del: %v", l)
	}
	if entries, _ := os.ReadDir(filepath.Join(varLib, "cni", "results")); len(entries) != 0 {
		t.Errorf("libcni's cache after cnitool del: %d entries", len(entries))
	}
	checkHostUntouched(t, before)
}

// peerOnNodeC adds the container on node C that the runtime's container
// reaches, and removes it (DEL) when the test ends.
func (cb *cniBed) peerOnNodeC(t *testing.T) *container {
	t.Helper()
	peer := cb.newContainer("node-c", cb.list("node-c", "overlayd", "pool-vxlan"))
	cb.mustAdd(peer)
	t.Cleanup(func() {
		if err := cb.del(peer); err != nil {
			t.Errorf("DEL the workload on node-c: %v", err)
		}
	})
	return peer
}
