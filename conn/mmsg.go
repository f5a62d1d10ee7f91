package conn

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsghdr is struct mmsghdr of recvmmsg(2). Go rounds the struct's size up
// to Msghdr's alignment, which gives the C layout on 32- and 64-bit alike.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

// batch is the state of one direction of a socket: the headers, iovecs and
// addresses the kernel reads and writes, and the call in progress. The call's
// inputs and results live in fields so that the closure handed to
// syscall.RawConn is made once, at open, and not per call. UDP GSO and GRO
// will add a control buffer per message here (msg_control).
type batch struct {
	hdrs  [MaxBatch]mmsghdr
	iovs  [MaxBatch]unix.Iovec
	names [MaxBatch]unix.RawSockaddrInet4
	n     int // messages in the call
	// done counts the messages the kernel is through with, sent or
	// refused; failed counts the refused ones (send only).
	done, failed int
	err          error
	op           func(fd uintptr) bool
}

// batchConn is a socket with one batch per direction.
type batchConn struct {
	rc    syscall.RawConn
	close func() error
	rd    batch
	wr    batch
	// withPort: a UDP socket, whose messages carry a port; the raw IP
	// socket's do not.
	withPort bool
}

func newBatchConn(rc syscall.RawConn, closer func() error, withPort bool) *batchConn {
	c := &batchConn{rc: rc, close: closer, withPort: withPort}
	c.rd.op = c.recvmmsg
	c.wr.op = c.sendmmsg
	return c
}

// prepare points the headers at msgs, at most MaxBatch of them.
func (b *batch) prepare(msgs []Message) {
	b.n, b.done, b.failed, b.err = min(len(msgs), MaxBatch), 0, 0, nil
	for i := range b.n {
		buf := msgs[i].Buf
		b.iovs[i] = unix.Iovec{}
		if len(buf) > 0 {
			b.iovs[i].Base = &buf[0]
		}
		b.iovs[i].SetLen(len(buf))
		b.hdrs[i] = mmsghdr{hdr: unix.Msghdr{
			Name:    (*byte)(unsafe.Pointer(&b.names[i])),
			Namelen: unix.SizeofSockaddrInet4,
			Iov:     &b.iovs[i],
			Iovlen:  1,
		}}
	}
}

// recvmmsg is the RawConn.Read callback: false sends the goroutine to the
// poller to wait for the socket to become readable.
func (c *batchConn) recvmmsg(fd uintptr) bool {
	b := &c.rd
	for {
		r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(b.n), 0, 0, 0)
		switch e {
		case 0:
			b.done = int(r)
			return true
		case unix.EINTR:
			// Retried here, not by the poller: the socket may hold data
			// already, and no new readiness event would come for it.
			continue
		case unix.EAGAIN:
			return false
		default:
			b.err = os.NewSyscallError("recvmmsg", e)
			return true
		}
	}
}

// sendmmsg is the RawConn.Write callback. It resumes where the previous
// call stopped, so a batch partly sent before EAGAIN goes on from there once
// the poller says the socket is writable.
func (c *batchConn) sendmmsg(fd uintptr) bool {
	b := &c.wr
	for b.done < b.n {
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[b.done])), uintptr(b.n-b.done), 0, 0, 0)
		switch e {
		case 0:
			b.done += int(r)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			// sendmmsg stops at a message the kernel refuses and reports
			// the error only when that message comes first, as here: skip
			// it, keep the first error, and send the rest.
			if b.err == nil {
				b.err = fmt.Errorf("sendmmsg to %s: %w", c.peer(&b.names[b.done]), e)
			}
			b.done++
			b.failed++
		}
	}
	return true
}

// ReadBatch receives into msgs; see Transport.ReadBatch.
func (c *batchConn) ReadBatch(msgs []Message) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	b := &c.rd
	b.prepare(msgs)
	if err := c.rc.Read(b.op); err != nil {
		return 0, fmt.Errorf("receiving a batch: %w", err)
	}
	if b.err != nil {
		return 0, b.err
	}
	for i := range b.done {
		m := &msgs[i]
		m.N = int(b.hdrs[i].len)
		m.Truncated = b.hdrs[i].hdr.Flags&unix.MSG_TRUNC != 0
		m.Addr = b.names[i].Addr
		m.Port = port(&b.names[i])
	}
	return b.done, nil
}

// WriteBatch sends msgs; see Transport.WriteBatch.
func (c *batchConn) WriteBatch(msgs []Message) (int, error) {
	b := &c.wr
	sent := 0
	var firstErr error
	for len(msgs) > 0 {
		chunk := msgs[:min(len(msgs), MaxBatch)]
		msgs = msgs[len(chunk):]
		b.prepare(chunk)
		for i := range chunk {
			b.names[i] = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: chunk[i].Addr}
			if c.withPort {
				setPort(&b.names[i], chunk[i].Port)
			}
		}
		if err := c.rc.Write(b.op); err != nil {
			return sent + b.done - b.failed, fmt.Errorf("sending a batch: %w", err)
		}
		sent += b.done - b.failed
		if firstErr == nil {
			firstErr = b.err
		}
	}
	return sent, firstErr
}

// Close closes the socket; a ReadBatch waiting on it returns an error
// wrapping net.ErrClosed.
func (c *batchConn) Close() error { return c.close() }

// peer names a destination for an error message.
func (c *batchConn) peer(s *unix.RawSockaddrInet4) string {
	addr := netip.AddrFrom4(s.Addr)
	if c.withPort {
		return netip.AddrPortFrom(addr, port(s)).String()
	}
	return addr.String()
}

// port and setPort access sin_port, which is in network byte order.
func port(s *unix.RawSockaddrInet4) uint16 {
	return binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&s.Port))[:])
}

func setPort(s *unix.RawSockaddrInet4, p uint16) {
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&s.Port))[:], p)
}
