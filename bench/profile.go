package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/overlayd/overlayd/daemon"
	"github.com/overlayd/overlayd/internal/testbed"
)

// startProfiles fetches a CPU profile of seconds, then an allocation
// profile, from every overlayd of ep while the caller measures; the
// returned function waits for them. The files are named after the mode,
// the run (tag, "" for the one-stream TCP run) and the node. A profile
// that fails is reported and the run goes on: profiles explain figures,
// they are not figures.
func startProfiles(e *env, ep *endpoints, m mode, tag string, seconds int) (wait func()) {
	var wg sync.WaitGroup
	for _, proc := range ep.routers {
		wg.Go(func() {
			profileNode(e, ep, m, proc, tag, "cpu.pprof", fmt.Sprintf("/debug/pprof/profile?seconds=%d", seconds), seconds)()
			profileNode(e, ep, m, proc, tag, "allocs.pprof", "/debug/pprof/allocs", 0)()
		})
	}
	return wg.Wait
}

// profileNode fetches one profile (path, taking seconds) of the overlayd
// proc into DIR/MODE[.TAG].NODE.KIND while the caller goes on; the
// returned function waits for it. Without --profile, or for a mode that
// runs no overlayd, it does nothing.
func profileNode(e *env, ep *endpoints, m mode, proc *testbed.Process, tag, kind, path string, seconds int) (wait func()) {
	if e.profileDir == "" || !strings.HasPrefix(m.Name, "overlayd") {
		return func() {}
	}
	if err := os.MkdirAll(e.profileDir, 0o755); err != nil {
		fmt.Fprintf(os.Stderr, "bench: profiles: %v\n", err)
		return func() {}
	}
	name := strings.ReplaceAll(m.Name, " ", "-")
	if tag != "" {
		name += "." + tag
	}
	file := filepath.Join(e.profileDir, name+"."+proc.Host.Name+"."+kind)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := fetchProfile(ep.adminSockets[proc.Host.Name], path, file, time.Duration(seconds+30)*time.Second); err != nil {
			fmt.Fprintf(os.Stderr, "bench: profile %s: %v\n", file, err)
		}
	}()
	return func() { <-done }
}

// fetchProfile GETs path from the overlayd whose admin socket is socket
// into file.
func fetchProfile(socket, path, file string, timeout time.Duration) error {
	resp, err := daemon.AdminClient(socket, timeout).Get(daemon.AdminURL + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
