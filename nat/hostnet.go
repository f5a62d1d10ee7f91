package nat

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// HostNet opens the host sockets flows are re-originated from. A socket
// keeps the network namespace it was made in, so an implementation decides
// where flows leave from (tests open them inside a test namespace).
type HostNet interface {
	// DialTCP connects from local to remote. control, when not nil, must
	// be called with the socket's descriptor before it connects (the NAT
	// sets the workload's TTL and TOS there, and asks for ICMP reports);
	// an error from it fails the dial.
	DialTCP(ctx context.Context, local netip.Addr, remote netip.AddrPort, control func(fd uintptr) error) (net.Conn, error)
	// ListenUDP opens an unconnected UDP socket on local, any port, for one
	// UDP flow.
	ListenUDP(local netip.Addr) (*net.UDPConn, error)
	// ListenICMP opens a socket for ICMP echo on local: an unprivileged
	// ping socket (its LocalAddr a *net.UDPAddr whose port is the echo
	// identifier the kernel gives every request) where
	// net.ipv4.ping_group_range allows it, else a raw ICMP socket (a
	// *net.IPAddr local address; the caller chooses identifiers).
	ListenICMP(local netip.Addr) (net.PacketConn, error)
}

// ProcessNet is the HostNet of the calling thread's network namespace: what
// a NAT uses when Config.Net is nil.
type ProcessNet struct{}

// DialTCP implements HostNet.
func (ProcessNet) DialTCP(ctx context.Context, local netip.Addr, remote netip.AddrPort, control func(fd uintptr) error) (net.Conn, error) {
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(local, 0))}
	if control != nil {
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var cerr error
			if err := rc.Control(func(fd uintptr) { cerr = control(fd) }); err != nil {
				return err
			}
			return cerr
		}
	}
	return d.DialContext(ctx, "tcp4", remote.String())
}

// ListenUDP implements HostNet.
func (ProcessNet) ListenUDP(local netip.Addr) (*net.UDPConn, error) {
	return net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0)))
}

// ListenICMP implements HostNet.
func (ProcessNet) ListenICMP(local netip.Addr) (net.PacketConn, error) {
	c, pingErr := listenPing(local)
	if pingErr == nil {
		return c, nil
	}
	raw, err := net.ListenIP("ip4:icmp", &net.IPAddr{IP: local.AsSlice()})
	if err != nil {
		return nil, fmt.Errorf("ping socket: %w; raw ICMP socket: %w", pingErr, err)
	}
	return raw, nil
}

// listenPing opens an unprivileged ICMP socket (SOCK_DGRAM, IPPROTO_ICMP)
// bound to local. The standard library cannot make one, so it is made here
// and handed to net as a file; net sees a datagram socket with an AF_INET
// address and gives a *net.UDPConn.
func listenPing(local netip.Addr) (net.PacketConn, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		return nil, fmt.Errorf("socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP): %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: local.As4()}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind ping socket to %s: %w", local, err)
	}
	f := os.NewFile(uintptr(fd), "ping")
	defer f.Close() // FilePacketConn duplicates the descriptor
	c, err := net.FilePacketConn(f)
	if err != nil {
		return nil, fmt.Errorf("ping socket: %w", err)
	}
	return c, nil
}
