package testbed

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"time"
)

// Ping sends count echo requests from the host to dst and fails unless all
// are answered.
func (h *Host) Ping(ctx context.Context, dst netip.Addr, count int) error {
	_, err := h.Run(ctx, "ping", "-n", "-q", "-c", strconv.Itoa(count), "-i", "0.2", "-W", "2", dst.String())
	return err
}

// TransferResult says what a TCPTransfer moved and how fast.
type TransferResult struct {
	Bytes          int           // each way
	Up, Down       time.Duration // client to server, server to client
	UpMBps, DownMB float64       // megabytes (10^6) per second
}

func (r TransferResult) String() string {
	return fmt.Sprintf("%d bytes each way, %.0f MB/s up (%.2f Gbit/s), %.0f MB/s down (%.2f Gbit/s)",
		r.Bytes, r.UpMBps, r.UpMBps*8/1000, r.DownMB, r.DownMB*8/1000)
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

func digestOf(seed uint64, size int) [sha256.Size]byte {
	h := sha256.New()
	_, _ = io.CopyN(h, pattern(seed), int64(size))
	var d [sha256.Size]byte
	copy(d[:], h.Sum(nil))
	return d
}

// TCPTransfer listens on serverAddr in the server's namespace, connects from
// the client's, and moves size bytes of a pseudo-random stream each way:
// the client sends and half-closes, the server checks every byte it got
// (length and SHA-256) and sends its own stream back, which the client
// checks. Any difference is an error saying how many bytes arrived.
func TCPTransfer(ctx context.Context, client, server *Host, serverAddr netip.AddrPort, size int) (TransferResult, error) {
	res := TransferResult{Bytes: size}
	var ln net.Listener
	if err := server.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", serverAddr.String())
		return err
	}); err != nil {
		return res, fmt.Errorf("testbed: listen on %s in %s: %w", serverAddr, server.Name, err)
	}
	defer ln.Close()
	const upSeed, downSeed = 1, 2
	serverErr := make(chan error, 1)
	go func() {
		serverErr <- func() error {
			c, err := ln.Accept()
			if err != nil {
				return err
			}
			defer c.Close()
			stopOnDone(ctx, c)
			h := sha256.New()
			n, err := io.Copy(h, c)
			if err != nil {
				return fmt.Errorf("server read after %d bytes: %w", n, err)
			}
			if n != int64(size) || [sha256.Size]byte(h.Sum(nil)) != digestOf(upSeed, size) {
				return fmt.Errorf("server got %d bytes, want %d, content differs: %t", n, size, n == int64(size))
			}
			if _, err := io.CopyN(c, pattern(downSeed), int64(size)); err != nil {
				return fmt.Errorf("server write: %w", err)
			}
			return c.(*net.TCPConn).CloseWrite()
		}()
	}()

	var conn net.Conn
	if err := client.Do(func() error {
		var err error
		d := net.Dialer{Timeout: 10 * time.Second}
		conn, err = d.DialContext(ctx, "tcp4", serverAddr.String())
		return err
	}); err != nil {
		return res, fmt.Errorf("testbed: connect from %s to %s: %w", client.Name, serverAddr, err)
	}
	defer conn.Close()
	stopOnDone(ctx, conn)
	start := time.Now()
	if _, err := io.CopyN(conn, pattern(upSeed), int64(size)); err != nil {
		return res, fmt.Errorf("testbed: %s -> %s: send: %w", client.Name, serverAddr, err)
	}
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		return res, err
	}
	// The server replies only once it has checked everything, so the first
	// byte back marks the end of the upload.
	h := sha256.New()
	first := make([]byte, 1)
	n, err := io.ReadFull(conn, first)
	res.Up = time.Since(start)
	if err == nil {
		h.Write(first)
		var rest int64
		rest, err = io.Copy(h, conn)
		n += int(rest)
	}
	if err := <-serverErr; err != nil {
		return res, fmt.Errorf("testbed: %s -> %s: %w", client.Name, serverAddr, err)
	}
	if err != nil {
		return res, fmt.Errorf("testbed: %s <- %s: receive after %d bytes: %w", client.Name, serverAddr, n, err)
	}
	if n != size || [sha256.Size]byte(h.Sum(nil)) != digestOf(downSeed, size) {
		return res, fmt.Errorf("testbed: %s <- %s: got %d bytes, want %d, or the content differs", client.Name, serverAddr, n, size)
	}
	total := time.Since(start)
	res.Down = total - res.Up
	res.UpMBps = float64(size) / res.Up.Seconds() / 1e6
	res.DownMB = float64(size) / max(res.Down.Seconds(), 1e-9) / 1e6
	return res, nil
}

// stopOnDone closes c when ctx ends, so a stuck transfer fails instead of
// hanging the test.
func stopOnDone(ctx context.Context, c net.Conn) {
	go func() {
		<-ctx.Done()
		_ = c.SetDeadline(time.Unix(1, 0))
	}()
}
