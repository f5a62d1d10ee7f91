package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/ipam"
)

func TestReloadKeepsBlocksWithWorkloads(t *testing.T) {
	dir := t.TempDir()
	write := func(blocks string) *config.Cluster {
		t.Helper()
		path := filepath.Join(dir, "cluster.toml")
		data := `[datastore]
stateDir = "` + filepath.Join(dir, "state") + `"

[[pools]]
name = "p"
cidr = "192.168.0.0/16"
vxlanMode = "Always"

[[nodes]]
name = "node-a"
address = "198.18.1.10/24"
blocks = [` + blocks + `]
`
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := config.Load(path)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	both := write(`"192.168.0.0/26", "192.168.0.64/26"`)
	t.Run("no container ever attached", func(t *testing.T) {
		if err := workloadsKeepTheirBlocks(write(`"192.168.0.64/26"`), "node-a"); err != nil {
			t.Fatal(err)
		}
	})
	s, err := ipam.NewFileStore(ipam.Dir(both), both, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	a, err := s.Assign(context.Background(), ipam.Request{Handle: ipam.Handle("overlayd", "c1", "eth0")})
	if err != nil || a.Block.String() != "192.168.0.0/26" {
		t.Fatalf("assign: %v %v", a, err)
	}
	tests := []struct {
		name, blocks string
		refused      bool
	}{
		{"keeping the block", `"192.168.0.0/26"`, false},
		{"dropping an empty block", `"192.168.0.0/26"`, false},
		{"dropping the block of a container", `"192.168.0.64/26"`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := workloadsKeepTheirBlocks(write(tt.blocks), "node-a")
			if (err != nil) != tt.refused {
				t.Fatalf("got %v, refused want %v", err, tt.refused)
			}
			if err != nil && !strings.Contains(err.Error(), "192.168.0.0/26 (1 workload addresses)") {
				t.Errorf("the refusal does not name the block: %v", err)
			}
		})
	}
	t.Run("after the container is gone", func(t *testing.T) {
		if _, err := s.Release(context.Background(), ipam.Handle("overlayd", "c1", "eth0")); err != nil {
			t.Fatal(err)
		}
		if err := workloadsKeepTheirBlocks(write(`"192.168.0.64/26"`), "node-a"); err != nil {
			t.Fatal(err)
		}
	})
}
