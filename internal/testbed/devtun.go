package testbed

// A /dev/net/tun of a command's own. Whether an unprivileged process may
// open the machine's node depends on the machine: 0666 where rootless
// containers run, 0600 on some VMs. A test that needs one or the other
// gives the command its own node (StartOptions.TUNMode) instead of
// depending on, or changing, the machine's.

import (
	"fmt"
	"io/fs"
	"os/exec"
	"strconv"

	"golang.org/x/sys/unix"
)

// devTUN is the TUN device's node.
const devTUN = "/dev/net/tun"

// withTUNNode returns the command line that runs argv in a private mount
// namespace made by unshare(1) (as the machine's root, before argv enters
// any other namespace), in which a tmpfs covers /dev/net and holds only
// tun: a node for the machine's TUN device, owned by root, with mode. The
// machine's node and mounts are left as they are; the mount namespace, and
// the tmpfs with it, go when its last process exits.
func withTUNNode(mode fs.FileMode, argv []string) ([]string, error) {
	if mode&^fs.ModePerm != 0 {
		return nil, fmt.Errorf("TUNMode %v: want permission bits only", mode)
	}
	var st unix.Stat_t
	if err := unix.Stat(devTUN, &st); err != nil {
		return nil, fmt.Errorf("TUNMode: %s: %w", devTUN, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR {
		return nil, fmt.Errorf("TUNMode: %s is not a character device", devTUN)
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		return nil, fmt.Errorf("TUNMode needs unshare (util-linux): %w", err)
	}
	const script = `mount -t tmpfs -o mode=0755,size=16k testbed-tun /dev/net && mknod -m "$1" /dev/net/tun c "$2" "$3" && shift 3 && exec "$@"`
	return append([]string{"unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
		strconv.FormatUint(uint64(mode), 8),
		strconv.FormatUint(uint64(unix.Major(st.Rdev)), 10),
		strconv.FormatUint(uint64(unix.Minor(st.Rdev)), 10)}, argv...), nil
}
