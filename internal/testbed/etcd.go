package testbed

// Real etcd server processes in a bed, for the datastore's end-to-end tests
// and demo: one member per host, on the host's underlay address, so a node's
// etcd is reached across the bed's router like any other underlay service.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// Ports of the first etcd member on a host (IANA's); a second member on the
// same host gets the next pair up, and so on.
const (
	EtcdClientPort = 2379
	EtcdPeerPort   = 2380
)

// etcdCheckTimeout bounds one health probe of one member.
const etcdCheckTimeout = time.Second

// EtcdOptions shape a cluster started by StartEtcd.
type EtcdOptions struct {
	// Binary is the etcd server to run: a path or a name looked up in PATH.
	// Empty means "etcd" (Debian's etcd-server, installed by `make deps`).
	Binary string
	// UnixSockets makes every member also listen for clients on a unix
	// socket in the cluster's directory (Member.UnixEndpoint). A path
	// socket is reachable from every network namespace, the machine's
	// included, so processes outside the bed can use the cluster too.
	UnixSockets bool
	// LogLevel of the members (debug, info, warn, error); empty means
	// "warn", which still says why a member failed or lost its peers.
	LogLevel string
	// Args are appended to every member's command line.
	Args []string
}

// Etcd is an etcd cluster of real server processes in a bed: one member per
// host given to StartEtcd, each listening on its host's underlay address,
// with its data in a temporary directory. Its methods are safe for
// concurrent use. The processes die with the bed; Close also removes the
// data.
type Etcd struct {
	// Token is the cluster's unique initial-cluster-token.
	Token string
	// Dir holds the members' data directories and sockets.
	Dir string

	members []*EtcdMember

	closeOnce sync.Once
	closeErr  error
}

// EtcdMember is one member of an Etcd cluster.
type EtcdMember struct {
	// Name is the member's etcd name: its host's name, and "-2", "-3" for a
	// second or third member on that host.
	Name string
	// Host is the host whose namespace the member runs in.
	Host *Host
	// ClientURL and PeerURL are where the member listens and what it
	// advertises ("http://198.18.1.10:2379").
	ClientURL, PeerURL string
	// DataDir is the member's data directory; Restart keeps it.
	DataDir string

	dir    string // the cluster's directory
	binary string
	args   []string // env's arguments, which run binary with its own in dir
	unix   string   // the unix socket's name in dir, or ""

	mu   sync.Mutex
	proc *Process // the current incarnation; nil before the first start
}

// RequireEtcd skips the test unless beds can be built (Require) and the
// etcd server is installed.
func RequireEtcd(tb testing.TB) {
	tb.Helper()
	Require(tb)
	if _, err := exec.LookPath("etcd"); err != nil {
		tb.Skip("testbed: skipping, the etcd server is not installed; run `make deps` (Debian's etcd-server)")
	}
}

// StartEtcdForTest is StartEtcd for tests: it skips the test when beds
// cannot be built or etcd is missing (RequireEtcd), fails it when the cluster does not come up within
// 30 s, and closes the cluster when the test ends.
func StartEtcdForTest(tb testing.TB, b *Bed, hosts []*Host, opts EtcdOptions) *Etcd {
	tb.Helper()
	if opts.Binary == "" {
		RequireEtcd(tb)
	} else {
		Require(tb)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := b.StartEtcd(ctx, hosts, opts)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	tb.Cleanup(func() {
		if err := e.Close(); err != nil {
			tb.Errorf("%v", err)
		}
	})
	return e
}

// StartEtcd starts an etcd cluster with one member on each host, on the
// host's underlay address (Host.Addr), and waits until every member serves
// (WaitHealthy) or ctx ends. The members are processes of the bed (Start),
// so they die with it; the caller should still Close the cluster, which
// also removes its data (and StartEtcd removes the data that clusters of
// crashed runs left). On error nothing is left running.
func (b *Bed) StartEtcd(ctx context.Context, hosts []*Host, opts EtcdOptions) (*Etcd, error) {
	if len(hosts) == 0 {
		return nil, errors.New("testbed: etcd: no hosts")
	}
	binary := opts.Binary
	if binary == "" {
		binary = "etcd"
	}
	binary, err := exec.LookPath(binary)
	if err != nil {
		return nil, fmt.Errorf("testbed: etcd: %w (run `make deps`)", err)
	}
	// Absolute, since the members run in the cluster's directory.
	if binary, err = filepath.Abs(binary); err != nil {
		return nil, fmt.Errorf("testbed: etcd: %w", err)
	}
	logLevel := opts.LogLevel
	if logLevel == "" {
		logLevel = "warn"
	}
	sweepEtcdDirs()
	dir, err := os.MkdirTemp("", b.id+"-etcd-")
	if err != nil {
		return nil, fmt.Errorf("testbed: etcd: %w", err)
	}
	e := &Etcd{Token: filepath.Base(dir), Dir: dir}
	perHost := map[*Host]int{}
	var initial []string
	for _, h := range hosts {
		if h == nil || h.bed != b {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("testbed: etcd: host %v is not a host of bed %s", h, b.id)
		}
		if !h.Addr.IsValid() {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("testbed: etcd: host %s has no address", h)
		}
		n := perHost[h]
		perHost[h]++
		name := h.Name
		if n > 0 {
			name += "-" + strconv.Itoa(n+1)
		}
		addr := h.Addr.Addr()
		m := &EtcdMember{
			Name:      name,
			Host:      h,
			ClientURL: "http://" + netip.AddrPortFrom(addr, uint16(EtcdClientPort+2*n)).String(),
			PeerURL:   "http://" + netip.AddrPortFrom(addr, uint16(EtcdPeerPort+2*n)).String(),
			DataDir:   filepath.Join(dir, name),
			dir:       dir,
			binary:    binary,
		}
		if opts.UnixSockets {
			// etcd 3.4 takes a unix URL's host:port as a path relative
			// to its working directory, which Restart sets to dir.
			m.unix = name + ":" + strconv.Itoa(EtcdClientPort+2*n)
		}
		e.members = append(e.members, m)
		initial = append(initial, m.Name+"="+m.PeerURL)
	}
	for _, m := range e.members {
		listen := m.ClientURL
		if m.unix != "" {
			listen += ",unix://" + m.unix
		}
		m.args = append([]string{
			"-C", dir, // env's: run etcd in dir
			m.binary,
			"--name", m.Name,
			"--data-dir", m.DataDir,
			"--listen-client-urls", listen,
			"--advertise-client-urls", m.ClientURL,
			"--listen-peer-urls", m.PeerURL,
			"--initial-advertise-peer-urls", m.PeerURL,
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-token", e.Token,
			"--initial-cluster-state", "new",
			// Veths answer in microseconds: elect a new leader within
			// half a second of losing one, not the default's seconds.
			"--heartbeat-interval", "50",
			"--election-timeout", "500",
			"--logger", "zap",
			"--log-outputs", "stderr",
			"--log-level", logLevel,
		}, opts.Args...)
	}
	for _, m := range e.members {
		if err := m.Restart(); err != nil {
			return nil, errors.Join(err, e.Close())
		}
	}
	if err := e.WaitHealthy(ctx); err != nil {
		return nil, errors.Join(err, e.Close())
	}
	return e, nil
}

// Members returns the cluster's members, in the order of StartEtcd's hosts.
func (e *Etcd) Members() []*EtcdMember { return append([]*EtcdMember(nil), e.members...) }

// Member returns the member of this name; nil if there is none.
func (e *Etcd) Member(name string) *EtcdMember {
	for _, m := range e.members {
		if m.Name == name {
			return m
		}
	}
	return nil
}

// Endpoints returns the members' client URLs, as overlayd's [datastore]
// endpoints want them. They are reachable from the bed's hosts (not from
// the machine's namespace: use Client, or UnixEndpoints).
func (e *Etcd) Endpoints() []string {
	eps := make([]string, len(e.members))
	for i, m := range e.members {
		eps[i] = m.ClientURL
	}
	return eps
}

// UnixEndpoints returns the members' unix socket endpoints
// ("unix:///tmp/.../node-a:2379"), or nil without EtcdOptions.UnixSockets.
func (e *Etcd) UnixEndpoints() []string {
	var eps []string
	for _, m := range e.members {
		if m.unix != "" {
			eps = append(eps, m.UnixEndpoint())
		}
	}
	return eps
}

// Client returns an etcd client for all the members' endpoints that
// connects from inside host from (as a process on that host would), so it
// works from the test's own goroutines. The caller closes it.
func (e *Etcd) Client(from *Host) (*clientv3.Client, error) {
	return clientv3.New(EtcdClientConfig(from, e.Endpoints()))
}

// EtcdClientConfig is a client configuration for endpoints that dials from
// inside host from (Host.DialContext), with a 2 s dial timeout, no client
// logging, and reconnection attempts every 100 ms to 1 s rather than gRPC's
// 1 s to 2 min, so a client notices a restarted member at once.
func EtcdClientConfig(from *Host, endpoints []string) clientv3.Config {
	return clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 2 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				return from.DialContext(ctx, "tcp", addr)
			}),
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
				MinConnectTimeout: time.Second,
			}),
		},
	}
}

// WaitHealthy waits until every running member (not killed or stopped)
// answers a status request and a linearizable read, which needs a quorum
// and a leader, or until ctx ends.
func (e *Etcd) WaitHealthy(ctx context.Context) error {
	var running []*EtcdMember
	for _, m := range e.members {
		if m.Running() {
			running = append(running, m)
		}
	}
	if len(running) == 0 {
		return errors.New("testbed: etcd: no member is running")
	}
	errs := make([]error, len(running))
	var wg sync.WaitGroup
	for i, m := range running {
		wg.Go(func() { errs[i] = m.waitServing(ctx) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("testbed: etcd cluster %s is not healthy: %w", e.Token, err)
	}
	return nil
}

// Close kills every member and removes the data. (The data is thrown away,
// so there is nothing to stop gracefully; and a leader stopped with SIGTERM
// while its peers stop too waits for 5 s to hand its leadership over.) It
// is idempotent.
func (e *Etcd) Close() error {
	e.closeOnce.Do(func() {
		var wg sync.WaitGroup
		for _, m := range e.members {
			wg.Go(func() { _ = m.Kill() })
		}
		wg.Wait()
		if err := os.RemoveAll(e.Dir); err != nil {
			e.closeErr = fmt.Errorf("testbed: etcd: remove data: %w", err)
		}
	})
	return e.closeErr
}

// UnixEndpoint is the member's unix socket endpoint, or "" without
// EtcdOptions.UnixSockets.
func (m *EtcdMember) UnixEndpoint() string {
	if m.unix == "" {
		return ""
	}
	return "unix://" + filepath.Join(m.dir, m.unix)
}

// Process returns the member's current process (the last started).
func (m *EtcdMember) Process() *Process {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.proc
}

// Running reports whether the member's process is running.
func (m *EtcdMember) Running() bool {
	p := m.Process()
	if p == nil {
		return false
	}
	select {
	case <-p.Exited():
		return false
	default:
		return true
	}
}

// Kill kills the member with SIGKILL, as a crash would, and waits until it
// is gone. It is a no-op on a member that is not running.
func (m *EtcdMember) Kill() error {
	p := m.Process()
	if p == nil {
		return nil
	}
	if err := p.Signal(syscall.SIGKILL); err != nil && m.Running() {
		return err
	}
	<-p.Exited()
	return nil
}

// Stop stops the member with SIGTERM, as an operator would, and waits
// until it is gone; nil also for a member not running. A leader first hands
// its leadership to a peer; with no peer to take it, it is killed after 5 s
// and Stop says so.
func (m *EtcdMember) Stop() error {
	p := m.Process()
	if p == nil {
		return nil
	}
	select {
	case <-p.Exited():
		return nil // killed, or it died: Kill's and the caller's business
	default:
	}
	return p.Stop()
}

// Restart starts the member again on its data directory, where it rejoins
// the cluster (the first call starts it). It does not wait: a member
// serves only once a quorum is up, so call Etcd.WaitHealthy after starting
// enough of them. A running member is left as it is.
func (m *EtcdMember) Restart() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc != nil {
		select {
		case <-m.proc.Exited():
		default:
			return nil
		}
	}
	if m.unix != "" {
		// A killed member leaves its socket behind, and etcd 3.4 will
		// not bind over it.
		if err := os.Remove(filepath.Join(m.dir, m.unix)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("testbed: etcd member %s: %w", m.Name, err)
		}
	}
	p, err := m.Host.Start("env", m.args...)
	if err != nil {
		return fmt.Errorf("testbed: etcd member %s: %w", m.Name, err)
	}
	m.proc = p
	return nil
}

// Client returns an etcd client for this member's endpoint only, dialling
// from inside host from. The caller closes it.
func (m *EtcdMember) Client(from *Host) (*clientv3.Client, error) {
	return clientv3.New(EtcdClientConfig(from, []string{m.ClientURL}))
}

// waitServing polls the member, from its own host, until it answers a
// status request and a linearizable read, or ctx ends.
func (m *EtcdMember) waitServing(ctx context.Context) error {
	c, err := m.Client(m.Host)
	if err != nil {
		return fmt.Errorf("member %s: %w", m.Name, err)
	}
	defer c.Close()
	var last error
	for {
		if last = m.check(ctx, c); last == nil {
			return nil
		}
		p := m.Process()
		select {
		case <-p.Exited():
			return fmt.Errorf("member %s exited: %v; output:\n%s", m.Name, p.exitError(), tail(p.Output(), 20))
		case <-ctx.Done():
			return fmt.Errorf("member %s: %w (last: %v); output:\n%s", m.Name, ctx.Err(), last, tail(p.Output(), 20))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (m *EtcdMember) check(ctx context.Context, c *clientv3.Client) error {
	ctx, cancel := context.WithTimeout(ctx, etcdCheckTimeout)
	defer cancel()
	st, err := c.Status(ctx, m.ClientURL)
	if err != nil {
		return err
	}
	if st.Leader == 0 {
		return errors.New("no leader")
	}
	_, err = c.Get(ctx, "health")
	return err
}

// DialContext dials address from inside the host's namespace; the
// connection can then be used from any goroutine.
func (h *Host) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var conn net.Conn
	err := h.Do(func() error {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, address)
		conn = c
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", h.Name, err)
	}
	return conn, nil
}

// AddEtcdHosts adds n hosts for dedicated etcd members to a standard bed:
// "etcd-1" ... on 198.18.5.0/24 (198.18.5.11, .12, ...), attached to a
// bridge "br5" in the router (198.18.5.1), routing by default through it,
// so every node reaches them across the router. Pass them to StartEtcd.
func (b *Bed) AddEtcdHosts(n int) ([]*Host, error) {
	router, ok := b.Lookup("router")
	if !ok {
		return nil, errors.New("testbed: etcd hosts: the bed has no router (build the standard bed first)")
	}
	if n < 1 || n > 200 {
		return nil, fmt.Errorf("testbed: etcd hosts: %d hosts, want 1 to 200", n)
	}
	const bridge = "br5"
	gateway := netip.MustParseAddr("198.18.5.1")
	if err := router.AddBridge(bridge, netip.PrefixFrom(gateway, 24)); err != nil {
		return nil, err
	}
	hosts := make([]*Host, n)
	for i := range hosts {
		name := "etcd-" + strconv.Itoa(i+1)
		h, err := b.AddHost(name)
		if err != nil {
			return nil, err
		}
		h.Addr = netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 5, byte(11 + i)}), 24)
		if err := b.Link(Endpoint{Host: h, Iface: "eth0", Addr: h.Addr}, Endpoint{Host: router, Iface: "to-" + name, Bridge: bridge}); err != nil {
			return nil, err
		}
		if err := h.IP("route", "add", "default", "via", gateway.String()); err != nil {
			return nil, fmt.Errorf("testbed: %w", err)
		}
		hosts[i] = h
	}
	return hosts, nil
}

// etcdDirPattern matches the directory of a cluster, named after its bed:
// "ovtb-<pid>-<8 hex>-etcd-<random>".
var etcdDirPattern = regexp.MustCompile(`^(` + namePrefix + `-([0-9]+)-[0-9a-f]{8})-etcd-[0-9]+$`)

// sweepEtcdDirs removes, as Sweep does namespaces, the data of clusters
// whose bed's owner is gone (a test binary killed before its cleanup).
// Best effort: what it cannot remove, the next call tries again.
func sweepEtcdDirs() {
	entries, err := os.ReadDir(os.TempDir())
	if err != nil {
		return
	}
	for _, e := range entries {
		m := etcdDirPattern.FindStringSubmatch(e.Name())
		if m == nil || !e.IsDir() {
			continue
		}
		pid, err := strconv.Atoi(m[2])
		if err != nil || pid <= 0 || ownerAlive(m[1], pid) {
			continue
		}
		_ = os.RemoveAll(filepath.Join(os.TempDir(), e.Name()))
	}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
