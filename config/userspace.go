package config

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// Tunnel modes: how the node's workload side is made.
const (
	// ModeTUN is a kernel TUN device, created by overlayd or handed over
	// (Tunnel.FD), with the kernel routing the workloads to it.
	ModeTUN = "tun"
	// ModeNetstack is a gVisor netstack inside the process: no device, no
	// kernel routes, no privilege; applications reach the overlay through
	// the SOCKS5 listener and the port forwards.
	ModeNetstack = "netstack"
)

// Netstack holds what netstack mode exposes to the host's applications.
type Netstack struct {
	// SOCKS5 is the address:port of the SOCKS5 (RFC 1928, CONNECT)
	// listener on the host; invalid: none.
	SOCKS5 netip.AddrPort
	// SOCKS5User and SOCKS5Password, when set, are the credentials (RFC
	// 1929) every SOCKS5 client must give; the password is read from
	// socks5PasswordFile, never written in the cluster file, which is the
	// same on every node and readable by many.
	SOCKS5User, SOCKS5Password string
}

// maxSOCKS5Field is the longest username or password RFC 1929's length
// byte can carry.
const maxSOCKS5Field = 255

// Forward is one TCP port forward of netstack mode.
type Forward struct {
	// Reverse false: Listen is a host address:port whose connections are
	// carried to To, an overlay address:port, from the netstack.
	// Reverse true: Listen is a port on the netstack (its address is the
	// node's netstack address when unspecified) whose connections are
	// carried to To, a host address:port.
	Listen  netip.AddrPort
	To      netip.AddrPort
	Reverse bool
}

type fileNetstack struct {
	SOCKS5                     string `toml:"socks5"`
	SOCKS5User                 string `toml:"socks5User"`
	SOCKS5PasswordFile         string `toml:"socks5PasswordFile"`
	SOCKS5AllowUnauthenticated bool   `toml:"socks5AllowUnauthenticated"`
}

type fileForward struct {
	Listen  string `toml:"listen"`
	To      string `toml:"to"`
	Reverse bool   `toml:"reverse"`
}

// userspace validates [tunnel] mode and fd, [netstack] and [[forward]].
func (p *parser) userspace(root fileRoot, c *Cluster) error {
	mode, err := OneOf(root.Tunnel.Mode, ModeTUN, ModeTUN, ModeNetstack)
	if err != nil {
		return p.errAt("tunnel", 0, "", "mode", "invalid value %q: %v (%q, the default, is a kernel TUN device; %q a netstack in the process, no device)", root.Tunnel.Mode, err, ModeTUN, ModeNetstack)
	}
	c.Tunnel.Mode = mode
	c.Tunnel.FD = -1
	if fd := root.Tunnel.FD; fd != nil {
		if *fd < 3 {
			return p.errAt("tunnel", 0, "", "fd", "%d is not a handed-over descriptor: 0, 1 and 2 are stdin, stdout and stderr; want 3 or more", *fd)
		}
		if c.Tunnel.Mode == ModeNetstack {
			return p.errAt("tunnel", 0, "", "fd", "a TUN descriptor is of no use with mode = %q, which has no device; remove one of the two", ModeNetstack)
		}
		c.Tunnel.FD = *fd
	}

	if err := p.socks5(root.Netstack, c); err != nil {
		return err
	}

	for i, ff := range root.Forward {
		fail := func(key, format string, args ...any) error {
			return p.errAt("forward", i, "", key, format, args...)
		}
		var f Forward
		f.Reverse = ff.Reverse
		if ff.Listen == "" {
			return fail("listen", "missing: the address:port to listen on (a host address, or with reverse = true a port on the netstack, e.g. \":8080\")")
		}
		listen, err := parseForwardAddr(ff.Listen, ff.Reverse)
		if err != nil {
			if ff.Reverse {
				return fail("listen", "%q is not a port on the netstack (\":8080\", or its address and port)", ff.Listen)
			}
			return fail("listen", "%q is not a host IPv4 address:port (e.g. \"127.0.0.1:8080\")", ff.Listen)
		}
		f.Listen = listen
		if ff.To == "" {
			return fail("to", "missing: the address:port connections are carried to")
		}
		if f.To, err = netip.ParseAddrPort(ff.To); err != nil || !f.To.Addr().Is4() || f.To.Port() == 0 {
			what := "an overlay IPv4 address:port (e.g. \"192.168.0.69:80\")"
			if ff.Reverse {
				what = "a host IPv4 address:port (e.g. \"127.0.0.1:80\")"
			}
			return fail("to", "%q is not %s", ff.To, what)
		}
		for j, g := range c.Forwards {
			if g.Reverse == f.Reverse && g.Listen == f.Listen {
				return fail("listen", "%s is already forwarded by forward[%d]", f.Listen, j)
			}
		}
		c.Forwards = append(c.Forwards, f)
	}
	return nil
}

// parseForwardAddr parses a listen address; a reverse forward may leave out
// the address (":8080"), which means the netstack's own.
func parseForwardAddr(s string, reverse bool) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, err
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return netip.AddrPort{}, fmt.Errorf("bad port %q", port)
	}
	addr := netip.IPv4Unspecified()
	if host != "" || !reverse {
		if addr, err = netip.ParseAddr(host); err != nil || !addr.Is4() {
			return netip.AddrPort{}, fmt.Errorf("bad address %q", host)
		}
	}
	return netip.AddrPortFrom(addr, uint16(n)), nil
}

// socks5 validates the [netstack] SOCKS5 keys. A listener off loopback
// without credentials lets whoever reaches it into the overlay as this
// node, so it needs either credentials or socks5AllowUnauthenticated.
func (p *parser) socks5(fn fileNetstack, c *Cluster) error {
	fail := func(key, format string, args ...any) *Error {
		return p.errAt("netstack", 0, "", key, format, args...)
	}
	if fn.SOCKS5 == "" {
		for _, k := range []struct {
			key string
			set bool
		}{{"socks5User", fn.SOCKS5User != ""}, {"socks5PasswordFile", fn.SOCKS5PasswordFile != ""}, {"socks5AllowUnauthenticated", fn.SOCKS5AllowUnauthenticated}} {
			if k.set {
				return fail(k.key, "there is no SOCKS5 listener to apply it to: set socks5 = \"127.0.0.1:1080\" too, or remove it")
			}
		}
		return nil
	}
	ap, err := netip.ParseAddrPort(fn.SOCKS5)
	if err != nil || !ap.Addr().Is4() {
		return fail("socks5", "%q is not an IPv4 address:port (e.g. \"127.0.0.1:1080\")", fn.SOCKS5)
	}
	c.Netstack.SOCKS5 = ap
	switch {
	case fn.SOCKS5User == "" && fn.SOCKS5PasswordFile != "":
		return fail("socks5PasswordFile", "is set without socks5User: set both for username/password authentication (RFC 1929)")
	case fn.SOCKS5User != "" && fn.SOCKS5PasswordFile == "":
		return fail("socks5User", "is set without socks5PasswordFile: name a file holding the password (one line, readable only by overlayd's user)")
	case fn.SOCKS5User == "":
		if !ap.Addr().IsLoopback() && !fn.SOCKS5AllowUnauthenticated {
			return fail("socks5", "%s is not a loopback address and the listener asks for no credentials: whoever reaches it reaches the overlay as this node; "+
				"set socks5User and socks5PasswordFile, or socks5AllowUnauthenticated = true to serve it open on purpose", ap)
		}
		return nil
	}
	if fn.SOCKS5AllowUnauthenticated {
		return fail("socks5AllowUnauthenticated", "is true while socks5User asks for credentials: remove one of the two")
	}
	if len(fn.SOCKS5User) > maxSOCKS5Field {
		return fail("socks5User", "is %d bytes long: SOCKS5 carries at most %d (RFC 1929)", len(fn.SOCKS5User), maxSOCKS5Field)
	}
	file := p.resolve(fn.SOCKS5PasswordFile)
	data, err := os.ReadFile(file)
	if err != nil {
		e := fail("socks5PasswordFile", "reading the SOCKS5 password: %v", err)
		e.Err = err
		return e
	}
	// One line; the newline an editor or `echo` adds is not the password's.
	password := strings.TrimSuffix(strings.TrimSuffix(string(data), "\n"), "\r")
	switch {
	case password == "":
		return fail("socks5PasswordFile", "%s is empty: write the password in it", file)
	case strings.ContainsAny(password, "\r\n"):
		return fail("socks5PasswordFile", "%s has more than one line: the password is its only line", file)
	case len(password) > maxSOCKS5Field:
		return fail("socks5PasswordFile", "the password in %s is %d bytes long: SOCKS5 carries at most %d (RFC 1929)", file, len(password), maxSOCKS5Field)
	}
	c.Netstack.SOCKS5User, c.Netstack.SOCKS5Password = fn.SOCKS5User, password
	return nil
}
