package forward

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/overlayd/overlayd/internal/testbed"
)

func TestServe(t *testing.T) {
	echo, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	testbed.ServeEcho(echo)
	tests := []struct {
		name string
		dial DialFunc
		want string // what the client reads back after sending "ping" and half-closing
	}{
		{"carried both ways, half-close passed on", func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp4", echo.Addr().String())
		}, "ping"},
		{"a failed dial closes the client's connection", func(context.Context) (net.Conn, error) {
			return nil, errors.New("no route to host")
		}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- Serve(ctx, ln, tc.dial, slog.New(slog.DiscardHandler)) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("Serve: %v", err)
				}
			}()
			c, err := net.Dial("tcp4", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = c.Write([]byte("ping"))
			_ = c.(*net.TCPConn).CloseWrite()
			got, _ := io.ReadAll(c)
			if !bytes.Equal(got, []byte(tc.want)) {
				t.Errorf("read back %q, want %q", got, tc.want)
			}
		})
	}
}
