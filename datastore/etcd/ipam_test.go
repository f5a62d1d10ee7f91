package etcd

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/overlayd/overlayd/datastore/calico"
	"github.com/overlayd/overlayd/internal/etcdtest"
	"github.com/overlayd/overlayd/pool"
)

var ipamTestNow = time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)

// ipamEnv is one embedded etcd and the keys the IPAM tests use.
type ipamEnv struct {
	t    *testing.T
	srv  *etcdtest.Server
	cli  *clientv3.Client
	keys calico.Keys
}

func newIPAMEnv(t *testing.T) *ipamEnv {
	t.Helper()
	srv := etcdtest.Start(t)
	return &ipamEnv{t: t, srv: srv, cli: ipamClient(t, srv), keys: calico.Keys{Prefix: calico.DefaultPrefix}}
}

func ipamClient(tb testing.TB, srv *etcdtest.Server) *clientv3.Client {
	tb.Helper()
	cli, err := Connect(srv.Datastore())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cli.Close() })
	return cli
}

func (e *ipamEnv) ipam() *IPAM { return NewIPAM(e.cli, e.keys, nil) }

func (e *ipamEnv) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	e.t.Cleanup(cancel)
	return ctx
}

// ipamPoolSpec is an IPPool as calicoctl stores it; edit changes it first.
func ipamPoolSpec(t testing.TB, spec pool.Spec, edit func(*calico.IPPool)) *calico.IPPool {
	t.Helper()
	p, err := calico.NewIPPool(spec, "uid-"+spec.Name, ipamTestNow)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(p)
	}
	return p
}

// all reads every key under the prefix.
func (e *ipamEnv) all() map[string][]byte {
	e.t.Helper()
	resp, err := e.cli.Get(e.ctx(), e.keys.Prefix+"/", clientv3.WithPrefix())
	if err != nil {
		e.t.Fatal(err)
	}
	kvs := map[string][]byte{}
	for _, kv := range resp.Kvs {
		kvs[string(kv.Key)] = kv.Value
	}
	return kvs
}

func (e *ipamEnv) put(key string, v any) {
	e.t.Helper()
	val, err := marshal(v)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.cli.Put(e.ctx(), key, val); err != nil {
		e.t.Fatal(err)
	}
}

func (e *ipamEnv) block(cidr netip.Prefix) *calico.Block {
	e.t.Helper()
	v, ok := e.all()[e.keys.Block(cidr)]
	if !ok {
		e.t.Fatalf("block %s is not in etcd", cidr)
	}
	b, err := calico.DecodeBlock(v)
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

func (e *ipamEnv) handle(id string) *calico.Handle {
	e.t.Helper()
	v, ok := e.all()[e.keys.Handle(id)]
	if !ok {
		e.t.Fatalf("handle %s is not in etcd", id)
	}
	h, err := calico.DecodeHandle(v)
	if err != nil {
		e.t.Fatal(err)
	}
	return h
}

func (e *ipamEnv) revision() int64 {
	e.t.Helper()
	resp, err := e.cli.Get(e.ctx(), "/")
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.Header.Revision
}

// nthCandidate is node's i-th candidate block of the pool.
func nthCandidate(p *calico.IPPool, node string, i int) netip.Prefix {
	v, err := p.Pool()
	if err != nil {
		panic(err)
	}
	n := 0
	for c := range candidates(v.CIDR, v.BlockSize, node) {
		if n == i {
			return c
		}
		n++
	}
	panic("fewer candidates than asked for")
}

func vxlanPool(t testing.TB) *calico.IPPool {
	return ipamPoolSpec(t, pool.Spec{Name: "pool-vxlan", CIDR: "10.10.0.0/16", VXLANMode: "Always"}, nil)
}

func TestClaimWritesCalicosThreeKeys(t *testing.T) {
	for _, c := range []struct {
		name     string
		spec     pool.Spec
		attrType string
		handle   string
	}{
		{"vxlan pool: VXLAN tunnel address", pool.Spec{Name: "p", CIDR: "10.10.0.0/16", VXLANMode: "Always"}, calico.AttrTypeVXLAN, "vxlan-tunnel-addr-node-a"},
		{"IP-in-IP pool: IPIP tunnel address", pool.Spec{Name: "p", CIDR: "10.10.0.0/16", IPIPMode: "CrossSubnet"}, calico.AttrTypeIPIP, "ipip-tunnel-addr-node-a"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newIPAMEnv(t)
			p := ipamPoolSpec(t, c.spec, nil)
			got, err := e.ipam().EnsureBlocks(e.ctx(), Member{Name: "node-a"}, []*calico.IPPool{p})
			if err != nil {
				t.Fatal(err)
			}
			want := nthCandidate(p, "node-a", 0)
			if !slices.Equal(got.Blocks, []netip.Prefix{want}) || !slices.Equal(got.New, got.Blocks) || got.Conflicts != 0 {
				t.Fatalf("Claimed = %+v; want the seeded candidate %s, newly claimed, no conflict", got, want)
			}
			if got.TunnelAddr != want.Addr() || got.TunnelType != c.attrType {
				t.Errorf("tunnel = %s %s; want %s %s", got.TunnelAddr, got.TunnelType, want.Addr(), c.attrType)
			}

			kvs := e.all()
			wantKeys := []string{e.keys.Affinity("node-a", want), e.keys.Block(want), e.keys.Handle(c.handle)}
			if keys := slices.Sorted(maps.Keys(kvs)); !slices.Equal(keys, slices.Sorted(slices.Values(wantKeys))) {
				t.Fatalf("etcd holds %q; want exactly %q", keys, wantKeys)
			}
			aff, err := calico.DecodeAffinity(kvs[wantKeys[0]])
			if err != nil || aff.State != calico.StateConfirmed || aff.Deleted {
				t.Errorf("affinity = %+v, %v; want confirmed", aff, err)
			}
			b := e.block(want)
			if host, ok := b.Host(); !ok || host != "node-a" || b.AffinityClaimTime == nil {
				t.Errorf("block affinity = %v (claimed %v); want host:node-a with a claim time", b.Affinity, b.AffinityClaimTime)
			}
			if ords := b.OrdinalsOf(c.handle); !slices.Equal(ords, []int{0}) || b.InUse() != 1 || b.Free() != b.Size()-1 {
				t.Errorf("ordinals of %s = %v, in use %d, free %d; want [0], 1, %d", c.handle, ords, b.InUse(), b.Free(), b.Size()-1)
			}
			attr := b.Attributes[*b.Allocations[0]]
			if !maps.Equal(attr.ActiveOwnerAttrs, map[string]string{calico.AttrNode: "node-a", calico.AttrType: c.attrType}) {
				t.Errorf("owner attributes = %v", attr.ActiveOwnerAttrs)
			}
			if seq := b.SequenceNumberForAllocation["0"]; seq+1 != b.SequenceNumber {
				t.Errorf("sequence numbers: block %d, allocation %d; want the block one update past the allocation", b.SequenceNumber, seq)
			}
			if h := e.handle(c.handle); !maps.Equal(h.Block, map[string]int{want.String(): 1}) || h.Deleted {
				t.Errorf("handle = %+v; want one address in %s", h, want)
			}
		})
	}
}

func TestEnsureBlocksAgainGivesTheSameBlocksAndWritesNothing(t *testing.T) {
	e := newIPAMEnv(t)
	pools := []*calico.IPPool{vxlanPool(t)}
	first, err := e.ipam().EnsureBlocks(e.ctx(), Member{Name: "node-a"}, pools)
	if err != nil {
		t.Fatal(err)
	}
	rev := e.revision()
	// A restart: a new client and a new IPAM.
	again, err := NewIPAM(ipamClient(t, e.srv), e.keys, nil).EnsureBlocks(e.ctx(), Member{Name: "node-a"}, pools)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(again.Blocks, first.Blocks) || again.TunnelAddr != first.TunnelAddr || again.TunnelType != first.TunnelType || len(again.New) != 0 {
		t.Errorf("after a restart: %+v; want %+v with nothing new", again, first)
	}
	if r := e.revision(); r != rev {
		t.Errorf("the second EnsureBlocks wrote to etcd (revision %d -> %d)", rev, r)
	}
}

func TestEnsureBlocksAdoptsWhatANodeAlreadyHolds(t *testing.T) {
	p := vxlanPool(t)
	seeded := nthCandidate(p, "node-a", 0)
	const handle = "vxlan-tunnel-addr-node-a"
	for _, c := range []struct {
		name       string
		setup      func(e *ipamEnv)
		wantBlock  netip.Prefix
		wantTunnel netip.Addr
	}{
		{
			name: "a claim written before a crash (no Claimed returned)",
			setup: func(e *ipamEnv) {
				if _, won, err := e.ipam().tryClaim(e.ctx(), "node-a", seeded, calico.AttrTypeVXLAN); err != nil || !won {
					t.Fatalf("tryClaim = %v, %v", won, err)
				}
			},
			wantBlock: seeded, wantTunnel: seeded.Addr(),
		},
		{
			name: "a pending affinity of its own block (Calico's claim interrupted) is confirmed",
			setup: func(e *ipamEnv) {
				other := nthCandidate(p, "node-a", 5)
				b, _ := calico.NewBlock(other, "node-a", ipamTestNow)
				e.put(e.keys.Block(other), b)
				e.put(e.keys.Affinity("node-a", other), calico.Affinity{State: calico.StatePending})
			},
			wantBlock: nthCandidate(p, "node-a", 5), wantTunnel: nthCandidate(p, "node-a", 5).Addr(),
		},
		{
			name: "its block without an affinity key: the claim conflicts and adopts it",
			setup: func(e *ipamEnv) {
				b, _ := calico.NewBlock(seeded, "node-a", ipamTestNow)
				e.put(e.keys.Block(seeded), b)
			},
			wantBlock: seeded, wantTunnel: seeded.Addr(),
		},
		{
			name: "a block calico-node made with a workload and no tunnel address yet",
			setup: func(e *ipamEnv) {
				other := nthCandidate(p, "node-a", 3)
				b, _ := calico.NewBlock(other, "node-a", ipamTestNow)
				if _, err := b.Assign(1, "k8s-pod-network.abc", map[string]string{"pod": "web"}); err != nil {
					t.Fatal(err)
				}
				e.put(e.keys.Block(other), b)
				e.put(e.keys.Affinity("node-a", other), calico.Affinity{State: calico.StateConfirmed})
			},
			wantBlock: nthCandidate(p, "node-a", 3), wantTunnel: nthCandidate(p, "node-a", 3).Addr().Next(),
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newIPAMEnv(t)
			c.setup(e)
			// A block that existed without the tunnel address gets it in
			// an update, which increments its sequence number.
			var updateFrom *uint64
			if v, ok := e.all()[e.keys.Block(c.wantBlock)]; ok {
				if b, _ := calico.DecodeBlock(v); len(b.OrdinalsOf(handle)) == 0 {
					updateFrom = &b.SequenceNumber
				}
			}
			got, err := e.ipam().EnsureBlocks(e.ctx(), Member{Name: "node-a"}, []*calico.IPPool{p})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.Blocks, []netip.Prefix{c.wantBlock}) || got.TunnelAddr != c.wantTunnel {
				t.Fatalf("Claimed = %+v; want block %s, tunnel %s", got, c.wantBlock, c.wantTunnel)
			}
			aff, err := calico.DecodeAffinity(e.all()[e.keys.Affinity("node-a", c.wantBlock)])
			if err != nil || !aff.Confirmed() {
				t.Errorf("affinity = %+v, %v; want confirmed", aff, err)
			}
			b := e.block(c.wantBlock)
			ords := b.OrdinalsOf(handle)
			if len(ords) != 1 || b.Addr(ords[0]) != c.wantTunnel {
				t.Errorf("tunnel ordinals = %v; want the one of %s", ords, c.wantTunnel)
			}
			if updateFrom != nil && b.SequenceNumber != *updateFrom+1 {
				t.Errorf("the tunnel address was allocated in an update that took the sequence number from %d to %d; want +1", *updateFrom, b.SequenceNumber)
			}
			if h := e.handle(handle); h.Block[c.wantBlock.String()] != 1 || len(h.Block) != 1 {
				t.Errorf("handle = %v; want one address in %s", h.Block, c.wantBlock)
			}
		})
	}
}

func TestStaleAffinitiesAreDeleted(t *testing.T) {
	e := newIPAMEnv(t)
	p := vxlanPool(t)
	others := nthCandidate(p, "node-a", 2)
	b, _ := calico.NewBlock(others, "node-b", ipamTestNow)
	e.put(e.keys.Block(others), b)
	e.put(e.keys.Affinity("node-a", others), calico.Affinity{State: calico.StateConfirmed})
	missing := nthCandidate(p, "node-a", 4)
	e.put(e.keys.Affinity("node-a", missing), calico.Affinity{State: calico.StatePending})

	got, err := e.ipam().EnsureBlocks(e.ctx(), Member{Name: "node-a"}, []*calico.IPPool{p})
	if err != nil {
		t.Fatal(err)
	}
	if want := nthCandidate(p, "node-a", 0); !slices.Equal(got.Blocks, []netip.Prefix{want}) {
		t.Errorf("blocks = %v; want only its new %s", got.Blocks, want)
	}
	kvs := e.all()
	for _, cidr := range []netip.Prefix{others, missing} {
		if _, ok := kvs[e.keys.Affinity("node-a", cidr)]; ok {
			t.Errorf("the stale affinity for %s is still there", cidr)
		}
	}
	if h, _ := e.block(others).Host(); h != "node-b" {
		t.Errorf("the other node's block now names %q", h)
	}
}

func TestAConflictMovesToTheNextCandidate(t *testing.T) {
	e := newIPAMEnv(t)
	p := vxlanPool(t)
	// Another node holds node-a's first two candidates.
	for i := range 2 {
		cidr := nthCandidate(p, "node-a", i)
		b, _ := calico.NewBlock(cidr, "node-b", ipamTestNow)
		e.put(e.keys.Block(cidr), b)
		e.put(e.keys.Affinity("node-b", cidr), calico.Affinity{State: calico.StateConfirmed})
	}
	got, err := e.ipam().EnsureBlocks(e.ctx(), Member{Name: "node-a"}, []*calico.IPPool{p})
	if err != nil {
		t.Fatal(err)
	}
	if want := nthCandidate(p, "node-a", 2); !slices.Equal(got.Blocks, []netip.Prefix{want}) || got.TunnelAddr != want.Addr() {
		t.Errorf("Claimed = %+v; want %s, its third candidate", got, want)
	}
	if got.Conflicts != 1 {
		t.Errorf("conflicts = %d; want 1 (the blind try of the seeded candidate; the list skips the second)", got.Conflicts)
	}
	for i := range 2 {
		if h, _ := e.block(nthCandidate(p, "node-a", i)).Host(); h != "node-b" {
			t.Errorf("candidate %d now names %q; want node-b's block untouched", i, h)
		}
	}
}

func TestWhichPoolANodeClaimsFrom(t *testing.T) {
	spec := func(name, cidr string) pool.Spec {
		return pool.Spec{Name: name, CIDR: cidr, VXLANMode: "Always", BlockSize: 26}
	}
	disabled := ipamPoolSpec(t, pool.Spec{Name: "disabled", CIDR: "10.1.0.0/16", VXLANMode: "Always", Disabled: true}, nil)
	rackA := ipamPoolSpec(t, pool.Spec{Name: "rack-a", CIDR: "10.2.0.0/16", VXLANMode: "Always", NodeSelector: "rack == 'a'"}, nil)
	// Calico refuses a LoadBalancer pool with encapsulation, so this one has none.
	lbOnly := ipamPoolSpec(t, pool.Spec{Name: "lb-only", CIDR: "10.3.0.0/16"}, func(p *calico.IPPool) { p.Spec.AllowedUses = []string{calico.AllowedUseLoadBalancer} })
	manual := ipamPoolSpec(t, spec("manual", "10.4.0.0/16"), func(p *calico.IPPool) { p.Spec.AssignmentMode = "Manual" })
	workloadOnly := ipamPoolSpec(t, spec("workload-only", "10.5.0.0/16"), func(p *calico.IPPool) { p.Spec.AllowedUses = []string{calico.AllowedUseWorkload} })
	tunnelOnly := ipamPoolSpec(t, spec("tunnel-only", "10.6.0.0/16"), func(p *calico.IPPool) { p.Spec.AllowedUses = []string{calico.AllowedUseTunnel} })
	direct := ipamPoolSpec(t, pool.Spec{Name: "direct", CIDR: "10.7.0.0/16"}, nil)
	everyone := ipamPoolSpec(t, spec("everyone", "10.8.0.0/16"), nil)

	for _, c := range []struct {
		name       string
		labels     map[string]string
		pools      []*calico.IPPool
		wantPool   *calico.IPPool // nil: no block
		wantTunnel bool
	}{
		{"a disabled pool is skipped", nil, []*calico.IPPool{disabled, everyone}, everyone, true},
		{"a nodeSelector that selects the node", map[string]string{"rack": "a"}, []*calico.IPPool{disabled, rackA, everyone}, rackA, true},
		{"a nodeSelector that does not", map[string]string{"rack": "b"}, []*calico.IPPool{rackA, everyone}, everyone, true},
		{"a LoadBalancer-only pool is skipped", nil, []*calico.IPPool{lbOnly, everyone}, everyone, true},
		{"a Manual pool is skipped", nil, []*calico.IPPool{manual, everyone}, everyone, true},
		{"a workload-only pool gives a block but no tunnel address", nil, []*calico.IPPool{workloadOnly}, workloadOnly, false},
		{"a tunnel-only pool gives a block and the tunnel address", nil, []*calico.IPPool{tunnelOnly}, tunnelOnly, true},
		{"a pool without encapsulation gives no tunnel address", nil, []*calico.IPPool{direct}, direct, false},
		{"no pool selects the node: no block and no error", map[string]string{"rack": "b"}, []*calico.IPPool{disabled, rackA, lbOnly, manual}, nil, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newIPAMEnv(t)
			got, err := e.ipam().EnsureBlocks(e.ctx(), Member{Name: "node-a", Labels: c.labels}, c.pools)
			if err != nil {
				t.Fatal(err)
			}
			if c.wantPool == nil {
				if len(got.Blocks) != 0 || got.TunnelAddr.IsValid() || len(e.all()) != 0 {
					t.Errorf("Claimed = %+v, etcd holds %d keys; want nothing", got, len(e.all()))
				}
				return
			}
			if want := nthCandidate(c.wantPool, "node-a", 0); !slices.Equal(got.Blocks, []netip.Prefix{want}) {
				t.Errorf("blocks = %v; want %s of pool %s", got.Blocks, want, c.wantPool.Metadata.Name)
			}
			if got.TunnelAddr.IsValid() != c.wantTunnel {
				t.Errorf("tunnel address = %s; want one: %v", got.TunnelAddr, c.wantTunnel)
			}
		})
	}
}

func TestBlockLimitAndFullPool(t *testing.T) {
	t.Run("a node at MaxBlocksPerNode may not claim a block of a new pool", func(t *testing.T) {
		e := newIPAMEnv(t)
		rackA := ipamPoolSpec(t, pool.Spec{Name: "rack-a", CIDR: "10.2.0.0/16", NodeSelector: "rack == 'a'"}, nil)
		rackB := ipamPoolSpec(t, pool.Spec{Name: "rack-b", CIDR: "10.3.0.0/16", NodeSelector: "rack == 'b'"}, nil)
		m := e.ipam()
		m.MaxBlocksPerNode = 1
		first, err := m.EnsureBlocks(e.ctx(), Member{Name: "node-a", Labels: map[string]string{"rack": "a"}}, []*calico.IPPool{rackA, rackB})
		if err != nil {
			t.Fatal(err)
		}
		// Relabelled: rack-b now selects it, and it holds one block already.
		_, err = m.EnsureBlocks(e.ctx(), Member{Name: "node-a", Labels: map[string]string{"rack": "b"}}, []*calico.IPPool{rackA, rackB})
		if !errors.Is(err, ErrBlockLimit) {
			t.Fatalf("err = %v; want ErrBlockLimit", err)
		}
		for _, part := range []string{`"node-a"`, first.Blocks[0].String(), "limit of 1", `"rack-b"`} {
			if !strings.Contains(err.Error(), part) {
				t.Errorf("error %q does not name %s", err, part)
			}
		}
		m.MaxBlocksPerNode = 2
		got, err := m.EnsureBlocks(e.ctx(), Member{Name: "node-a", Labels: map[string]string{"rack": "b"}}, []*calico.IPPool{rackA, rackB})
		if err != nil || len(got.Blocks) != 2 {
			t.Errorf("with a limit of 2: %+v, %v; want both blocks", got, err)
		}
	})
	t.Run("a full pool is an error naming it", func(t *testing.T) {
		e := newIPAMEnv(t)
		one := ipamPoolSpec(t, pool.Spec{Name: "tiny", CIDR: "10.9.0.0/26", VXLANMode: "Always"}, nil)
		if _, err := e.ipam().EnsureBlocks(e.ctx(), Member{Name: "node-a"}, []*calico.IPPool{one}); err != nil {
			t.Fatal(err)
		}
		_, err := e.ipam().EnsureBlocks(e.ctx(), Member{Name: "node-b"}, []*calico.IPPool{one})
		if !errors.Is(err, ErrPoolFull) || !strings.Contains(err.Error(), `pool "tiny"`) || !strings.Contains(err.Error(), `"node-b"`) {
			t.Errorf("err = %v; want ErrPoolFull naming pool tiny and node-b", err)
		}
	})
}

func TestReleaseNode(t *testing.T) {
	e := newIPAMEnv(t)
	one := ipamPoolSpec(t, pool.Spec{Name: "tiny", CIDR: "10.9.0.0/26", VXLANMode: "Always"}, nil)
	got, err := e.ipam().EnsureBlocks(e.ctx(), Member{Name: "node-a"}, []*calico.IPPool{one})
	if err != nil {
		t.Fatal(err)
	}
	cidr := got.Blocks[0]
	// Two workloads: one handle with two addresses here, as the CNI
	// plugin would have written them.
	const pod = "k8s-pod-network.abc.eth0"
	b := e.block(cidr)
	if _, err := b.Assign(2, pod, map[string]string{"pod": "web"}); err != nil {
		t.Fatal(err)
	}
	b.SequenceNumber++
	e.put(e.keys.Block(cidr), b)
	h := calico.NewHandle()
	h.Increment(cidr, 2)
	h.Increment(netip.MustParsePrefix("10.99.0.0/26"), 1) // another block keeps it alive
	e.put(e.keys.Handle(pod), h)
	// Another node's keys must stay.
	otherPool := ipamPoolSpec(t, pool.Spec{Name: "other", CIDR: "10.8.0.0/16", VXLANMode: "Always"}, nil)
	if _, err := e.ipam().EnsureBlocks(e.ctx(), Member{Name: "node-b"}, []*calico.IPPool{otherPool}); err != nil {
		t.Fatal(err)
	}
	keep := e.all()

	rel, err := e.ipam().ReleaseNode(e.ctx(), "node-a")
	if err != nil {
		t.Fatal(err)
	}
	if want := (Released{Blocks: []netip.Prefix{cidr}, Handles: []string{pod, "vxlan-tunnel-addr-node-a"}}); !slices.Equal(rel.Blocks, want.Blocks) || !slices.Equal(rel.Handles, want.Handles) {
		t.Errorf("Released = %+v; want %+v", rel, want)
	}
	kvs := e.all()
	for _, k := range []string{e.keys.Block(cidr), e.keys.Affinity("node-a", cidr), e.keys.Handle("vxlan-tunnel-addr-node-a")} {
		if _, ok := kvs[k]; ok {
			t.Errorf("%s is still there", k)
		}
	}
	if h := e.handle(pod); !maps.Equal(h.Block, map[string]int{"10.99.0.0/26": 1}) {
		t.Errorf("the workload handle = %v; want only its address in the other block", h.Block)
	}
	for k, v := range keep {
		if strings.Contains(k, "node-b") && string(kvs[k]) != string(v) {
			t.Errorf("node-b's %s changed", k)
		}
	}
	if again, err := e.ipam().ReleaseNode(e.ctx(), "node-a"); err != nil || len(again.Blocks) != 0 {
		t.Errorf("releasing again = %+v, %v; want nothing and no error", again, err)
	}
	got, err = e.ipam().EnsureBlocks(e.ctx(), Member{Name: "node-c"}, []*calico.IPPool{one})
	if err != nil || !slices.Equal(got.Blocks, []netip.Prefix{cidr}) || got.TunnelAddr != cidr.Addr() {
		t.Errorf("a new node after the release: %+v, %v; want the freed %s", got, err, cidr)
	}
}

// TestManyNodesRaceForOnePool: 50 nodes claim at once from a pool of 16
// blocks, on a few clients. Exactly 16 win; the others fail with ErrPoolFull;
// every block has one owner and its keys agree.
func TestManyNodesRaceForOnePool(t *testing.T) {
	e := newIPAMEnv(t)
	small := ipamPoolSpec(t, pool.Spec{Name: "small", CIDR: "10.20.0.0/24", VXLANMode: "Always", BlockSize: 28}, nil)
	const nodes, clients = 50, 5
	var ipams [clients]*IPAM
	for i := range ipams {
		ipams[i] = NewIPAM(ipamClient(t, e.srv), e.keys, nil)
	}
	results := make([]Claimed, nodes)
	errs := make([]error, nodes)
	var wg sync.WaitGroup
	start := make(chan struct{})
	ctx := e.ctx()
	for i := range nodes {
		wg.Go(func() {
			<-start
			results[i], errs[i] = ipams[i%clients].EnsureBlocks(ctx, Member{Name: fmt.Sprintf("node-%02d", i)}, []*calico.IPPool{small})
		})
	}
	close(start)
	wg.Wait()

	owner := map[netip.Prefix]string{}
	won, full, conflicts := 0, 0, 0
	for i, c := range results {
		name := fmt.Sprintf("node-%02d", i)
		conflicts += c.Conflicts
		switch {
		case errs[i] == nil:
			won++
			if len(c.Blocks) != 1 || c.TunnelAddr != c.Blocks[0].Addr() {
				t.Errorf("%s: %+v; want one block with its first address as tunnel address", name, c)
				continue
			}
			if prev, dup := owner[c.Blocks[0]]; dup {
				t.Errorf("%s and %s both got %s", prev, name, c.Blocks[0])
			}
			owner[c.Blocks[0]] = name
		case errors.Is(errs[i], ErrPoolFull):
			full++
			if !strings.Contains(errs[i].Error(), `pool "small"`) {
				t.Errorf("%s: %v; want the pool named", name, errs[i])
			}
		default:
			t.Errorf("%s: %v", name, errs[i])
		}
	}
	if won != 16 || full != nodes-16 {
		t.Errorf("%d claimed, %d found the pool full; want 16 and %d", won, full, nodes-16)
	}
	t.Logf("%d nodes, %d claims, %d full, %d conflicts", nodes, won, full, conflicts)
	checkIPAMConsistent(t, e, owner)
}

// checkIPAMConsistent checks etcd against owner (block -> node): every
// block names its owner, has exactly that node's confirmed affinity, and
// every handle counts exactly what the blocks allocate to it.
func checkIPAMConsistent(t *testing.T, e *ipamEnv, owner map[netip.Prefix]string) {
	t.Helper()
	blocks := map[netip.Prefix]*calico.Block{}
	affinities := map[netip.Prefix][]string{}
	handles := map[string]*calico.Handle{}
	for k, v := range e.all() {
		key, err := e.keys.Parse(k)
		if err != nil {
			t.Errorf("%s: %v", k, err)
			continue
		}
		switch key.Kind {
		case calico.KindBlock:
			if blocks[key.CIDR], err = calico.DecodeBlock(v); err != nil {
				t.Error(err)
			}
		case calico.KindAffinity:
			a, err := calico.DecodeAffinity(v)
			if err != nil || !a.Confirmed() {
				t.Errorf("affinity %s: %+v, %v; want confirmed", k, a, err)
			}
			affinities[key.CIDR] = append(affinities[key.CIDR], key.Name)
		case calico.KindHandle:
			if handles[key.Name], err = calico.DecodeHandle(v); err != nil {
				t.Error(err)
			}
		}
	}
	if len(blocks) != len(owner) {
		t.Errorf("%d blocks in etcd; want %d", len(blocks), len(owner))
	}
	counted := map[string]map[string]int{}
	for cidr, b := range blocks {
		host, _ := b.Host()
		if host != owner[cidr] {
			t.Errorf("block %s names %q; the node that claimed it is %q", cidr, host, owner[cidr])
		}
		if !slices.Equal(affinities[cidr], []string{host}) {
			t.Errorf("block %s of %q: affinities of %q", cidr, host, affinities[cidr])
		}
		for _, a := range b.Attributes {
			if a.HandleID == nil {
				continue
			}
			if counted[*a.HandleID] == nil {
				counted[*a.HandleID] = map[string]int{}
			}
			counted[*a.HandleID][cidr.String()] = len(b.OrdinalsOf(*a.HandleID))
		}
	}
	for cidr, nodes := range affinities {
		if _, ok := blocks[cidr]; !ok {
			t.Errorf("affinities %q for %s, which has no block", nodes, cidr)
		}
	}
	if len(handles) != len(counted) {
		t.Errorf("%d handles in etcd; the blocks allocate to %d", len(handles), len(counted))
	}
	for id, h := range handles {
		if !maps.Equal(h.Block, counted[id]) {
			t.Errorf("handle %s counts %v; the blocks allocate %v", id, h.Block, counted[id])
		}
	}
}

func TestCandidatesCoverThePoolOnceFromTheSeed(t *testing.T) {
	for _, c := range []struct {
		name string
		cidr string
		bs   int
	}{
		{"16 blocks", "10.20.0.0/24", 28},
		{"one block", "10.20.0.0/26", 26},
		{"a /32 block pool", "10.20.0.0/28", 32},
	} {
		t.Run(c.name, func(t *testing.T) {
			cidr := netip.MustParsePrefix(c.cidr)
			n := 1 << (c.bs - cidr.Bits())
			starts := map[netip.Prefix]bool{}
			for i := range 20 {
				node := fmt.Sprintf("node-%d", i)
				seen := map[netip.Prefix]bool{}
				var first netip.Prefix
				for b := range candidates(cidr, c.bs, node) {
					if !first.IsValid() {
						first = b
					}
					if seen[b] || b.Bits() != c.bs || !cidr.Contains(b.Addr()) || b.Masked() != b {
						t.Fatalf("%s: candidate %s repeated or not a block of %s", node, b, cidr)
					}
					seen[b] = true
				}
				if len(seen) != n {
					t.Fatalf("%s: %d candidates; want %d", node, len(seen), n)
				}
				starts[first] = true
			}
			if n >= 16 && len(starts) < 5 {
				t.Errorf("20 nodes start at only %d distinct blocks; want them spread", len(starts))
			}
		})
	}
}

func TestATunnelAddressFollowsThePoolsMode(t *testing.T) {
	ipip := ipamPoolSpec(t, pool.Spec{Name: "p", CIDR: "10.10.0.0/16", IPIPMode: "Always"}, nil)
	vxlan := ipamPoolSpec(t, pool.Spec{Name: "p", CIDR: "10.10.0.0/16", VXLANMode: "Always"}, nil)
	direct := ipamPoolSpec(t, pool.Spec{Name: "p", CIDR: "10.10.0.0/16"}, nil)
	for _, c := range []struct {
		name     string
		after    *calico.IPPool
		wantType string // "": no tunnel address
		wantOrd  int
	}{
		{"IP-in-IP to VXLAN: a VXLAN address and the IPIP one released", vxlan, calico.AttrTypeVXLAN, 1},
		{"IP-in-IP to no encapsulation: the address released", direct, "", 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newIPAMEnv(t)
			first, err := e.ipam().EnsureBlocks(e.ctx(), Member{Name: "node-a"}, []*calico.IPPool{ipip})
			if err != nil {
				t.Fatal(err)
			}
			got, err := e.ipam().EnsureBlocks(e.ctx(), Member{Name: "node-a"}, []*calico.IPPool{c.after})
			if err != nil {
				t.Fatal(err)
			}
			cidr := first.Blocks[0]
			if !slices.Equal(got.Blocks, first.Blocks) {
				t.Errorf("blocks %v; want the same %v", got.Blocks, first.Blocks)
			}
			b := e.block(cidr)
			if c.wantType == "" {
				if got.TunnelAddr.IsValid() || b.InUse() != 0 {
					t.Errorf("tunnel %s, %d addresses in use; want none", got.TunnelAddr, b.InUse())
				}
			} else if got.TunnelType != c.wantType || got.TunnelAddr != b.Addr(c.wantOrd) || b.InUse() != 1 {
				t.Errorf("tunnel %s %s, %d in use; want %s %s alone", got.TunnelAddr, got.TunnelType, b.InUse(), b.Addr(c.wantOrd), c.wantType)
			}
			if _, ok := e.all()[e.keys.Handle("ipip-tunnel-addr-node-a")]; ok {
				t.Error("the IPIP tunnel handle is still there")
			}
			owner := map[netip.Prefix]string{cidr: "node-a"}
			checkIPAMConsistent(t, e, owner)
		})
	}
}

// TestOneNodeClaimingTwiceAtOnceGetsOneBlock: two processes of one node
// (or a restart racing the old process) claim at once; the loser adopts
// the winner's block instead of taking a second one.
func TestOneNodeClaimingTwiceAtOnceGetsOneBlock(t *testing.T) {
	e := newIPAMEnv(t)
	pools := []*calico.IPPool{vxlanPool(t)}
	const procs = 8
	results := make([]Claimed, procs)
	errs := make([]error, procs)
	ctx := e.ctx()
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range procs {
		m := NewIPAM(ipamClient(t, e.srv), e.keys, nil)
		wg.Go(func() {
			<-start
			results[i], errs[i] = m.EnsureBlocks(ctx, Member{Name: "node-a"}, pools)
		})
	}
	close(start)
	wg.Wait()
	for i := range procs {
		if errs[i] != nil {
			t.Fatalf("process %d: %v", i, errs[i])
		}
		if !slices.Equal(results[i].Blocks, results[0].Blocks) || results[i].TunnelAddr != results[0].TunnelAddr || len(results[i].Blocks) != 1 {
			t.Errorf("process %d: %+v; process 0: %+v; want one and the same block and address", i, results[i], results[0])
		}
	}
	checkIPAMConsistent(t, e, map[netip.Prefix]string{results[0].Blocks[0]: "node-a"})
}

// TestReleaseNodeWithMoreHandlesThanOneTransactionHolds: a /24 block with
// 200 workloads, each its own handle, is more than etcd's 128 operations a
// transaction; the handles are released in batches, then the block.
func TestReleaseNodeWithMoreHandlesThanOneTransactionHolds(t *testing.T) {
	e := newIPAMEnv(t)
	big := ipamPoolSpec(t, pool.Spec{Name: "big", CIDR: "10.30.0.0/16", BlockSize: 24}, nil)
	got, err := e.ipam().EnsureBlocks(e.ctx(), Member{Name: "node-a"}, []*calico.IPPool{big})
	if err != nil {
		t.Fatal(err)
	}
	cidr := got.Blocks[0]
	b := e.block(cidr)
	const pods = 200
	for i := range pods {
		id := fmt.Sprintf("k8s-pod-network.pod%03d.eth0", i)
		if _, err := b.Assign(1, id, map[string]string{"pod": id}); err != nil {
			t.Fatal(err)
		}
		h := calico.NewHandle()
		h.Increment(cidr, 1)
		e.put(e.keys.Handle(id), h)
	}
	b.SequenceNumber++
	e.put(e.keys.Block(cidr), b)

	rel, err := e.ipam().ReleaseNode(e.ctx(), "node-a")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rel.Blocks, []netip.Prefix{cidr}) || len(rel.Handles) != pods {
		t.Errorf("released %v and %d handles; want %s and %d", rel.Blocks, len(rel.Handles), cidr, pods)
	}
	if left := e.all(); len(left) != 0 {
		t.Errorf("%d keys left after the release; want none", len(left))
	}
}
