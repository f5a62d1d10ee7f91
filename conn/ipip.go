package conn

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// IPIPConn is a raw IPv4 socket for IP protocol 4 with IP_HDRINCL: the router
// writes whole outer IPv4 headers (TOS, DF, TTL, ID are its choice) and
// receives whole outer packets, header included. Message.Port is unused.
type IPIPConn struct {
	*batchConn
}

var (
	_ Transport = (*IPIPConn)(nil)
	_ Pollable  = (*IPIPConn)(nil)
)

// ErrNoRawSocket is what ListenIPIP's error wraps when the process may not
// open raw sockets, with the errno wrapped beside it.
var ErrNoRawSocket = errors.New("IP-in-IP needs CAP_NET_RAW (a raw socket for IP protocol 4); VXLAN pools work without it")

// ListenIPIP opens the raw IP-in-IP socket bound to local, the node's
// underlay address, so that only tunnels to this node arrive. It needs
// CAP_NET_RAW; without it the error wraps ErrNoRawSocket.
func ListenIPIP(local netip.Addr) (*IPIPConn, error) {
	local = local.Unmap()
	if !local.Is4() {
		return nil, fmt.Errorf("IP-in-IP socket on %s: the underlay address must be IPv4", local)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_IPIP)
	if err != nil {
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
			return nil, fmt.Errorf("%w: %w", ErrNoRawSocket, err)
		}
		return nil, fmt.Errorf("opening a raw IP-in-IP socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_HDRINCL, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("IP_HDRINCL on the IP-in-IP socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: local.As4()}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("binding the IP-in-IP socket to %s: %w", local, err)
	}
	// Handing the descriptor to package net puts it under Go's poller.
	f := os.NewFile(uintptr(fd), "ipip")
	pc, err := net.FilePacketConn(f)
	f.Close() // FilePacketConn works on its own duplicate
	if err != nil {
		return nil, fmt.Errorf("IP-in-IP socket on %s: %w", local, err)
	}
	ipc, ok := pc.(*net.IPConn)
	if !ok {
		pc.Close()
		return nil, fmt.Errorf("IP-in-IP socket on %s: package net made a %T of it", local, pc)
	}
	rc, err := ipc.SyscallConn()
	if err != nil {
		ipc.Close()
		return nil, fmt.Errorf("IP-in-IP socket on %s: %w", local, err)
	}
	if err := setBuffers(rc); err != nil {
		ipc.Close()
		return nil, fmt.Errorf("IP-in-IP socket buffers: %w", err)
	}
	bc, err := newBatchConn(rc, ipc.Close, false)
	if err != nil {
		ipc.Close()
		return nil, fmt.Errorf("IP-in-IP socket on %s: %w", local, err)
	}
	return &IPIPConn{batchConn: bc}, nil
}
