// Package etcdtest starts an embedded etcd server for unit tests: one member
// on a unix socket in a temporary directory, removed when the test ends.
// End-to-end tests use real etcd processes instead (internal/testbed).
package etcdtest

import (
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"

	"github.com/overlayd/overlayd/config"
)

// Server is a running embedded etcd.
type Server struct {
	tb       testing.TB
	cfg      *embed.Config
	etcd     *embed.Etcd
	endpoint string
}

// Start starts an embedded etcd for the test and stops it when the test
// ends.
func Start(tb testing.TB) *Server {
	tb.Helper()
	// Not tb.TempDir: a test's name can make the path too long for a unix
	// socket (108 bytes) or put a comma in the member's URL, which etcd's
	// initial-cluster list would split on.
	dir, err := os.MkdirTemp("", "etcdtest-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	cfg := embed.NewConfig()
	cfg.Name = "etcdtest"
	cfg.Dir = filepath.Join(dir, "data")
	cfg.LogLevel = "error"
	cfg.UnsafeNoFsync = true
	client := url.URL{Scheme: "unix", Path: filepath.Join(dir, "client.sock")}
	peer := url.URL{Scheme: "unix", Path: filepath.Join(dir, "peer.sock")}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.Name + "=" + peer.String()
	s := &Server{tb: tb, cfg: cfg, endpoint: client.String()}
	s.start()
	tb.Cleanup(func() {
		if s.etcd != nil {
			s.etcd.Close()
		}
	})
	return s
}

func (s *Server) start() {
	s.tb.Helper()
	e, err := embed.StartEtcd(s.cfg)
	if err != nil {
		s.tb.Fatalf("starting an embedded etcd: %v", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		e.Close()
		s.tb.Fatal("the embedded etcd did not become ready in 30 s")
	}
	s.etcd = e
}

// Endpoint is the client URL (unix://...).
func (s *Server) Endpoint() string { return s.endpoint }

// Datastore is a [datastore] section that points at the server.
func (s *Server) Datastore() config.Datastore {
	return config.Datastore{Type: config.DatastoreEtcd, Endpoints: []string{s.endpoint}, Prefix: config.DefaultDatastorePrefix}
}

// Stop stops the server before the test ends (to test a lost datastore).
func (s *Server) Stop() {
	s.etcd.Close()
	s.etcd = nil
}

// Restart starts a stopped server again on its data: what it held is back.
func (s *Server) Restart() { s.start() }
