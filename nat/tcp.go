package nat

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// relayBufSize is each relay direction's buffer: a thousand flows hold 64
// MiB of them, and bulk flows move 32 KiB per system call.
const relayBufSize = 32 << 10

func addrPortOf(a tcpip.Address, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4(a.As4()), port)
}

// keyOf is the flow a netstack request belongs to: the netstack's remote
// end is the workload, its local end the destination.
func keyOf(p proto, id stack.TransportEndpointID) flowKey {
	return flowKey{p, addrPortOf(id.RemoteAddress, id.RemotePort), addrPortOf(id.LocalAddress, id.LocalPort)}
}

// handleTCP serves a workload's SYN, in a goroutine of the forwarder's: it
// connects to the real destination first and completes the workload's
// handshake only if that worked, so the workload sees what the outside did
// (accept, refuse, unreachable).
func (n *NAT) handleTCP(r *tcp.ForwarderRequest) {
	if !n.track() {
		r.Complete(true)
		return
	}
	defer n.wg.Done()
	k := keyOf(protoTCP, r.ID())
	e := n.table.lookup(k)
	if e == nil || e.getState() != stateSynSent || !e.relaying.CompareAndSwap(false, true) {
		// Refused by a limit when its SYN came in (and counted then), or
		// gone since.
		r.Complete(true)
		return
	}
	ctx, cancel := context.WithTimeout(e.ctx, n.table.getTimeouts().TCPSynSent)
	out, reports, err := n.dialOutside(ctx, e)
	cancel()
	if err != nil {
		n.dialFailed(r, e, err, reports)
		return
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	r.Complete(false)
	if terr != nil {
		// The workload went away during the handshake.
		n.log.Debug("nat: workload handshake failed", "flow", k, "err", terr)
		resetConn(out)
		n.table.end(e)
		return
	}
	if tc, ok := out.LocalAddr().(*net.TCPAddr); ok {
		e.setOutside(tc.AddrPort())
	}
	n.table.setState(e, stateEstablished)
	in := gonet.NewTCPConn(&wq, ep)
	// The relay, which an idle flow keeps for its whole life, gets a
	// goroutine of its own: this one's stack grew in the dial and the
	// handshake, and goroutine stacks, not the heap, were most of an idle
	// flow's memory.
	if !n.goTracked(func() { n.relayTCP(e, in, ep, &wq, out) }) {
		ep.Abort() // Close has begun
		resetConn(out)
		n.table.end(e)
	}
}

// dialOutside connects the flow's host socket to its destination, with the
// SYN's TTL and TOS and with IP_RECVERR set before the SYN leaves, so that
// an ICMP error that fails the connect is queued with its type and sender.
// A failed connect closes the standard library's descriptor, so a duplicate
// keeps the socket, and its error queue, until it has been read.
func (n *NAT) dialOutside(ctx context.Context, e *entry) (net.Conn, []icmpReport, error) {
	keep := -1
	control := func(fd uintptr) error {
		if err := e.marks.set(int(fd)); err != nil {
			return err
		}
		if err := setRecvErr(int(fd)); err != nil {
			return err
		}
		// The local port is chosen at connect, by the whole 4-tuple, not
		// at bind: flows to different destinations may share one, so the
		// NAT is not held to one flow per ephemeral port. Best effort: a
		// kernel without it (before 4.2) binds as before.
		_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
		dup, err := unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("keeping the socket for its error queue: %w", err)
		}
		if keep >= 0 {
			unix.Close(keep) // an earlier attempt's socket
		}
		keep = dup
		return nil
	}
	out, err := n.net.DialTCP(ctx, n.cfg.Outside, e.key.dest, control)
	if keep < 0 {
		return out, nil, err
	}
	defer unix.Close(keep)
	if err == nil {
		return out, nil, nil
	}
	reports, qerr := readErrQueueFD(keep)
	if qerr != nil {
		n.log.Debug("nat: TCP dial error queue", "flow", e.key, "err", qerr)
	}
	return nil, reports, err
}

// dialFailed tells the workload how the outside answered its SYN: a reset
// for a refused connection; the ICMP error that failed the connect
// (unreachable, time exceeded), from its sender, quoting the SYN; nothing
// for no answer (its own SYN timer then runs out, as behind a real NAT).
// After an ICMP error the SYN is dropped without a reset, as a NAT that
// forwards the error leaves the workload's connection attempt alone.
func (n *NAT) dialFailed(r *tcp.ForwarderRequest, e *entry, err error, reports []icmpReport) {
	n.log.Debug("nat: outside dial failed", "flow", e.key, "err", err)
	n.table.refuse(RefusedDial)
	for _, rep := range reports {
		if e.synQuote != nil && n.relayReport(rep, e, e.synQuote) {
			r.Complete(false)
			n.table.end(e)
			return
		}
	}
	code, unreachable := unreachableCode(err, false)
	switch {
	case unreachable && e.synQuote != nil:
		r.Complete(false)
		n.sendICMPError(header.ICMPv4DstUnreachable, code, 0, e.key.dest.Addr(), e.synQuote)
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		r.Complete(false)
	default:
		r.Complete(true)
	}
	n.table.end(e)
}

// unreachableCode maps an error Linux reports on a host socket with
// IP_RECVERR to the ICMP destination unreachable code behind it
// (icmp_err_convert read backwards); EHOSTUNREACH also stands for time
// exceeded and some prohibitions, which the kernel does not tell apart.
// Two errors mean an ICMP error only in one case: ECONNREFUSED on an
// established connection can only be a port unreachable (a reset gives
// ECONNRESET), while on a connect it is more likely a reset; EACCES and
// EPERM on a connect or a send are the host's firewall refusing, which
// the workload is told as a prohibition, while an established connection
// that gets them is reset.
func unreachableCode(err error, established bool) (header.ICMPv4Code, bool) {
	switch {
	case errors.Is(err, syscall.ENETUNREACH):
		return header.ICMPv4NetUnreachable, true
	case errors.Is(err, syscall.EHOSTUNREACH):
		return header.ICMPv4HostUnreachable, true
	case errors.Is(err, syscall.ENOPROTOOPT):
		return header.ICMPv4ProtoUnreachable, true
	case errors.Is(err, syscall.EHOSTDOWN):
		return header.ICMPv4DestinationHostUnknown, true
	case errors.Is(err, syscall.ENONET):
		return header.ICMPv4SourceHostIsolated, true
	case errors.Is(err, syscall.ECONNREFUSED) && established:
		return header.ICMPv4PortUnreachable, true
	case (errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM)) && !established:
		return header.ICMPv4AdminProhibited, true
	}
	return 0, false
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// resetConn closes a host connection with a reset rather than a FIN.
func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// relayTCP copies both ways until both directions have ended. A FIN (EOF)
// is carried across as a half-close, so either side may keep sending after
// the other is done; a reset or error on either side resets both; so does
// the flow's end (expiry, NAT closed).
//
// An idle flow holds no buffer and one goroutine, whose stack stays
// small: it waits in the runtime's poller for the host's socket to have
// something to read (or to end), then hands the reading to a goroutine
// that lives until the socket has nothing more, and waits for it; the
// workload's direction likewise has a goroutine only while its endpoint
// has something. Each takes a buffer from the pool for what there is and
// gives it back once it has read it.
func (n *NAT) relayTCP(e *entry, in *gonet.TCPConn, ep tcpip.Endpoint, wq *waiter.Queue, out net.Conn) {
	var resetOnce sync.Once
	resetBoth := func() {
		resetOnce.Do(func() {
			ep.Abort()
			resetConn(out)
		})
	}
	stop := context.AfterFunc(e.ctx, resetBoth)

	outHalf, _ := out.(interface{ CloseWrite() error })
	var finMu sync.Mutex
	fins := 0
	finished := func() {
		finMu.Lock()
		defer finMu.Unlock()
		if fins++; fins == 1 {
			n.table.setState(e, stateFinWait)
		}
	}
	// hostError handles an error of the host socket and says whether the
	// relay may go on. With IP_RECVERR, Linux reports an ICMP error on an
	// established connection as an error of the next read or write but
	// keeps the connection, as a workload behind a real NAT keeps its own
	// when the NAT forwards the error (a soft error for its TCP). So the
	// error goes to the workload and the relay goes on while the host
	// connection lives; once it has died, the workload is reset too.
	hostConn, _ := out.(syscall.Conn)
	hostError := func(err error) bool {
		code, fromICMP := unreachableCode(err, true)
		if !fromICMP {
			return false
		}
		// The kernel does not say who sent the error of an established
		// connection (only a connecting one's is queued): it is said to
		// come from the destination.
		n.sendICMPError(header.ICMPv4DstUnreachable, code, 0, e.key.dest.Addr(), e.tcpQuote())
		return hostConn != nil && tcpAlive(hostConn)
	}
	// pipe moves what src has to dst until src's direction has ended (it
	// returns true). wait, when not nil, waits without a buffer until src
	// has something (and returns its error); ready, when not nil, says
	// whether it has something now, and pipe returns false (idle) when it
	// has not.
	pipe := func(dst io.Writer, src io.Reader, wait func() error, ready func() bool, closeWrite func() error, fromHost bool) (ended bool) {
		var bufp *[]byte
		defer func() {
			if bufp != nil {
				n.relayBufs.Put(bufp)
			}
		}()
		for {
			var k int
			var err error
			if bufp == nil {
				if ready != nil && !ready() {
					return false
				}
				if wait != nil {
					err = wait()
				}
			}
			if err == nil {
				if bufp == nil {
					bufp = n.relayBufs.Get().(*[]byte)
				}
				k, err = src.Read(*bufp)
			}
			for off := 0; off < k; {
				w, werr := dst.Write((*bufp)[off:k])
				off += w
				if werr != nil && (fromHost || !hostError(werr)) {
					resetBoth()
					return true
				}
			}
			if bufp != nil && k < len(*bufp) {
				// What was there has been read: idle again, or soon.
				n.relayBufs.Put(bufp)
				bufp = nil
			}
			if errors.Is(err, io.EOF) {
				if closeWrite == nil || closeWrite() != nil {
					resetBoth()
				}
				finished()
				return true
			}
			if err != nil {
				if fromHost && hostError(err) {
					continue
				}
				resetBoth()
				return true
			}
		}
	}
	var outCloseWrite func() error
	if outHalf != nil {
		outCloseWrite = outHalf.CloseWrite
	}

	// The workload's direction has a goroutine only while it has data: the
	// netstack's notification starts one, which returns once the
	// endpoint has nothing more to read. The netstack side is readable when
	// it has data, its FIN, or an error (Readiness reports every event
	// once the endpoint has ended).
	const readable = waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr
	const (
		inIdle int32 = iota
		inRunning
		inAgain // woken while running: look again before going idle
		inEnded
	)
	var inState atomic.Int32
	inDone := make(chan struct{})
	var inDoneOnce sync.Once
	endIn := func() {
		inState.Store(inEnded)
		inDoneOnce.Do(func() { close(inDone) })
	}
	inReady := func() bool { return ep.Readiness(readable) != 0 }
	drain := func() {
		for {
			if pipe(out, in, nil, inReady, outCloseWrite, false) {
				endIn()
				return
			}
			if inState.CompareAndSwap(inRunning, inIdle) {
				return
			}
			inState.Store(inRunning) // inAgain: something came meanwhile
		}
	}
	// wake runs in the netstack's notification, under its queue's lock:
	// it only starts the drain or tells the running one to look again.
	wake := func(waiter.EventMask) {
		for {
			switch inState.Load() {
			case inIdle:
				if inState.CompareAndSwap(inIdle, inRunning) {
					if !n.goTracked(drain) {
						endIn() // Close has begun: it resets the flow
					}
					return
				}
			case inRunning:
				if inState.CompareAndSwap(inRunning, inAgain) {
					return
				}
			default:
				return
			}
		}
	}
	inEntry := waiter.NewFunctionEntry(readable, wake)
	wq.EventRegister(&inEntry)
	wake(readable) // what came before the registration

	// The host's direction: the drain reads what the wait found, and what
	// follows it without a pause, then returns (false) once a read did not
	// fill its buffer, to let this goroutine wait again.
	var (
		hostErr   error
		hostFresh bool
	)
	hostWaited := func() error { return hostErr }
	hostReady := func() bool {
		fresh := hostFresh
		hostFresh = false
		return fresh
	}
	hostEnded := make(chan bool, 1)
	hostDrain := func() { hostEnded <- pipe(in, out, hostWaited, hostReady, in.CloseWrite, true) }
	waitHost := hostReadable(out)
	for {
		hostErr, hostFresh = waitHost(), true
		if !n.goTracked(hostDrain) {
			resetBoth() // Close has begun
			break
		}
		if <-hostEnded {
			break
		}
	}
	<-inDone
	wq.EventUnregister(&inEntry)
	// Disarm the reset before ending the flow (which cancels its
	// context): after two FINs the netstack may still hold data for the
	// workload, which a close delivers and an abort would discard.
	stop()
	in.Close()
	out.Close()
	n.table.end(e)
}

// hostReadable returns a function that waits, in the runtime's poller and
// without a buffer, until the host connection has data, its FIN or an
// error to read. The error it returns is the connection's (a reset, an
// ICMP error), which the kernel reports once: the wait has taken it, so
// the caller handles it as a read's.
func hostReadable(c net.Conn) func() error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return func() error { return nil }
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return func() error { return nil }
	}
	var peek [1]byte
	var perr syscall.Errno
	// A one-byte peek that would block says there is nothing yet; data,
	// the end (0) or an error is something.
	ready := func(fd uintptr) bool {
		for {
			_, _, perr = unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&peek[0])), 1, unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
			if perr != unix.EINTR {
				return perr != unix.EAGAIN
			}
		}
	}
	return func() error {
		if err := rc.Read(ready); err != nil {
			return err // closed
		}
		if perr != 0 {
			return fmt.Errorf("reading the host connection: %w", perr)
		}
		return nil
	}
}

// noteWorkloadSeq records how far the workload's sequence numbers have got
// with segment t (segLen bytes with its header); retransmissions, being
// behind, change nothing. Called by the inbound loop only, so a load and a
// store suffice.
func (e *entry) noteWorkloadSeq(t header.TCP, segLen int) {
	if int(t.DataOffset()) > segLen {
		return // malformed: the netstack drops it
	}
	end := seqnum.Value(t.SequenceNumber()).Add(seqnum.Size(segLen - int(t.DataOffset())))
	if t.Flags()&(header.TCPFlagSyn|header.TCPFlagFin) != 0 {
		end = end.Add(1)
	}
	// 0 is the unset value (a sequence number of 0 merely costs one
	// update).
	if cur := seqnum.Value(e.workloadSeqEnd.Load()); cur == 0 || cur.LessThan(end) {
		e.workloadSeqEnd.Store(uint32(end))
	}
}

// tcpQuote is what an ICMP error about the flow's established connection
// quotes: the workload's IP header and ports, and a sequence number its
// stack takes for one of its own segments (Linux's tcp_v4_err drops an
// error whose quoted sequence number is outside SND.UNA..SND.NXT).
func (e *entry) tcpQuote() []byte {
	if len(e.synQuote) < header.IPv4MinimumSize {
		return nil
	}
	q := append([]byte(nil), e.synQuote...)
	ip := header.IPv4(q)
	hl := int(ip.HeaderLength())
	ip.SetTotalLength(uint16(hl + header.TCPMinimumSize))
	ip.SetChecksum(0)
	ip.SetChecksum(^ip.CalculateChecksum())
	if len(q) >= hl+8 {
		binary.BigEndian.PutUint32(q[hl+4:], e.workloadSeqEnd.Load())
	}
	return q
}
