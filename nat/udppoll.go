package nat

import (
	"errors"
	"fmt"
	"net"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/overlayd/overlayd/encap"
)

// pollEvents is how many ready sockets one epoll_wait returns, and
// pollReads how many datagrams the poller reads from one socket before it
// turns to the next, so a flood on one flow does not starve the others
// (epoll is level-triggered: what is left is reported again).
const (
	pollEvents = 128
	pollReads  = 32
)

// udpPoller reads the host sockets of every UDP flow from one goroutine,
// woken by its own epoll instance only for sockets that have something to
// read: an idle flow costs its socket and an entry in socks, nothing more.
// The sockets stay the standard library's (its descriptor lifetime rules
// keep a read from landing on a reused descriptor); the poller reads them
// through their RawConn without blocking.
type udpPoller struct {
	n    *NAT
	epfd int
	// wake is an eventfd that Close writes to end the wait.
	wake int

	mu    sync.Mutex
	socks map[int32]*udpSock // by descriptor
}

func newUDPPoller(n *NAT) (*udpPoller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("nat: epoll for the UDP flows: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("nat: eventfd for the UDP poller: %w", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil, fmt.Errorf("nat: epoll for the UDP flows: %w", err)
	}
	return &udpPoller{n: n, epfd: epfd, wake: wake, socks: map[int32]*udpSock{}}, nil
}

// add watches a flow's socket.
func (p *udpPoller) add(s *udpSock) error {
	p.mu.Lock()
	p.socks[s.fd] = s
	p.mu.Unlock()
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(s.fd), &unix.EpollEvent{Events: unix.EPOLLIN, Fd: s.fd}); err != nil {
		p.forget(s)
		return fmt.Errorf("watching a UDP flow's socket: %w", err)
	}
	return nil
}

// forget drops a socket from the map, unless its descriptor already
// belongs to a newer one.
func (p *udpPoller) forget(s *udpSock) {
	p.mu.Lock()
	if p.socks[s.fd] == s {
		delete(p.socks, s.fd)
	}
	p.mu.Unlock()
}

// closeSock stops watching a socket and closes it, once: the sweeper's
// reap and Close may both come.
func (p *udpPoller) closeSock(s *udpSock) {
	if !s.closed.CompareAndSwap(false, true) {
		return
	}
	p.forget(s)
	// Before the close, while the descriptor is still this socket's; the
	// close would remove it from the epoll set anyway, but only once the
	// standard library has let go of the descriptor.
	_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(s.fd), nil)
	s.conn.Close()
}

// reap closes the sockets of flows that have left the table; the sweeper
// calls it after expiring flows.
func (p *udpPoller) reap() {
	var dead []*udpSock
	p.mu.Lock()
	for _, s := range p.socks {
		if s.e.ctx.Err() != nil {
			dead = append(dead, s)
		}
	}
	p.mu.Unlock()
	for _, s := range dead {
		p.closeSock(s)
	}
}

// close closes every socket and ends run.
func (p *udpPoller) close() {
	p.mu.Lock()
	socks := make([]*udpSock, 0, len(p.socks))
	for _, s := range p.socks {
		socks = append(socks, s)
	}
	p.mu.Unlock()
	for _, s := range socks {
		p.closeSock(s)
	}
	var one [8]byte
	one[0] = 1 // the eventfd adds the native-endian 8-byte value; any non-zero wakes
	_, _ = unix.Write(p.wake, one[:])
}

// run waits for readable sockets and relays what they got until close.
// Its buffer holds the largest datagram behind the headers of its reply
// and the headroom Config.Out wants, so a reply is built around the data
// in place; frag holds one fragment of a reply too big for the MTU.
func (p *udpPoller) run() {
	defer p.n.wg.Done()
	defer unix.Close(p.epfd)
	defer unix.Close(p.wake)
	events := make([]unix.EpollEvent, pollEvents)
	ready := make([]readySock, 0, pollEvents)
	r := &udpReader{p: p, buf: make([]byte, datagramBufSize), frag: make([]byte, encap.Headroom+p.n.cfg.MTU), bufs: make([][]byte, 1)}
	r.read = r.readFD
	for {
		k, err := unix.EpollWait(p.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			p.n.log.Error("nat: the UDP poller stops", "err", err)
			return
		}
		// One lock per wake-up, not per datagram.
		ready = ready[:0]
		stop := false
		p.mu.Lock()
		for _, ev := range events[:k] {
			if ev.Fd == int32(p.wake) {
				stop = true
				continue
			}
			if s := p.socks[ev.Fd]; s != nil {
				ready = append(ready, readySock{s, ev.Events})
			}
		}
		p.mu.Unlock()
		if stop {
			return
		}
		for _, rs := range ready {
			r.drain(rs.s, rs.events)
		}
	}
}

// readySock is a socket epoll reported, with what it reported.
type readySock struct {
	s      *udpSock
	events uint32
}

// udpReader is the poller's reading state, made once so that reading a
// socket through its RawConn allocates nothing.
type udpReader struct {
	p         *udpPoller
	buf, frag []byte
	bufs      [][]byte
	read      func(fd uintptr) bool
	// Set by each read: what it gave.
	got  int
	rerr error
	id   uint16 // IPv4 identification of the replies
}

// readFD reads one datagram without waiting; always done, so RawConn.Read
// never parks the poller on a socket.
func (r *udpReader) readFD(fd uintptr) bool {
	r.got, r.rerr = unix.Read(int(fd), r.buf[encap.Headroom+udpReplyHeaders:])
	return true
}

// drain relays the ICMP errors s has queued and up to pollReads datagrams
// waiting on it.
func (r *udpReader) drain(s *udpSock, events uint32) {
	n := r.p.n
	if events&unix.EPOLLERR != 0 {
		// The queue is read here, not only when a read fails: a send may
		// have taken the error's errno, and a queue left unread would be
		// reported again at once, for ever (epoll is level-triggered).
		n.relayUDPErrors(s)
	}
	for range pollReads {
		if err := s.raw.Read(r.read); err != nil {
			return // closed
		}
		if r.rerr != nil {
			if errors.Is(r.rerr, unix.EAGAIN) {
				return
			}
			// With IP_RECVERR an ICMP error about an earlier datagram
			// surfaces as a read error; its details are on the error
			// queue.
			if n.relayUDPErrors(s) == 0 && !errors.Is(r.rerr, net.ErrClosed) {
				n.log.Debug("nat: UDP flow read", "flow", s.e.key, "err", r.rerr)
				return
			}
			continue
		}
		r.reply(s, r.got)
	}
}

// reply sends the datagram of size bytes in r.buf to the workload.
func (r *udpReader) reply(s *udpSock, size int) {
	n := r.p.n
	e := s.e
	r.id++
	pkt := putUDPReply(r.buf[encap.Headroom:], size, e.key.dest, e.key.inside, r.id)
	e.countIn(len(pkt), n.table.now())
	if e.getState() == stateUnreplied {
		n.table.setState(e, stateAssured)
	}
	if len(pkt) <= n.cfg.MTU {
		r.bufs[0] = r.buf[:encap.Headroom+len(pkt)]
		n.out(r.bufs)
		return
	}
	r.fragment(pkt)
}

// fragment sends an IPv4 packet too big for the MTU as fragments, each
// copied behind the headroom of r.frag.
func (r *udpReader) fragment(pkt []byte) {
	n := r.p.n
	const hl = 20
	step := (n.cfg.MTU - hl) &^ 7
	data := pkt[hl:]
	for off := 0; off < len(data); off += step {
		end := min(off+step, len(data))
		f := r.frag[encap.Headroom : encap.Headroom+hl+end-off]
		copy(f, pkt[:hl])
		copy(f[hl:], data[off:end])
		fragHeader(f, off, end < len(data))
		r.bufs[0] = r.frag[:encap.Headroom+len(f)]
		n.out(r.bufs)
	}
}
