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
)

// startProfiles fetches a CPU profile of seconds, then an allocation
// profile, from every overlayd of ep while the caller measures; the
// returned function waits for them. The files are named after the mode,
// the run (tag, "" for the one-stream TCP run) and the node. A profile
// that fails is reported and the run goes on: profiles explain figures,
// they are not figures.
func startProfiles(e *env, ep *endpoints, m mode, tag string, seconds int) (wait func()) {
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
			name := strings.ReplaceAll(m.Name, " ", "-")
			if tag != "" {
				name += "." + tag
			}
			base := filepath.Join(e.profileDir, name+"."+proc.Host.Name)
			for _, p := range []struct{ path, file string }{
				{fmt.Sprintf("/debug/pprof/profile?seconds=%d", seconds), base + ".cpu.pprof"},
				{"/debug/pprof/allocs", base + ".allocs.pprof"},
			} {
				if err := fetchProfile(ep.adminSockets[proc.Host.Name], p.path, p.file, time.Duration(seconds+30)*time.Second); err != nil {
					fmt.Fprintf(os.Stderr, "bench: profile %s: %v\n", p.file, err)
				}
			}
		})
	}
	return wg.Wait
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
