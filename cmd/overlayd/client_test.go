package main

import (
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/overlayd/overlayd/daemon"
)

// TestClientFindsTheSocket runs the client commands in-process against a
// socket that answers, one nothing answers on and none at all: each error
// says whether overlayd runs for the node and names the path.
func TestClientFindsTheSocket(t *testing.T) {
	dir := t.TempDir()
	live := filepath.Join(dir, "live.sock")
	ln, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+daemon.APIStatus, func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(daemon.StatusReply{Node: "node-a"})
	})
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	stale := filepath.Join(dir, "stale.sock")
	sln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	sln.(*net.UnixListener).SetUnlinkOnClose(false)
	sln.Close()

	// A cluster file that puts node sockets in dir.
	cluster, err := os.ReadFile("../../examples/vxlan-always.toml")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "cluster.toml")
	if err := os.WriteFile(file, append([]byte("[admin]\nsocket = \""+dir+"/{node}.sock\"\n"), cluster...), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(live, filepath.Join(dir, "node-a.sock")); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		args     []string
		wantCode int
		want     []string // in stdout when wantCode is 0, else in stderr
	}{
		{"--admin-socket that answers", []string{"status", "--admin-socket", live}, 0, []string{"node node-a, running since"}},
		{"--node through --config's [admin] socket", []string{"status", "--node", "node-a", "--config", file}, 0, []string{"node node-a, running since"}},
		{"a node with no socket", []string{"status", "--node", "node-b", "--config", file}, exitFailure,
			[]string{`overlayd is not running for node "node-b"`, filepath.Join(dir, "node-b.sock")}},
		{"--admin-socket where there is none", []string{"routes", "--admin-socket", filepath.Join(dir, "none.sock")}, exitFailure,
			[]string{"overlayd is not running", "no admin socket at " + filepath.Join(dir, "none.sock")}},
		{"a stale socket", []string{"nat", "--admin-socket", stale}, exitFailure,
			[]string{"overlayd is not running", "nothing answers on its admin socket " + stale}},
		{"a path the API does not serve", []string{"reload", "--admin-socket", live}, exitFailure, []string{"POST " + daemon.APIReload}},
		{"a bad cluster file", []string{"status", "--node", "node-a", "--config", filepath.Join(dir, "missing.toml")}, exitBadInput, []string{"missing.toml"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := run(t, tc.args...)
			if code != tc.wantCode {
				t.Fatalf("exit %d, want %d; stdout %q, stderr %q", code, tc.wantCode, out, errOut)
			}
			got := errOut
			if code == 0 {
				got = out
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("output lacks %q:\n%s", w, got)
				}
			}
		})
	}
}
