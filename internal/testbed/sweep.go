package testbed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

const (
	// namePrefix starts the name of every namespace a bed makes, so the sweep
	// can tell ours from everybody else's.
	namePrefix = "ovtb"
	// netnsDir is where `ip netns` keeps its named namespaces.
	netnsDir = "/run/netns"
	// lockDir holds one lock file per live bed. The kernel drops the lock
	// when its process dies, however it dies, so a held lock proves the owner
	// is alive even across PID namespaces or after PID reuse.
	lockDir = "/run/overlayd-testbed"
)

// namespacePattern matches "ovtb-<pid>-<8 hex>-<host>"; the first three parts
// are the bed's ID.
var namespacePattern = regexp.MustCompile(`^(` + namePrefix + `-([0-9]+)-[0-9a-f]{8})-([a-z0-9][a-z0-9-]*)$`)

// newBedID returns a name unique to this bed: the creating PID (so a sweep
// can tell when the owner is gone) and a random nonce (so two beds in one
// process differ).
func newBedID() (string, error) {
	var nonce [4]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return "", fmt.Errorf("random bed nonce: %w", err)
	}
	return fmt.Sprintf("%s-%d-%s", namePrefix, os.Getpid(), hex.EncodeToString(nonce[:])), nil
}

// parseNamespace splits a namespace name made by a bed into the bed's ID and
// the PID that made it; ok is false for every other name.
func parseNamespace(name string) (bedID string, pid int, ok bool) {
	m := namespacePattern.FindStringSubmatch(name)
	if m == nil {
		return "", 0, false
	}
	pid, err := strconv.Atoi(m[2])
	if err != nil || pid <= 0 {
		return "", 0, false
	}
	return m[1], pid, true
}

func lockPath(bedID string) string { return filepath.Join(lockDir, bedID+".lock") }

// acquireLock creates and locks the bed's lock file; the returned file must
// stay open for as long as the bed lives.
func acquireLock(bedID string) (*os.File, error) {
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return nil, fmt.Errorf("create lock directory: %w", err)
	}
	f, err := os.OpenFile(lockPath(bedID), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create bed lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return f, nil
}

// lockHeld reports whether some live process holds the bed's lock.
func lockHeld(bedID string) bool {
	f, err := os.Open(lockPath(bedID))
	if err != nil {
		return false
	}
	defer f.Close()
	// flock locks belong to open file descriptions, so this conflicts with
	// the owner's lock even when the owner is this very process.
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return errors.Is(err, unix.EWOULDBLOCK)
	}
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}

// pidAlive reports whether a process with this PID exists (in our PID
// namespace).
func pidAlive(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// ownerAlive is deliberately generous: a bed is left alone if its lock is
// held OR its PID exists. A reused PID only delays the sweep; deleting a
// live bed's namespaces would break someone's running test.
func ownerAlive(bedID string, pid int) bool {
	return lockHeld(bedID) || pidAlive(pid)
}

// Sweep removes what crashed runs left behind: every namespace named by a bed
// whose owning process is gone (killing whatever still runs inside it), and
// stale lock files. Beds of live processes, this one included, are untouched.
// New calls it; it is exported for tools that want to clean up on their own.
func Sweep() error {
	entries, err := os.ReadDir(netnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("list %s: %w", netnsDir, err)
	}
	dead := map[string]bool{} // bed ID -> owner is gone; cached per bed
	var errs []error
	for _, e := range entries {
		bedID, pid, ok := parseNamespace(e.Name())
		if !ok {
			continue
		}
		isDead, seen := dead[bedID]
		if !seen {
			isDead = !ownerAlive(bedID, pid)
			dead[bedID] = isDead
		}
		if !isDead {
			continue
		}
		if err := deleteNamespace(e.Name()); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, sweepLocks(dead)...)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sweep leftover test beds: %w", err)
	}
	return nil
}

// sweepLocks removes lock files of beds whose owner is gone.
func sweepLocks(dead map[string]bool) []error {
	entries, err := os.ReadDir(lockDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return []error{fmt.Errorf("list %s: %w", lockDir, err)}
	}
	var errs []error
	for _, e := range entries {
		bedID, ok := strings.CutSuffix(e.Name(), ".lock")
		if !ok {
			continue
		}
		_, pid, ok := parseNamespace(bedID + "-x")
		if !ok {
			continue
		}
		isDead, seen := dead[bedID]
		if !seen {
			isDead = !ownerAlive(bedID, pid)
		}
		if !isDead {
			continue
		}
		if err := os.Remove(lockPath(bedID)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove stale lock: %w", err))
		}
	}
	return errs
}

// deleteNamespace kills every process still inside the namespace (otherwise
// it, and its interfaces, would outlive the deletion invisibly) and deletes
// it. A namespace that is already gone is not an error: another sweep or the
// owner's Close may have raced us.
func deleteNamespace(ns string) error {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	out, err := runIP(ctx, "netns", "pids", ns)
	if err != nil {
		if !namespaceExists(ns) {
			return nil
		}
		return err
	}
	for _, field := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(field); err == nil && pid > 1 && pid != os.Getpid() {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	}
	if _, err := runIP(ctx, "netns", "delete", ns); err != nil && namespaceExists(ns) {
		return err
	}
	return nil
}

func namespaceExists(ns string) bool {
	_, err := os.Stat(filepath.Join(netnsDir, ns))
	return err == nil
}
