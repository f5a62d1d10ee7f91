package testbed

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"sync"
	"time"
)

// pingSummary is iputils ping's statistics line.
var pingSummary = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (?:packets )?received`)

// Ping sends count echo requests (iputils ping, 0.2 s apart) from the host to
// dst and fails unless every one is answered. ping's own exit status is not
// enough: it is 0 as soon as any reply came back.
func (h *Host) Ping(ctx context.Context, dst netip.Addr, count int) error {
	if count < 1 {
		return fmt.Errorf("testbed: %s: ping %v: count %d, want at least 1", h.Name, dst, count)
	}
	out, err := h.Run(ctx, "ping", "-n", "-q", "-c", strconv.Itoa(count), "-i", "0.2", "-W", "2", dst.String())
	if err != nil {
		return fmt.Errorf("testbed: %w", err)
	}
	if err := allAnswered(out, count); err != nil {
		return fmt.Errorf("testbed: %s: ping %v: %w:\n%s", h.Name, dst, err, out)
	}
	return nil
}

// allAnswered reads ping's summary and checks that count replies came back.
func allAnswered(out []byte, count int) error {
	m := pingSummary.FindSubmatch(out)
	if m == nil {
		return errors.New("no summary in its output")
	}
	if received, _ := strconv.Atoi(string(m[2])); received < count {
		return fmt.Errorf("%d of %d answered", received, count)
	}
	return nil
}

// TransferResult says what a TCPTransfer moved and how fast.
type TransferResult struct {
	Bytes            int           // each way
	Up, Down         time.Duration // client to server, server to client
	UpMBps, DownMBps float64       // megabytes (10^6) per second
	// ClientSeenAs is the client's address and port as the server saw them:
	// the client's own, or what a NAT on the way made of it.
	ClientSeenAs netip.AddrPort
}

func (r TransferResult) String() string {
	return fmt.Sprintf("%d bytes each way, %.0f MB/s up (%.2f Gbit/s), %.0f MB/s down (%.2f Gbit/s)",
		r.Bytes, r.UpMBps, r.UpMBps*8/1000, r.DownMBps, r.DownMBps*8/1000)
}

// pattern is a deterministic pseudo-random stream, so both ends can check
// every byte without keeping a copy.
func pattern(seed uint64) io.Reader {
	return &patternReader{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

type patternReader struct {
	rng     *rand.Rand
	pending [8]byte // bytes of the last random word not handed out yet
	npend   int
}

// Read fills b eight bytes per random number, carrying over what a read
// leaves of a word, so the stream is the same however it is cut into reads.
func (p *patternReader) Read(b []byte) (int, error) {
	i := copy(b, p.pending[8-p.npend:])
	p.npend -= i
	for ; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], p.rng.Uint64())
	}
	if i < len(b) {
		binary.LittleEndian.PutUint64(p.pending[:], p.rng.Uint64())
		n := copy(b[i:], p.pending[:])
		p.npend = 8 - n
	}
	return len(b), nil
}

// verifyStream reads r to its end and checks that it is exactly the first
// want bytes of pattern(seed). It returns how many bytes arrived; the error
// says where the stream first differs, or how short or long it was.
func verifyStream(r io.Reader, seed uint64, want int) (int, error) {
	expect := pattern(seed)
	got := make([]byte, 64<<10)
	exp := make([]byte, len(got))
	n := 0
	for {
		k, err := r.Read(got)
		if k > 0 {
			if n+k > want {
				return n + k, fmt.Errorf("%d bytes arrived, more than the %d sent", n+k, want)
			}
			_, _ = expect.Read(exp[:k])
			if i := firstDifference(got[:k], exp[:k]); i >= 0 {
				return n + k, fmt.Errorf("byte %d differs: got %#02x, want %#02x", n+i, got[i], exp[i])
			}
			n += k
		}
		switch {
		case err == io.EOF && n < want:
			return n, fmt.Errorf("the stream ended after %d of %d bytes", n, want)
		case err == io.EOF:
			return n, nil
		case err != nil:
			return n, fmt.Errorf("after %d of %d bytes: %w", n, want, err)
		}
	}
}

// firstDifference returns the index of the first byte where a and b (of equal
// length) differ, or -1.
func firstDifference(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// TCPTransfer listens on serverAddr in the server's namespace (port 0: any),
// connects from the client's, and runs a Transfer of size bytes each way
// over the connection. ctx bounds the whole exchange.
func TCPTransfer(ctx context.Context, client, server *Host, serverAddr netip.AddrPort, size int) (TransferResult, error) {
	var ln net.Listener
	if err := server.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", serverAddr.String())
		return err
	}); err != nil {
		return TransferResult{Bytes: size}, fmt.Errorf("testbed: listen on %s in %s: %w", serverAddr, server.Name, err)
	}
	serverAddr = netip.AddrPortFrom(serverAddr.Addr(), uint16(ln.Addr().(*net.TCPAddr).Port))
	res, err := Transfer{
		Listener: ln,
		Dial: func(ctx context.Context) (c net.Conn, err error) {
			derr := client.Do(func() error {
				d := net.Dialer{Timeout: 10 * time.Second}
				c, err = d.DialContext(ctx, "tcp4", serverAddr.String())
				return nil
			})
			return c, cmp.Or(derr, err)
		},
		Size: size,
	}.Run(ctx)
	if err != nil {
		return res, fmt.Errorf("testbed: TCP %s <-> %s: %w", client.Name, serverAddr, err)
	}
	return res, nil
}

// Transfer is the exchange under TCPTransfer with the two ends supplied by
// the caller: for a client that is no Host (a netstack in the test process,
// say), or a test that looks at state in the middle of the transfer.
type Transfer struct {
	// Listener is the server's: Run accepts one connection on it, and
	// closes it before returning.
	Listener net.Listener
	// Dial opens the client's connection to Listener. Both ends must be
	// able to half-close (CloseWrite, as *net.TCPConn and gVisor's
	// gonet.TCPConn can).
	Dial func(ctx context.Context) (net.Conn, error)
	// Size is how many bytes go each way.
	Size int
	// Uploaded, when set, is called with the client's connection once the
	// server has checked the whole upload and before the client reads the
	// download: the moment to look at state mid-transfer.
	Uploaded func(client net.Conn)
}

// halfCloser is a connection whose sending side can be closed alone.
type halfCloser interface{ CloseWrite() error }

// Run moves Size bytes of a pseudo-random stream each way: the client
// sends and half-closes, the server checks every byte it got and then
// sends its own stream back, which the client checks. Any difference is
// an error saying how many bytes arrived and where the first wrong one is.
// ctx bounds the whole exchange.
func (t Transfer) Run(ctx context.Context) (TransferResult, error) {
	res := TransferResult{Bytes: t.Size}
	defer t.Listener.Close()
	stopListening := context.AfterFunc(ctx, func() { t.Listener.Close() })
	defer stopListening()

	const upSeed, downSeed = 1, 2
	type serverOutcome struct {
		peer netip.AddrPort
		err  error
	}
	served := make(chan serverOutcome, 1)
	go func() {
		var out serverOutcome
		out.err = func() error {
			c, err := t.Listener.Accept()
			if err != nil {
				return fmt.Errorf("accept: %w", err)
			}
			defer c.Close()
			defer context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })()
			if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
				out.peer = a.AddrPort()
			}
			if n, err := verifyStream(c, upSeed, t.Size); err != nil {
				return fmt.Errorf("the server received %d of %d bytes: %w", n, t.Size, err)
			}
			if _, err := io.CopyN(c, pattern(downSeed), int64(t.Size)); err != nil {
				return fmt.Errorf("the server's reply: %w", err)
			}
			return closeWrite(c)
		}()
		served <- out
	}()

	conn, err := t.Dial(ctx)
	if err != nil {
		return res, fmt.Errorf("connect: %w", err)
	}
	defer conn.Close()
	defer context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })()
	start := time.Now()
	clientErr := func() error {
		if _, err := io.CopyN(conn, pattern(upSeed), int64(t.Size)); err != nil {
			return fmt.Errorf("send: %w", err)
		}
		if err := closeWrite(conn); err != nil {
			return fmt.Errorf("half-close: %w", err)
		}
		// The server replies only once it has checked everything, so the
		// first byte back marks the end of the upload.
		first := make([]byte, 1)
		if _, err := io.ReadFull(conn, first); err != nil {
			return fmt.Errorf("no reply: %w", err)
		}
		res.Up = time.Since(start)
		if t.Uploaded != nil {
			t.Uploaded(conn)
		}
		if n, err := verifyStream(io.MultiReader(bytes.NewReader(first), conn), downSeed, t.Size); err != nil {
			return fmt.Errorf("the client received %d of %d bytes back: %w", n, t.Size, err)
		}
		return nil
	}()
	if clientErr != nil {
		// The server's account says more (it checks first); unblock it.
		conn.Close()
	}
	out := <-served
	res.ClientSeenAs = out.peer
	if err := errors.Join(out.err, clientErr); err != nil {
		return res, err
	}
	res.Down = time.Since(start) - res.Up
	res.UpMBps = float64(t.Size) / max(res.Up.Seconds(), 1e-9) / 1e6
	res.DownMBps = float64(t.Size) / max(res.Down.Seconds(), 1e-9) / 1e6
	return res, nil
}

func closeWrite(c net.Conn) error {
	hc, ok := c.(halfCloser)
	if !ok {
		return fmt.Errorf("a %T cannot half-close", c)
	}
	return hc.CloseWrite()
}

// EchoResult says what a UDPEcho saw.
type EchoResult struct {
	Datagrams int // echoed intact, one of each size
	// ClientSeenAs is the client's address and port as the server saw them.
	ClientSeenAs netip.AddrPort
}

// udpEchoSizes are the payload sizes UDPEcho sends: from tiny to what fits
// an overlay MTU of 1280 after the IPv4 and UDP headers.
var udpEchoSizes = []int{8, 64, 512, 1252}

// UDPEcho runs a UDP echo server on serverAddr in the server's namespace
// (port 0: any) and sends it datagrams of several sizes from the client's,
// each with distinct pseudo-random content; every echo must come back
// byte for byte. A datagram without an echo is resent (UDP may drop) until
// ctx ends, and then it is an error; without a deadline on ctx, 10 s.
func UDPEcho(ctx context.Context, client, server *Host, serverAddr netip.AddrPort) (EchoResult, error) {
	var res EchoResult
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	var srv *net.UDPConn
	if err := server.Do(func() error {
		var err error
		srv, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(serverAddr))
		return err
	}); err != nil {
		return res, fmt.Errorf("testbed: listen on udp %s in %s: %w", serverAddr, server.Name, err)
	}
	defer srv.Close()
	serverAddr = srv.LocalAddr().(*net.UDPAddr).AddrPort()
	var seenMu sync.Mutex
	var seen netip.AddrPort
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, from, err := srv.ReadFromUDPAddrPort(buf)
			if err != nil {
				return // closed
			}
			seenMu.Lock()
			seen = from
			seenMu.Unlock()
			_, _ = srv.WriteToUDPAddrPort(buf[:n], from)
		}
	}()

	var conn *net.UDPConn
	if err := client.Do(func() error {
		var err error
		conn, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(serverAddr))
		return err
	}); err != nil {
		return res, fmt.Errorf("testbed: udp from %s to %s: %w", client.Name, serverAddr, err)
	}
	defer conn.Close()
	defer context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })()
	for i, size := range udpEchoSizes {
		if err := echoOnce(ctx, conn, uint64(i), size); err != nil {
			return res, fmt.Errorf("testbed: UDP %s <-> %s: datagram of %d bytes: %w", client.Name, serverAddr, size, err)
		}
		res.Datagrams++
	}
	seenMu.Lock()
	res.ClientSeenAs = seen
	seenMu.Unlock()
	return res, nil
}

// echoOnce sends one datagram (its first 8 bytes its sequence number) until
// its echo comes back, ignoring late echoes of earlier ones.
func echoOnce(ctx context.Context, conn *net.UDPConn, seq uint64, size int) error {
	msg := make([]byte, size)
	_, _ = pattern(seq + 100).Read(msg)
	binary.BigEndian.PutUint64(msg, seq)
	buf := make([]byte, 64<<10)
	for tries := 1; ; tries++ {
		if _, err := conn.Write(msg); err != nil {
			return fmt.Errorf("send: %w", err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		for {
			n, err := conn.Read(buf)
			if err != nil {
				if ctx.Err() != nil {
					return fmt.Errorf("no echo after %d tries: %w", tries, ctx.Err())
				}
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break // resend
				}
				return fmt.Errorf("receive: %w", err)
			}
			if n >= 8 && binary.BigEndian.Uint64(buf) != seq {
				continue // a late echo of an earlier datagram
			}
			if n != size {
				return fmt.Errorf("the echo has %d bytes, want %d", n, size)
			}
			if i := firstDifference(buf[:n], msg); i >= 0 {
				return fmt.Errorf("the echo differs at byte %d: got %#02x, want %#02x", i, buf[i], msg[i])
			}
			return nil
		}
	}
}

// ServeEcho accepts connections on ln until it is closed and echoes each
// one back to its sender, for tests that only need a peer to talk to.
func ServeEcho(ln net.Listener) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
}
