// Package conn is overlayd's underlay side: a UDP socket for VXLAN and a raw
// IPv4 socket for IP-in-IP, each moving a batch of packets per system call
// (recvmmsg, sendmmsg) with no allocation per call. golang.org/x/net/ipv4's
// PacketConn allocates a net.Addr per received message, so the batch here
// keeps its own message headers, iovecs and addresses and reuses them.
package conn

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Message is one packet of a batch, filled in place by the router.
type Message struct {
	// Buf holds the bytes to send, or the room to receive into.
	Buf []byte
	// N is the number of bytes received.
	N int
	// Addr is the peer: destination on send, source on receive.
	Addr [4]byte
	// Port is the peer's UDP port (UDP only).
	Port uint16
	// Truncated is set on receive when the datagram was longer than Buf.
	Truncated bool
}

// Transport is an underlay socket with batched I/O.
type Transport interface {
	ReadBatch(msgs []Message) (int, error)
	WriteBatch(msgs []Message) (int, error)
	Close() error
}

// MaxBatch is the most messages one call handles; longer slices are cut.
const MaxBatch = 128

// socketBuffer is the send and receive buffer asked for, as wireguard-go
// does, so bursts of a whole batch are not dropped by the kernel.
const socketBuffer = 7 << 20

// mmsghdr is struct mmsghdr of recvmmsg(2) on 64-bit Linux.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

// batch is the per-direction state of one socket: the headers the kernel
// reads and writes, and the call in progress, kept in fields so the closure
// given to syscall.RawConn is made once, not per call.
type batch struct {
	hdrs   [MaxBatch]mmsghdr
	iovs   [MaxBatch]unix.Iovec
	names  [MaxBatch]unix.RawSockaddrInet4
	n      int // messages in the call
	done   int // messages the kernel took, filled or refused
	failed int // messages the kernel refused (send)
	err    error
	op     func(fd uintptr) bool
}

// batchConn is a socket with one batch per direction: ReadBatch and
// WriteBatch may run at once, but each from one goroutine at a time.
type batchConn struct {
	rc    syscall.RawConn
	close func() error
	rd    batch
	wr    batch
	// withPort: UDP writes the destination port; raw IP leaves it zero.
	withPort bool
}

func newBatchConn(rc syscall.RawConn, closer func() error, withPort bool) *batchConn {
	c := &batchConn{rc: rc, close: closer, withPort: withPort}
	c.rd.op = c.recvmmsg
	c.wr.op = c.sendmmsg
	return c
}

func (b *batch) prepare(msgs []Message, names bool) {
	b.n, b.done, b.failed, b.err = min(len(msgs), MaxBatch), 0, 0, nil
	for i := range b.n {
		buf := msgs[i].Buf
		b.iovs[i] = unix.Iovec{}
		if len(buf) > 0 {
			b.iovs[i].Base = &buf[0]
		}
		b.iovs[i].SetLen(len(buf))
		h := &b.hdrs[i].hdr
		*h = unix.Msghdr{Iov: &b.iovs[i], Iovlen: 1}
		if names {
			h.Name = (*byte)(unsafe.Pointer(&b.names[i]))
			h.Namelen = unix.SizeofSockaddrInet4
		}
		b.hdrs[i].len = 0
	}
}

func (c *batchConn) recvmmsg(fd uintptr) bool {
	b := &c.rd
	r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(b.n), 0, 0, 0)
	if e == unix.EAGAIN || e == unix.EINTR {
		return false
	}
	if e != 0 {
		b.err = os.NewSyscallError("recvmmsg", e)
	} else {
		b.done = int(r)
	}
	return true
}

func (c *batchConn) sendmmsg(fd uintptr) bool {
	b := &c.wr
	for b.done < b.n {
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[b.done])), uintptr(b.n-b.done), 0, 0, 0)
		switch {
		case e == unix.EAGAIN:
			return false
		case e == unix.EINTR:
			continue
		case e != 0:
			// The first message of the rest failed (a per-destination error
			// such as EMSGSIZE or ECONNREFUSED from an earlier ICMP): report
			// it and let the caller count it, after the rest is tried.
			if b.err == nil {
				b.err = fmt.Errorf("sendmmsg to %v: %w", netip.AddrFrom4(sockaddrAddr(&b.names[b.done])), e)
			}
			b.done++
			b.failed++
			continue
		}
		b.done += int(r)
	}
	return true
}

// ReadBatch receives up to len(msgs) packets (at most MaxBatch), blocking
// until at least one is there, and returns how many it filled.
func (c *batchConn) ReadBatch(msgs []Message) (int, error) {
	c.rd.prepare(msgs, true)
	if err := c.rc.Read(c.rd.op); err != nil {
		return 0, err
	}
	if c.rd.err != nil {
		return 0, c.rd.err
	}
	for i := range c.rd.done {
		m := &msgs[i]
		m.N = int(c.rd.hdrs[i].len)
		m.Truncated = c.rd.hdrs[i].hdr.Flags&unix.MSG_TRUNC != 0
		m.Addr = sockaddrAddr(&c.rd.names[i])
		m.Port = sockaddrPort(&c.rd.names[i])
	}
	return c.rd.done, nil
}

// WriteBatch sends msgs (at most MaxBatch), each Buf to its Addr (and Port),
// and returns how many the kernel took. A message the kernel refuses is
// skipped and the rest still sent; the first such refusal is returned.
func (c *batchConn) WriteBatch(msgs []Message) (int, error) {
	c.wr.prepare(msgs, true)
	for i := range c.wr.n {
		s := &c.wr.names[i]
		*s = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: msgs[i].Addr}
		if c.withPort {
			p := (*[2]byte)(unsafe.Pointer(&s.Port))
			p[0], p[1] = byte(msgs[i].Port>>8), byte(msgs[i].Port)
		}
	}
	if err := c.rc.Write(c.wr.op); err != nil {
		return 0, err
	}
	return c.wr.done - c.wr.failed, c.wr.err
}

// Close closes the socket; a ReadBatch waiting on it returns net.ErrClosed.
func (c *batchConn) Close() error { return c.close() }

func sockaddrAddr(s *unix.RawSockaddrInet4) [4]byte { return s.Addr }

func sockaddrPort(s *unix.RawSockaddrInet4) uint16 {
	p := (*[2]byte)(unsafe.Pointer(&s.Port))
	return uint16(p[0])<<8 | uint16(p[1])
}

// setBuffers raises the socket buffers, with the FORCE options where the
// process may exceed the system limits and the plain ones otherwise.
func setBuffers(rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		for _, o := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[0], socketBuffer) != nil {
				if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[1], socketBuffer); err != nil && serr == nil {
					serr = err
				}
			}
		}
	})
	return errors.Join(err, serr)
}

// UDPConn is a UDP socket with batched I/O: VXLAN's transport.
type UDPConn struct {
	*batchConn
	pc *net.UDPConn
}

// ListenUDP opens a UDP socket on local. It sends with UDP checksum zero, as
// RFC 7348 allows VXLAN to (the inner packet carries its own checksums), and
// needs no privilege.
func ListenUDP(local netip.AddrPort) (*UDPConn, error) {
	pc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(local))
	if err != nil {
		return nil, fmt.Errorf("listening on UDP %s: %w", local, err)
	}
	rc, err := pc.SyscallConn()
	if err != nil {
		pc.Close()
		return nil, err
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

// LocalAddr is the socket's address.
func (c *UDPConn) LocalAddr() netip.AddrPort { return c.pc.LocalAddr().(*net.UDPAddr).AddrPort() }

// IPIPConn is a raw IPv4 socket for IP protocol 4 with IP_HDRINCL: the router
// writes whole outer headers and receives them whole.
type IPIPConn struct {
	*batchConn
}

// ErrNoRawSocket explains the one privilege IP-in-IP needs.
var ErrNoRawSocket = errors.New("IP-in-IP needs CAP_NET_RAW (a raw socket for IP protocol 4); VXLAN pools work without it")

// ListenIPIP opens the raw IP-in-IP socket bound to local, so only tunnels
// to this node's address arrive.
func ListenIPIP(local netip.Addr) (*IPIPConn, error) {
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
	f := os.NewFile(uintptr(fd), "ipip")
	pc, err := net.FilePacketConn(f)
	f.Close() // FilePacketConn made its own copy of the descriptor
	if err != nil {
		return nil, fmt.Errorf("IP-in-IP socket: %w", err)
	}
	ipc := pc.(*net.IPConn)
	rc, err := ipc.SyscallConn()
	if err != nil {
		ipc.Close()
		return nil, err
	}
	if err := setBuffers(rc); err != nil {
		ipc.Close()
		return nil, fmt.Errorf("IP-in-IP socket buffers: %w", err)
	}
	return &IPIPConn{batchConn: newBatchConn(rc, ipc.Close, false)}, nil
}
