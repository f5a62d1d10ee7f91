package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/datastore/calico"
	"github.com/overlayd/overlayd/internal/etcdtest"
	"github.com/overlayd/overlayd/pool"
)

// testAdmin is an Admin of a fresh embedded etcd, with a fixed clock and
// uids uid-1, uid-2, ...
func testAdmin(t *testing.T) (*Admin, *clientv3.Client) {
	t.Helper()
	srv := etcdtest.Start(t)
	cli, err := Connect(srv.Datastore())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	a := NewAdmin(cli, calico.Keys{})
	n := 0
	a.Now = func() time.Time { return time.Date(2026, 12, 2, 17, 0, 0, 0, time.UTC) }
	a.NewUID = func() string { n++; return "uid-" + strconv.Itoa(n) }
	return a, cli
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func manifest(t *testing.T, yaml string) []*pool.IPPool {
	t.Helper()
	pools, err := config.ParseIPPools("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return pools
}

const poolA = `apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: pool-a
spec:
  cidr: 192.168.0.0/16
  ipipMode: CrossSubnet
  natOutgoing: true
`

const poolB = `---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: pool-b
spec:
  cidr: 10.1.0.0/16
  vxlanMode: Always
  nodeSelector: zone == 'b'
`

func mustGet(t *testing.T, cli *clientv3.Client, key string) *clientv3.GetResponse {
	t.Helper()
	resp, err := cli.Get(testCtx(t), key)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func mustPut(t *testing.T, cli *clientv3.Client, key, value string) {
	t.Helper()
	if _, err := cli.Put(testCtx(t), key, value); err != nil {
		t.Fatal(err)
	}
}

func readStored(t *testing.T, cli *clientv3.Client, name string) (*calico.IPPool, int64) {
	t.Helper()
	resp := mustGet(t, cli, calico.Keys{}.IPPool(name))
	if len(resp.Kvs) != 1 {
		t.Fatalf("IPPool %s is not in etcd", name)
	}
	p, err := calico.DecodeIPPool(resp.Kvs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	return p, resp.Kvs[0].ModRevision
}

func actions(applied []Applied) string {
	var s []string
	for _, a := range applied {
		s = append(s, a.Name+" "+string(a.Action))
	}
	return strings.Join(s, ", ")
}

func TestApplyCreatesCalicosObjects(t *testing.T) {
	a, cli := testAdmin(t)
	ctx := testCtx(t)
	pools := manifest(t, poolA+poolB)
	applied, err := a.ApplyIPPools(ctx, pools)
	if err != nil {
		t.Fatal(err)
	}
	if got := actions(applied); got != "pool-a created, pool-b created" {
		t.Errorf("applied %q", got)
	}
	// What is stored is what calicoctl stores for the manifest: Calico's
	// defaults written out, a uid and the creation time.
	for i, name := range []string{"pool-a", "pool-b"} {
		resp := mustGet(t, cli, calico.Keys{}.IPPool(name))
		want, err := calico.NewIPPool(specOf(pools[i]), "uid-"+strconv.Itoa(i+1), a.Now())
		if err != nil {
			t.Fatal(err)
		}
		wantJSON, _ := json.Marshal(want)
		if string(resp.Kvs[0].Value) != string(wantJSON) {
			t.Errorf("%s stored as\n %s\nwant\n %s", name, resp.Kvs[0].Value, wantJSON)
		}
	}
	b, _ := readStored(t, cli, "pool-b")
	if b.Metadata.UID != "uid-2" || b.Metadata.CreationTimestamp != "2026-12-02T17:00:00Z" || b.Spec.VXLANMode != "Always" ||
		b.Spec.IPIPMode != "Never" || b.Spec.BlockSize != 26 || b.Spec.NodeSelector != `zone == "b"` ||
		!slices.Equal(b.Spec.AllowedUses, []string{"Workload", "Tunnel"}) || b.Spec.AssignmentMode != "Automatic" {
		t.Errorf("pool-b decodes as %+v %+v", b.Metadata, b.Spec)
	}
}

func TestApplyAgainIsUnchanged(t *testing.T) {
	a, cli := testAdmin(t)
	ctx := testCtx(t)
	if _, err := a.ApplyIPPools(ctx, manifest(t, poolA+poolB)); err != nil {
		t.Fatal(err)
	}
	_, rev := readStored(t, cli, "pool-a")
	// The selector written another way means the same: still unchanged.
	again := strings.Replace(poolA+poolB, "zone == 'b'", `"zone=='b'"`, 1)
	applied, err := a.ApplyIPPools(ctx, manifest(t, again))
	if err != nil {
		t.Fatal(err)
	}
	if got := actions(applied); got != "pool-a unchanged, pool-b unchanged" {
		t.Errorf("applied again: %q", got)
	}
	if _, rev2 := readStored(t, cli, "pool-a"); rev2 != rev {
		t.Errorf("an unchanged pool was written (mod revision %d -> %d)", rev, rev2)
	}
}

func TestApplyConfiguresAndKeepsWhatItDoesNotSet(t *testing.T) {
	a, cli := testAdmin(t)
	ctx := testCtx(t)
	if _, err := a.ApplyIPPools(ctx, manifest(t, poolA)); err != nil {
		t.Fatal(err)
	}
	// As calicoctl or a newer Calico might have written it: labels, a
	// member overlayd does not model, allowedUses of its own, a selector
	// as typed.
	key := calico.Keys{}.IPPool("pool-a")
	mustPut(t, cli, key, `{"kind":"IPPool","apiVersion":"projectcalico.org/v3",`+
		`"metadata":{"name":"pool-a","uid":"calico-uid","creationTimestamp":"2020-01-02T03:04:05Z","labels":{"team":"net"}},`+
		`"spec":{"cidr":"192.168.0.0/16","vxlanMode":"Never","ipipMode":"CrossSubnet","natOutgoing":true,"blockSize":26,`+
		`"nodeSelector":"all()","allowedUses":["Workload"],"assignmentMode":"Automatic","futureField":{"x":1}}}`)

	changed := strings.Replace(poolA, "ipipMode: CrossSubnet", "ipipMode: Always", 1)
	applied, err := a.ApplyIPPools(ctx, manifest(t, changed))
	if err != nil {
		t.Fatal(err)
	}
	if got := actions(applied); got != "pool-a configured" {
		t.Errorf("applied %q", got)
	}
	p, _ := readStored(t, cli, "pool-a")
	if p.Spec.IPIPMode != "Always" {
		t.Errorf("ipipMode %q, want Always", p.Spec.IPIPMode)
	}
	if p.Metadata.UID != "calico-uid" || p.Metadata.CreationTimestamp != "2020-01-02T03:04:05Z" || p.Metadata.Labels["team"] != "net" {
		t.Errorf("metadata not kept: %+v", p.Metadata)
	}
	if string(p.Spec.Extra["futureField"]) != `{"x":1}` || !slices.Equal(p.Spec.AllowedUses, []string{"Workload"}) {
		t.Errorf("spec members overlayd does not set were not kept: %+v", p.Spec)
	}
}

func TestApplyRefusals(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       string
	}{
		{"a pool overlapping one in etcd", strings.ReplaceAll(poolB, "pool-b", "pool-c") + strings.Replace(strings.ReplaceAll(poolB, "pool-b", "pool-d"), "10.1.0.0/16", "192.168.64.0/18", 1),
			`pool "pool-d": cidr: IPPool(pool-d) CIDR overlaps with IPPool(pool-a) CIDR 192.168.0.0/16`},
		{"a changed CIDR", strings.Replace(poolA, "192.168.0.0/16", "192.169.0.0/16", 1),
			`pool "pool-a": cidr: IPPool CIDR cannot be modified (etcd has 192.168.0.0/16, the manifest 192.169.0.0/16)`},
		{"a changed block size", strings.Replace(poolA, "natOutgoing: true", "blockSize: 24", 1),
			`pool "pool-a": blockSize: IPPool BlockSize cannot be modified (etcd has 26, the manifest 24)`},
		{"blocks of another size in the range", strings.Replace(strings.ReplaceAll(poolB, "pool-b", "pool-e"), "10.1.0.0/16", "10.9.0.0/16", 1),
			`pool "pool-e": blockSize: IPPool blocksSize conflicts with existing allocations that use a different blockSize (block 10.9.0.0/28 is a /28`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, cli := testAdmin(t)
			ctx := testCtx(t)
			if _, err := a.ApplyIPPools(ctx, manifest(t, poolA)); err != nil {
				t.Fatal(err)
			}
			mustPut(t, cli, calico.Keys{}.Block(netip.MustParsePrefix("10.9.0.0/28")), "{}")
			before, err := cli.Get(ctx, "/calico", clientv3.WithPrefix())
			if err != nil {
				t.Fatal(err)
			}
			_, err = a.ApplyIPPools(ctx, manifest(t, tc.yaml))
			var fe *pool.FieldError
			if !errors.As(err, &fe) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want a *pool.FieldError with %q", err, tc.want)
			}
			// All or nothing: the pools of the file that were fine are not
			// written either.
			after, err := cli.Get(ctx, "/calico", clientv3.WithPrefix())
			if err != nil {
				t.Fatal(err)
			}
			if after.Header.Revision != before.Header.Revision || len(after.Kvs) != len(before.Kvs) {
				t.Errorf("a refused apply wrote to etcd (revision %d -> %d)", before.Header.Revision, after.Header.Revision)
			}
		})
	}
}

func TestApplyWriteFailsWhenPoolsChangedSinceTheRead(t *testing.T) {
	a, cli := testAdmin(t)
	ctx := testCtx(t)
	_, txn, err := a.planApply(ctx, manifest(t, poolA))
	if err != nil {
		t.Fatal(err)
	}
	// Another writer creates an overlapping pool between the read and the
	// write: the write must not happen.
	other, err := calico.NewIPPool(pool.Spec{Name: "other", CIDR: "192.168.0.0/24"}, "x", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	value, _ := json.Marshal(other)
	mustPut(t, cli, calico.Keys{}.IPPool("other"), string(value))
	resp, err := txn.Commit()
	if err != nil {
		t.Fatal(err)
	}
	if resp.Succeeded {
		t.Error("the transaction succeeded although an overlapping pool appeared after the read")
	}
	// Apply itself reads again and refuses.
	if _, err := a.ApplyIPPools(ctx, manifest(t, poolA)); err == nil || !strings.Contains(err.Error(), "CIDR overlaps with IPPool(other)") {
		t.Errorf("apply after the race: %v", err)
	}
}

func TestIPPoolsListsMalformedEntries(t *testing.T) {
	a, cli := testAdmin(t)
	ctx := testCtx(t)
	keys := calico.Keys{}
	mustPut(t, cli, keys.IPPool("broken"), "not json")
	mustPut(t, cli, keys.IPPool("bare"), `{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"bare"},"spec":{"cidr":"10.2.0.0/16"}}`)
	mustPut(t, cli, keys.IPPool("both"), `{"metadata":{"name":"both"},"spec":{"cidr":"10.3.0.0/16","ipipMode":"Always","vxlanMode":"Always"}}`)
	pools, err := a.IPPools(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(pools) != 3 {
		t.Fatalf("%d entries, want 3: %+v", len(pools), pools)
	}
	bare, both, broken := pools[0], pools[1], pools[2]
	if bare.Error != "" || bare.Pool.Spec.BlockSize != 26 || bare.Pool.Spec.NodeSelector != "all()" || bare.Pool.Spec.IPIPMode != "Never" {
		t.Errorf("bare pool without Calico's read defaults: %+v %+v", bare, bare.Pool.Spec)
	}
	if !strings.Contains(both.Error, "ipipMode and vxlanMode cannot both be enabled") || both.Pool == nil {
		t.Errorf("an invalid pool: %+v", both)
	}
	if broken.Name != "broken" || broken.Pool != nil || broken.Error == "" {
		t.Errorf("a malformed value: %+v", broken)
	}
}

func TestNodes(t *testing.T) {
	a, cli := testAdmin(t)
	etcdtest.SeedNode(t, cli, "node-a", "198.18.1.10/24", "192.168.0.0/26", true)
	etcdtest.SeedNode(t, cli, "node-b", "198.18.1.11/24", "192.168.0.64/26", false)
	mustPut(t, cli, calico.Keys{}.Node("node-x"), `{"kind":"Node","spec":{"bgp":{"ipv4Address":"nonsense"}}}`)
	nodes, err := a.Nodes(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 3 {
		t.Fatalf("%d nodes, want 3", len(nodes))
	}
	na, nb, nx := nodes[0], nodes[1], nodes[2]
	if na.Name != "node-a" || !na.Live || na.Info.Address.String() != "198.18.1.10/24" || na.Info.VXLANTunnelAddr.String() != "192.168.0.0" ||
		na.Info.VTEPMAC.String() != config.VTEPMACFor("node-a").String() {
		t.Errorf("node-a: %+v", na)
	}
	if nb.Live {
		t.Errorf("node-b has no liveness key but is live")
	}
	if nx.Error == "" || !strings.Contains(nx.Error, "spec.bgp.ipv4Address") {
		t.Errorf("a malformed node: %+v", nx)
	}
}

func TestBlocksAndIPAMUse(t *testing.T) {
	a, cli := testAdmin(t)
	ctx := testCtx(t)
	keys := calico.Keys{}
	if _, err := a.ApplyIPPools(ctx, manifest(t, poolA)); err != nil {
		t.Fatal(err)
	}
	etcdtest.SeedNode(t, cli, "node-a", "198.18.1.10/24", "192.168.0.0/26", true)
	etcdtest.SeedNode(t, cli, "node-b", "198.18.1.11/24", "192.168.0.64/26", true)
	etcdtest.SeedNode(t, cli, "node-c", "198.18.1.12/24", "10.7.0.0/26", true) // in no pool
	// A claim that did not finish, and a malformed block.
	mustPut(t, cli, keys.Affinity("node-d", netip.MustParsePrefix("192.168.1.0/26")), `{"state":"pending","deleted":false}`)
	mustPut(t, cli, keys.Block(netip.MustParsePrefix("192.168.2.0/26")), `{"cidr":"192.168.2.0/26","allocations":[]}`)

	blocks, err := a.Blocks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, b := range blocks {
		s := fmt.Sprintf("%s %s %s %d/%d", b.CIDR, b.Node, b.AffinityState, b.InUse, b.Size)
		if b.BlockMissing {
			s += " missing"
		}
		if b.Error != "" {
			s += " malformed"
		}
		got = append(got, s)
	}
	want := []string{
		"10.7.0.0/26 node-c confirmed 1/64",
		"192.168.0.0/26 node-a confirmed 1/64",
		"192.168.0.64/26 node-b confirmed 1/64",
		"192.168.1.0/26 node-d pending 0/0 missing",
		"192.168.2.0/26   0/64 malformed",
	}
	if !slices.Equal(got, want) {
		t.Errorf("blocks\n %q\nwant\n %q", got, want)
	}

	use, err := a.IPAMUse(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(use.Pools) != 1 || use.Pools[0].Size != 65536 || use.Pools[0].InUse != 2 || len(use.Pools[0].Blocks) != 2 {
		t.Errorf("pool use %+v", use.Pools)
	}
	if len(use.Unpooled) != 1 || use.Unpooled[0].CIDR.String() != "10.7.0.0/26" {
		t.Errorf("blocks in no pool: %+v", use.Unpooled)
	}
	if len(use.Handles) != 3 || use.Handles[0].ID != "vxlan-tunnel-addr-node-a" || use.Handles[0].Blocks["192.168.0.0/26"] != 1 {
		t.Errorf("handles %+v", use.Handles)
	}
	if len(use.Skipped) != 1 || !strings.Contains(use.Skipped[0].Key, "192.168.2.0-26") {
		t.Errorf("skipped %+v", use.Skipped)
	}
}

// giveWorkload allocates n addresses of block to a workload, as Calico's
// CNI plugin does.
func giveWorkload(t *testing.T, cli *clientv3.Client, block string, n int) {
	t.Helper()
	key := calico.Keys{}.Block(netip.MustParsePrefix(block))
	resp := mustGet(t, cli, key)
	if len(resp.Kvs) != 1 {
		t.Fatalf("no block %s", block)
	}
	b, err := calico.DecodeBlock(resp.Kvs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	host, _ := b.Host()
	if _, err := b.Assign(n, "k8s-pod-network.c0ffee.eth0", map[string]string{"namespace": "default", "pod": "web", calico.AttrNode: host}); err != nil {
		t.Fatal(err)
	}
	b.SequenceNumber++
	data, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, cli, key, string(data))
}

func TestDeleteIPPool(t *testing.T) {
	keys := calico.Keys{}
	blockA := netip.MustParsePrefix("192.168.0.0/26")
	tests := []struct {
		name  string
		seed  func(t *testing.T, cli *clientv3.Client)
		err   error  // nil: deleted
		msg   string // what the error names
		want  string // the PoolDeleted, when deleted
		gone  []string
		stays []string
	}{
		{
			name: "its blocks hold tunnel addresses only: released with their handles",
			seed: func(t *testing.T, cli *clientv3.Client) {
				etcdtest.SeedNode(t, cli, "node-a", "198.18.1.10/24", "192.168.0.0/26", true)
				etcdtest.SeedNode(t, cli, "node-b", "198.18.1.11/24", "10.1.0.0/26", true)
			},
			want:  "cidr 192.168.0.0/16 released [192.168.0.0/26] handles [vxlan-tunnel-addr-node-a] left []",
			gone:  []string{keys.IPPool("pool-a"), keys.Block(blockA), keys.Affinity("node-a", blockA), keys.Handle("vxlan-tunnel-addr-node-a")},
			stays: []string{keys.IPPool("pool-b"), keys.Node("node-a"), keys.Block(netip.MustParsePrefix("10.1.0.0/26")), keys.Handle("vxlan-tunnel-addr-node-b")},
		},
		{
			name: "a block holds a workload address: refused, naming it, nothing changed",
			seed: func(t *testing.T, cli *clientv3.Client) {
				etcdtest.SeedNode(t, cli, "node-a", "198.18.1.10/24", "192.168.0.0/26", true)
				etcdtest.SeedNode(t, cli, "node-b", "198.18.1.11/24", "192.168.0.64/26", true)
				giveWorkload(t, cli, "192.168.0.64/26", 2)
			},
			err:   ErrPoolInUse,
			msg:   `1 of its blocks hold workload addresses: 192.168.0.64/26 (node "node-b", 2)`,
			stays: []string{keys.IPPool("pool-a"), keys.Block(blockA), keys.Affinity("node-a", blockA), keys.Handle("vxlan-tunnel-addr-node-a")},
		},
		{
			name: "a block no affinity names is left, as Calico leaves it",
			seed: func(t *testing.T, cli *clientv3.Client) {
				etcdtest.SeedNode(t, cli, "node-a", "198.18.1.10/24", "192.168.0.0/26", true)
				if _, err := cli.Delete(context.Background(), keys.Affinity("node-a", blockA)); err != nil {
					t.Fatal(err)
				}
			},
			want:  "cidr 192.168.0.0/16 released [] handles [] left [192.168.0.0/26]",
			gone:  []string{keys.IPPool("pool-a")},
			stays: []string{keys.Block(blockA), keys.Handle("vxlan-tunnel-addr-node-a")},
		},
		{
			name: "a malformed pool is deleted alone: that is how it is fixed",
			seed: func(t *testing.T, cli *clientv3.Client) {
				etcdtest.SeedNode(t, cli, "node-a", "198.18.1.10/24", "192.168.0.0/26", true)
				mustPut(t, cli, keys.IPPool("pool-a"), "{")
			},
			want:  "cidr invalid Prefix released [] handles [] left []",
			gone:  []string{keys.IPPool("pool-a")},
			stays: []string{keys.Block(blockA), keys.Affinity("node-a", blockA)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, cli := testAdmin(t)
			ctx := testCtx(t)
			if _, err := a.ApplyIPPools(ctx, manifest(t, poolA+poolB)); err != nil {
				t.Fatal(err)
			}
			tt.seed(t, cli)
			before := mustGet(t, cli, keys.IPPool("pool-a"))
			d, err := a.DeleteIPPool(ctx, "pool-a")
			if tt.err != nil {
				if !errors.Is(err, tt.err) || !strings.Contains(err.Error(), tt.msg) {
					t.Fatalf("DeleteIPPool: %v; want %v saying %q", err, tt.err, tt.msg)
				}
				if after := mustGet(t, cli, keys.IPPool("pool-a")); after.Kvs[0].ModRevision != before.Kvs[0].ModRevision {
					t.Errorf("pool-a was written (%s), want it as it was: a refusal changes nothing", after.Kvs[0].Value)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if got := fmt.Sprintf("cidr %s released %v handles %v left %v", d.CIDR, d.Released.Blocks, d.Released.Handles, d.Blocks); got != tt.want {
					t.Errorf("deleted %s\nwant    %s", got, tt.want)
				}
			}
			for _, k := range tt.gone {
				if resp := mustGet(t, cli, k); len(resp.Kvs) != 0 {
					t.Errorf("%s is still in etcd", k)
				}
			}
			for _, k := range tt.stays {
				if resp := mustGet(t, cli, k); len(resp.Kvs) != 1 {
					t.Errorf("%s is gone", k)
				}
			}
		})
	}
	t.Run("a pool that is not there", func(t *testing.T) {
		a, _ := testAdmin(t)
		if _, err := a.DeleteIPPool(testCtx(t), "pool-a"); !errors.Is(err, ErrNotFound) {
			t.Errorf("DeleteIPPool: %v, want ErrNotFound", err)
		}
	})
}

func TestDeleteNode(t *testing.T) {
	a, cli := testAdmin(t)
	ctx := testCtx(t)
	keys := calico.Keys{}
	etcdtest.SeedNode(t, cli, "node-a", "198.18.1.10/24", "192.168.0.0/26", true)
	etcdtest.SeedNode(t, cli, "node-b", "198.18.1.11/24", "192.168.0.64/26", true)
	d, err := a.DeleteNode(ctx, "node-a")
	if errors.Is(err, errors.ErrUnsupported) {
		t.Skip("IPAM.ReleaseNode is not implemented yet (errors.ErrUnsupported): this test runs once it is")
	}
	if err != nil {
		t.Fatal(err)
	}
	if !d.Node || !d.Liveness || len(d.Released.Blocks) != 1 || d.Released.Blocks[0].String() != "192.168.0.0/26" ||
		!slices.Equal(d.Released.Handles, []string{"vxlan-tunnel-addr-node-a"}) {
		t.Errorf("deleted %+v", d)
	}
	cidr := netip.MustParsePrefix("192.168.0.0/26")
	for _, key := range []string{keys.Node("node-a"), keys.Liveness("node-a"), keys.Block(cidr), keys.Affinity("node-a", cidr), keys.Handle("vxlan-tunnel-addr-node-a")} {
		if resp := mustGet(t, cli, key); len(resp.Kvs) != 0 {
			t.Errorf("%s is still in etcd", key)
		}
	}
	nodes, err := a.Nodes(ctx)
	if err != nil || len(nodes) != 1 || nodes[0].Name != "node-b" {
		t.Errorf("nodes after the delete: %+v %v; want node-b alone", nodes, err)
	}
	if _, err := a.DeleteNode(ctx, "node-a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleting it again: %v, want ErrNotFound", err)
	}
}

func TestUnreachableEtcdNamesTheEndpoints(t *testing.T) {
	d := config.Datastore{Type: config.DatastoreEtcd, Endpoints: []string{"unix://" + t.TempDir() + "/nothing.sock"}, Prefix: "/calico"}
	a, err := OpenAdmin(d)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	_, err = a.IPPools(ctx)
	if err == nil || !strings.Contains(err.Error(), d.Endpoints[0]) || !strings.Contains(err.Error(), "did not answer in time") {
		t.Errorf("error %v, want one naming %s", err, d.Endpoints[0])
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("took %v with a 1 s deadline", time.Since(start))
	}
}

func TestListReadsEveryPage(t *testing.T) {
	a, cli := testAdmin(t)
	ctx := testCtx(t)
	keys := calico.Keys{}
	const n = 2*pageSize + 100
	for i := 0; i < n; i += 100 {
		var ops []clientv3.Op
		for j := i; j < i+100; j++ {
			ops = append(ops, clientv3.OpPut(keys.Handle(fmt.Sprintf("h-%05d", j)), `{"block":{},"deleted":false}`))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
	kvs, rev, err := a.list(ctx, keys.Handles(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(kvs) != n || kvs[0].key != keys.Handle("h-00000") || kvs[n-1].key != keys.Handle(fmt.Sprintf("h-%05d", n-1)) {
		t.Errorf("listed %d keys, want %d in order", len(kvs), n)
	}
	// Read at the revision of the first page: a key written since is not
	// in a listing at that revision.
	mustPut(t, cli, keys.Handle("h-99999"), "{}")
	if again, _, err := a.list(ctx, keys.Handles(), rev); err != nil || len(again) != n {
		t.Errorf("listing at revision %d: %d keys, %v; want %d", rev, len(again), err, n)
	}
}
