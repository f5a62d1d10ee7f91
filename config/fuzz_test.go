package config

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/overlayd/overlayd/pool"
)

// FuzzParse feeds any bytes to the cluster file loader. It must not panic;
// every error must be a *Error that names a file and a line, and reads
// "file:line: ..."; and a Cluster it returns must pass its rules again:
// every pool re-validates as it is, the pools as a set, and the nodes'
// blocks, listed back, allocate to themselves.
func FuzzParse(f *testing.F) {
	for _, glob := range []string{"../examples/*.toml", "testdata/*.toml"} {
		addFiles(f, glob)
	}
	f.Add([]byte("pools = \"ippools.yaml\"\n" + minimalNodes))
	f.Add([]byte("[datastore]\ntype = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\n" + minimalNodes))
	f.Add([]byte("[[pools]]\nname = \"old\"\ncidr = \"10.2.0.0/27\"\nblockSize = 26\ndisabled = true\n" +
		"[[pools]]\nname = \"p\"\ncidr = \"10.1.0.0/16\"\n" + minimalNodes))

	// A pools file to find beside the cluster file, so that the fuzzer
	// reaches the YAML path too.
	dir := f.TempDir()
	yaml, err := os.ReadFile(filepath.Join("testdata", "calico-ippools", "vxlan-cross-subnet.yaml"))
	if err != nil {
		f.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ippools.yaml"), yaml, 0o644); err != nil {
		f.Fatal(err)
	}
	file := filepath.Join(dir, "cluster.toml")

	f.Fuzz(func(t *testing.T, data []byte) {
		if readsOutside(data) {
			t.Skip("pools names a file outside the test's directory")
		}
		c, err := Parse(file, data)
		if err != nil {
			checkFileLineError(t, err, dir)
			return
		}
		checkRevalidates(t, c)
	})
}

// FuzzParseIPPools feeds any bytes to the Calico YAML import: no panic,
// every error names the file and a line, and the pools it returns pass
// pool.New and pool.ValidateSet again and come back unchanged through the
// TOML that `overlayd import` prints.
func FuzzParseIPPools(f *testing.F) {
	addFiles(f, "testdata/calico-ippools/*.yaml")
	addFiles(f, "../examples/*/*.yaml")
	f.Add([]byte("apiVersion: projectcalico.org/v3\nkind: IPPoolList\nitems:\n- metadata: {name: a}\n  spec: {cidr: 10.1.0.0/16, natOutgoing: true}\n"))
	f.Add([]byte("apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata: {name: a}\nspec:\n  cidr: 10.1.0.0/16\n  ipip: {enabled: true, mode: cross-subnet}\n  nat-outgoing: true\n"))
	f.Add([]byte("kind: IPPool\nmetadata: {name: a}\nspec: {cidr: 10.1.0.0/16}\n---\nkind: IPPool\nmetadata: {name: b}\nspec: {cidr: 10.2.0.0/16, vxlanMode: Always, blockSize: 28, disabled: true, nodeSelector: \"zone == 'a'\"}\n"))
	f.Add([]byte("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: a\nspec:\n  cidr: 10.1.0.0/16\n  allowedUses:\n  - Workload\n  - Tunnel\n  assignmentMode: Automatic\n  namespaceSelector: all()\n---\n"))
	const file = "ippools.yaml"
	f.Fuzz(func(t *testing.T, data []byte) {
		pools, err := ParseIPPools(file, data)
		if err != nil {
			checkFileLineError(t, err, "")
			return
		}
		for _, p := range pools {
			checkPoolRevalidates(t, p)
		}
		if err := pool.ValidateSet(pools); err != nil {
			t.Fatalf("accepted pools fail ValidateSet: %v", err)
		}
		checkImportRoundTrip(t, pools)
	})
}

func addFiles(f *testing.F, glob string) {
	files, err := filepath.Glob(glob)
	if err != nil {
		f.Fatal(err)
	}
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
}

// readsOutside reports whether a cluster file names a pools file outside
// its own directory: a fuzzer that finds "/dev/zero" must not hang the run.
func readsOutside(data []byte) bool {
	var probe struct {
		Pools any `toml:"pools"`
	}
	if _, err := toml.Decode(string(data), &probe); err != nil {
		return false // Parse stops at the same error, before reading anything
	}
	name, ok := probe.Pools.(string)
	return ok && (filepath.IsAbs(name) || strings.Contains(name, ".."))
}

var fileLineRE = regexp.MustCompile(`^(.+?):([0-9]+): `)

// checkFileLineError asserts that a loader's error names a file and a
// line: a *Error with both, written "file:line: ...". dir, when set, is
// where the files read live.
func checkFileLineError(t *testing.T, err error, dir string) {
	t.Helper()
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %T %q is not a *config.Error", err, err)
	}
	if ce.File == "" || ce.Line <= 0 {
		t.Fatalf("error %q does not name a file and a line (file %q, line %d)", err, ce.File, ce.Line)
	}
	if dir != "" && !strings.HasPrefix(ce.File, dir) {
		t.Fatalf("error %q names %q, not a file the loader read", err, ce.File)
	}
	m := fileLineRE.FindStringSubmatch(err.Error())
	if m == nil || m[1] != ce.File || m[2] != fmt.Sprint(ce.Line) {
		t.Fatalf("error %q does not start with %s:%d: ", err, ce.File, ce.Line)
	}
}

func specOf(p *pool.IPPool) pool.Spec {
	return pool.Spec{
		Name: p.Name, CIDR: p.CIDR.String(), IPIPMode: string(p.IPIPMode), VXLANMode: string(p.VXLANMode),
		NATOutgoing: p.NATOutgoing, Disabled: p.Disabled, NodeSelector: p.NodeSelector.String(), BlockSize: p.BlockSize,
	}
}

func checkPoolRevalidates(t *testing.T, p *pool.IPPool) {
	t.Helper()
	again, err := pool.New(specOf(p))
	if err != nil {
		t.Fatalf("accepted pool %+v fails pool.New written out: %v", p, err)
	}
	if !again.Equal(p) {
		t.Fatalf("pool %+v validates to a different pool %+v", p, again)
	}
}

// checkRevalidates holds a loaded Cluster to the rules it passed.
func checkRevalidates(t *testing.T, c *Cluster) {
	t.Helper()
	for _, p := range c.Pools {
		checkPoolRevalidates(t, p)
	}
	if err := pool.ValidateSet(c.Pools); err != nil {
		t.Fatalf("accepted pools fail ValidateSet: %v", err)
	}
	if c.Datastore.Type == DatastoreEtcd {
		if len(c.Pools) != 0 {
			t.Fatalf("an etcd cluster file came back with %d pools", len(c.Pools))
		}
		return
	}
	if len(c.Pools) == 0 || len(c.Nodes) == 0 {
		t.Fatalf("accepted a cluster with %d pools and %d nodes", len(c.Pools), len(c.Nodes))
	}
	reqs := make([]pool.NodeRequest, len(c.Nodes))
	for i, n := range c.Nodes {
		if containsAddr(c.Pools, n.Address.Addr()) {
			t.Fatalf("node %q address %s lies in a pool", n.Name, n.Address)
		}
		reqs[i] = pool.NodeRequest{Name: n.Name, Labels: n.Labels}
		for _, b := range n.Blocks {
			if !b.Pool.HasBlock(b.Prefix) {
				t.Fatalf("node %q got %s, which is not a block of pool %q (%s in /%d)", n.Name, b.Prefix, b.Pool.Name, b.Pool.CIDR, b.Pool.BlockSize)
			}
			reqs[i].Blocks = append(reqs[i].Blocks, b.Prefix)
		}
	}
	// A node without blocks got none because no enabled pool selects it;
	// asked again, it gets none again.
	again, err := pool.Allocate(c.Pools, reqs)
	if err != nil {
		t.Fatalf("the blocks the nodes got, listed back, are refused: %v", err)
	}
	for i, nb := range again {
		if got, want := blockList(nb.Blocks), blockList(c.Nodes[i].Blocks); got != want {
			t.Fatalf("node %q: blocks %s listed back allocate as %s", nb.Node, want, got)
		}
	}
}

func blockList(bs []pool.Block) string {
	s := make([]string, len(bs))
	for i, b := range bs {
		s[i] = b.Prefix.String()
	}
	return strings.Join(s, ",")
}

// checkImportRoundTrip loads the TOML that `overlayd import` prints for
// pools, with one node outside them, and expects the same pools back.
func checkImportRoundTrip(t *testing.T, pools []*pool.IPPool) {
	t.Helper()
	addr := ""
	for _, a := range []string{"198.18.1.10/24", "100.64.0.10/24", "1.1.1.1/24", "240.0.0.1/24"} {
		pfx := netip.MustParsePrefix(a)
		if !containsAddr(pools, pfx.Addr()) {
			addr = a
			break
		}
	}
	if addr == "" {
		return
	}
	src := FormatPoolsTOML(pools) + fmt.Sprintf("\n[[nodes]]\nname = \"n\"\naddress = %q\n", addr)
	c, err := Parse("imported.toml", []byte(src))
	if err != nil {
		if strings.Contains(err.Error(), "no free block") {
			return
		}
		t.Fatalf("the TOML printed for the pools does not load: %v\n%s", err, src)
	}
	if len(c.Pools) != len(pools) {
		t.Fatalf("%d pools printed, %d loaded", len(pools), len(c.Pools))
	}
	for i, p := range pools {
		if !p.Equal(c.Pools[i]) {
			t.Fatalf("pool %+v printed and loaded as %+v\n%s", p, c.Pools[i], src)
		}
	}
}

func containsAddr(pools []*pool.IPPool, a netip.Addr) bool {
	for _, p := range pools {
		if p.CIDR.Contains(a) {
			return true
		}
	}
	return false
}
