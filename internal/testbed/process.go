package testbed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// waitDelay bounds how long a command's output is waited for once it has
// exited or been killed, so a child that leaks its pipes cannot hang a test.
const waitDelay = time.Second

// stopGrace is how long a process gets to exit after SIGTERM before SIGKILL.
const stopGrace = 5 * time.Second

// spawner starts the bed's processes from one OS thread that stays locked,
// and so alive, for the bed's lifetime, and tracks the goroutines that reap
// them. The processes get Pdeathsig=SIGKILL so that they die with a test
// binary that is killed (e.g. by go test's -timeout) before Close runs; but
// the kernel sends that signal when the *thread* that forked the child exits,
// and the Go runtime retires threads (any goroutine that ends locked, as Do's
// may), so forking from an arbitrary thread could kill a healthy child.
type spawner struct {
	reqs chan spawnRequest
	done chan struct{} // closed when the spawning thread's goroutine ended
	wg   sync.WaitGroup
}

type spawnRequest struct {
	cmd   *exec.Cmd
	reply chan error
}

func newSpawner() *spawner {
	s := &spawner{reqs: make(chan spawnRequest), done: make(chan struct{})}
	go func() {
		runtime.LockOSThread()
		// The thread never changes namespace, so it may go back to the
		// runtime's pool once the bed is closed.
		defer runtime.UnlockOSThread()
		defer close(s.done)
		for req := range s.reqs {
			req.reply <- req.cmd.Start()
		}
	}()
	return s
}

// start starts cmd on the spawning thread.
func (s *spawner) start(cmd *exec.Cmd) error {
	reply := make(chan error, 1)
	select {
	case s.reqs <- spawnRequest{cmd: cmd, reply: reply}:
		return <-reply
	case <-s.done:
		return errors.New("the bed is closed")
	}
}

// stop waits until every started process has been reaped, then ends the
// spawning thread. Call it once, after the processes were told to stop.
func (s *spawner) stop() {
	s.wg.Wait()
	close(s.reqs)
	<-s.done
}

// Process is a long-running command in a host's namespace (overlayd, a
// server), started by Start and stopped by Stop or by the bed's Close.
type Process struct {
	Host *Host
	cmd  *exec.Cmd
	name string
	out  *outputBuffer

	exited chan struct{}
	err    error // the command's exit status; read only after exited is closed

	stopOnce sync.Once
	stopErr  error
}

// Start runs a command inside the host's namespace in the background, in a
// process group of its own (so stopping it stops its children too), with
// stdout and stderr captured for Output. The process is killed when the bed
// closes, and also if the test binary dies without closing it.
func (h *Host) Start(name string, args ...string) (*Process, error) {
	return h.StartWith(StartOptions{}, name, args...)
}

// StartWith is Start with options (see StartOptions).
func (h *Host) StartWith(opts StartOptions, name string, args ...string) (*Process, error) {
	p := &Process{Host: h, name: strings.Join(append([]string{name}, args...), " "), out: newOutputBuffer(), exited: make(chan struct{})}
	// `ip netns exec` would report a missing command only after a
	// successful Start; say it here. It sees the same files we do.
	if _, err := exec.LookPath(name); err != nil {
		return nil, fmt.Errorf("testbed: %s: start %s: %w", h.Name, p.name, err)
	}
	cmd, cleanup, err := h.command(opts, name, args)
	if err != nil {
		return nil, fmt.Errorf("testbed: %s: start %s: %w", h.Name, p.name, err)
	}
	defer cleanup()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = waitDelay
	cmd.Stdout = p.out
	cmd.Stderr = p.out
	p.cmd = cmd
	b := h.bed
	var startErr error
	err = b.register(func() {
		// Under the bed's lock, so Close cannot miss a process being started.
		if startErr = b.spawn.start(cmd); startErr == nil {
			b.procs = append(b.procs, p)
			b.spawn.wg.Add(1)
		}
	})
	if err == nil {
		err = startErr
	}
	if err != nil {
		return nil, fmt.Errorf("testbed: %s: start %s: %w", h.Name, p.name, err)
	}
	go func() {
		defer b.spawn.wg.Done()
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// Output returns what the process has written to stdout and stderr so far.
func (p *Process) Output() string { return p.out.String() }

// WaitOutput waits until the process's output contains text. It fails, with
// the output, if the process exits first or ctx ends.
func (p *Process) WaitOutput(ctx context.Context, text string) error {
	for {
		out, more := p.out.snapshot()
		if strings.Contains(out, text) {
			return nil
		}
		select {
		case <-more:
		case <-p.exited:
			if out := p.Output(); strings.Contains(out, text) {
				return nil
			}
			return fmt.Errorf("testbed: %s exited (%v) before writing %q; output:\n%s", p, p.err, text, p.Output())
		case <-ctx.Done():
			return fmt.Errorf("testbed: %s did not write %q: %w; output:\n%s", p, text, ctx.Err(), p.Output())
		}
	}
}

// Signal sends sig to the process's group.
func (p *Process) Signal(sig syscall.Signal) error {
	select {
	case <-p.exited:
		// Its group may be gone and the number reused.
		return fmt.Errorf("testbed: signal %s: it has exited", p)
	default:
	}
	if err := syscall.Kill(-p.cmd.Process.Pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("testbed: signal %s: %w", p, err)
	}
	return nil
}

// Exited is closed when the process has exited.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Wait waits for the process to exit on its own and returns its exit error
// (an *exec.ExitError inside) or nil for status 0.
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.exited:
		return p.exitError()
	case <-ctx.Done():
		return fmt.Errorf("testbed: waiting for %s: %w", p, ctx.Err())
	}
}

// Stop sends SIGTERM to the process group, waits for the process to exit
// (SIGKILL after 5 s) and returns nil for a clean exit: status 0, or death
// by the SIGTERM itself. Otherwise the error wraps the *exec.ExitError.
// Stop is idempotent; on a process that already exited it just reports how.
func (p *Process) Stop() error {
	p.stopOnce.Do(func() { p.stopErr = p.stop() })
	return p.stopErr
}

func (p *Process) stop() error {
	select {
	case <-p.exited:
		return p.exitError()
	default:
	}
	_ = p.Signal(syscall.SIGTERM)
	timer := time.NewTimer(stopGrace)
	defer timer.Stop()
	select {
	case <-p.exited:
	case <-timer.C:
		_ = p.Signal(syscall.SIGKILL)
		<-p.exited
		return fmt.Errorf("testbed: %s did not exit on SIGTERM within %s and was killed", p, stopGrace)
	}
	var exit *exec.ExitError
	if errors.As(p.err, &exit) {
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM {
			return nil
		}
	}
	return p.exitError()
}

// terminate is Stop for Close, where only the process being gone matters.
func (p *Process) terminate() { _ = p.Stop() }

func (p *Process) exitError() error {
	if p.err != nil {
		return fmt.Errorf("testbed: %s: %w", p, p.err)
	}
	return nil
}

// String names the process and its host.
func (p *Process) String() string { return fmt.Sprintf("%s on %s", p.name, p.Host.Name) }

// Pid is the process's ID (`ip netns exec` execs the command in place, so
// it is the command's own), for reading its /proc entries.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// outputBuffer collects a process's output and lets readers wait for more.
type outputBuffer struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	more chan struct{} // closed and replaced at every write
}

func newOutputBuffer() *outputBuffer { return &outputBuffer{more: make(chan struct{})} }

func (o *outputBuffer) Write(b []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(b)
	close(o.more)
	o.more = make(chan struct{})
	return len(b), nil
}

func (o *outputBuffer) String() string {
	out, _ := o.snapshot()
	return out
}

// snapshot returns the output so far and a channel closed at the next write.
func (o *outputBuffer) snapshot() (string, <-chan struct{}) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String(), o.more
}
