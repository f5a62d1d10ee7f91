// Package forward carries TCP connections from a listener to a dialled
// destination: the port forwards of netstack mode, in either direction
// (host to overlay, overlay to host), and the accept loop and relay under
// the SOCKS5 server.
package forward

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
)

// DialFunc opens the connection one accepted connection is carried to.
type DialFunc func(ctx context.Context) (net.Conn, error)

// Serve accepts connections on ln until it is closed or ctx ends, and
// carries each to a connection from dial. It returns nil when ln was closed
// or ctx ended, and waits for the connections it carries to end.
func Serve(ctx context.Context, ln net.Listener, dial DialFunc, log *slog.Logger) error {
	return Accept(ctx, ln, func(c net.Conn) {
		out, err := dial(ctx)
		if err != nil {
			// The client sees its connection closed; the log says why.
			log.Warn("port forward: dial failed", "from", c.RemoteAddr().String(), "err", err)
			return
		}
		defer out.Close()
		Pipe(ctx, c, out)
	})
}

// Accept accepts connections on ln until it is closed or ctx ends, and runs
// handle on each in a goroutine of its own; the connection is closed when
// handle returns. Accept returns nil when ln was closed or ctx ended, the
// listener's error otherwise, and in either case only after every handle
// has returned: a handle that should stop with ctx must watch it.
func Accept(ctx context.Context, ln net.Listener, handle func(c net.Conn)) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		wg.Go(func() {
			defer c.Close()
			handle(c)
		})
	}
}

// halfCloser is a connection whose sending side can be closed alone
// (*net.TCPConn, gVisor's gonet.TCPConn).
type halfCloser interface{ CloseWrite() error }

// Pipe copies a to b and b to a until both directions have ended or ctx
// ends. When one side stops sending, the other is half-closed, so a request
// followed by a shutdown (as HTTP/1.0 clients and `nc -N` do) still gets its
// answer. The caller closes a and b.
func Pipe(ctx context.Context, a, b net.Conn) {
	stop := context.AfterFunc(ctx, func() {
		a.Close()
		b.Close()
	})
	defer stop()
	var wg sync.WaitGroup
	one := func(dst, src net.Conn) {
		defer wg.Done()
		_, err := io.Copy(dst, src)
		if hc, ok := dst.(halfCloser); ok && err == nil {
			_ = hc.CloseWrite()
			return
		}
		// An error, or no half-close: nothing more will go either way.
		dst.Close()
		src.Close()
	}
	wg.Add(2)
	go one(a, b)
	go one(b, a)
	wg.Wait()
}
