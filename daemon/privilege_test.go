package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMissingPrivilegeMessages(t *testing.T) {
	vxlan := netip.MustParseAddrPort("198.18.1.10:999")
	tests := []struct {
		name string
		err  error
		want []string
	}{
		{"TUN: no CAP_NET_ADMIN", tunCreateError("ovl0", unix.EPERM),
			[]string{`creating TUN device "ovl0"`, "needs CAP_NET_ADMIN in this network namespace", "--tun-fd", `mode = "netstack"`}},
		{"TUN: /dev/net/tun not accessible", tunCreateError("ovl0", &os.PathError{Op: "open", Path: "/dev/net/tun", Err: unix.EACCES}),
			[]string{"/dev/net/tun must be readable and writable by this user", "--device /dev/net/tun"}},
		{"TUN: no /dev/net/tun", tunCreateError("ovl0", fmt.Errorf("CreateTUN(%q) failed; /dev/net/tun does not exist: %w", "ovl0", &os.PathError{Op: "stat", Path: "/dev/net/tun", Err: unix.ENOENT})),
			[]string{"there is no /dev/net/tun here"}},
		{"TUN: anything else is passed on", tunCreateError("ovl0", unix.EBUSY),
			[]string{`creating TUN device "ovl0": device or resource busy`}},
		{"IP-in-IP: no CAP_NET_RAW", ipipSocketError(unix.EPERM),
			[]string{"IP-in-IP needs CAP_NET_RAW in this network namespace", "VXLAN pools work without it"}},
		{"IP-in-IP: anything else is passed on", ipipSocketError(unix.EADDRNOTAVAIL),
			[]string{"opening the IP-in-IP socket: cannot assign requested address"}},
		{"VXLAN: a privileged port", vxlanSocketError(vxlan, unix.EACCES),
			[]string{"binding UDP port 999 needs CAP_NET_BIND_SERVICE", "net.ipv4.ip_unprivileged_port_start <= 999"}},
		{"VXLAN: port in use is passed on", vxlanSocketError(vxlan, unix.EADDRINUSE),
			[]string{"opening the VXLAN socket on 198.18.1.10:999: address already in use"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, w := range tc.want {
				if !strings.Contains(tc.err.Error(), w) {
					t.Errorf("%q lacks %q", tc.err, w)
				}
			}
			var errno unix.Errno
			if !errors.As(tc.err, &errno) && !strings.Contains(tc.name, "no /dev/net/tun") {
				t.Errorf("%q does not wrap the kernel's error", tc.err)
			}
		})
	}
}
