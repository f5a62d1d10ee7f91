package pool

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func mustPool(t *testing.T, s Spec) *IPPool {
	t.Helper()
	p, err := New(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// blocksOf renders an allocation as "node=block,block;..." for comparison.
func blocksOf(nbs []NodeBlocks) string {
	var parts []string
	for _, nb := range nbs {
		var bs []string
		for _, b := range nb.Blocks {
			bs = append(bs, b.Prefix.String())
		}
		parts = append(parts, nb.Node+"="+strings.Join(bs, ","))
	}
	return strings.Join(parts, ";")
}

func TestAllocate(t *testing.T) {
	zoneA := Spec{Name: "zone-a", CIDR: "10.1.0.0/24", NodeSelector: "zone == 'a'"}
	main := Spec{Name: "main", CIDR: "192.168.0.0/16"}
	small := Spec{Name: "small", CIDR: "10.9.0.0/25", BlockSize: 26}
	disabled := Spec{Name: "old", CIDR: "10.2.0.0/24", Disabled: true}
	za := map[string]string{"zone": "a"}

	tests := []struct {
		name    string
		pools   []Spec
		nodes   []NodeRequest
		want    string
		wantErr string
	}{
		{
			name:  "nodes get consecutive blocks in file order",
			pools: []Spec{main},
			nodes: []NodeRequest{{Name: "a"}, {Name: "b"}, {Name: "c"}},
			want:  "a=192.168.0.0/26;b=192.168.0.64/26;c=192.168.0.128/26",
		},
		{
			name:  "first pool whose selector matches, in file order",
			pools: []Spec{zoneA, main},
			nodes: []NodeRequest{{Name: "a", Labels: za}, {Name: "b"}},
			want:  "a=10.1.0.0/26;b=192.168.0.0/26",
		},
		{
			name:  "disabled pools give no new blocks",
			pools: []Spec{disabled, main},
			nodes: []NodeRequest{{Name: "a"}},
			want:  "a=192.168.0.0/26",
		},
		{
			name:  "listed blocks of a disabled pool keep routing",
			pools: []Spec{disabled, main},
			nodes: []NodeRequest{{Name: "a", Blocks: prefixes("10.2.0.64/26")}},
			want:  "a=10.2.0.64/26",
		},
		{
			name:  "listed blocks are skipped by later automatic allocation",
			pools: []Spec{main},
			nodes: []NodeRequest{{Name: "a", Blocks: prefixes("192.168.0.0/26")}, {Name: "b"}},
			want:  "a=192.168.0.0/26;b=192.168.0.64/26",
		},
		{
			name:  "a node may list several blocks",
			pools: []Spec{main},
			nodes: []NodeRequest{{Name: "a", Blocks: prefixes("192.168.1.0/26", "192.168.2.0/26")}},
			want:  "a=192.168.1.0/26,192.168.2.0/26",
		},
		{
			name:  "appending a node never moves an earlier node's block",
			pools: []Spec{main},
			nodes: []NodeRequest{{Name: "a"}, {Name: "b"}, {Name: "new", Blocks: prefixes("192.168.3.0/26")}},
			want:  "a=192.168.0.0/26;b=192.168.0.64/26;new=192.168.3.0/26",
		},
		{
			name:  "a node that no enabled pool selects gets no block",
			pools: []Spec{zoneA},
			nodes: []NodeRequest{{Name: "a", Labels: map[string]string{"zone": "b"}}},
			want:  "a=",
		},
		{
			name:    "listed block claimed earlier by an automatic allocation",
			pools:   []Spec{main},
			nodes:   []NodeRequest{{Name: "a"}, {Name: "b", Blocks: prefixes("192.168.0.0/26")}},
			wantErr: `node "b": blocks: 192.168.0.0/26 overlaps block 192.168.0.0/26 of node "a" (allocated automatically`,
		},
		{
			name:    "listed blocks may not overlap",
			pools:   []Spec{main},
			nodes:   []NodeRequest{{Name: "a", Blocks: prefixes("192.168.0.0/26")}, {Name: "b", Blocks: prefixes("192.168.0.0/26")}},
			wantErr: `192.168.0.0/26 overlaps block 192.168.0.0/26 of node "a"`,
		},
		{
			name:    "listed block outside every pool",
			pools:   []Spec{main},
			nodes:   []NodeRequest{{Name: "a", Blocks: prefixes("172.16.0.0/26")}},
			wantErr: "172.16.0.0/26 lies in no pool",
		},
		{
			name:    "listed block of the wrong size",
			pools:   []Spec{main},
			nodes:   []NodeRequest{{Name: "a", Blocks: prefixes("192.168.0.0/24")}},
			wantErr: `is not a block of pool "main" (192.168.0.0/16 is cut into /26 blocks)`,
		},
		{
			name:    "listed block not strictly masked",
			pools:   []Spec{main},
			nodes:   []NodeRequest{{Name: "a", Blocks: prefixes("192.168.0.1/26")}},
			wantErr: "did you mean 192.168.0.0/26?",
		},
		{
			name:    "listed block in an enabled pool whose selector does not select the node",
			pools:   []Spec{zoneA},
			nodes:   []NodeRequest{{Name: "a", Labels: map[string]string{"zone": "b"}, Blocks: prefixes("10.1.0.0/26")}},
			wantErr: `is in pool "zone-a", whose nodeSelector`,
		},
		{
			name:    "an exhausted pool is named",
			pools:   []Spec{small},
			nodes:   []NodeRequest{{Name: "a"}, {Name: "b"}, {Name: "c"}},
			wantErr: `node "c": blocks: no free block: exhausted: pool "small" (10.9.0.0/25 in /26 blocks)`,
		},
		{
			name:  "an exhausted pool falls through to the next matching pool",
			pools: []Spec{small, main},
			nodes: []NodeRequest{{Name: "a"}, {Name: "b"}, {Name: "c"}},
			want:  "a=10.9.0.0/26;b=10.9.0.64/26;c=192.168.0.0/26",
		},
		{
			name:  "a listed block is passed over by the next automatic one",
			pools: []Spec{{Name: "p", CIDR: "10.0.0.0/22", BlockSize: 26}},
			nodes: []NodeRequest{{Name: "a", Blocks: prefixes("10.0.0.0/26")}, {Name: "b"}},
			want:  "a=10.0.0.0/26;b=10.0.0.64/26",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var pools []*IPPool
			for _, s := range tc.pools {
				pools = append(pools, mustPool(t, s))
			}
			got, err := Allocate(pools, tc.nodes)
			if tc.wantErr != "" {
				var be *BlockError
				if !errors.As(err, &be) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want a *BlockError containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s := blocksOf(got); s != tc.want {
				t.Errorf("allocation %s, want %s", s, tc.want)
			}
		})
	}
}

func TestAllocateBlockErrorIndex(t *testing.T) {
	p := mustPool(t, Spec{Name: "main", CIDR: "192.168.0.0/16"})
	_, err := Allocate([]*IPPool{p}, []NodeRequest{{Name: "a", Blocks: prefixes("192.168.0.0/26", "172.16.0.0/26")}})
	var be *BlockError
	if !errors.As(err, &be) || be.Index != 1 {
		t.Fatalf("want a BlockError for listed block 1, got %#v", err)
	}
}

func BenchmarkAllocate(b *testing.B) {
	p, err := New(Spec{Name: "big", CIDR: "10.0.0.0/8"})
	if err != nil {
		b.Fatal(err)
	}
	nodes := make([]NodeRequest, 5000)
	for i := range nodes {
		nodes[i] = NodeRequest{Name: fmt.Sprintf("node-%d", i)}
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := Allocate([]*IPPool{p}, nodes); err != nil {
			b.Fatal(err)
		}
	}
}
