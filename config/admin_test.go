package config

import (
	"errors"
	"strings"
	"testing"
)

func TestAdminSocket(t *testing.T) {
	tests := []struct {
		name    string
		section string // the [admin] section's keys
		euid    int
		xdg     string
		want    string
		pprof   bool
	}{
		{name: "root's default", euid: 0, want: "/run/overlayd/node-a.sock"},
		{name: "root ignores XDG_RUNTIME_DIR", euid: 0, xdg: "/run/user/0", want: "/run/overlayd/node-a.sock"},
		{name: "a user's default is in XDG_RUNTIME_DIR", euid: 1000, xdg: "/run/user/1000", want: "/run/user/1000/overlayd/node-a.sock"},
		{name: "a user without XDG_RUNTIME_DIR", euid: 1000, want: "/run/overlayd/node-a.sock"},
		{name: "a path per node", section: `socket = "/var/run/ovl/{node}.sock"`, euid: 1000, xdg: "/run/user/1000", want: "/var/run/ovl/node-a.sock"},
		{name: "one path for all", section: `socket = "/tmp/overlayd.sock"`, want: "/tmp/overlayd.sock"},
		{name: "relative to the cluster file", section: `socket = "run/{node}.sock"`, want: "/etc/overlayd/run/node-a.sock"},
		{name: "pprof on", section: "pprof = true", want: "/run/overlayd/node-a.sock", pprof: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("/etc/overlayd/cluster.toml", []byte("[admin]\n"+tc.section+"\n"+userspacePools+minimalNodes))
			if err != nil {
				t.Fatal(err)
			}
			if got := adminSocket(c.Admin.Socket, "node-a", tc.euid, tc.xdg); got != tc.want {
				t.Errorf("socket %q, want %q", got, tc.want)
			}
			if c.Admin.PProf != tc.pprof {
				t.Errorf("pprof %v, want %v", c.Admin.PProf, tc.pprof)
			}
		})
	}
	// Callers without a cluster file (a client given only --node) get the
	// default from a nil Cluster.
	if got, want := (*Cluster)(nil).AdminSocket("node-b"), (&Cluster{}).AdminSocket("node-b"); got != want || !strings.HasSuffix(got, "/overlayd/node-b.sock") {
		t.Errorf("a nil Cluster's socket %q, want the default %q", got, want)
	}
}

func TestAdminErrors(t *testing.T) {
	tests := []struct {
		name, section    string
		wantLine         int
		wantKey, wantMsg string
	}{
		{"a directory", `socket = "/run/overlayd/"`, 2, "[admin] socket", "not a file path"},
		{"longer than a socket path can be", `socket = "/` + strings.Repeat("d", 120) + `.sock"`, 2, "[admin] socket", "at most 107"},
		{"pprof as a string", `pprof = "yes"`, 2, "pprof", "wrong type"},
		{"a typo", `sockets = "/run/x.sock"`, 2, "[admin]", `did you mean "socket"?`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("cluster.toml", []byte("[admin]\n"+tc.section+"\n"+userspacePools+minimalNodes))
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("want a *config.Error, got %v", err)
			}
			if ce.Line != tc.wantLine || !strings.Contains(ce.Key, tc.wantKey) || !strings.Contains(ce.Msg, tc.wantMsg) {
				t.Errorf("got %v (line %d, key %q), want line %d, key %q, message with %q", err, ce.Line, ce.Key, tc.wantLine, tc.wantKey, tc.wantMsg)
			}
		})
	}
}
