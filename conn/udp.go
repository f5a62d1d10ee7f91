package conn

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// defaultUnderlayMTU is the underlay MTU GSO trains are cut for until
// SetUnderlayMTU says otherwise: Ethernet's.
const defaultUnderlayMTU = 1500

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

// groBatch is how many (possibly coalesced) messages one receive system
// call takes with GRO on, and groBufSize the room for each: a coalesced
// message is up to 64 KiB.
const (
	groBatch   = 32
	groBufSize = 1 << 16
)

// UDPConn is a UDP socket with batched I/O: VXLAN's transport.
//
// It uses the kernel's UDP segmentation offloads where the kernel has them:
// WriteBatch joins runs of equal-sized datagrams with the same TOS to one
// peer into one GSO send (UDP_SEGMENT), and the socket receives with
// UDP_GRO, so that a train from a peer doing the same crosses the underlay's
// stack as one packet. ReadBatch hands out the datagrams one per Message as
// before, splitting the coalesced ones, each with the TOS they arrived with;
// what does not fit in the caller's batch waits for its next call.
type UDPConn struct {
	*batchConn
	pc *net.UDPConn
	// gro holds the messages received with GRO and not yet handed out.
	gro *groQueue
	// senders, when set, send in the socket's stead, each from a port of
	// its own; spread is a batch's messages by sender and spreadAt where
	// each sender is in its part, reused under spreadMu.
	senders  []*udpSender
	spread   [][]Message
	spreadAt []int
	spreadMu sync.Mutex
	// frag sends the messages marked Fragment: without DF where they are
	// too big for the path, and with no GSO.
	frag *udpSender
}

// udpSender is one of the sockets a UDPConn spreads its source ports over.
type udpSender struct {
	*batchConn
	pc *net.UDPConn
}

// groQueue is the receive side's own buffers under GRO: coalesced messages
// are received here and split into the caller's messages, which cannot
// hold more than one datagram each.
type groQueue struct {
	msgs     [groBatch]Message
	segments [groBatch]int
	n, next  int // messages received; the next one to split
	off      int // where in msgs[next] the next datagram starts
	// coalesced counts the messages the kernel handed over coalesced.
	coalesced uint64
}

var (
	_ Transport = (*UDPConn)(nil)
	_ Pollable  = (*UDPConn)(nil)
)

// ListenUDP opens a UDP socket bound to local, the node's underlay address
// and VXLAN port, and needs no privilege. Where the kernel offers UDP GSO,
// trains of datagrams up to 1472 bytes (a 1500-byte underlay) are joined;
// SetUnderlayMTU changes that. Without GSO it sends with UDP checksum zero,
// as RFC 7348 allows VXLAN to (the inner packet carries its own checksums);
// GSO needs the checksum, which the device or the kernel computes once per
// train.
func ListenUDP(local netip.AddrPort) (*UDPConn, error) {
	pc, bc, gso, gro, err := openUDP(local, true, true)
	if err != nil {
		return nil, err
	}
	fragPC, fragBC, _, _, err := openUDP(netip.AddrPortFrom(local.Addr(), 0), false, false)
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("the VXLAN socket for datagrams the kernel may fragment: %w", err)
	}
	if err := refuseAll(fragBC); err != nil {
		pc.Close()
		fragPC.Close()
		return nil, fmt.Errorf("the VXLAN socket for datagrams the kernel may fragment: %w", err)
	}
	c := &UDPConn{batchConn: bc, pc: pc, frag: &udpSender{batchConn: fragBC, pc: fragPC}}
	if gso {
		c.gsoSegment.Store(defaultUnderlayMTU - udpIPv4Headers)
	}
	if gro {
		c.batchConn.gro = true
		c.gro = new(groQueue)
		for i := range c.gro.msgs {
			c.gro.msgs[i].Buf = make([]byte, groBufSize)
		}
	}
	return c, nil
}

// openUDP opens one UDP socket bound to local with the offloads the kernel
// has: GSO always where known, GRO if withGRO. With df, every datagram it
// sends has DF (IP_PMTUDISC_DO), GSO trains included, so that a router
// whose MTU is too small answers with the MTU it has; a datagram over the
// path MTU the kernel learned so is refused (EMSGSIZE) rather than
// fragmented. Without df it keeps Linux's default, IP_PMTUDISC_WANT: DF
// on what fits the path MTU, the rest fragmented.
func openUDP(local netip.AddrPort, withGRO, df bool) (pc *net.UDPConn, bc *batchConn, gso, gro bool, err error) {
	pc, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(local))
	if err != nil {
		return nil, nil, false, false, fmt.Errorf("listening on UDP %s: %w", local, err)
	}
	rc, err := pc.SyscallConn()
	if err != nil {
		pc.Close()
		return nil, nil, false, false, fmt.Errorf("UDP %s: %w", local, err)
	}
	var optErr error
	err = rc.Control(func(fd uintptr) {
		// Reading UDP_SEGMENT back tells whether the kernel knows it
		// (4.18 and later); UDP_GRO is set where it is known (5.0).
		_, segErr := unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT)
		gso = segErr == nil
		if withGRO {
			gro = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil
		}
		if !gso {
			optErr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_NO_CHECK, 1)
		}
		if df {
			if err := unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO); err != nil {
				optErr = errors.Join(optErr, fmt.Errorf("IP_MTU_DISCOVER: %w", err))
			}
		}
		// Each received datagram's TOS comes as a control message, so
		// that VXLAN can pass the outer ECN on (Message.TOS).
		if err := unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVTOS, 1); err != nil {
			optErr = errors.Join(optErr, fmt.Errorf("IP_RECVTOS: %w", err))
		}
	})
	if err = errors.Join(err, optErr, setBuffers(rc)); err != nil {
		pc.Close()
		return nil, nil, false, false, fmt.Errorf("setting up UDP %s: %w", local, err)
	}
	if bc, err = newBatchConn(rc, pc.Close, true); err != nil {
		pc.Close()
		return nil, nil, false, false, fmt.Errorf("UDP %s: %w", local, err)
	}
	return pc, bc, gso, gro, nil
}

// SpreadSourcePorts makes the socket send from n sockets of its own, each
// bound to the same address and a port of the kernel's choosing, and pick
// one per message by its Flow, as Linux's VXLAN picks a source port per
// inner flow: the underlay's ECMP and the receiver's RSS hash on the outer
// ports, and one port for all of a node's traffic would put it all on one
// path and one receive queue. A flow keeps its port, so its packets stay
// in order. Receiving stays on the listening socket. Call it before the
// socket is in use.
func (c *UDPConn) SpreadSourcePorts(n int) error {
	local := netip.AddrPortFrom(c.LocalAddr().Addr(), 0)
	senders := make([]*udpSender, 0, n)
	for range n {
		pc, bc, _, _, err := openUDP(local, false, true)
		if err == nil {
			if err = refuseAll(bc); err != nil {
				pc.Close()
			}
		}
		if err != nil {
			for _, s := range senders {
				s.pc.Close()
			}
			return fmt.Errorf("a VXLAN source port: %w", err)
		}
		bc.gsoSegment.Store(c.gsoSegment.Load())
		senders = append(senders, &udpSender{batchConn: bc, pc: pc})
	}
	c.senders = senders
	c.spread = make([][]Message, n)
	c.spreadAt = make([]int, n)
	for i := range c.spread {
		c.spread[i] = make([]Message, 0, MaxBatch)
	}
	return nil
}

// SourcePorts are the ports the socket sends from.
func (c *UDPConn) SourcePorts() []uint16 {
	if len(c.senders) == 0 {
		return []uint16{c.LocalAddr().Port()}
	}
	ports := make([]uint16, len(c.senders))
	for i, s := range c.senders {
		ports[i] = s.pc.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	}
	return ports
}

// WriteBatch sends msgs; see Transport.WriteBatch. A run of messages marked
// Fragment goes out of the socket that lets the kernel fragment; the
// others, with DF, as writeDF says.
func (c *UDPConn) WriteBatch(msgs []Message) (int, error) {
	sent := 0
	var firstErr error
	for len(msgs) > 0 {
		run := 1
		for run < len(msgs) && msgs[run].Fragment == msgs[0].Fragment {
			run++
		}
		var n int
		var err error
		if msgs[0].Fragment {
			n, err = c.frag.WriteBatch(msgs[:run])
		} else {
			n, err = c.writeDF(msgs[:run])
		}
		sent += n
		if err != nil && firstErr == nil {
			firstErr = err
		}
		msgs = msgs[run:]
	}
	return sent, firstErr
}

// writeDF sends msgs with DF. With spread source ports, each message goes
// out of the sender its Flow picks, a system call per sender the batch
// uses.
func (c *UDPConn) writeDF(msgs []Message) (int, error) {
	if len(c.senders) == 0 {
		return c.batchConn.WriteBatch(msgs)
	}
	c.spreadMu.Lock()
	defer c.spreadMu.Unlock()
	sent := 0
	var firstErr error
	for len(msgs) > 0 {
		chunk := msgs[:min(len(msgs), MaxBatch)]
		msgs = msgs[len(chunk):]
		for i := range c.spread {
			c.spread[i] = c.spread[i][:0]
		}
		for i := range chunk {
			s := c.senderOf(chunk[i].Flow)
			c.spread[s] = append(c.spread[s], chunk[i])
		}
		refused := false
		for i, part := range c.spread {
			if len(part) == 0 {
				continue
			}
			n, err := c.senders[i].WriteBatch(part)
			sent += n
			if err != nil {
				refused = true
				if firstErr == nil {
					firstErr = err
				}
			}
		}
		if refused {
			// The senders marked their copies of the messages; the
			// caller reads its own.
			clear(c.spreadAt)
			for i := range chunk {
				s := c.senderOf(chunk[i].Flow)
				chunk[i].TooBig = c.spread[s][c.spreadAt[s]].TooBig
				c.spreadAt[s]++
			}
		} else {
			for i := range chunk {
				chunk[i].TooBig = false
			}
		}
	}
	return sent, firstErr
}

// senderOf picks the sender of a message by its flow hash.
func (c *UDPConn) senderOf(flow uint32) int {
	return int(uint64(flow) * uint64(len(c.senders)) >> 32)
}

// Close closes the socket and its senders.
func (c *UDPConn) Close() error {
	err := errors.Join(c.batchConn.Close(), c.frag.pc.Close())
	for _, s := range c.senders {
		err = errors.Join(err, s.pc.Close())
	}
	return err
}

// SetUnderlayMTU sets the largest datagram a GSO train may hold to what
// fits the underlay's MTU unfragmented; the kernel refuses a train whose
// segments would need fragmenting. Safe while the socket is in use.
func (c *UDPConn) SetUnderlayMTU(mtu int) {
	c.batchConn.setMaxSegment(mtu - udpIPv4Headers)
	for _, s := range c.senders {
		s.setMaxSegment(mtu - udpIPv4Headers)
	}
}

// setMaxSegment sets the largest datagram of a GSO train, if GSO is on.
func (c *batchConn) setMaxSegment(n int) {
	if c.gsoSegment.Load() > 0 {
		c.gsoSegment.Store(int64(n))
	}
}

// Offloads reports whether UDP GSO (send) and GRO (receive) are in use.
func (c *UDPConn) Offloads() (gso, gro bool) { return c.gsoSegment.Load() > 0, c.gro != nil }

// ReadBatch receives into msgs, one datagram each; see Transport.ReadBatch.
// Under GRO it returns what an earlier call left over before it waits for
// more.
func (c *UDPConn) ReadBatch(msgs []Message) (int, error) {
	q := c.gro
	if q == nil {
		return c.batchConn.ReadBatch(msgs)
	}
	if len(msgs) == 0 {
		return 0, nil
	}
	if q.next == q.n {
		n, err := c.readBatch(q.msgs[:], q.segments[:])
		if err != nil {
			return 0, err
		}
		q.n, q.next, q.off = n, 0, 0
		for _, seg := range q.segments[:n] {
			if seg > 0 {
				q.coalesced++
			}
		}
	}
	out := 0
	for out < len(msgs) && q.next < q.n {
		m := &q.msgs[q.next]
		seg := q.segments[q.next]
		if seg <= 0 {
			seg = m.N
		}
		end := min(q.off+seg, m.N)
		dst := &msgs[out]
		k := copy(dst.Buf, m.Buf[q.off:end])
		dst.N, dst.Addr, dst.Port, dst.TOS = k, m.Addr, m.Port, m.TOS
		dst.Truncated = k < end-q.off || (m.Truncated && end == m.N)
		out++
		q.off = end
		if q.off >= m.N {
			q.next++
			q.off = 0
		}
	}
	return out, nil
}

// Buffered reports whether datagrams the kernel coalesced are still on
// hand, split in part; see Pollable.
func (c *UDPConn) Buffered() bool { return c.gro != nil && c.gro.next < c.gro.n }

// LocalAddr is the address the socket is bound to (with the port the
// kernel chose, if local's was 0).
func (c *UDPConn) LocalAddr() netip.AddrPort { return c.pc.LocalAddr().(*net.UDPAddr).AddrPort() }
