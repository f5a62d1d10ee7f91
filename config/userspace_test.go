package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
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
	tests = append(tests, socks5ErrorCases(t)...)
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

// socks5ErrorCases are the [netstack] SOCKS5 authentication errors; the
// password files they name live in a temporary directory.
func socks5ErrorCases(t *testing.T) []struct {
	name     string
	src      string
	wantLine int
	wantKey  string
	wantMsg  string
} {
	dir := t.TempDir()
	file := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	good := file("good", "secret\n")
	empty := file("empty", "\n")
	twoLines := file("two-lines", "secret\nmore\n")
	long := file("long", strings.Repeat("p", 256))
	netstack := func(lines ...string) string { return "[netstack]\n" + strings.Join(lines, "\n") + "\n" }
	return []struct {
		name     string
		src      string
		wantLine int
		wantKey  string
		wantMsg  string
	}{
		{"an open listener off loopback", netstack(`socks5 = "0.0.0.0:1080"`), 2, "[netstack] socks5", "set socks5User and socks5PasswordFile, or socks5AllowUnauthenticated = true"},
		{"an open listener on a host address", netstack(`socks5 = "198.18.1.10:1080"`), 2, "[netstack] socks5", "not a loopback address"},
		{"a user without a password file", netstack(`socks5 = "127.0.0.1:1080"`, `socks5User = "alice"`), 3, "[netstack] socks5User", "without socks5PasswordFile"},
		{"a password file without a user", netstack(`socks5 = "127.0.0.1:1080"`, `socks5PasswordFile = "`+good+`"`), 3, "[netstack] socks5PasswordFile", "without socks5User"},
		{"credentials without a listener", netstack(`socks5User = "alice"`, `socks5PasswordFile = "`+good+`"`), 2, "[netstack] socks5User", "no SOCKS5 listener"},
		{"allowUnauthenticated without a listener", netstack(`socks5AllowUnauthenticated = true`), 2, "[netstack] socks5AllowUnauthenticated", "no SOCKS5 listener"},
		{"credentials and allowUnauthenticated", netstack(`socks5 = "0.0.0.0:1080"`, `socks5User = "alice"`, `socks5PasswordFile = "`+good+`"`, `socks5AllowUnauthenticated = true`),
			5, "[netstack] socks5AllowUnauthenticated", "remove one of the two"},
		{"a missing password file", netstack(`socks5 = "127.0.0.1:1080"`, `socks5User = "alice"`, `socks5PasswordFile = "`+filepath.Join(dir, "none")+`"`), 4, "[netstack] socks5PasswordFile", "no such file"},
		{"an empty password", netstack(`socks5 = "127.0.0.1:1080"`, `socks5User = "alice"`, `socks5PasswordFile = "`+empty+`"`), 4, "[netstack] socks5PasswordFile", "is empty"},
		{"a password of two lines", netstack(`socks5 = "127.0.0.1:1080"`, `socks5User = "alice"`, `socks5PasswordFile = "`+twoLines+`"`), 4, "[netstack] socks5PasswordFile", "more than one line"},
		{"a password longer than SOCKS5 carries", netstack(`socks5 = "127.0.0.1:1080"`, `socks5User = "alice"`, `socks5PasswordFile = "`+long+`"`), 4, "[netstack] socks5PasswordFile", "256 bytes long"},
		{"a user longer than SOCKS5 carries", netstack(`socks5 = "127.0.0.1:1080"`, `socks5User = "`+strings.Repeat("u", 256)+`"`, `socks5PasswordFile = "`+good+`"`), 3, "[netstack] socks5User", "256 bytes long"},
		{"a typo in the user key", netstack(`socks5 = "127.0.0.1:1080"`, `socks5Usr = "alice"`), 3, "[netstack]", `did you mean "socks5User"?`},
	}
}

func TestSOCKS5Settings(t *testing.T) {
	dir := t.TempDir()
	password := filepath.Join(dir, "socks5.password")
	if err := os.WriteFile(password, []byte("correct horse\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, src          string
		listen, user, pass string
	}{
		{"loopback without credentials", "socks5 = \"127.0.0.1:1080\"", "127.0.0.1:1080", "", ""},
		{"any address, open on purpose", "socks5 = \"0.0.0.0:1080\"\nsocks5AllowUnauthenticated = true", "0.0.0.0:1080", "", ""},
		{"any address with credentials", "socks5 = \"0.0.0.0:1080\"\nsocks5User = \"alice\"\nsocks5PasswordFile = \"" + password + "\"", "0.0.0.0:1080", "alice", "correct horse"},
		{"a password file relative to the cluster file", "socks5 = \"127.0.0.1:1080\"\nsocks5User = \"alice\"\nsocks5PasswordFile = \"socks5.password\"", "127.0.0.1:1080", "alice", "correct horse"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(filepath.Join(dir, "cluster.toml"), []byte("[netstack]\n"+tc.src+"\n"+userspacePools+minimalNodes))
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Netstack.SOCKS5.String(); got != tc.listen {
				t.Errorf("socks5 = %s, want %s", got, tc.listen)
			}
			if c.Netstack.SOCKS5User != tc.user || c.Netstack.SOCKS5Password != tc.pass {
				t.Errorf("credentials %q/%q, want %q/%q", c.Netstack.SOCKS5User, c.Netstack.SOCKS5Password, tc.user, tc.pass)
			}
		})
	}
}
