package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/overlayd/overlayd/config"
)

// The admin socket's permissions: only overlayd's user may connect (the
// kernel checks write permission on the socket file at connect), and a
// directory overlayd creates for it is that user's alone.
const (
	adminSocketMode fs.FileMode = 0o600
	adminDirMode    fs.FileMode = 0o700
)

// errAlreadyRunning is listenAdmin's refusal when another overlayd holds
// the node's admin socket.
var errAlreadyRunning = errors.New("overlayd is already running for this node")

// adminSocket is the admin API's listener: a unix socket, and the lock
// that makes the path this process's while it runs.
type adminSocket struct {
	path string
	ln   net.Listener
	// lock is PATH.lock, flock(2)ed for the process's life: two overlayd
	// starting at once for one node after a crash cannot both find the
	// old socket stale, both remove it and both listen. The kernel
	// releases it however the process ends. A clean exit removes the file
	// too, leaving nothing behind: with no stale socket, two that start at
	// once are told apart by bind itself (EADDRINUSE).
	lock *os.File
}

// listenAdmin opens the admin socket at path. It creates the socket's
// directory (0700) when missing, takes the path's lock, removes a socket
// left by an overlayd that did not exit cleanly (only when nothing answers
// on it), and binds a socket that is 0600 from its creation. Another
// overlayd for the same node, found by the lock or by answering on the
// socket, is errAlreadyRunning: it is not robbed of its socket.
func listenAdmin(path string, log *slog.Logger) (*adminSocket, error) {
	if len(path) > config.MaxSocketPath {
		return nil, fmt.Errorf("admin socket %s: the path is %d bytes long, a unix socket's is at most %d: choose a shorter one with --admin-socket or [admin] socket",
			path, len(path), config.MaxSocketPath)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, adminDirMode); err != nil {
		return nil, adminDirError(dir, err)
	}
	lock, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, adminSocketMode)
	if err != nil {
		return nil, adminDirError(dir, err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("admin socket %s: %w: another process holds %s.lock; stop it first", path, errAlreadyRunning, path)
		}
		return nil, fmt.Errorf("admin socket %s: locking %s.lock: %w", path, path, err)
	}
	s := &adminSocket{path: path, lock: lock}
	// From here on the lock is this process's: a failure removes its file.
	release := func() {
		_ = os.Remove(path + ".lock")
		_ = lock.Close()
	}
	if err := removeStaleSocket(path, log); err != nil {
		release()
		return nil, err
	}
	// Bound with mode 0600 from the start: Linux gives the socket file the
	// mode of the socket's inode (less the umask), which fchmod sets before
	// bind. A chmod after bind would leave a moment when anyone may connect.
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var chmodErr error
		if err := c.Control(func(fd uintptr) { chmodErr = unix.Fchmod(int(fd), uint32(adminSocketMode)) }); err != nil {
			return err
		}
		return chmodErr
	}}
	if s.ln, err = lc.Listen(context.Background(), "unix", path); err != nil {
		release()
		if errors.Is(err, unix.EADDRINUSE) {
			return nil, fmt.Errorf("admin socket %s: %w: another one bound it first", path, errAlreadyRunning)
		}
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	if perm := fi.Mode().Perm(); perm != adminSocketMode {
		s.Close()
		return nil, fmt.Errorf("admin socket %s: it must be %v and is %v: not serving the admin API on it", path, adminSocketMode, perm)
	}
	return s, nil
}

// removeStaleSocket removes the socket at path if nothing answers on it.
func removeStaleSocket(path string, log *slog.Logger) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("admin socket %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("admin socket %s: the path exists and is not a socket (%v): remove it, or choose another path with --admin-socket or [admin] socket", path, fi.Mode().Type())
	}
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("admin socket %s: %w: something answers on it", path, errAlreadyRunning)
	}
	if !errors.Is(err, unix.ECONNREFUSED) {
		return fmt.Errorf("admin socket %s: cannot tell whether an overlayd answers on it: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("admin socket %s: removing the stale socket: %w", path, err)
	}
	log.Info("removed a stale admin socket: nothing answered on it", "path", path)
	return nil
}

// adminDirError says what to do when the socket's directory cannot be
// made or written: a rootless overlayd cannot use /run.
func adminDirError(dir string, err error) error {
	if !permissionDenied(err) {
		return fmt.Errorf("admin socket directory %s: %w", dir, err)
	}
	hint := "choose a directory this user can write with --admin-socket or [admin] socket"
	if os.Geteuid() != 0 {
		hint = "set XDG_RUNTIME_DIR (the socket is then $XDG_RUNTIME_DIR/overlayd/NODE.sock), or " + hint
	}
	return fmt.Errorf("admin socket directory %s: %w: %s", dir, err, hint)
}

// Listener is the socket to serve the admin API on.
func (s *adminSocket) Listener() net.Listener { return s.ln }

// Close removes the socket file and the lock file, then releases the
// lock: in that order, a successor never finds this process's socket.
func (s *adminSocket) Close() {
	_ = s.ln.Close() // unlinks the path; already closed when the server was
	_ = os.Remove(s.path + ".lock")
	_ = s.lock.Close()
}
