package testbed

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/plan"
)

// TestFelixVXLAN: workloads on node A and node C, each behind the kernel's
// VXLAN set up from a cluster file, reach each other across the router,
// and their traffic crosses the underlay inside VXLAN.
func TestFelixVXLAN(t *testing.T) {
	Require(t)
	cfg, err := config.Load(filepath.Join("..", "..", "examples", "vxlan-always.toml"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.Build(cfg, "node-a", DefaultMTU)
	if err != nil {
		t.Fatal(err)
	}
	b := NewStandard(t, Options{WorkloadMTU: p.TunnelMTU})
	wa, err := b.AddNodeWorkload(cfg.Node("node-a"))
	if err != nil {
		t.Fatal(err)
	}
	wc, err := b.AddNodeWorkload(cfg.Node("node-c"))
	if err != nil {
		t.Fatal(err)
	}
	if wa.Addr.Addr() != WorkloadAddr(cfg.Node("node-a").Blocks[0].Prefix) || wa.Name != "wa" {
		t.Errorf("node A's workload: %s at %v", wa.Name, wa.Addr)
	}
	for self, peer := range map[string]string{"node-a": "node-c", "node-c": "node-a"} {
		if err := b.Host(self).AddFelixVXLAN(cfg, peer); errors.Is(err, ErrNoKernelVXLAN) {
			t.Skipf("%v", err)
		} else if err != nil {
			t.Fatal(err)
		}
	}
	capture, err := b.Host("node-a").Capture("eth0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := wa.Ping(ctx, wc.Addr.Addr(), 2); err != nil {
		t.Fatal(err)
	}
	vxlan := 0
	for _, pkt := range capture.Stop() {
		if kind, _, inner, vni := Carried(pkt); kind == CarriedVXLAN && inner != nil && vni == cfg.VXLAN.VNI {
			vxlan++
		}
	}
	if vxlan < 4 {
		t.Errorf("%d VXLAN frames with VNI %d on node A's underlay, want the 2 requests and 2 replies", vxlan, cfg.VXLAN.VNI)
	}
}
