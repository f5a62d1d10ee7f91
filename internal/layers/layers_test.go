// Package layers holds the test that keeps overlayd's three layers apart:
// the pure plan, the data path and the effects, as DESIGN.md's "The shape"
// draws them.
package layers

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/overlayd/overlayd/"

func TestLayersKeepApart(t *testing.T) {
	tests := []struct {
		name      string
		pkg       string
		forbidden []string // import path prefixes
	}{
		// encap, whose header sizes the plan uses, is pure too, though it
		// links gVisor's header views and so x/sys/unix.
		{"the plan is pure: no netlink, no sockets, no metrics, no daemon",
			"plan", []string{"github.com/vishvananda/", "github.com/prometheus/", "net/http", module + "kernel", module + "dataplane", module + "daemon", module + "conn", module + "nat"}},
		{"the data path links neither netlink nor Prometheus",
			"dataplane", []string{"github.com/vishvananda/", "github.com/prometheus/", "net/http", module + "kernel", module + "daemon"}},
		{"the effects layer knows nothing of the packet loops, sockets or the daemon",
			"kernel", []string{module + "dataplane", module + "daemon", module + "conn", module + "nat", "github.com/prometheus/"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := exec.Command("go", "list", "-deps", module+tc.pkg).CombinedOutput()
			if err != nil {
				t.Fatalf("go list -deps %s: %v\n%s", tc.pkg, err, out)
			}
			for _, dep := range strings.Fields(string(out)) {
				for _, f := range tc.forbidden {
					if strings.HasPrefix(dep, f) {
						t.Errorf("%s depends on %s", tc.pkg, dep)
					}
				}
			}
		})
	}
}

// TestMainImportsOnlyWiring checks package main's own imports (not its
// dependencies'): it may reach the daemon, the plan and the file formats,
// never the kernel, the data path or the sockets directly.
func TestMainImportsOnlyWiring(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{join .Imports "\n"}}`, module+"cmd/overlayd").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, imp := range strings.Fields(string(out)) {
		for _, f := range []string{module + "kernel", module + "dataplane", module + "conn", module + "encap", "github.com/vishvananda/", "github.com/prometheus/", "golang.zx2c4.com/"} {
			if strings.HasPrefix(imp, f) {
				t.Errorf("package main imports %s: that belongs in the daemon", imp)
			}
		}
	}
}
