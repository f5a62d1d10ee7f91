package config

import (
	"os"
	"path/filepath"
	"strings"
)

// The admin socket's defaults. Root's runtime directory is /run, a user's
// $XDG_RUNTIME_DIR (systemd's convention, as Podman and Docker follow for
// their own sockets): a rootless overlayd cannot create /run/overlayd.
const (
	DefaultAdminDir = "/run/overlayd"
	// NodePlaceholder in [admin] socket stands for the node's name, so one
	// cluster file gives every node its own socket: several overlayd
	// processes on one machine (one per network namespace, as on the test
	// bed) share the filesystem and must not collide.
	NodePlaceholder = "{node}"
	// MaxSocketPath is the longest path a unix socket can be bound to:
	// sun_path is 108 bytes with its terminating NUL.
	MaxSocketPath = 107
)

// Admin holds where the admin API listens: a unix socket only overlayd's
// user can use, never the network.
type Admin struct {
	// Socket is the socket's path, NodePlaceholder standing for the node;
	// "": the default, see AdminSocket.
	Socket string
	// PProf serves /debug/pprof on the admin socket.
	PProf bool
}

type fileAdmin struct {
	Socket string `toml:"socket"`
	PProf  bool   `toml:"pprof"`
}

// admin validates the [admin] section.
func (p *parser) admin(fa fileAdmin, c *Cluster) error {
	c.Admin.PProf = fa.PProf
	if fa.Socket == "" {
		return nil
	}
	fail := func(format string, args ...any) error {
		return p.errAt("admin", 0, "", "socket", format, args...)
	}
	s := fa.Socket
	if strings.ContainsRune(s, 0) || strings.HasSuffix(s, "/") {
		return fail("%q is not a file path (e.g. %q)", s, DefaultAdminDir+"/"+NodePlaceholder+".sock")
	}
	s = p.resolve(s)
	// The node's name is not known here: the length is checked with the
	// placeholder's own, and again with the name when overlayd binds it.
	if len(s) > MaxSocketPath {
		return fail("%q is %d bytes long: a unix socket's path is at most %d", s, len(s), MaxSocketPath)
	}
	c.Admin.Socket = s
	return nil
}

// AdminSocket is the path of node's admin socket: what `overlayd run`
// listens on and its clients dial; other programs (the CNI plugin) call
// it to find, or probe for, a running overlayd. A nil Cluster or an empty
// [admin] socket gives the default: /run/overlayd/NODE.sock for root,
// $XDG_RUNTIME_DIR/overlayd/NODE.sock for other users when it is set.
func (c *Cluster) AdminSocket(node string) string {
	var tmpl string
	if c != nil {
		tmpl = c.Admin.Socket
	}
	return adminSocket(tmpl, node, os.Geteuid(), os.Getenv("XDG_RUNTIME_DIR"))
}

// adminSocket is AdminSocket with the process's user and environment as
// arguments.
func adminSocket(tmpl, node string, euid int, xdgRuntimeDir string) string {
	if tmpl == "" {
		dir := DefaultAdminDir
		if euid != 0 && xdgRuntimeDir != "" {
			dir = filepath.Join(xdgRuntimeDir, "overlayd")
		}
		tmpl = filepath.Join(dir, NodePlaceholder+".sock")
	}
	return strings.ReplaceAll(tmpl, NodePlaceholder, node)
}
