package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// permissionDenied reports whether err is the kernel saying no for want of
// a capability or an access right.
func permissionDenied(err error) bool {
	return errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) || errors.Is(err, fs.ErrPermission)
}

// vxlanSocketError says what is missing when the VXLAN socket cannot be
// opened: below net.ipv4.ip_unprivileged_port_start a port needs
// CAP_NET_BIND_SERVICE; both are per network namespace.
func vxlanSocketError(local netip.AddrPort, err error) error {
	if !permissionDenied(err) {
		return fmt.Errorf("opening the VXLAN socket on %s: %w", local, err)
	}
	start := "unknown"
	if b, rerr := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start"); rerr == nil {
		start = strings.TrimSpace(string(b))
	}
	return fmt.Errorf("opening the VXLAN socket on %s: %w: binding UDP port %d needs CAP_NET_BIND_SERVICE in this network namespace, "+
		"or net.ipv4.ip_unprivileged_port_start <= %d in it (it is %s here; the namespace's owner can set it), or a [vxlan] port at or above it",
		local, err, local.Port(), local.Port(), start)
}

// ipipSocketError says what is missing when the IP-in-IP socket cannot be
// opened: a raw socket needs CAP_NET_RAW.
func ipipSocketError(err error) error {
	if !permissionDenied(err) {
		return fmt.Errorf("opening the IP-in-IP socket: %w", err)
	}
	return fmt.Errorf("opening the IP-in-IP socket: %w: IP-in-IP needs CAP_NET_RAW in this network namespace (a raw socket for IP protocol 4; "+
		"the root of a user namespace that owns the network namespace has it); VXLAN pools work without it", err)
}
