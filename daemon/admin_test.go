package daemon

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/overlayd/overlayd/kernel"
	"github.com/overlayd/overlayd/nat"
	"github.com/overlayd/overlayd/plan"
)

// fakeAPI answers the admin API with fixed replies and counts reloads.
type fakeAPI struct {
	reloads atomic.Int64
}

func (f *fakeAPI) api(pprof bool) *adminAPI {
	return &adminAPI{
		plan: func() *plan.Plan { return &plan.Plan{Node: "node-a"} },
		routes: func() (RoutesReply, error) {
			return RoutesReply{Kernel: []string{"192.168.0.64/26 via 198.18.1.11 dev ovl0 proto 211"}}, nil
		},
		status: func() StatusReply { return StatusReply{Node: "node-a"} },
		nat:    func() NATReply { return NATReply{Flows: []nat.Flow{}} },
		reload: func() (kernel.Changes, error) {
			f.reloads.Add(1)
			return nil, nil
		},
		pprof: pprof,
		log:   slog.New(slog.DiscardHandler),
	}
}

// serveAdminSocket serves api on a socket in a new directory of dir and
// returns the socket's path.
func serveAdminSocket(t *testing.T, dir string, api *adminAPI) string {
	t.Helper()
	path := filepath.Join(dir, "run", "node-a.sock")
	s, err := listenAdmin(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := serveHTTP(s.Listener(), api.handler(), "admin API", slog.New(slog.DiscardHandler))
	t.Cleanup(func() {
		srv.Close()
		s.Close()
	})
	return path
}

func TestMetricsListenerServesOnlyMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "overlayd_test_total", Help: "A counter to find."}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := serveHTTP(ln, metricsHandler(reg), "metrics", slog.New(slog.DiscardHandler))
	defer srv.Close()
	base := "http://" + ln.Addr().String()
	client := &http.Client{Timeout: 5 * time.Second}
	tests := []struct {
		method, path string
		want         int
	}{
		{http.MethodGet, "/metrics", http.StatusOK},
		{http.MethodPost, APIReload, http.StatusNotFound},
		{http.MethodGet, APINAT, http.StatusNotFound},
		{http.MethodGet, APIStatus, http.StatusNotFound},
		{http.MethodGet, APIPlan, http.StatusNotFound},
		{http.MethodGet, APIRoutes, http.StatusNotFound},
		{http.MethodGet, "/debug/pprof/", http.StatusNotFound},
		{http.MethodGet, "/debug/pprof/profile?seconds=1", http.StatusNotFound},
		{http.MethodGet, "/", http.StatusNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, base+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("%s %s: %s, want %d", tc.method, tc.path, resp.Status, tc.want)
			}
			if tc.want == http.StatusOK && !strings.Contains(string(body), "overlayd_test_total") {
				t.Errorf("/metrics lacks the registry's counter:\n%s", body)
			}
		})
	}
}

func TestAdminSocketServesAPI(t *testing.T) {
	for _, pprof := range []bool{false, true} {
		name := "pprof off"
		if pprof {
			name = "pprof on"
		}
		t.Run(name, func(t *testing.T) {
			var fake fakeAPI
			socket := serveAdminSocket(t, t.TempDir(), fake.api(pprof))
			client := AdminClient(socket, 5*time.Second)
			pprofStatus := http.StatusNotFound
			if pprof {
				pprofStatus = http.StatusOK
			}
			tests := []struct {
				method, path string
				want         int
				json         bool // the answer is JSON
			}{
				{http.MethodGet, APIStatus, http.StatusOK, true},
				{http.MethodGet, APIPlan, http.StatusOK, true},
				{http.MethodGet, APIRoutes, http.StatusOK, true},
				{http.MethodGet, APINAT, http.StatusOK, true},
				{http.MethodPost, APIReload, http.StatusOK, true},
				{http.MethodGet, APIReload, http.StatusMethodNotAllowed, false},
				{http.MethodPost, APIStatus, http.StatusMethodNotAllowed, false},
				{http.MethodGet, "/metrics", http.StatusNotFound, false},
				{http.MethodGet, "/debug/pprof/", pprofStatus, false},
			}
			for _, tc := range tests {
				req, err := http.NewRequest(tc.method, AdminURL+tc.path, nil)
				if err != nil {
					t.Fatal(err)
				}
				resp, err := client.Do(req)
				if err != nil {
					t.Fatalf("%s %s: %v", tc.method, tc.path, err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != tc.want {
					t.Errorf("%s %s: %s, want %d", tc.method, tc.path, resp.Status, tc.want)
				}
				if tc.json && !json.Valid(body) {
					t.Errorf("%s %s: not JSON: %q", tc.method, tc.path, body)
				}
			}
			if n := fake.reloads.Load(); n != 1 {
				t.Errorf("%d reloads, want the one POST's", n)
			}
		})
	}
}

func TestAdminSocketFiles(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	// With no umask, a socket made without care would be 0777.
	old := syscall.Umask(0)
	defer syscall.Umask(old)

	t.Run("a new directory is 0700, the socket 0600, removed at close with its lock", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "run", "overlayd")
		path := filepath.Join(dir, "node-a.sock")
		s, err := listenAdmin(path, log)
		if err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != adminDirMode {
			t.Errorf("directory %v (%v), want %v", fi.Mode().Perm(), err, adminDirMode)
		}
		if fi, err := os.Lstat(path); err != nil || fi.Mode().Perm() != adminSocketMode || fi.Mode().Type() != fs.ModeSocket {
			t.Errorf("socket %v (%v), want a socket %v", fi.Mode(), err, adminSocketMode)
		}
		s.Close()
		for _, p := range []string{path, path + ".lock"} {
			if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%s is still there after Close (%v)", p, err)
			}
		}
	})
	t.Run("an existing directory keeps its mode", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		s, err := listenAdmin(filepath.Join(dir, "node-a.sock"), log)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("directory %v (%v), want it left 0755", fi.Mode().Perm(), err)
		}
	})
	t.Run("a stale socket is replaced", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "node-a.sock")
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		// As after SIGKILL: the file stays, nothing listens.
		ln.(*net.UnixListener).SetUnlinkOnClose(false)
		ln.Close()
		s, err := listenAdmin(path, log)
		if err != nil {
			t.Fatalf("a stale socket stopped the start: %v", err)
		}
		s.Close()
	})
	t.Run("a second overlayd for the node is refused by the lock", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "node-a.sock")
		first, err := listenAdmin(path, log)
		if err != nil {
			t.Fatal(err)
		}
		defer first.Close()
		_, err = listenAdmin(path, log)
		if !errors.Is(err, errAlreadyRunning) || !strings.Contains(err.Error(), path) {
			t.Fatalf("second listen: %v, want %v naming %s", err, errAlreadyRunning, path)
		}
		if _, err := net.Dial("unix", path); err != nil {
			t.Errorf("the first one's socket is gone: %v", err)
		}
	})
	t.Run("a socket something answers on is not taken", func(t *testing.T) {
		// Someone that took no lock (an older overlayd) listens there.
		path := filepath.Join(t.TempDir(), "node-a.sock")
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		if _, err := listenAdmin(path, log); !errors.Is(err, errAlreadyRunning) {
			t.Fatalf("listen: %v, want %v", err, errAlreadyRunning)
		}
		if _, err := os.Lstat(path); err != nil {
			t.Errorf("the answering socket was removed: %v", err)
		}
	})
	t.Run("a file that is not a socket is left alone", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "node-a.sock")
		if err := os.WriteFile(path, []byte("mine"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := listenAdmin(path, log); err == nil || !strings.Contains(err.Error(), "not a socket") {
			t.Fatalf("listen: %v, want a refusal naming a non-socket", err)
		}
	})
	t.Run("a path too long for a socket", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), strings.Repeat("s", 110)+".sock")
		if _, err := listenAdmin(path, log); err == nil || !strings.Contains(err.Error(), "at most 107") {
			t.Fatalf("listen: %v, want the limit named", err)
		}
	})
}

// dialAsEnv names the socket the test binary, started again as another
// user by TestAdminSocketOtherUser, dials; it exits 0 when it connected,
// 13 on EACCES, 1 otherwise.
const dialAsEnv = "OVERLAYD_TEST_DIAL_ADMIN_SOCKET"

func TestMain(m *testing.M) {
	if path := os.Getenv(dialAsEnv); path != "" {
		c, err := net.Dial("unix", path)
		switch {
		case err == nil:
			c.Close()
			os.Exit(0)
		case errors.Is(err, syscall.EACCES):
			os.Exit(13)
		}
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// TestAdminSocketOtherUser dials the admin socket as nobody, from the test
// binary started again with that user's credentials: refused. The
// directory is left open to all, so the socket's own mode is what refuses;
// a socket opened to all in the same place, the control, lets nobody in.
func TestAdminSocketOtherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to run a process as another user (uid 65534)")
	}
	const nobody = 65534
	// Somewhere nobody can reach: t.TempDir's parents are root's alone.
	dir, err := os.MkdirTemp("", "overlayd-admin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exe := copyExecutable(t, dir)
	run := filepath.Join(dir, "run")
	if err := os.Mkdir(run, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(run, 0o755); err != nil {
		t.Fatal(err)
	}
	var fake fakeAPI
	socket := serveAdminSocket(t, dir, fake.api(false))
	open, err := net.Listen("unix", filepath.Join(run, "open.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	if err := os.Chmod(filepath.Join(run, "open.sock"), 0o666); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := open.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	dialAs := func(path string) int {
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), dialAsEnv+"="+path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			if exit.ExitCode() == 1 {
				t.Logf("dial %s as nobody: %s", path, out)
			}
			return exit.ExitCode()
		}
		if err != nil {
			t.Fatalf("running the dialler as nobody: %v", err)
		}
		return 0
	}
	if code := dialAs(filepath.Join(run, "open.sock")); code != 0 {
		t.Fatalf("nobody could not dial a socket open to all (exit %d): the test cannot tell the admin socket's mode from anything else", code)
	}
	if code := dialAs(socket); code != 13 {
		t.Errorf("nobody dialling the admin socket: exit %d, want 13 (EACCES)", code)
	}
}

// copyExecutable copies the test binary into dir, where other users can
// run it: the go tool builds it in a directory only root can enter.
func copyExecutable(t *testing.T, dir string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "daemon.test")
	if err := os.WriteFile(exe, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return exe
}

// FuzzAdminRequest feeds raw HTTP requests to the admin socket's handler,
// parsed as its server parses them (http.ReadRequest). The API decodes
// nothing from a request but its method and path (no query parameters, no
// body), so this is what there is to fuzz: whatever arrives, only a POST
// to APIReload reloads, only the API's paths answer 200 (JSON to a GET),
// pprof stays closed when off, and nothing panics or fails inside.
func FuzzAdminRequest(f *testing.F) {
	for _, seed := range []string{
		"GET /api/v1/status HTTP/1.1\r\nHost: overlayd\r\n\r\n",
		"POST /api/v1/reload HTTP/1.1\r\nHost: overlayd\r\nContent-Length: 4\r\n\r\nbody",
		"GET /api/v1/reload HTTP/1.1\r\nHost: overlayd\r\n\r\n",
		"POST /api/v1//reload HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /api/v1/%72eload HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /api/v1/reload/ HTTP/1.0\r\n\r\n",
		"HEAD /api/v1/nat HTTP/1.1\r\nHost: overlayd\r\n\r\n",
		"GET /api/v1/plan?node=node-b&x=%zz HTTP/1.1\r\nHost: overlayd\r\n\r\n",
		"GET /debug/pprof/profile?seconds=30 HTTP/1.1\r\nHost: overlayd\r\n\r\n",
		"GET /metrics HTTP/1.1\r\nHost: overlayd\r\n\r\n",
		"POST /api/v1/reload HTTP/1.1\r\nHost: overlayd\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n",
		"CONNECT overlayd:80 HTTP/1.1\r\nHost: overlayd:80\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: overlayd\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	apiPaths := map[string]bool{APIStatus: true, APIPlan: true, APIRoutes: true, APINAT: true, APIReload: true}
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(data)))
		if err != nil {
			return // the server answers 400 before any handler
		}
		var fake fakeAPI
		rec := httptest.NewRecorder()
		fake.api(false).handler().ServeHTTP(rec, req)
		path := req.URL.Path
		reloaded := fake.reloads.Load() > 0
		if reloaded && (req.Method != http.MethodPost || path != APIReload) {
			t.Fatalf("%s %q (path %q) reloaded", req.Method, req.RequestURI, path)
		}
		if !reloaded && req.Method == http.MethodPost && req.RequestURI == APIReload {
			t.Fatalf("POST %s did not reload: %d", APIReload, rec.Code)
		}
		if rec.Code >= 500 {
			t.Fatalf("%s %q: %d %s", req.Method, req.RequestURI, rec.Code, rec.Body)
		}
		if rec.Code == http.StatusOK {
			if !apiPaths[path] {
				t.Fatalf("%s %q (path %q) answered 200 outside the API", req.Method, req.RequestURI, path)
			}
			if req.Method == http.MethodGet && !json.Valid(rec.Body.Bytes()) {
				t.Fatalf("GET %q: not JSON: %q", req.RequestURI, rec.Body)
			}
		}
	})
}
