package conn

import (
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// PathMTU returns the kernel's path MTU toward dst: the MTU of the route to
// it, or the smaller one an ICMP "fragmentation needed" from a router on
// the way taught the kernel (its PMTU cache, forgotten after
// net.ipv4.route.mtu_expires, 10 minutes by default). It asks through a UDP
// socket connected to dst, which sends nothing, with IP_MTU: the socket
// options of the unconnected sockets that carry the traffic know no
// destination. Each call opens and closes a socket: for the slow path.
func PathMTU(dst [4]byte) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("path MTU toward %s: a UDP socket: %w", netip.AddrFrom4(dst), err)
	}
	defer unix.Close(fd)
	// The port is any: connecting only looks the route up.
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: dst, Port: 9}); err != nil {
		return 0, fmt.Errorf("path MTU toward %s: %w", netip.AddrFrom4(dst), err)
	}
	mtu, err := unix.GetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU)
	if err != nil {
		return 0, fmt.Errorf("path MTU toward %s: IP_MTU: %w", netip.AddrFrom4(dst), err)
	}
	return mtu, nil
}
