// Package socks5 is a SOCKS version 5 server (RFC 1928) with the CONNECT
// command, without authentication or with a username and password (RFC
// 1929): what an application on the host needs to
// reach the overlay through netstack mode (curl --socks5, ssh -o
// ProxyCommand='nc -X 5 ...', browsers). BIND and UDP ASSOCIATE are refused
// with "command not supported". Destinations are IP addresses; a domain
// name is accepted only when it is an IP literal, because the netstack has
// no resolver for overlay names.
package socks5

import (
	"context"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/overlayd/overlayd/forward"
)

// Protocol constants of RFC 1928.
const (
	version5 = 0x05

	methodNoAuth       = 0x00
	methodUserPass     = 0x02
	methodNoAcceptable = 0xff

	// RFC 1929: the username/password subnegotiation has a version of its
	// own, and any status but 0 is a failure after which the server closes.
	userPassVersion = 0x01
	userPassOK      = 0x00
	userPassFailed  = 0x01

	cmdConnect      = 0x01
	cmdBind         = 0x02
	cmdUDPAssociate = 0x03

	atypIPv4   = 0x01
	atypDomain = 0x03
	atypIPv6   = 0x04
)

// Reply is the REP field of a reply.
type Reply byte

// The replies of RFC 1928 section 6.
const (
	Succeeded               Reply = 0x00
	GeneralFailure          Reply = 0x01
	NotAllowed              Reply = 0x02
	NetworkUnreachable      Reply = 0x03
	HostUnreachable         Reply = 0x04
	ConnectionRefused       Reply = 0x05
	TTLExpired              Reply = 0x06
	CommandNotSupported     Reply = 0x07
	AddressTypeNotSupported Reply = 0x08
)

// DialFunc opens the TCP connection a CONNECT asks for.
type DialFunc func(ctx context.Context, dst netip.AddrPort) (net.Conn, error)

// Credentials are the username and password (RFC 1929) a client must give.
// Each is 1 to 255 bytes, what the protocol's length byte can carry.
type Credentials struct {
	User, Password string
}

// Server answers SOCKS5 clients.
type Server struct {
	Dial   DialFunc
	Logger *slog.Logger
	// Auth, when set, is the one username and password accepted; clients
	// that do not offer username/password are refused. nil: no
	// authentication, for listeners only trusted users reach.
	Auth *Credentials
	// HandshakeTimeout bounds the greeting and request; 0: 10 s.
	HandshakeTimeout time.Duration
}

// Serve accepts clients on ln until it is closed or ctx ends; it returns
// nil then, after the connections it carries have ended.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	err := forward.Accept(ctx, ln, func(c net.Conn) {
		if err := s.ServeConn(ctx, c); err != nil {
			s.logger().Debug("socks5: client refused", "client", c.RemoteAddr().String(), "err", err)
		}
	})
	if err != nil {
		return fmt.Errorf("socks5: accept: %w", err)
	}
	return nil
}

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// ServeConn runs the protocol on one client connection and, after a
// successful CONNECT, carries the data until both sides are done. The error
// says why a client was refused; the caller closes c.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) error {
	timeout := s.HandshakeTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	if err := s.negotiate(c); err != nil {
		return err
	}
	dst, rep, err := readRequest(c)
	if err != nil {
		if rep != Succeeded {
			_ = writeReply(c, rep, netip.AddrPort{})
		}
		return err
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	out, err := s.Dial(dctx, dst)
	cancel()
	if err != nil {
		_ = writeReply(c, ReplyFor(err), netip.AddrPort{})
		return fmt.Errorf("connect to %s: %w", dst, err)
	}
	defer out.Close()
	var bound netip.AddrPort
	if a, ok := out.LocalAddr().(*net.TCPAddr); ok {
		bound = a.AddrPort()
	}
	if err := writeReply(c, Succeeded, bound); err != nil {
		return err
	}
	_ = c.SetDeadline(time.Time{})
	forward.Pipe(ctx, c, out)
	return nil
}

// negotiate reads the client's greeting and picks the one method served:
// username/password when s.Auth is set, else "no authentication". A client
// that does not offer it gets "no acceptable methods": with Auth set, a
// client offering only "no authentication" is refused, never let through.
func (s *Server) negotiate(c net.Conn) error {
	var hdr [2]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	if hdr[0] != version5 {
		return fmt.Errorf("greeting: version %d, want 5", hdr[0])
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(c, methods); err != nil {
		return fmt.Errorf("greeting: methods: %w", err)
	}
	want, name := byte(methodNoAuth), "no authentication"
	if s.Auth != nil {
		want, name = methodUserPass, "username/password"
	}
	if !slices.Contains(methods, want) {
		_, _ = c.Write([]byte{version5, methodNoAcceptable})
		return fmt.Errorf("greeting: the client does not offer %s (methods %x)", name, methods)
	}
	if _, err := c.Write([]byte{version5, want}); err != nil {
		return fmt.Errorf("method selection: %w", err)
	}
	if s.Auth == nil {
		return nil
	}
	return s.authenticate(c)
}

// authenticate runs RFC 1929's subnegotiation:
//
//	+----+------+----------+------+----------+
//	|VER | ULEN |  UNAME   | PLEN |  PASSWD  |
//	+----+------+----------+------+----------+
//	| 1  |  1   | 1 to 255 |  1   | 1 to 255 |
//	+----+------+----------+------+----------+
//
// answered with VER and a STATUS, 0 for success.
func (s *Server) authenticate(c net.Conn) error {
	var hdr [2]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return fmt.Errorf("authentication: %w", err)
	}
	if hdr[0] != userPassVersion {
		_, _ = c.Write([]byte{userPassVersion, userPassFailed})
		return fmt.Errorf("authentication: version %d, want %d", hdr[0], userPassVersion)
	}
	user := make([]byte, hdr[1])
	if _, err := io.ReadFull(c, user); err != nil {
		return fmt.Errorf("authentication: username: %w", err)
	}
	var plen [1]byte
	if _, err := io.ReadFull(c, plen[:]); err != nil {
		return fmt.Errorf("authentication: password: %w", err)
	}
	password := make([]byte, plen[0])
	if _, err := io.ReadFull(c, password); err != nil {
		return fmt.Errorf("authentication: password: %w", err)
	}
	// Both compared in constant time, and both always, so the time taken
	// tells neither whether the user was right nor how much of either.
	userOK := subtle.ConstantTimeCompare(user, []byte(s.Auth.User))
	passOK := subtle.ConstantTimeCompare(password, []byte(s.Auth.Password))
	if userOK&passOK != 1 {
		_, _ = c.Write([]byte{userPassVersion, userPassFailed})
		return fmt.Errorf("authentication: wrong username or password for user %q", user)
	}
	if _, err := c.Write([]byte{userPassVersion, userPassOK}); err != nil {
		return fmt.Errorf("authentication: %w", err)
	}
	return nil
}

// readRequest reads a request; a refused request comes with the reply to
// send (Succeeded when the connection itself failed and none can be sent).
func readRequest(c net.Conn) (netip.AddrPort, Reply, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return netip.AddrPort{}, Succeeded, fmt.Errorf("request: %w", err)
	}
	if hdr[0] != version5 {
		return netip.AddrPort{}, GeneralFailure, fmt.Errorf("request: version %d, want 5", hdr[0])
	}
	var addr netip.Addr
	switch hdr[3] {
	case atypIPv4:
		var b [4]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return netip.AddrPort{}, Succeeded, fmt.Errorf("request: address: %w", err)
		}
		addr = netip.AddrFrom4(b)
	case atypIPv6:
		var b [16]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return netip.AddrPort{}, Succeeded, fmt.Errorf("request: address: %w", err)
		}
		addr = netip.AddrFrom16(b)
	case atypDomain:
		var n [1]byte
		if _, err := io.ReadFull(c, n[:]); err != nil {
			return netip.AddrPort{}, Succeeded, fmt.Errorf("request: name: %w", err)
		}
		name := make([]byte, n[0])
		if _, err := io.ReadFull(c, name); err != nil {
			return netip.AddrPort{}, Succeeded, fmt.Errorf("request: name: %w", err)
		}
		var err error
		if addr, err = netip.ParseAddr(string(name)); err != nil {
			// Read the port anyway, so the reply is not mistaken for garbage.
			_, _ = io.ReadFull(c, make([]byte, 2))
			return netip.AddrPort{}, AddressTypeNotSupported, fmt.Errorf("request: %q: only IP addresses are served (no resolver for overlay names)", name)
		}
	default:
		return netip.AddrPort{}, AddressTypeNotSupported, fmt.Errorf("request: address type %d", hdr[3])
	}
	var port [2]byte
	if _, err := io.ReadFull(c, port[:]); err != nil {
		return netip.AddrPort{}, Succeeded, fmt.Errorf("request: port: %w", err)
	}
	dst := netip.AddrPortFrom(addr.Unmap(), binary.BigEndian.Uint16(port[:]))
	switch hdr[1] {
	case cmdConnect:
		return dst, Succeeded, nil
	case cmdBind, cmdUDPAssociate:
		return netip.AddrPort{}, CommandNotSupported, fmt.Errorf("request: command %d: only CONNECT is served", hdr[1])
	}
	return netip.AddrPort{}, CommandNotSupported, fmt.Errorf("request: unknown command %d", hdr[1])
}

// writeReply sends a reply with the bound address (0.0.0.0:0 when unknown).
func writeReply(c net.Conn, rep Reply, bound netip.AddrPort) error {
	b := []byte{version5, byte(rep), 0}
	if a := bound.Addr(); a.Is6() && !a.Is4In6() {
		b = append(b, atypIPv6)
		b = append(b, a.AsSlice()...)
	} else {
		b = append(b, atypIPv4)
		a4 := [4]byte{}
		if a.IsValid() {
			a4 = a.Unmap().As4()
		}
		b = append(b, a4[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, bound.Port())
	_, err := c.Write(b)
	return err
}

// ReplyFor maps a dial error to the reply that says the most about it. The
// netstack's errors are plain strings (gVisor's tcpip errors), so they are
// recognised by their text as well as by errno.
func ReplyFor(err error) Reply {
	msg := strings.ToLower(err.Error())
	switch {
	case errors.Is(err, syscall.ECONNREFUSED), strings.Contains(msg, "refused"):
		return ConnectionRefused
	case errors.Is(err, syscall.ENETUNREACH), strings.Contains(msg, "network is unreachable"):
		return NetworkUnreachable
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, context.DeadlineExceeded),
		strings.Contains(msg, "no route to host"), strings.Contains(msg, "host is unreachable"),
		strings.Contains(msg, "timed out"), strings.Contains(msg, "timeout"):
		return HostUnreachable
	}
	return GeneralFailure
}
