package conn

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// socketBuffer is the send and receive buffer asked for, as wireguard-go
// does, so that the kernel can hold a few whole batches between two reads.
const socketBuffer = 7 << 20

// setBuffers raises the socket buffers, with the FORCE options where the
// process may exceed the system limits (CAP_NET_ADMIN) and the plain ones,
// capped by net.core.[rw]mem_max, otherwise.
func setBuffers(rc syscall.RawConn) error {
	var optErr error
	err := rc.Control(func(fd uintptr) {
		for _, o := range [...]struct{ force, plain int }{
			{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF},
			{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF},
		} {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o.force, socketBuffer) == nil {
				continue
			}
			if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o.plain, socketBuffer); err != nil {
				optErr = errors.Join(optErr, fmt.Errorf("socket buffer option %d: %w", o.plain, err))
			}
		}
	})
	return errors.Join(err, optErr)
}

// UDPConn is a UDP socket with batched I/O: VXLAN's transport.
type UDPConn struct {
	*batchConn
	pc *net.UDPConn
}

var _ Transport = (*UDPConn)(nil)

// ListenUDP opens a UDP socket bound to local, the node's underlay address
// and VXLAN port. It sends with UDP checksum zero, as RFC 7348 allows VXLAN
// to (the inner packet carries its own checksums), and needs no privilege.
func ListenUDP(local netip.AddrPort) (*UDPConn, error) {
	pc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(local))
	if err != nil {
		return nil, fmt.Errorf("listening on UDP %s: %w", local, err)
	}
	rc, err := pc.SyscallConn()
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("UDP %s: %w", local, err)
	}
	var optErr error
	err = rc.Control(func(fd uintptr) {
		optErr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_NO_CHECK, 1)
	})
	if err = errors.Join(err, optErr, setBuffers(rc)); err != nil {
		pc.Close()
		return nil, fmt.Errorf("setting up UDP %s: %w", local, err)
	}
	return &UDPConn{batchConn: newBatchConn(rc, pc.Close, true), pc: pc}, nil
}

// LocalAddr is the address the socket is bound to (with the port the
// kernel chose, if local's was 0).
func (c *UDPConn) LocalAddr() netip.AddrPort { return c.pc.LocalAddr().(*net.UDPAddr).AddrPort() }
