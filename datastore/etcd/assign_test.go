package etcd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/datastore/calico"
	"github.com/overlayd/overlayd/ipam"
	"github.com/overlayd/overlayd/pool"
)

// assignNode is the node the workload tests assign on; its Node resource
// carries assignLabels.
const assignNode = "node-a"

var assignLabels = map[string]string{"zone": "a"}

// newAssignEnv is an etcd holding pools and node-a's Node resource.
func newAssignEnv(t *testing.T, pools ...*calico.IPPool) *ipamEnv {
	t.Helper()
	e := newIPAMEnv(t)
	for _, p := range pools {
		e.put(e.keys.IPPool(p.Metadata.Name), p)
	}
	e.put(e.keys.Node(assignNode), calico.NewNode(calico.NodeInfo{
		Name: assignNode, Address: netip.MustParsePrefix("198.18.1.10/24"), Labels: assignLabels,
	}, "uid-"+assignNode, ipamTestNow))
	return e
}

// ensure makes node-a hold its block (and tunnel address) as overlayd's
// start does.
func (e *ipamEnv) ensure(pools ...*calico.IPPool) Claimed {
	e.t.Helper()
	c, err := e.ipam().EnsureBlocks(e.ctx(), Member{Name: assignNode, Labels: assignLabels}, pools)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// store opens a store of node-a with its own connection, as a plugin
// process does; edit changes the [datastore] section first.
func (e *ipamEnv) store(edit func(*config.Datastore)) *WorkloadStore {
	e.t.Helper()
	d := e.srv.Datastore()
	if edit != nil {
		edit(&d)
	}
	s, err := OpenWorkloadStore(e.ctx(), d, assignNode)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { s.Close() })
	return s
}

func workload(i int) ipam.Request {
	id := fmt.Sprint("c", i)
	return ipam.Request{
		Handle: ipam.Handle("overlayd", id, "eth0"),
		Attrs:  map[string]string{ipam.AttrNode: assignNode, ipam.AttrContainerID: id, ipam.AttrIfName: "eth0"},
	}
}

// nth is the address i after the block's first.
func nth(block netip.Prefix, i int) netip.Addr {
	a := block.Addr()
	for range i {
		a = a.Next()
	}
	return a
}

func TestWorkloadAssignInCalicosOrder(t *testing.T) {
	p := vxlanPool(t)
	e := newAssignEnv(t, p)
	blk := e.ensure(p).Blocks[0]
	s := e.store(nil)
	ctx := e.ctx()
	for i := range 3 {
		a, err := s.Assign(ctx, workload(i))
		if err != nil {
			t.Fatal(err)
		}
		if want := nth(blk, i+1); a.Addr != want || a.Block != blk {
			t.Errorf("assignment %d: got %v in %v, want %v in %v (ordinal 0 is the tunnel address)", i, a.Addr, a.Block, want, blk)
		}
	}

	t.Run("the handle key counts the address", func(t *testing.T) {
		h := e.handle(workload(1).Handle)
		if !maps.Equal(h.Block, map[string]int{blk.String(): 1}) {
			t.Fatalf("handle = %v", h.Block)
		}
	})
	t.Run("a repeated assign returns the handle's address", func(t *testing.T) {
		a, err := s.Assign(ctx, workload(1))
		if err != nil || a.Addr != nth(blk, 2) {
			t.Fatalf("got %v, %v; want %v", a.Addr, err, nth(blk, 2))
		}
		if h := e.handle(workload(1).Handle); h.Block[blk.String()] != 1 {
			t.Fatalf("the handle counts %d addresses after a repeated assign, want 1", h.Block[blk.String()])
		}
	})
	t.Run("lookup finds the handle's address", func(t *testing.T) {
		got, err := s.Lookup(ctx, workload(2).Handle)
		if err != nil || !slices.Equal(got, []netip.Addr{nth(blk, 3)}) {
			t.Fatalf("got %v, %v", got, err)
		}
	})
	t.Run("a released address goes to the back of the queue", func(t *testing.T) {
		freed, err := s.Release(ctx, workload(0).Handle)
		if err != nil || !slices.Equal(freed, []netip.Addr{nth(blk, 1)}) {
			t.Fatalf("release: %v, %v", freed, err)
		}
		if _, ok := e.all()[e.keys.Handle(workload(0).Handle)]; ok {
			t.Error("the released handle's key is still there")
		}
		if b := e.block(blk); b.Unallocated[len(b.Unallocated)-1] != 1 {
			t.Errorf("unallocated ends %v, want ordinal 1 last", b.Unallocated[len(b.Unallocated)-3:])
		}
		a, err := s.Assign(ctx, workload(9))
		if err != nil || a.Addr != nth(blk, 4) {
			t.Fatalf("got %v, %v; want %v", a.Addr, err, nth(blk, 4))
		}
	})
	t.Run("releasing a handle that holds nothing succeeds", func(t *testing.T) {
		for _, h := range []string{workload(0).Handle, ipam.Handle("overlayd", "never", "eth0")} {
			freed, err := s.Release(ctx, h)
			if err != nil || len(freed) != 0 {
				t.Fatalf("release %s: got %v, %v", h, freed, err)
			}
		}
	})
	t.Run("the tunnel address cannot be released", func(t *testing.T) {
		if _, err := s.Release(ctx, "vxlan-tunnel-addr-"+assignNode); err == nil {
			t.Fatal("released the tunnel handle")
		}
		if _, err := s.ReleaseAddr(ctx, blk.Addr()); err == nil {
			t.Fatal("released the tunnel address")
		}
		if b := e.block(blk); len(b.OrdinalsOf("vxlan-tunnel-addr-"+assignNode)) != 1 {
			t.Fatal("the tunnel allocation is gone")
		}
	})
	t.Run("blocks lists the allocations, the tunnel address marked", func(t *testing.T) {
		use, err := e.store(nil).Blocks(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(use) != 1 || use[0].CIDR != blk || use[0].Pool != p.Metadata.Name || use[0].Workloads() != 3 || use[0].Free != 64-4 {
			t.Fatalf("blocks: %+v", use)
		}
		if a := use[0].Allocations[0]; !a.Tunnel || a.Addr != blk.Addr() {
			t.Errorf("first allocation %+v, want the tunnel address", a)
		}
		if a := use[0].Allocations[1]; a.Tunnel || a.Handle != workload(1).Handle || a.Attrs[ipam.AttrContainerID] != "c1" {
			t.Errorf("second allocation %+v, want c1's", a)
		}
	})
	t.Run("release by address takes it off its handle", func(t *testing.T) {
		a, err := s.ReleaseAddr(ctx, nth(blk, 2))
		if err != nil || a.Handle != workload(1).Handle {
			t.Fatalf("got %+v, %v", a, err)
		}
		if _, ok := e.all()[e.keys.Handle(workload(1).Handle)]; ok {
			t.Error("the handle of the released address is still there")
		}
		if _, err := s.ReleaseAddr(ctx, nth(blk, 2)); !errors.Is(err, ErrNotFound) {
			t.Errorf("releasing it again: %v, want ErrNotFound", err)
		}
	})
}

// TestWorkloadAssignTakesAffineBlocksInKeyOrder: Calico tries a node's
// blocks in the order etcd lists its affinities, by key text, so
// 10.10.10.0/26 comes before 10.10.9.0/26.
func TestWorkloadAssignTakesAffineBlocksInKeyOrder(t *testing.T) {
	p := ipamPoolSpec(t, pool.Spec{Name: "plain", CIDR: "10.10.0.0/16"}, nil)
	e := newAssignEnv(t, p)
	for _, cidr := range []string{"10.10.9.0/26", "10.10.10.0/26"} {
		b, err := calico.NewBlock(netip.MustParsePrefix(cidr), assignNode, ipamTestNow)
		if err != nil {
			t.Fatal(err)
		}
		e.put(e.keys.Block(b.CIDR), b)
		e.put(e.keys.Affinity(assignNode, b.CIDR), calico.Affinity{State: calico.StateConfirmed})
	}
	a, err := e.store(nil).Assign(e.ctx(), workload(0))
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.MustParseAddr("10.10.10.0"); a.Addr != want {
		t.Fatalf("got %v, want %v (the first block by affinity key)", a.Addr, want)
	}
}

// TestWorkloadConcurrentAssigns runs 70 assigns at once for a node holding
// one /26 block (63 free addresses besides the tunnel's), each with its own
// connection, as 70 plugin processes would.
func TestWorkloadConcurrentAssigns(t *testing.T) {
	tests := []struct {
		name       string
		maxBlocks  int
		wantOK     int
		wantFull   int
		wantBlocks int
	}{
		{"without a block limit the 64th claims a second block", 0, 70, 0, 2},
		{"with maxBlocksPerNode = 1 seven find the block full", 1, 63, 7, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := vxlanPool(t)
			e := newAssignEnv(t, p)
			tunnel := e.ensure(p).TunnelAddr
			const tries = 70
			stores := make([]*WorkloadStore, tries)
			for i := range stores {
				stores[i] = e.store(func(d *config.Datastore) { d.MaxBlocksPerNode = tt.maxBlocks })
			}
			// Seventy processes racing for one block under the race
			// detector on a shared machine take longer than e.ctx allows.
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			addrs := make([]netip.Addr, tries)
			errs := make([]error, tries)
			var wg sync.WaitGroup
			for i := range tries {
				wg.Go(func() {
					a, err := stores[i].Assign(ctx, workload(i))
					addrs[i], errs[i] = a.Addr, err
				})
			}
			wg.Wait()

			seen := map[netip.Addr]int{}
			full := 0
			for i, err := range errs {
				var fe *ipam.BlocksFullError
				switch {
				case errors.As(err, &fe):
					full++
					if !errors.Is(err, ipam.ErrBlocksFull) || fe.Node != assignNode || len(fe.Blocks) != 1 || !strings.Contains(fe.Fix, "maxBlocksPerNode") {
						t.Errorf("assign %d: the full error does not name the node, its block and the limit: %v", i, err)
					}
				case err != nil:
					t.Errorf("assign %d: %v", i, err)
				case addrs[i] == tunnel:
					t.Errorf("assign %d got the tunnel address %v", i, tunnel)
				case seen[addrs[i]] > 0:
					t.Errorf("%v handed out twice (to c%d and c%d)", addrs[i], seen[addrs[i]]-1, i)
				default:
					seen[addrs[i]] = i + 1
				}
			}
			if len(seen) != tt.wantOK || full != tt.wantFull {
				t.Errorf("%d addresses and %d full errors, want %d and %d", len(seen), full, tt.wantOK, tt.wantFull)
			}

			use, err := e.store(nil).Blocks(ctx)
			if err != nil {
				t.Fatal(err)
			}
			workloads := 0
			for _, b := range use {
				workloads += b.Workloads()
			}
			if len(use) != tt.wantBlocks || workloads != tt.wantOK {
				t.Errorf("the node holds %d blocks with %d workloads, want %d with %d", len(use), workloads, tt.wantBlocks, tt.wantOK)
			}
			for i, err := range errs {
				if err != nil {
					continue
				}
				if h := e.handle(workload(i).Handle); len(h.Block) != 1 || slices.Collect(maps.Values(h.Block))[0] != 1 {
					t.Errorf("handle of c%d = %v, want one address", i, h.Block)
				}
			}
		})
	}
}

func TestWorkloadPools(t *testing.T) {
	vx := vxlanPool(t)
	plain := ipamPoolSpec(t, pool.Spec{Name: "plain", CIDR: "10.20.0.0/16"}, nil)
	elsewhere := ipamPoolSpec(t, pool.Spec{Name: "elsewhere", CIDR: "10.30.0.0/16", NodeSelector: "zone == 'b'"}, nil)
	off := ipamPoolSpec(t, pool.Spec{Name: "off", CIDR: "10.40.0.0/16", Disabled: true}, nil)
	tunnelOnly := ipamPoolSpec(t, pool.Spec{Name: "tunnel-only", CIDR: "10.50.0.0/16"}, func(p *calico.IPPool) {
		p.Spec.AllowedUses = []string{calico.AllowedUseTunnel}
	})
	e := newAssignEnv(t, vx, plain, elsewhere, off, tunnelOnly)
	blk := e.ensure(vx, plain, elsewhere, off, tunnelOnly).Blocks[0]
	s := e.store(nil)
	tests := []struct {
		name    string
		pools   []string
		within  netip.Prefix
		wantErr error
	}{
		{"no pool named: the node's block", nil, blk, nil},
		{"another pool named: a block claimed there", []string{"plain"}, netip.MustParsePrefix("10.20.0.0/16"), nil},
		{"a named pool's nodeSelector is ignored, as Calico does", []string{"elsewhere"}, netip.MustParsePrefix("10.30.0.0/16"), nil},
		{"an unknown pool", []string{"nope"}, netip.Prefix{}, ipam.ErrUnknownPool},
		{"a disabled pool", []string{"off"}, netip.Prefix{}, ipam.ErrUnknownPool},
		{"a pool without workload addresses", []string{"tunnel-only"}, netip.Prefix{}, ipam.ErrUnknownPool},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := workload(i)
			req.Pools = tt.pools
			a, err := s.Assign(e.ctx(), req)
			if !errors.Is(err, tt.wantErr) || (err == nil && !tt.within.Contains(a.Addr)) {
				t.Fatalf("got %v, %v; want an address in %v, error %v", a.Addr, err, tt.within, tt.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), tt.pools[0]) {
				t.Errorf("the error does not name the pool: %v", err)
			}
		})
	}
}

// TestWorkloadPoolExhausted: a pool of two /29 blocks, one another node's:
// when node-a's is full there is no block left to claim.
func TestWorkloadPoolExhausted(t *testing.T) {
	p := ipamPoolSpec(t, pool.Spec{Name: "tiny", CIDR: "10.60.0.0/28", BlockSize: 29}, nil)
	e := newAssignEnv(t, p)
	other := nthCandidate(p, assignNode, 1)
	b, err := calico.NewBlock(other, "node-b", ipamTestNow)
	if err != nil {
		t.Fatal(err)
	}
	e.put(e.keys.Block(other), b)
	e.put(e.keys.Affinity("node-b", other), calico.Affinity{State: calico.StateConfirmed})
	s := e.store(nil)
	for i := range 8 {
		if _, err := s.Assign(e.ctx(), workload(i)); err != nil {
			t.Fatalf("assign %d: %v", i, err)
		}
	}
	_, err = s.Assign(e.ctx(), workload(8))
	var fe *ipam.BlocksFullError
	if !errors.As(err, &fe) || !strings.Contains(fe.Fix, `"tiny"`) || !slices.Equal(fe.Blocks, []netip.Prefix{nthCandidate(p, assignNode, 0)}) || fe.InUse != 8 {
		t.Fatalf("got %v; want a full error naming pool tiny and the node's one block", err)
	}
	if got := e.block(other); got.InUse() != 0 {
		t.Errorf("node-b's block was used")
	}
}

func TestOpenWorkloadStoreNeedsTheNode(t *testing.T) {
	e := newIPAMEnv(t)
	_, err := OpenWorkloadStore(e.ctx(), e.srv.Datastore(), "node-z")
	if err == nil || !strings.Contains(err.Error(), `"node-z"`) {
		t.Fatalf("got %v, want an error naming node-z", err)
	}
}

// goldenNow is the clock of datastore/calico's golden values
// (golden_test.go testNow); the block below starts as theirs does.
var goldenNow = time.Date(2026, 12, 2, 16, 0, 0, 123456789, time.UTC)

// TestWorkloadValuesAreCalicos: after two assigns and a release, the block
// and the remaining handle in etcd are byte for byte the golden values that
// datastore/calico's golden test decodes with Calico's own structs.
func TestWorkloadValuesAreCalicos(t *testing.T) {
	p := ipamPoolSpec(t, pool.Spec{Name: "ippool-1", CIDR: "192.168.0.0/16", VXLANMode: "Always", BlockSize: 29}, nil)
	e := newAssignEnv(t, p)
	cidr := netip.MustParsePrefix("192.168.0.0/29")
	block, err := calico.NewBlock(cidr, assignNode, goldenNow)
	if err != nil {
		t.Fatal(err)
	}
	tunnelID, tunnelAttrs, err := calico.TunnelAllocation(assignNode, calico.AttrTypeVXLAN)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := block.Assign(1, tunnelID, tunnelAttrs); err != nil {
		t.Fatal(err)
	}
	block.SequenceNumber++
	tunnelHandle := calico.NewHandle()
	tunnelHandle.Increment(cidr, 1)
	e.put(e.keys.Block(cidr), block)
	e.put(e.keys.Affinity(assignNode, cidr), calico.Affinity{State: calico.StateConfirmed})
	e.put(e.keys.Handle(tunnelID), tunnelHandle)

	s := e.store(nil)
	for _, id := range []string{"c1", "c2"} {
		req := ipam.Request{Handle: ipam.Handle("overlayd", id, "eth0"), Attrs: map[string]string{
			ipam.AttrNode: assignNode, ipam.AttrContainerID: id, ipam.AttrIfName: "eth0", ipam.AttrNetwork: "overlayd",
			ipam.AttrTimestamp: goldenNow.String(),
		}}
		if _, err := s.Assign(e.ctx(), req); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Release(e.ctx(), ipam.Handle("overlayd", "c1", "eth0")); err != nil {
		t.Fatal(err)
	}
	kvs := e.all()
	for file, key := range map[string]string{
		"block-workload.json":  e.keys.Block(cidr),
		"handle-workload.json": e.keys.Handle(ipam.Handle("overlayd", "c2", "eth0")),
	} {
		t.Run(file, func(t *testing.T) {
			path := filepath.Join("..", "calico", "testdata", "overlayd", file)
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var golden bytes.Buffer
			if err := json.Compact(&golden, data); err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			if !bytes.Equal(kvs[key], golden.Bytes()) {
				t.Errorf("etcd holds at %s\n%s\nthe golden file %s holds\n%s", key, kvs[key], path, golden.Bytes())
			}
		})
	}
}
