package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// profileListen is where each overlayd of a profiled run serves
// /debug/pprof, inside its node's namespace.
const profileListen = "127.0.0.1:9469"

// startProfiles fetches a CPU profile of seconds, then an allocation
// profile, from every overlayd of ep while the caller measures; the
// returned function waits for them. A profile that fails is reported and
// the run goes on: profiles explain figures, they are not figures.
func startProfiles(e *env, ep *endpoints, m mode, seconds int) (wait func()) {
	if e.profileDir == "" || len(ep.routers) == 0 || !strings.HasPrefix(m.Name, "overlayd") {
		return func() {}
	}
	if err := os.MkdirAll(e.profileDir, 0o755); err != nil {
		fmt.Fprintf(os.Stderr, "bench: profiles: %v\n", err)
		return func() {}
	}
	var wg sync.WaitGroup
	for _, proc := range ep.routers {
		wg.Go(func() {
			base := filepath.Join(e.profileDir, strings.ReplaceAll(m.Name, " ", "-")+"."+proc.Host.Name)
			for _, p := range []struct{ path, file string }{
				{fmt.Sprintf("/debug/pprof/profile?seconds=%d", seconds), base + ".cpu.pprof"},
				{"/debug/pprof/allocs", base + ".allocs.pprof"},
			} {
				if err := fetchProfile(proc.Host.Do, p.path, p.file, time.Duration(seconds+30)*time.Second); err != nil {
					fmt.Fprintf(os.Stderr, "bench: profile %s: %v\n", p.file, err)
				}
			}
		})
	}
	return wg.Wait
}

// fetchProfile GETs path from the overlayd listening in a node's namespace
// into file.
func fetchProfile(do func(func() error) error, path, file string, timeout time.Duration) error {
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if err := fetchTo(do, path, timeout, func(r io.Reader) error {
		_, err := io.Copy(f, r)
		return err
	}); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
