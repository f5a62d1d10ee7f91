package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/overlayd/overlayd/config"
)

// cluster writes a cluster file of two nodes, node-a with one /26 block of
// a VXLAN pool and node-b with its own, and loads it.
func cluster(t *testing.T, extra string) *config.Cluster {
	t.Helper()
	path := filepath.Join(t.TempDir(), "cluster.toml")
	data := `
[datastore]
stateDir = "` + t.TempDir() + `"

[[pools]]
name = "vx"
cidr = "192.168.0.0/16"
vxlanMode = "Always"
blockSize = 26

[[pools]]
name = "plain"
cidr = "10.1.0.0/16"
blockSize = 26

[[pools]]
name = "off"
cidr = "10.2.0.0/16"
blockSize = 26
disabled = true

[[nodes]]
name = "node-a"
address = "198.18.1.10/24"
blocks = ["192.168.0.0/26"` + extra + `]

[[nodes]]
name = "node-b"
address = "198.18.1.11/24"
blocks = ["192.168.0.64/26"]
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

func store(t *testing.T, c *config.Cluster, node string) *FileStore {
	t.Helper()
	s, err := NewFileStore(Dir(c), c, node)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestFileStoreAssignsInCalicosOrder(t *testing.T) {
	c := cluster(t, "")
	s := store(t, c, "node-a")
	ctx := context.Background()
	want := []string{"192.168.0.1", "192.168.0.2", "192.168.0.3"}
	for i, w := range want {
		a, err := s.Assign(ctx, Request{Handle: Handle("net", fmt.Sprint("c", i), "eth0")})
		if err != nil {
			t.Fatal(err)
		}
		if a.Addr.String() != w {
			t.Errorf("assignment %d: got %v, want %s (the tunnel address 192.168.0.0 is reserved)", i, a.Addr, w)
		}
	}
	t.Run("a repeated assign returns the handle's address", func(t *testing.T) {
		a, err := s.Assign(ctx, Request{Handle: Handle("net", "c1", "eth0")})
		if err != nil || a.Addr.String() != "192.168.0.2" {
			t.Fatalf("got %v, %v; want 192.168.0.2", a.Addr, err)
		}
	})
	t.Run("a released address goes to the back of the queue", func(t *testing.T) {
		freed, err := s.Release(ctx, Handle("net", "c0", "eth0"))
		if err != nil || len(freed) != 1 || freed[0].String() != "192.168.0.1" {
			t.Fatalf("release: %v, %v", freed, err)
		}
		a, err := s.Assign(ctx, Request{Handle: Handle("net", "c9", "eth0")})
		if err != nil || a.Addr.String() != "192.168.0.4" {
			t.Fatalf("got %v, %v; want 192.168.0.4", a.Addr, err)
		}
	})
	t.Run("releasing a handle that holds nothing succeeds", func(t *testing.T) {
		freed, err := s.Release(ctx, Handle("net", "never", "eth0"))
		if err != nil || len(freed) != 0 {
			t.Fatalf("got %v, %v", freed, err)
		}
	})
	t.Run("the tunnel address cannot be released", func(t *testing.T) {
		if _, err := s.Release(ctx, "vxlan-tunnel-addr-node-a"); err == nil {
			t.Fatal("released the tunnel address")
		}
	})
	t.Run("a second store of the node sees the same state", func(t *testing.T) {
		use, err := store(t, c, "node-a").Blocks(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(use) != 1 || use[0].Workloads() != 3 || !use[0].Allocations[0].Tunnel {
			t.Fatalf("blocks: %+v", use)
		}
	})
}

func TestFileStoreConcurrentAssignsFillOneBlockExactly(t *testing.T) {
	c := cluster(t, "")
	ctx := context.Background()
	const tries = 70
	var wg sync.WaitGroup
	addrs := make([]netip.Addr, tries)
	errs := make([]error, tries)
	for i := range tries {
		wg.Go(func() {
			// A store per goroutine, as each plugin process has its own.
			s := store(t, c, "node-a")
			a, err := s.Assign(ctx, Request{Handle: Handle("net", fmt.Sprint("c", i), "eth0")})
			addrs[i], errs[i] = a.Addr, err
		})
	}
	wg.Wait()
	seen := map[netip.Addr]bool{}
	full := 0
	for i, err := range errs {
		switch {
		case errors.Is(err, ErrBlocksFull):
			full++
			if !strings.Contains(err.Error(), "192.168.0.0/26") || !strings.Contains(err.Error(), "node-a") {
				t.Errorf("the full error does not name the node and its block: %v", err)
			}
		case err != nil:
			t.Errorf("assign %d: %v", i, err)
		case seen[addrs[i]]:
			t.Errorf("%v handed out twice", addrs[i])
		default:
			seen[addrs[i]] = true
		}
	}
	if len(seen) != 63 || full != 7 {
		t.Errorf("got %d addresses and %d full errors, want 63 and 7 (a /26 less the tunnel address)", len(seen), full)
	}
}

func TestFileStorePools(t *testing.T) {
	c := cluster(t, `, "10.1.0.0/26"`)
	s := store(t, c, "node-a")
	ctx := context.Background()
	tests := []struct {
		name    string
		pools   []string
		want    string
		wantErr error
	}{
		{"no pool named: the first block", nil, "192.168.0.1", nil},
		{"the second pool named", []string{"plain"}, "10.1.0.0", nil},
		{"an unknown pool", []string{"nope"}, "", ErrUnknownPool},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := s.Assign(ctx, Request{Handle: Handle("net", fmt.Sprint("p", i), "eth0"), Pools: tt.pools})
			if !errors.Is(err, tt.wantErr) || (err == nil && a.Addr.String() != tt.want) {
				t.Fatalf("got %v, %v; want %s, %v", a.Addr, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestFileStoreRejectsForeignNode(t *testing.T) {
	c := cluster(t, "")
	if _, err := NewFileStore(Dir(c), c, "node-z"); err == nil || !strings.Contains(err.Error(), "node-z") {
		t.Fatalf("got %v, want an error naming node-z", err)
	}
}

func TestHandleNetwork(t *testing.T) {
	tests := []struct {
		handle, network string
		ok              bool
	}{
		{Handle("overlayd", "abc", "eth0"), "overlayd", true},
		{"vxlan-tunnel-addr-node-a", "", false},
		{"k8s-pod-network.abc", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.handle, func(t *testing.T) {
			if n, ok := HandleNetwork(tt.handle); n != tt.network || ok != tt.ok {
				t.Fatalf("got %q %v", n, ok)
			}
		})
	}
}
