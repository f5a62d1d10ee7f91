package conn

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/header"
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
// syscall.RawConn is made once, at open, and not per call.
type batch struct {
	hdrs  [MaxBatch]mmsghdr
	iovs  [MaxBatch]unix.Iovec
	names [MaxBatch]unix.RawSockaddrInet4
	// ctrl is each header's control messages (UDP only): UDP_SEGMENT and
	// IP_TOS on send; where UDP_GRO's segment size and IP_RECVTOS's TOS
	// arrive on receive.
	ctrl [MaxBatch][ctrlSpace]byte
	// pkts is how many messages (iovecs) each header carries: more than
	// one for a GSO train, which the kernel cuts at the segment size.
	pkts [MaxBatch]int
	n    int // headers in the call
	// done counts the headers the kernel is through with, sent or
	// refused; failed counts the messages of the refused ones (send only).
	done, failed int
	// tooBig: the kernel refused the header for its size (send only).
	tooBig [MaxBatch]bool
	// gsoRefused: the kernel refused a GSO train with EIO (the route's
	// device cannot checksum for it); the call stopped there.
	gsoRefused bool
	err        error
	op         func(fd uintptr) bool
}

// ctrlSpace holds two control messages with at most an int of data each:
// 2*CMSG_SPACE(4), 48 bytes on 64-bit Linux and more than 32-bit needs.
const ctrlSpace = 48

// maxGSOSegments is the most datagrams one UDP_SEGMENT send may carry
// (UDP_MAX_SEGMENTS; raised from 64 to 128 only in recent kernels), and
// maxGSOBytes the most UDP payload one IPv4 datagram can hold.
const (
	maxGSOSegments = 64
	maxGSOBytes    = 0xffff - udpIPv4Headers
)

// udpIPv4Headers is what the kernel puts in front of a UDP payload on an
// IPv4 underlay: the IPv4 and UDP headers.
const udpIPv4Headers = header.IPv4MinimumSize + header.UDPMinimumSize

// batchConn is a socket with one batch per direction.
type batchConn struct {
	rc    syscall.RawConn
	fd    int // rc's descriptor, for Pollable
	close func() error
	rd    batch
	wr    batch
	// withPort: a UDP socket, whose messages carry a port and a TOS; the
	// raw IP socket's carry neither (the TOS is in the header they hold).
	withPort bool
	// gsoSegment is the largest datagram sendmmsg may join into a UDP GSO
	// train; 0: GSO off. gro: UDP_GRO is on, so received messages carry
	// their segment size in a control message.
	gsoSegment atomic.Int64
	gro        bool
	wmu        sync.Mutex
}

func newBatchConn(rc syscall.RawConn, closer func() error, withPort bool) (*batchConn, error) {
	c := &batchConn{rc: rc, close: closer, withPort: withPort}
	c.rd.op = c.recvmmsg
	c.wr.op = c.sendmmsg
	// Control, unlike os.File.Fd, leaves the descriptor non-blocking and
	// under the poller.
	if err := rc.Control(func(fd uintptr) { c.fd = int(fd) }); err != nil {
		return nil, fmt.Errorf("the socket's descriptor: %w", err)
	}
	return c, nil
}

// FD is the socket's descriptor; see Pollable.
func (c *batchConn) FD() int { return c.fd }

// Buffered is always false: every ReadBatch asks the kernel; see Pollable.
func (c *batchConn) Buffered() bool { return false }

// prepareRead points one header at each of msgs, at most MaxBatch of them,
// with room, on a UDP socket, for the control messages of the TOS and, when
// GRO is on, the segment size.
func (c *batchConn) prepareRead(msgs []Message) {
	b := &c.rd
	b.n, b.done, b.failed, b.err = min(len(msgs), MaxBatch), 0, 0, nil
	for i := range b.n {
		b.iovs[i] = iovec(msgs[i].Buf)
		b.hdrs[i] = mmsghdr{hdr: unix.Msghdr{
			Name:    (*byte)(unsafe.Pointer(&b.names[i])),
			Namelen: unix.SizeofSockaddrInet4,
			Iov:     &b.iovs[i],
			Iovlen:  1,
		}}
		if c.withPort {
			b.hdrs[i].hdr.Control = &b.ctrl[i][0]
			b.hdrs[i].hdr.SetControllen(ctrlSpace)
		}
	}
}

// prepareWrite fills the headers from the front of msgs and returns how
// many messages they hold. With GSO on, a run of messages to the same peer
// with the same TOS whose sizes are equal (the last may be shorter) becomes
// one header whose iovecs are those messages, sent with UDP_SEGMENT: one
// datagram for the kernel's whole path down to the device, cut into the
// original datagrams only where it must be, and not copied on the way here.
// The segments share the train's IPv4 header, hence the one TOS. A UDP
// message with a TOS other than 0 (the socket's own) carries it in an IP_TOS
// control message.
func (c *batchConn) prepareWrite(msgs []Message) int {
	b := &c.wr
	b.n, b.done, b.failed, b.err, b.gsoRefused = 0, 0, 0, nil, false
	// Every message takes one iovec, so used also counts the iovecs taken
	// and bounds the call at MaxBatch messages.
	used := 0
	for used < len(msgs) && used < MaxBatch {
		first := &msgs[used]
		seg := len(first.Buf)
		count, total := 1, seg
		if gso := int(c.gsoSegment.Load()); gso > 0 && seg > 0 && seg <= gso {
			for used+count < min(len(msgs), MaxBatch) && count < maxGSOSegments {
				next := &msgs[used+count]
				l := len(next.Buf)
				if next.Addr != first.Addr || next.Port != first.Port || next.TOS != first.TOS ||
					l == 0 || l > seg || total+l > maxGSOBytes {
					break
				}
				count++
				total += l
				if l < seg {
					break // only a train's last datagram may be shorter
				}
			}
		}
		// The iovecs of one header are consecutive, and the headers take
		// them in order: used is also the index of this header's first.
		for i := range count {
			b.iovs[used+i] = iovec(msgs[used+i].Buf)
		}
		h := &b.hdrs[b.n]
		*h = mmsghdr{hdr: unix.Msghdr{
			Name:    (*byte)(unsafe.Pointer(&b.names[b.n])),
			Namelen: unix.SizeofSockaddrInet4,
			Iov:     &b.iovs[used],
		}}
		h.hdr.SetIovlen(count)
		b.names[b.n] = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: first.Addr}
		if c.withPort {
			setPort(&b.names[b.n], first.Port)
		}
		ctrl := 0
		if count > 1 {
			ctrl += putSegmentSize(b.ctrl[b.n][ctrl:], seg)
		}
		if c.withPort && first.TOS != 0 {
			ctrl += putTOS(b.ctrl[b.n][ctrl:], first.TOS)
		}
		if ctrl > 0 {
			h.hdr.Control = &b.ctrl[b.n][0]
			h.hdr.SetControllen(ctrl)
		}
		b.pkts[b.n] = count
		b.tooBig[b.n] = false
		b.n++
		used += count
	}
	return used
}

func iovec(buf []byte) unix.Iovec {
	var v unix.Iovec
	if len(buf) > 0 {
		v.Base = &buf[0]
	}
	v.SetLen(len(buf))
	return v
}

// putSegmentSize writes the UDP_SEGMENT control message at the start of
// ctrl, which is aligned for a cmsghdr: the header and the segment size as
// a native-endian uint16. It returns the room the message takes.
func putSegmentSize(ctrl []byte, seg int) int {
	h := (*unix.Cmsghdr)(unsafe.Pointer(&ctrl[0]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafe.Pointer(&ctrl[unix.CmsgLen(0)])) = uint16(seg)
	return unix.CmsgSpace(2)
}

// putTOS writes the IP_TOS control message, which sets one datagram's TOS
// byte (DSCP and ECN; Linux's ip_cmsg_send takes an int), at the start of
// ctrl as putSegmentSize does, and returns the room it takes.
func putTOS(ctrl []byte, tos uint8) int {
	h := (*unix.Cmsghdr)(unsafe.Pointer(&ctrl[0]))
	h.Level, h.Type = unix.IPPROTO_IP, unix.IP_TOS
	h.SetLen(unix.CmsgLen(4))
	*(*int32)(unsafe.Pointer(&ctrl[unix.CmsgLen(0)])) = int32(tos)
	return unix.CmsgSpace(4)
}

// parseControl reads a received message's control messages: UDP_GRO's
// segment size (0 when the kernel did not coalesce it) and IP_RECVTOS's TOS
// byte (0 when there is none).
func parseControl(ctrl []byte) (seg int, tos uint8) {
	for len(ctrl) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&ctrl[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(ctrl) {
			break
		}
		switch {
		case h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && l >= unix.CmsgLen(4):
			seg = int(*(*int32)(unsafe.Pointer(&ctrl[unix.CmsgLen(0)])))
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_TOS && l >= unix.CmsgLen(1):
			tos = ctrl[unix.CmsgLen(0)]
		}
		ctrl = ctrl[min(unix.CmsgSpace(l-unix.CmsgLen(0)), len(ctrl)):]
	}
	return seg, tos
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
			if e == unix.EIO && b.pkts[b.done] > 1 {
				// udp_send_skb refuses GSO through a device that cannot
				// checksum; WriteBatch turns GSO off and sends the rest
				// one datagram each.
				b.gsoRefused = true
				return true
			}
			// sendmmsg stops at a message the kernel refuses and reports
			// the error only when that message comes first, as here: skip
			// it, keep the first error, and send the rest. A datagram over
			// the path MTU that may not be fragmented is EMSGSIZE; a GSO
			// train whose segments are is EINVAL (udp_send_skb).
			b.tooBig[b.done] = e == unix.EMSGSIZE || (e == unix.EINVAL && b.pkts[b.done] > 1)
			if b.err == nil {
				b.err = fmt.Errorf("sendmmsg to %s: %w", c.peer(&b.names[b.done]), e)
			}
			b.failed += b.pkts[b.done]
			b.done++
		}
	}
	return true
}

// ReadBatch receives into msgs; see Transport.ReadBatch. With GRO on, a
// message may hold several datagrams; segments says their size (0: one).
func (c *batchConn) ReadBatch(msgs []Message) (int, error) {
	return c.readBatch(msgs, nil)
}

// readBatch is ReadBatch, also reporting each message's GRO segment size
// into segments when it is not nil.
func (c *batchConn) readBatch(msgs []Message, segments []int) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	b := &c.rd
	c.prepareRead(msgs)
	if err := c.rc.Read(b.op); err != nil {
		return 0, fmt.Errorf("receiving a batch: %w", err)
	}
	if b.err != nil {
		return 0, b.err
	}
	for i := range b.done {
		m := &msgs[i]
		h := &b.hdrs[i]
		m.N = int(h.len)
		m.Truncated = h.hdr.Flags&unix.MSG_TRUNC != 0
		m.Addr = b.names[i].Addr
		m.Port = port(&b.names[i])
		seg := 0
		m.TOS = 0
		if c.withPort && h.hdr.Controllen > 0 {
			seg, m.TOS = parseControl(b.ctrl[i][:min(int(h.hdr.Controllen), ctrlSpace)])
		}
		if segments != nil {
			segments[i] = seg
		}
	}
	return b.done, nil
}

// WriteBatch sends msgs; see Transport.WriteBatch.
func (c *batchConn) WriteBatch(msgs []Message) (int, error) {
	// The TUN loop sends, and so does an underlay loop answering ARP: the
	// write batch is one, so one call at a time (a lock per batch).
	c.wmu.Lock()
	defer c.wmu.Unlock()
	b := &c.wr
	sent := 0
	var firstErr error
	for len(msgs) > 0 {
		used := c.prepareWrite(msgs)
		err := c.rc.Write(b.op)
		consumed := 0
		for i := range b.done {
			for k := range b.pkts[i] {
				msgs[consumed+k].TooBig = b.tooBig[i]
			}
			consumed += b.pkts[i]
		}
		sent += consumed - b.failed
		if err != nil {
			return sent, fmt.Errorf("sending a batch: %w", err)
		}
		if firstErr == nil {
			firstErr = b.err
		}
		if b.gsoRefused {
			c.gsoSegment.Store(0)
			used = consumed
		}
		msgs = msgs[used:]
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
