package testbed

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// waitDelay bounds how long a command's output is waited for once it has
// exited or been killed, so a child that leaks its pipes cannot hang a test.
const waitDelay = 5 * time.Second

// stopGrace is how long a process gets to exit after SIGTERM before SIGKILL.
const stopGrace = 5 * time.Second

// spawner tracks the goroutines that wait for the bed's processes, so Close
// returns only once every one has been reaped.
type spawner struct {
	wg sync.WaitGroup
}

func newSpawner() *spawner { return &spawner{} }

func (s *spawner) stop() { s.wg.Wait() }

// Process is a long-running command in a host's namespace (overlayd, a
// server), started by Start and stopped by Stop or by the bed's Close.
type Process struct {
	Host *Host
	cmd  *exec.Cmd
	name string

	mu     sync.Mutex
	out    bytes.Buffer
	exited chan struct{}
	err    error // the command's exit status, once exited is closed
}

// lockedWriter appends to the process's output buffer under its lock, so
// Output can be read while the process runs.
type lockedWriter struct{ p *Process }

func (w lockedWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.out.Write(b)
}

// Start runs a command inside the host's namespace in the background, in a
// process group of its own (so stopping it stops its children too), with
// stdout and stderr captured for Output.
func (h *Host) Start(name string, args ...string) (*Process, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = waitDelay
	p := &Process{Host: h, cmd: cmd, name: strings.Join(append([]string{name}, args...), " "), exited: make(chan struct{})}
	cmd.Stdout = lockedWriter{p}
	cmd.Stderr = lockedWriter{p}
	b := h.bed
	err := b.register(func() {
		if err := cmd.Start(); err != nil {
			p.err = err
			return
		}
		b.procs = append(b.procs, p)
		b.spawn.wg.Add(1)
	})
	if err == nil {
		err = p.err
	}
	if err != nil {
		return nil, fmt.Errorf("testbed: %s: start %s: %w", h.Name, p.name, err)
	}
	go func() {
		defer b.spawn.wg.Done()
		err := cmd.Wait()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.exited)
	}()
	return p, nil
}

// Output returns what the process has written to stdout and stderr so far.
func (p *Process) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// Signal sends sig to the process's group.
func (p *Process) Signal(sig syscall.Signal) error {
	if err := syscall.Kill(-p.cmd.Process.Pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("testbed: signal %s: %w", p.name, err)
	}
	return nil
}

// Exited is closed when the process has exited.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Stop sends SIGTERM, waits for the process to exit (SIGKILL after a grace
// period) and returns its exit error, nil for a clean exit.
func (p *Process) Stop() error {
	p.terminate()
	p.mu.Lock()
	defer p.mu.Unlock()
	var exit *exec.ExitError
	if errors.As(p.err, &exit) && exit.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL {
		return fmt.Errorf("testbed: %s did not exit on SIGTERM within %s and was killed", p.name, stopGrace)
	}
	return p.err
}

func (p *Process) terminate() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(stopGrace):
		_ = p.Signal(syscall.SIGKILL)
		<-p.exited
	}
}

// String names the process and its host.
func (p *Process) String() string { return fmt.Sprintf("%s on %s", p.name, p.Host.Name) }

// Pid is the process's ID (`ip netns exec` execs the command in place, so
// it is the command's own), for reading its /proc entries.
func (p *Process) Pid() int { return p.cmd.Process.Pid }
