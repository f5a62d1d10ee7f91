package testbed

// Hosts as rootless container runtimes make them: a network namespace owned
// by a user namespace whose root is mapped to the unprivileged user who made
// it (here nobody, 65534). A process that enters both is root there with
// every capability *in that user namespace* (so over that network
// namespace: TUN, routes, raw sockets, per-namespace sysctls), and on the
// machine it is nobody with no capability.

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// nsGetUserNS is ioctl_ns(2)'s NS_GET_USERNS, _IO(0xb7, 0x1): the user
// namespace that owns a namespace. golang.org/x/sys does not define it.
const nsGetUserNS = 0xb701

// UserNSOwner is the machine's user that AddUserNSHost's user namespaces
// map their root to: nobody, as a rootless runtime maps a container's root
// to the unprivileged user running it.
const UserNSOwner = 65534

// StartOptions adjust how StartWith runs a command in a host.
type StartOptions struct {
	// ExtraFiles are passed to the command as descriptors 3, 4, ... (a TUN
	// handed over by a runtime).
	ExtraFiles []*os.File
	// InUserNS runs the command as root of the user namespace that owns
	// the host's network namespace (a host made by AddUserNSHost), with
	// that user namespace's capabilities only.
	InUserNS bool
	// TUNMode, if not zero, gives the command a /dev/net/tun of its own,
	// owned by root with these permissions, in a private mount namespace,
	// whatever the machine's node is (0666 where rootless containers run,
	// 0600 on some VMs); the machine's node is not touched.
	TUNMode fs.FileMode
}

// command builds the exec.Cmd that runs name in the host as opts say;
// cleanup releases what it opened once the command has started.
func (h *Host) command(opts StartOptions, name string, args []string) (cmd *exec.Cmd, cleanup func(), err error) {
	argv := append([]string{"ip", "netns", "exec", h.NS, name}, args...)
	files := append([]*os.File{}, opts.ExtraFiles...)
	cleanup = func() {}
	if opts.InUserNS {
		userns, err := h.ownerUserNS()
		if err != nil {
			return nil, nil, err
		}
		// nsenter enters the user namespace first, then the network
		// namespace, and becomes its root (UserNSOwner on the machine). The
		// user namespace's descriptor comes last.
		files = append(files, userns)
		fd := 3 + len(files) - 1
		argv = append([]string{"nsenter", "--user=/proc/self/fd/" + strconv.Itoa(fd), "--net=" + netnsDir + "/" + h.NS,
			"--", name}, args...)
		cleanup = func() { userns.Close() }
	}
	if opts.TUNMode != 0 {
		if argv, err = withTUNNode(opts.TUNMode, argv); err != nil {
			cleanup()
			return nil, nil, err
		}
	}
	cmd = exec.Command(argv[0], argv[1:]...)
	cmd.ExtraFiles = files
	return cmd, cleanup, nil
}

// ownerUserNS opens the user namespace that owns the host's network
// namespace.
func (h *Host) ownerUserNS() (*os.File, error) {
	ns, err := os.Open(netnsDir + "/" + h.NS)
	if err != nil {
		return nil, fmt.Errorf("open network namespace: %w", err)
	}
	defer ns.Close()
	fd, err := unix.IoctlRetInt(int(ns.Fd()), nsGetUserNS)
	if err != nil {
		return nil, fmt.Errorf("the user namespace owning %s: %w", h.NS, err)
	}
	return os.NewFile(uintptr(fd), "userns-of-"+h.NS), nil
}

// RunWith runs a command in the host as opts say and returns its combined
// output; the error includes the output.
func (h *Host) RunWith(ctx context.Context, opts StartOptions, name string, args ...string) ([]byte, error) {
	cmd, cleanup, err := h.command(opts, name, args)
	if err != nil {
		return nil, fmt.Errorf("%s: run %s: %w", h.Name, name, err)
	}
	defer cleanup()
	c := exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...)
	c.ExtraFiles = cmd.ExtraFiles
	c.WaitDelay = waitDelay
	out, err := c.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s: run %s: %w\n%s", h.Name, strings.Join(append([]string{name}, args...), " "), err, out)
	}
	return out, nil
}

// AddUserNSHost makes a host whose network namespace is owned by a new user
// namespace, the way rootless podman makes a container's: UserNSOwner runs
// `unshare --user --map-root-user --net`, so root inside is nobody outside.
// The bed treats it as any host (ip -n, Do, Link, AddWorkload all work, as
// this process is root of the parent user namespace); StartWith with
// InUserNS runs commands with the user namespace's privileges only.
func (b *Bed) AddUserNSHost(name string) (*Host, error) {
	return b.addHost(name, createUserNSNetns)
}

// createUserNSNetns makes the namespaces with unshare(1) in a short-lived
// holder process and names its network namespace with `ip netns attach`;
// the name's bind mount keeps the network namespace alive, and it keeps its
// owning user namespace alive.
func createUserNSNetns(ctx context.Context, ns string) error {
	owner := strconv.Itoa(UserNSOwner)
	holder := exec.CommandContext(ctx, "setpriv", "--reuid="+owner, "--regid="+owner, "--clear-groups",
		"unshare", "--user", "--map-root-user", "--net", "sh", "-c", "echo ready; exec sleep 60")
	holder.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	holder.WaitDelay = waitDelay
	out, err := holder.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr strings.Builder
	holder.Stderr = &stderr
	if err := holder.Start(); err != nil {
		return fmt.Errorf("unshare --user --map-root-user --net: %w", err)
	}
	defer func() {
		_ = holder.Process.Kill()
		_ = holder.Wait()
	}()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		return fmt.Errorf("unshare --user --map-root-user --net did not start (%v): %s", err, stderr.String())
	}
	if _, err := runIP(ctx, "netns", "attach", ns, strconv.Itoa(holder.Process.Pid)); err != nil {
		return err
	}
	return nil
}

// UserNamespace names the user namespace of a process ("user:[4026531837]").
func UserNamespace(pid int) (string, error) {
	link, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/user")
	if err != nil {
		return "", fmt.Errorf("user namespace of %d: %w", pid, err)
	}
	return link, nil
}

// ProcStatus returns a field of /proc/PID/status (e.g. "CapEff", "Uid"),
// its value trimmed, for tests that check what a process may do.
func ProcStatus(pid int, field string) (string, error) {
	status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("testbed: no %s in /proc/%d/status", field, pid)
}

// RequireUserNS skips the test unless beds can be built (Require) and
// AddUserNSHost can work: util-linux's unshare, nsenter and setpriv are
// installed and the kernel lets an unprivileged user make a user namespace
// (user.max_user_namespaces, and any distribution restriction).
func RequireUserNS(tb testing.TB) {
	tb.Helper()
	Require(tb)
	for _, cmd := range []string{"unshare", "nsenter", "setpriv"} {
		if _, err := exec.LookPath(cmd); err != nil {
			tb.Skipf("testbed: skipping, %s (util-linux) is not installed", cmd)
		}
	}
	owner := strconv.Itoa(UserNSOwner)
	out, err := exec.Command("setpriv", "--reuid="+owner, "--regid="+owner, "--clear-groups",
		"unshare", "--user", "--map-root-user", "--net", "true").CombinedOutput()
	if err != nil {
		tb.Skipf("testbed: skipping, an unprivileged user cannot make a user namespace here (%v: %s)", err, strings.TrimSpace(string(out)))
	}
}
