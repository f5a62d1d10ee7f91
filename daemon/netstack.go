package daemon

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/forward"
	"github.com/overlayd/overlayd/socks5"
)

// serveNetstack opens what netstack mode exposes to the host's
// applications: the SOCKS5 listener and the port forwards of the cluster
// file. Every listener is open when it returns, so a failure (a port in
// use) stops the start; stop closes them and waits for their connections.
func (d *daemon) serveNetstack(ctx context.Context, c *config.Cluster) (stop func(), err error) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	stop = func() {
		cancel()
		wg.Wait()
	}
	stack := d.side.stack
	serve := func(what string, run func() error) {
		wg.Go(func() {
			if err := run(); err != nil {
				d.log.Error(what+" stopped", "err", err)
			}
		})
	}
	fail := func(err error) (func(), error) {
		stop()
		return nil, err
	}

	if c.Netstack.SOCKS5.IsValid() {
		ln, err := net.Listen("tcp4", c.Netstack.SOCKS5.String())
		if err != nil {
			return fail(fmt.Errorf("netstack mode: [netstack] socks5 listener: %w", err))
		}
		srv := &socks5.Server{Logger: d.log, Dial: func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
			return stack.DialContextTCPAddrPort(ctx, dst)
		}}
		if c.Netstack.SOCKS5User != "" {
			srv.Auth = &socks5.Credentials{User: c.Netstack.SOCKS5User, Password: c.Netstack.SOCKS5Password}
		}
		serve("SOCKS5 listener", func() error { return srv.Serve(ctx, ln) })
		d.log.Info("SOCKS5 listening", "address", ln.Addr().String(), "from", d.side.addr, "authentication", srv.Auth != nil)
		if srv.Auth == nil && !c.Netstack.SOCKS5.Addr().IsLoopback() {
			// Only with socks5AllowUnauthenticated = true: config refuses it otherwise.
			d.log.Warn("the SOCKS5 listener is not on loopback and asks for no credentials (socks5AllowUnauthenticated = true): whoever reaches it reaches the overlay as this node", "address", c.Netstack.SOCKS5)
		}
	}

	for i, f := range c.Forwards {
		var (
			ln   net.Listener
			dial forward.DialFunc
			err  error
		)
		if f.Reverse {
			listen := f.Listen
			if listen.Addr().IsUnspecified() {
				listen = netip.AddrPortFrom(d.side.addr, listen.Port())
			}
			if listen.Addr() != d.side.addr {
				return fail(badInput(fmt.Errorf("%s: forward[%d] listen: %s is not this node's netstack address %s (write \":%d\")", c.Source, i, listen.Addr(), d.side.addr, listen.Port())))
			}
			ln, err = stack.ListenTCPAddrPort(listen)
			to := f.To.String()
			dial = func(ctx context.Context) (net.Conn, error) {
				var dl net.Dialer
				return dl.DialContext(ctx, "tcp4", to)
			}
		} else {
			ln, err = net.Listen("tcp4", f.Listen.String())
			to := f.To
			dial = func(ctx context.Context) (net.Conn, error) { return stack.DialContextTCPAddrPort(ctx, to) }
		}
		if err != nil {
			return fail(fmt.Errorf("netstack mode: forward[%d] listener on %s: %w", i, f.Listen, err))
		}
		serve(fmt.Sprintf("forward[%d]", i), func() error { return forward.Serve(ctx, ln, dial, d.log) })
		d.log.Info("port forward", "listen", ln.Addr().String(), "to", f.To, "reverse", f.Reverse)
	}
	return stop, nil
}
