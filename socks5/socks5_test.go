package socks5

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/overlayd/overlayd/internal/testbed"
)

// echoServer is the destination every successful CONNECT reaches.
func echoServer(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	testbed.ServeEcho(ln)
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// startServer serves SOCKS5 on loopback; dial sees the requested
// destination and decides. It returns the listener's address.
func startServer(t *testing.T, dial DialFunc) string {
	t.Helper()
	return startServerWith(t, &Server{Dial: dial, HandshakeTimeout: 2 * time.Second})
}

// startServerWith serves SOCKS5 with srv on loopback.
func startServerWith(t *testing.T, srv *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String()
}

// greet dials the server at addr, sends greeting and checks that the
// server selects wantMethod; the connection closes when the test ends.
func greet(t *testing.T, addr string, greeting []byte, wantMethod byte) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp4", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(greeting); err != nil {
		t.Fatal(err)
	}
	var method [2]byte
	if _, err := io.ReadFull(c, method[:]); err != nil {
		t.Fatalf("method selection: %v", err)
	}
	if method != [2]byte{5, wantMethod} {
		t.Fatalf("method selection %x, want 05%02x", method, wantMethod)
	}
	return c
}

func TestServer(t *testing.T) {
	echo := echoServer(t)
	overlay := netip.MustParseAddrPort("192.168.0.69:80")
	dial := func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
		switch dst.Addr().String() {
		case "192.168.0.69", "fd00::69":
			var d net.Dialer
			return d.DialContext(ctx, "tcp4", echo.String())
		case "192.168.0.70":
			return nil, fmt.Errorf("connect tcp %s: %w", dst, syscall.ECONNREFUSED)
		case "192.168.0.71":
			return nil, errors.New("connect tcp 192.168.0.71:80: no route to host") // gVisor's text
		case "192.168.0.72":
			return nil, errors.New("connect tcp 192.168.0.72:80: network is unreachable")
		}
		return nil, errors.New("something else")
	}
	addr := startServer(t, dial)

	ipv4 := func(a string, port uint16) []byte {
		ap := netip.AddrPortFrom(netip.MustParseAddr(a), port)
		b := append([]byte{atypIPv4}, ap.Addr().AsSlice()...)
		return append(b, byte(port>>8), byte(port))
	}
	domain := func(name string, port uint16) []byte {
		b := append([]byte{atypDomain, byte(len(name))}, name...)
		return append(b, byte(port>>8), byte(port))
	}
	ipv6 := append(append([]byte{atypIPv6}, netip.MustParseAddr("fd00::69").AsSlice()...), 0, 80)
	tests := []struct {
		name       string
		greeting   []byte
		wantMethod byte
		request    []byte // after the greeting; nil: none is sent
		wantReply  Reply
		echoes     bool // the connection then carries data
	}{
		{"connect to an IPv4 address", []byte{5, 1, 0}, 0, append([]byte{5, cmdConnect, 0}, ipv4(overlay.Addr().String(), 80)...), Succeeded, true},
		{"no authentication among other methods", []byte{5, 3, 2, 1, 0}, 0, append([]byte{5, cmdConnect, 0}, ipv4("192.168.0.69", 80)...), Succeeded, true},
		{"connect to an IPv6 address", []byte{5, 1, 0}, 0, append([]byte{5, cmdConnect, 0}, ipv6...), Succeeded, true},
		{"a domain that is an IP literal", []byte{5, 1, 0}, 0, append([]byte{5, cmdConnect, 0}, domain("192.168.0.69", 80)...), Succeeded, true},
		{"a domain name", []byte{5, 1, 0}, 0, append([]byte{5, cmdConnect, 0}, domain("web.overlay", 80)...), AddressTypeNotSupported, false},
		{"username/password only", []byte{5, 1, 2}, methodNoAcceptable, nil, 0, false},
		{"BIND", []byte{5, 1, 0}, 0, append([]byte{5, cmdBind, 0}, ipv4("192.168.0.69", 80)...), CommandNotSupported, false},
		{"UDP ASSOCIATE", []byte{5, 1, 0}, 0, append([]byte{5, cmdUDPAssociate, 0}, ipv4("0.0.0.0", 0)...), CommandNotSupported, false},
		{"unknown address type", []byte{5, 1, 0}, 0, []byte{5, cmdConnect, 0, 9, 0, 0}, AddressTypeNotSupported, false},
		{"refused", []byte{5, 1, 0}, 0, append([]byte{5, cmdConnect, 0}, ipv4("192.168.0.70", 80)...), ConnectionRefused, false},
		{"no route to host", []byte{5, 1, 0}, 0, append([]byte{5, cmdConnect, 0}, ipv4("192.168.0.71", 80)...), HostUnreachable, false},
		{"network unreachable", []byte{5, 1, 0}, 0, append([]byte{5, cmdConnect, 0}, ipv4("192.168.0.72", 80)...), NetworkUnreachable, false},
		{"any other failure", []byte{5, 1, 0}, 0, append([]byte{5, cmdConnect, 0}, ipv4("192.168.0.73", 80)...), GeneralFailure, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := greet(t, addr, tc.greeting, tc.wantMethod)
			if tc.request == nil {
				if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
					t.Errorf("the server kept the connection open after refusing every method")
				}
				return
			}
			if _, err := c.Write(tc.request); err != nil {
				t.Fatal(err)
			}
			var reply [10]byte
			if _, err := io.ReadFull(c, reply[:]); err != nil {
				t.Fatalf("reply: %v", err)
			}
			if reply[0] != 5 || Reply(reply[1]) != tc.wantReply || reply[3] != atypIPv4 {
				t.Fatalf("reply %x, want version 5, REP %02x, an IPv4 bound address", reply, tc.wantReply)
			}
			if !tc.echoes {
				return
			}
			if bound := netip.AddrFrom4([4]byte(reply[4:8])); bound != netip.MustParseAddr("127.0.0.1") {
				t.Errorf("bound address %s, want the outgoing connection's 127.0.0.1", bound)
			}
			msg := []byte("through the proxy and back")
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			// Half-close: the echo must still come back in full.
			if err := c.(*net.TCPConn).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, msg) {
				t.Errorf("echo %q (%v), want %q", got, err, msg)
			}
		})
	}
}

func TestReplyFor(t *testing.T) {
	tests := []struct {
		err  error
		want Reply
	}{
		{syscall.ECONNREFUSED, ConnectionRefused},
		{errors.New("connect tcp 1.2.3.4:80: connection was refused"), ConnectionRefused},
		{syscall.EHOSTUNREACH, HostUnreachable},
		{context.DeadlineExceeded, HostUnreachable},
		{errors.New("operation timed out"), HostUnreachable},
		{syscall.ENETUNREACH, NetworkUnreachable},
		{io.ErrUnexpectedEOF, GeneralFailure},
	}
	for _, tc := range tests {
		t.Run(tc.err.Error(), func(t *testing.T) {
			if got := ReplyFor(tc.err); got != tc.want {
				t.Errorf("ReplyFor(%v) = %#x, want %#x", tc.err, got, tc.want)
			}
		})
	}
}

func TestUsernamePassword(t *testing.T) {
	echo := echoServer(t)
	dial := func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp4", echo.String())
	}
	const user, password = "alice", "correct horse"
	addr := startServerWith(t, &Server{Dial: dial, HandshakeTimeout: 2 * time.Second, Auth: &Credentials{User: user, Password: password}})

	// userPass is RFC 1929's request; it trusts its caller with lengths.
	userPass := func(version byte, u, p string) []byte {
		b := append([]byte{version, byte(len(u))}, u...)
		return append(append(b, byte(len(p))), p...)
	}
	long := strings.Repeat("a", 255)
	tests := []struct {
		name       string
		greeting   []byte
		wantMethod byte
		auth       []byte // after the method selection; nil: none is sent
		wantStatus int    // -1: the server closes without a status
	}{
		{"right credentials", []byte{5, 1, methodUserPass}, methodUserPass, userPass(1, user, password), userPassOK},
		{"right credentials among other methods", []byte{5, 2, methodNoAuth, methodUserPass}, methodUserPass, userPass(1, user, password), userPassOK},
		{"wrong password", []byte{5, 1, methodUserPass}, methodUserPass, userPass(1, user, "wrong horse"), userPassFailed},
		{"the password as a prefix of the right one", []byte{5, 1, methodUserPass}, methodUserPass, userPass(1, user, "correct"), userPassFailed},
		{"wrong user", []byte{5, 1, methodUserPass}, methodUserPass, userPass(1, "mallory", password), userPassFailed},
		{"empty username and password", []byte{5, 1, methodUserPass}, methodUserPass, userPass(1, "", ""), userPassFailed},
		{"the longest username the protocol carries", []byte{5, 1, methodUserPass}, methodUserPass, userPass(1, long, password), userPassFailed},
		{"the longest password the protocol carries", []byte{5, 1, methodUserPass}, methodUserPass, userPass(1, user, long), userPassFailed},
		// The length byte says more than is sent: the server waits for the
		// rest until its handshake timeout, then closes without a status.
		{"a username longer than what is sent", []byte{5, 1, methodUserPass}, methodUserPass, []byte{1, 200, 'a', 'l', 'i'}, -1},
		{"a password longer than what is sent", []byte{5, 1, methodUserPass}, methodUserPass, append(userPass(1, user, "")[:len(user)+2], 255, 'x'), -1},
		{"no-auth client against an auth server", []byte{5, 1, methodNoAuth}, methodNoAcceptable, nil, -1},
		{"subnegotiation version 5 instead of 1", []byte{5, 1, methodUserPass}, methodUserPass, userPass(5, user, password), userPassFailed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := greet(t, addr, tc.greeting, tc.wantMethod)
			if tc.auth != nil {
				if _, err := c.Write(tc.auth); err != nil {
					t.Fatal(err)
				}
			}
			if tc.wantStatus < 0 {
				if n, err := c.Read(make([]byte, 2)); n != 0 || err == nil {
					t.Fatalf("the server answered (%d bytes), want it to close without a status", n)
				}
				return
			}
			var status [2]byte
			if _, err := io.ReadFull(c, status[:]); err != nil {
				t.Fatalf("status: %v", err)
			}
			if status != [2]byte{userPassVersion, byte(tc.wantStatus)} {
				t.Fatalf("status %x, want 01%02x", status, tc.wantStatus)
			}
			if tc.wantStatus != userPassOK {
				// RFC 1929: after a failure the server must close.
				if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
					t.Errorf("the server kept the connection open after a failed authentication")
				}
				return
			}
			req := append([]byte{5, cmdConnect, 0, atypIPv4, 192, 168, 0, 69}, 0, 80)
			if _, err := c.Write(req); err != nil {
				t.Fatal(err)
			}
			var reply [10]byte
			if _, err := io.ReadFull(c, reply[:]); err != nil || reply[1] != byte(Succeeded) {
				t.Fatalf("reply %x (%v), want success", reply, err)
			}
			msg := []byte("authenticated")
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
				t.Errorf("echo %q (%v), want %q", got, err, msg)
			}
		})
	}
}

// TestGreetingVersion: a greeting that is not SOCKS5 gets no answer, with
// or without authentication.
func TestGreetingVersion(t *testing.T) {
	for _, tc := range []struct {
		name string
		auth *Credentials
	}{{"without authentication", nil}, {"with authentication", &Credentials{User: "u", Password: "p"}}} {
		t.Run(tc.name, func(t *testing.T) {
			addr := startServerWith(t, &Server{HandshakeTimeout: 2 * time.Second, Auth: tc.auth,
				Dial: func(context.Context, netip.AddrPort) (net.Conn, error) { return nil, errors.New("unused") }})
			c, err := net.DialTimeout("tcp4", addr, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write([]byte{4, 1, methodNoAuth, methodUserPass}); err != nil {
				t.Fatal(err)
			}
			if n, err := c.Read(make([]byte, 2)); n != 0 || err == nil {
				t.Errorf("the server answered a SOCKS4 greeting (%d bytes)", n)
			}
		})
	}
}
