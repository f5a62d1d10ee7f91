package config

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

const userspacePools = `
[[pools]]
name = "p"
cidr = "192.168.0.0/16"
vxlanMode = "Always"
`

func TestUserspaceSettings(t *testing.T) {
	tests := []struct {
		name     string
		src      string
		mode     string
		fd       int
		socks5   string
		forwards []Forward
	}{
		{name: "defaults: a kernel TUN made by overlayd", src: "", mode: ModeTUN, fd: -1},
		{name: "handed-over TUN", src: "[tunnel]\nfd = 3\n", mode: ModeTUN, fd: 3},
		{
			name: "netstack with SOCKS5 and forwards both ways",
			src: `[tunnel]
mode = "netstack"
[netstack]
socks5 = "127.0.0.1:1080"
[[forward]]
listen = "127.0.0.1:8080"
to = "192.168.0.69:80"
[[forward]]
listen = ":80"
to = "127.0.0.1:8000"
reverse = true
`,
			mode: ModeNetstack, fd: -1, socks5: "127.0.0.1:1080",
			forwards: []Forward{
				{Listen: netip.MustParseAddrPort("127.0.0.1:8080"), To: netip.MustParseAddrPort("192.168.0.69:80")},
				{Listen: netip.MustParseAddrPort("0.0.0.0:80"), To: netip.MustParseAddrPort("127.0.0.1:8000"), Reverse: true},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("cluster.toml", []byte(tc.src+userspacePools+minimalNodes))
			if err != nil {
				t.Fatal(err)
			}
			if c.Tunnel.Mode != tc.mode || c.Tunnel.FD != tc.fd {
				t.Errorf("tunnel = %+v, want mode %q fd %d", c.Tunnel, tc.mode, tc.fd)
			}
			var socks5 string
			if c.Netstack.SOCKS5.IsValid() {
				socks5 = c.Netstack.SOCKS5.String()
			}
			if socks5 != tc.socks5 {
				t.Errorf("socks5 = %q, want %q", socks5, tc.socks5)
			}
			if !reflect.DeepEqual(c.Forwards, tc.forwards) {
				t.Errorf("forwards = %+v, want %+v", c.Forwards, tc.forwards)
			}
		})
	}
}

func TestUserspaceErrors(t *testing.T) {
	tests := []struct {
		name     string
		src      string
		wantLine int
		wantKey  string
		wantMsg  string
	}{
		{"unknown mode", "[tunnel]\nmode = \"kernel\"\n", 2, "[tunnel] mode", `allowed values are "tun"`},
		{"mode with the wrong case", "[tunnel]\nmode = \"Netstack\"\n", 2, "[tunnel] mode", `invalid value "Netstack"`},
		{"stdio as the TUN fd", "[tunnel]\nfd = 1\n", 2, "[tunnel] fd", "want 3 or more"},
		{"fd with netstack", "[tunnel]\nmode = \"netstack\"\nfd = 3\n", 3, "[tunnel] fd", "no device"},
		{"typo in tunnel", "[tunnel]\nmod = \"netstack\"\n", 2, "[tunnel]", `did you mean "mode"?`},
		{"socks5 without a port", "[netstack]\nsocks5 = \"127.0.0.1\"\n", 2, "[netstack] socks5", "not an IPv4 address:port"},
		{"forward without to", "[[forward]]\nlisten = \"127.0.0.1:8080\"\n", 1, "forward[0] to", "missing"},
		{"forward listen without an address", "[[forward]]\nlisten = \":8080\"\nto = \"192.168.0.5:80\"\n", 2, "forward[0] listen", "host IPv4 address:port"},
		{"reverse listen not a port", "[[forward]]\nlisten = \":http\"\nto = \"127.0.0.1:80\"\nreverse = true\n", 2, "forward[0] listen", "not a port on the netstack"},
		{"forward to a name", "[[forward]]\nlisten = \"127.0.0.1:8080\"\nto = \"web:80\"\n", 3, "forward[0] to", "overlay IPv4 address:port"},
		{
			"the same listener twice",
			"[[forward]]\nlisten = \"127.0.0.1:8080\"\nto = \"192.168.0.5:80\"\n[[forward]]\nlisten = \"127.0.0.1:8080\"\nto = \"192.168.0.6:80\"\n",
			5, "forward[1] listen", "already forwarded by forward[0]",
		},
		{"typo in a forward", "[[forward]]\nlisten = \"127.0.0.1:8080\"\nto = \"192.168.0.5:80\"\nrevers = true\n", 4, "forward[0]", `did you mean "reverse"?`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("cluster.toml", []byte(tc.src+userspacePools+minimalNodes))
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("want a *config.Error, got %v", err)
			}
			if ce.Line != tc.wantLine {
				t.Errorf("line = %d, want %d (%v)", ce.Line, tc.wantLine, err)
			}
			if !strings.Contains(ce.Key, tc.wantKey) {
				t.Errorf("key = %q, want it to contain %q", ce.Key, tc.wantKey)
			}
			if !strings.Contains(ce.Msg, tc.wantMsg) {
				t.Errorf("message = %q, want it to contain %q", ce.Msg, tc.wantMsg)
			}
		})
	}
}
