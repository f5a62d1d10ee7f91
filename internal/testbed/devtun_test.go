package testbed

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestTUNMode: a command started with TUNMode sees a /dev/net/tun of that
// mode for the machine's TUN device, which nobody may open only if the mode
// lets it, whatever the machine's own node is; the machine's node and
// mounts are the same afterwards.
func TestTUNMode(t *testing.T) {
	Require(t)
	for _, cmd := range []string{"unshare", "setpriv"} {
		if _, err := exec.LookPath(cmd); err != nil {
			t.Skipf("skipping: %s (util-linux) is not installed", cmd)
		}
	}
	var before unix.Stat_t
	if err := unix.Stat(devTUN, &before); err != nil {
		t.Skipf("skipping: %v", err)
	}
	b := NewForTest(t, Options{})
	h, err := b.AddHost("plain")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	device := fmt.Sprintf("%x:%x", unix.Major(before.Rdev), unix.Minor(before.Rdev))
	for _, tc := range []struct {
		mode       fs.FileMode
		nobodyOpen bool
	}{{0o666, true}, {0o600, false}} {
		t.Run(fmt.Sprintf("%04o", tc.mode), func(t *testing.T) {
			opts := StartOptions{TUNMode: tc.mode}
			out, err := h.RunWith(ctx, opts, "stat", "-c", "%a %u %t:%T", devTUN)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := strings.TrimSpace(string(out)), fmt.Sprintf("%o 0 %s", tc.mode, device); got != want {
				t.Errorf("the command's %s: %q (mode, owner, device), want %q", devTUN, got, want)
			}
			out, err = h.RunWith(ctx, opts, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
				"sh", "-c", "exec 3<>"+devTUN)
			if (err == nil) != tc.nobodyOpen {
				t.Errorf("nobody opening %s: %v, want success %t\n%s", devTUN, err, tc.nobodyOpen, out)
			}
		})
	}
	var after unix.Stat_t
	if err := unix.Stat(devTUN, &after); err != nil {
		t.Fatal(err)
	}
	if after.Mode != before.Mode || after.Ino != before.Ino || after.Rdev != before.Rdev {
		t.Errorf("the machine's %s changed: mode %o inode %d, was %o inode %d", devTUN, after.Mode, after.Ino, before.Mode, before.Ino)
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), "testbed-tun") {
		t.Errorf("a testbed-tun mount is left in the machine's mount namespace:\n%s", mounts)
	}
}
