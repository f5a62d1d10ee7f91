// Package testbed builds network topologies out of Linux network namespaces
// and veth pairs, for overlayd's end-to-end tests, its demo and its benchmark.
//
// A Bed owns a set of namespaces ("hosts") named after the bed, so that
// parallel tests and parallel processes never collide. Nothing is ever
// created in the machine's own network namespace: veth pairs are created
// directly inside their two namespaces. Close removes everything, tests get
// that from t.Cleanup (NewForTest, NewStandard), and New first sweeps away
// what crashed runs left behind (Sweep).
//
// Building beds needs root, iproute2's ip command and network namespaces;
// Require skips a test that lacks them.
package testbed

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// commandTimeout bounds each ip command the bed runs for itself; they take
// milliseconds, so hitting it means something is wedged.
const commandTimeout = 30 * time.Second

// DefaultMTU is the underlay MTU when Options.MTU is zero.
const DefaultMTU = 1500

// Options shape a bed.
type Options struct {
	// MTU of every link made by Link and of bridges; 0 means DefaultMTU.
	MTU int
	// WorkloadMTU is the MTU of workload veths (Calico sets them to the
	// overlay MTU); 0 means MTU.
	WorkloadMTU int
	// IPv6 keeps IPv6 on the interfaces of the bed. Off by default, so
	// captures are not cluttered with neighbour discovery; lo keeps ::1
	// either way.
	IPv6 bool
}

func (o Options) mtu() int {
	if o.MTU > 0 {
		return o.MTU
	}
	return DefaultMTU
}

func (o Options) workloadMTU() int {
	if o.WorkloadMTU > 0 {
		return o.WorkloadMTU
	}
	return o.mtu()
}

// Bed is a set of network namespaces and what runs in them. Its methods are
// safe for concurrent use.
type Bed struct {
	id    string
	opts  Options
	lock  *os.File
	spawn *spawner

	mu       sync.Mutex
	closed   bool
	hosts    map[string]*Host
	order    []*Host // creation order; Close tears down in reverse
	procs    []*Process
	captures []*Capture
	relays   []*ImpairedLink
}

// Require skips the test unless this process can build beds: it runs as
// root, ip (iproute2) is installed and network namespaces can be made.
func Require(tb testing.TB) {
	tb.Helper()
	if err := Available(); err != nil {
		tb.Skipf("testbed: skipping, %v", err)
	}
}

// Available says why this process cannot build beds, or nil if it can.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root to create network namespaces (run the tests as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("the ip command (iproute2) is not installed; run `make deps`")
	}
	if err := probeNetns(); err != nil {
		return fmt.Errorf("network namespaces unavailable: %w", err)
	}
	return nil
}

// probeNetns makes a throwaway network namespace on a thread of its own; the
// goroutine exits still locked, so the runtime discards the thread and the
// namespace with it.
func probeNetns() error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- unix.Unshare(unix.CLONE_NEWNET)
	}()
	return <-errc
}

// New makes an empty bed, after sweeping leftovers of crashed runs. Use it
// where there is no testing.TB (the demo, the benchmark); tests use
// NewForTest or NewStandard. The caller must Close the bed.
func New(opts Options) (*Bed, error) {
	if opts.MTU < 0 || opts.WorkloadMTU < 0 {
		return nil, fmt.Errorf("testbed: negative MTU in %+v", opts)
	}
	if err := Available(); err != nil {
		return nil, fmt.Errorf("testbed: %w", err)
	}
	if err := Sweep(); err != nil {
		return nil, fmt.Errorf("testbed: %w", err)
	}
	id, err := newBedID()
	if err != nil {
		return nil, fmt.Errorf("testbed: %w", err)
	}
	lock, err := acquireLock(id)
	if err != nil {
		return nil, fmt.Errorf("testbed: %w", err)
	}
	return &Bed{
		id:    id,
		opts:  opts,
		lock:  lock,
		spawn: newSpawner(),
		hosts: map[string]*Host{},
	}, nil
}

// NewForTest is New for tests: it skips the test when beds cannot be built
// (Require), fails it when New fails, and closes the bed when the test ends,
// logging the output of the bed's processes first if the test failed.
func NewForTest(tb testing.TB, opts Options) *Bed {
	tb.Helper()
	Require(tb)
	b, err := New(opts)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			b.logProcesses(tb)
		}
		if err := b.Close(); err != nil {
			tb.Errorf("testbed: %v", err)
		}
	})
	return b
}

func (b *Bed) logProcesses(tb testing.TB) {
	b.mu.Lock()
	procs := slices.Clone(b.procs)
	b.mu.Unlock()
	for _, p := range procs {
		tb.Logf("output of %s:\n%s", p, p.Output())
	}
}

// ID is the bed's unique name; every namespace of the bed starts with it.
func (b *Bed) ID() string { return b.id }

// Host returns the host (or workload) with this name. It panics if there is
// none: asking for a host the bed was not built with is a bug in the test.
func (b *Bed) Host(name string) *Host {
	h, ok := b.Lookup(name)
	if !ok {
		panic(fmt.Sprintf("testbed: bed %s has no host %q (hosts: %s)", b.id, name, strings.Join(b.HostNames(), ", ")))
	}
	return h
}

// Lookup returns the host with this name, if the bed has one.
func (b *Bed) Lookup(name string) (*Host, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	h, ok := b.hosts[name]
	return h, ok
}

// HostNames lists the bed's hosts in the order they were made.
func (b *Bed) HostNames() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	names := make([]string, len(b.order))
	for i, h := range b.order {
		names[i] = h.Name
	}
	return names
}

// Close stops the bed's captures and processes, kills anything else still
// running in its namespaces and deletes them. It is idempotent: later calls
// return nil.
func (b *Bed) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	hosts := slices.Clone(b.order)
	procs := slices.Clone(b.procs)
	captures := slices.Clone(b.captures)
	relays := slices.Clone(b.relays)
	b.mu.Unlock()

	var errs []error
	for _, c := range captures {
		c.Stop()
	}
	for _, l := range relays {
		l.Stop()
	}
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Go(func() { p.terminate() })
	}
	wg.Wait()
	b.spawn.stop()
	for _, h := range slices.Backward(hosts) {
		h.closeHandle()
		if err := deleteNamespace(h.NS); err != nil {
			errs = append(errs, fmt.Errorf("delete host %s: %w", h.Name, err))
		}
	}
	if err := os.Remove(b.lock.Name()); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove bed lock: %w", err))
	}
	if err := b.lock.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close bed lock: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close bed %s: %w", b.id, err)
	}
	return nil
}

// register adds something Close must clean up, or refuses once Close began.
func (b *Bed) register(add func()) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return fmt.Errorf("bed %s is closed", b.id)
	}
	add()
	return nil
}

// runIP runs ip with args and returns its output; the error carries the
// command line and the output, which is where ip explains itself.
func runIP(ctx context.Context, args ...string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}
