package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/datastore/calico"
	"github.com/overlayd/overlayd/datastore/etcd"
	"github.com/overlayd/overlayd/internal/etcdtest"
)

// etcdClusterFile starts an embedded etcd and writes a cluster file whose
// [datastore] points at it; it returns the file and a client.
func etcdClusterFile(t *testing.T) (string, *clientv3.Client) {
	t.Helper()
	srv := etcdtest.Start(t)
	file := filepath.Join(t.TempDir(), "cluster.toml")
	must(t, os.WriteFile(file, []byte(fmt.Sprintf(`[datastore]
type = "etcd"
endpoints = [%q]

[[nodes]]
name = "node-a"
address = "198.18.1.10/24"
`, srv.Endpoint())), 0o644))
	cli, err := etcd.Connect(srv.Datastore())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return file, cli
}

func writeManifest(t *testing.T, yaml string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "ippools.yaml")
	must(t, os.WriteFile(f, []byte(yaml), 0o644))
	return f
}

const cliPools = `apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: pool-a
spec:
  cidr: 192.168.0.0/16
  ipipMode: CrossSubnet
  natOutgoing: true
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: pool-b
spec:
  cidr: 10.1.0.0/16
  vxlanMode: Always
`

func runOK(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errOut := run(t, args...)
	if code != 0 {
		t.Fatalf("overlayd %s: exit %d: %s", strings.Join(args, " "), code, errOut)
	}
	return out
}

// rowOf returns the fields of the table line that starts with first.
func rowOf(out, first string) []string {
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == first {
			return f
		}
	}
	return nil
}

func TestApplyCommand(t *testing.T) {
	file, cli := etcdClusterFile(t)
	manifest := writeManifest(t, cliPools)
	out := runOK(t, "apply", "-f", manifest, "--config", file)
	want := "ippool.projectcalico.org/pool-a created\nippool.projectcalico.org/pool-b created\n"
	if out != want {
		t.Errorf("first apply:\n%s\nwant\n%s", out, want)
	}
	resp, err := cli.Get(context.Background(), calico.Keys{}.IPPool("pool-a"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("pool-a in etcd: %v %v", resp, err)
	}
	p, err := calico.DecodeIPPool(resp.Kvs[0].Value)
	if err != nil || p.Spec.CIDR != "192.168.0.0/16" || p.Spec.IPIPMode != "CrossSubnet" || !p.Spec.NATOutgoing || p.Metadata.UID == "" {
		t.Errorf("pool-a stored as %s (%v)", resp.Kvs[0].Value, err)
	}

	// Flags after the arguments, as people type them.
	out = runOK(t, "apply", "--config", file, "-f", manifest)
	if !strings.Contains(out, "pool-a unchanged") || !strings.Contains(out, "pool-b unchanged") {
		t.Errorf("second apply:\n%s", out)
	}
	changed := writeManifest(t, strings.Replace(cliPools, "vxlanMode: Always", "vxlanMode: CrossSubnet", 1))
	out = runOK(t, "apply", "-f", changed, "--config", file)
	if !strings.Contains(out, "pool-a unchanged") || !strings.Contains(out, "pool-b configured") {
		t.Errorf("apply of a changed mode:\n%s", out)
	}

	overlapping := writeManifest(t, strings.NewReplacer("pool-a", "pool-c", "192.168.0.0/16", "10.2.0.0/16", "pool-b", "pool-d", "10.1.0.0/16", "10.1.128.0/17").Replace(cliPools))
	code, _, errOut := run(t, "apply", "-f", overlapping, "--config", file)
	if code != exitBadInput || !strings.Contains(errOut, "IPPool(pool-d) CIDR overlaps with IPPool(pool-b) CIDR 10.1.0.0/16") ||
		!strings.Contains(errOut, "nothing was written") {
		t.Errorf("overlap: exit %d: %s", code, errOut)
	}
	if resp, _ := cli.Get(context.Background(), calico.Keys{}.IPPool("pool-c")); len(resp.Kvs) != 0 {
		t.Error("pool-c was written although pool-d of the same file was refused")
	}
}

func TestGetCommand(t *testing.T) {
	file, cli := etcdClusterFile(t)
	runOK(t, "apply", "-f", writeManifest(t, cliPools), "--config", file)
	etcdtest.SeedNode(t, cli, "node-a", "198.18.1.10/24", "192.168.0.0/26", true)
	if _, err := cli.Put(context.Background(), calico.Keys{}.IPPool("broken"), "{not json"); err != nil {
		t.Fatal(err)
	}

	out := runOK(t, "get", "ippools", "--config", file)
	if got := rowOf(out, "pool-a"); strings.Join(got, " ") != "pool-a 192.168.0.0/16 all()" {
		t.Errorf("pool-a row %q in\n%s", got, out)
	}
	if !regexp.MustCompile(`(?m)^broken +\(malformed\)`).MatchString(out) || !strings.Contains(out, "ippool broken: IPPool value:") {
		t.Errorf("the malformed pool is not listed as such:\n%s", out)
	}
	out = runOK(t, "get", "ipp", "-o", "wide", "--config", file)
	if got := rowOf(out, "pool-b"); strings.Join(got, " ") != "pool-b 10.1.0.0/16 all() Never Always false false 26" {
		t.Errorf("pool-b wide row %q in\n%s", got, out)
	}
	if !regexp.MustCompile(`NAME +CIDR +SELECTOR +IPIP +VXLAN +NATOUTGOING +DISABLED +BLOCKSIZE`).MatchString(out) {
		t.Errorf("wide header:\n%s", out)
	}

	out = runOK(t, "get", "ippools", "-o", "json", "--config", file)
	var pools []etcd.PoolEntry
	if err := json.Unmarshal([]byte(out), &pools); err != nil || len(pools) != 3 {
		t.Fatalf("JSON: %v\n%s", err, out)
	}
	if pools[1].Name != "pool-a" || pools[1].Pool.Spec.CIDR != "192.168.0.0/16" || pools[0].Name != "broken" || pools[0].Error == "" {
		t.Errorf("JSON entries %+v", pools)
	}

	out = runOK(t, "get", "nodes", "--config", file)
	if got := strings.Join(rowOf(out, "node-a"), " "); got != "node-a 198.18.1.10/24 192.168.0.0 (vxlan) "+config.VTEPMACFor("node-a").String()+" yes" {
		t.Errorf("node-a row %q in\n%s", got, out)
	}
	out = runOK(t, "get", "blocks", "--config", file)
	if got := strings.Join(rowOf(out, "192.168.0.0/26"), " "); got != "192.168.0.0/26 node-a confirmed 1/64" {
		t.Errorf("block row %q in\n%s", got, out)
	}
}

func TestIPAMShowCommand(t *testing.T) {
	file, cli := etcdClusterFile(t)
	runOK(t, "apply", "-f", writeManifest(t, cliPools), "--config", file)
	etcdtest.SeedNode(t, cli, "node-a", "198.18.1.10/24", "192.168.0.0/26", true)
	etcdtest.SeedNode(t, cli, "node-b", "198.18.1.11/24", "192.168.0.64/26", true)

	out := runOK(t, "ipam", "show", "--config", file)
	if got := strings.Join(rowOf(out, "IP")[2:], " "); !strings.HasPrefix(out, "GROUPING") || got != "pool-a 192.168.0.0/16 - 65536 2 (0%) 65534 (100%)" {
		t.Errorf("pool-a row %q in\n%s", got, out)
	}
	if !strings.Contains(out, "2 handles in use") || rowOf(out, "Block") != nil {
		t.Errorf("without --show-blocks:\n%s", out)
	}
	out = runOK(t, "ipam", "show", "--show-blocks", "--show-handles", "--config", file)
	if got := strings.Join(rowOf(out, "Block"), " "); got != "Block 192.168.0.0/26 node-a 64 1 (2%) 63 (98%)" {
		t.Errorf("first block row %q in\n%s", got, out)
	}
	if got := strings.Join(rowOf(out, "vxlan-tunnel-addr-node-b"), " "); got != "vxlan-tunnel-addr-node-b 1 in 192.168.0.64/26" {
		t.Errorf("handle row %q in\n%s", got, out)
	}
	out = runOK(t, "ipam", "show", "--json", "--config", file)
	var use etcd.IPAMUse
	if err := json.Unmarshal([]byte(out), &use); err != nil || len(use.Pools) != 2 || use.Pools[0].InUse != 2 {
		t.Errorf("JSON %v:\n%s", err, out)
	}
}

func TestDeleteCommands(t *testing.T) {
	file, cli := etcdClusterFile(t)
	runOK(t, "apply", "-f", writeManifest(t, cliPools), "--config", file)
	etcdtest.SeedNode(t, cli, "node-a", "198.18.1.10/24", "10.1.0.0/26", true)
	etcdtest.SeedNode(t, cli, "node-b", "198.18.1.11/24", "192.168.0.0/26", true)

	out := runOK(t, "delete", "ippool", "pool-a", "--config", file)
	if !strings.Contains(out, "ippool.projectcalico.org/pool-a deleted") || !strings.Contains(out, "released 1 block (192.168.0.0/26) and 1 handle (vxlan-tunnel-addr-node-b)") {
		t.Errorf("delete ippool:\n%s", out)
	}
	code, _, errOut := run(t, "delete", "ippool", "pool-a", "--config", file)
	if code != exitFailure || !strings.Contains(errOut, `IPPool "pool-a": not found`) {
		t.Errorf("deleting it again: exit %d: %s", code, errOut)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := etcd.NewIPAM(cli, calico.Keys{}, nil).ReleaseNode(ctx, "no-such-node"); errors.Is(err, errors.ErrUnsupported) {
		t.Skip("IPAM.ReleaseNode is not implemented yet (errors.ErrUnsupported): delete node runs once it is")
	}
	code, out, errOut = run(t, "delete", "node", "node-a", "--config", file)
	if code != 0 || !strings.Contains(out, "node.projectcalico.org/node-a deleted") ||
		!strings.Contains(out, "released 1 block (10.1.0.0/26) and 1 handle (vxlan-tunnel-addr-node-a)") {
		t.Errorf("delete node: exit %d:\n%s%s", code, out, errOut)
	}
	if out := runOK(t, "get", "nodes", "--config", file); rowOf(out, "node-a") != nil {
		t.Errorf("node-a is still listed:\n%s", out)
	}
}

func TestDatastoreCommandsBadInput(t *testing.T) {
	fileDS := "../../examples/two-pools.toml"
	manifest := writeManifest(t, cliPools)
	badYAML := writeManifest(t, "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: p\nspec:\n  cidr: [1\n")
	badMode := writeManifest(t, strings.Replace(cliPools, "ipipMode: CrossSubnet", "ipipMode: always", 1))
	unreachable := filepath.Join(t.TempDir(), "cluster.toml")
	sock := "unix://" + filepath.Join(t.TempDir(), "nothing.sock")
	must(t, os.WriteFile(unreachable, []byte(fmt.Sprintf("[datastore]\ntype = \"etcd\"\nendpoints = [%q]\n\n[[nodes]]\nname = \"node-a\"\naddress = \"198.18.1.10/24\"\n", sock)), 0o644))

	tests := []struct {
		name string
		args []string
		code int
		want *regexp.Regexp
	}{
		{"apply on a file datastore", []string{"apply", "-f", manifest, "--config", fileDS}, exitBadInput,
			regexp.MustCompile(`two-pools\.toml has no etcd datastore \(\[datastore\] type = "file"\): the file itself holds .*\(` + "`overlayd import FILE.yaml`" + ` prints them as TOML\), then run ` + "`overlayd reload`")},
		{"get on a file datastore", []string{"get", "nodes", "--config", fileDS}, exitBadInput,
			regexp.MustCompile(`no etcd datastore .* edit its \[\[pools\]\] and \[\[nodes\]\] there .*overlayd reload`)},
		{"delete on a file datastore", []string{"delete", "node", "node-a", "--config", fileDS}, exitBadInput, regexp.MustCompile(`no etcd datastore`)},
		{"ipam with a misspelt subcommand", []string{"ipam", "shw", "--config", fileDS}, exitBadInput, regexp.MustCompile(`unknown subcommand "shw" \(did you mean "show"\?\)`)},
		{"ipam release without a node", []string{"ipam", "release", "192.168.0.7", "--config", fileDS}, exitBadInput, regexp.MustCompile(`release HANDLE\|ADDRESS --node NAME`)},
		{"unknown kind", []string{"get", "ipools", "--config", fileDS}, exitBadInput,
			regexp.MustCompile(`unknown resource kind "ipools" \(did you mean "ippools"\?\); the kinds here are ippools, nodes, blocks`)},
		{"unknown kind to delete", []string{"delete", "blocks", "x", "--config", fileDS}, exitBadInput,
			regexp.MustCompile(`(?m)unknown resource kind "blocks"; the kinds here are ippools, nodes$`)},
		{"unknown ipam subcommand", []string{"ipam", "shwo", "--config", fileDS}, exitBadInput, regexp.MustCompile(`unknown subcommand "shwo" \(did you mean "show"\?\)`)},
		{"missing -f", []string{"apply", "--config", fileDS}, exitBadInput, regexp.MustCompile(`missing -f FILE\.yaml`)},
		{"missing --config", []string{"get", "ippools"}, exitBadInput, regexp.MustCompile(`--config FILE is required`)},
		{"a YAML syntax error names the file and a line", []string{"apply", "-f", badYAML, "--config", fileDS}, exitBadInput, regexp.MustCompile(`ippools\.yaml:\d+: YAML: `)},
		{"an invalid pool names file, line and key", []string{"apply", "-f", badMode, "--config", fileDS}, exitBadInput,
			regexp.MustCompile(`ippools\.yaml:7: IPPool "pool-a" spec\.ipipMode: invalid value "always".*did you mean "Always"`)},
		{"etcd unreachable", []string{"get", "ippools", "--config", unreachable, "--timeout", "1s"}, exitFailure,
			regexp.MustCompile(`etcd at ` + regexp.QuoteMeta(sock) + ` did not answer in time`)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			code, _, errOut := run(t, tc.args...)
			if code != tc.code || !tc.want.MatchString(errOut) {
				t.Errorf("exit %d, stderr:\n%s\nwant exit %d and %s", code, errOut, tc.code, tc.want)
			}
			if d := time.Since(start); d > 8*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}

func TestDatastoreCommandsHelp(t *testing.T) {
	for _, cmd := range []string{"apply", "get", "delete", "ipam"} {
		code, out, _ := run(t, cmd, "--help")
		if code != 0 || !strings.Contains(out, "usage: overlayd "+cmd) || !strings.Contains(out, "-config") || !strings.Contains(out, "calicoctl") {
			t.Errorf("%s --help: exit %d:\n%s", cmd, code, out)
		}
	}
}
