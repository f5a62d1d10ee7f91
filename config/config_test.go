package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/overlayd/overlayd/pool"
)

const minimalNodes = `
[[nodes]]
name = "node-a"
address = "198.18.1.10/24"

[[nodes]]
name = "node-b"
address = "198.18.1.11/24"
`

func TestParseDefaults(t *testing.T) {
	src := `
[[pools]]
name = "p"
cidr = "192.168.0.0/16"
vxlanMode = "Always"
` + minimalNodes
	c, err := Parse("cluster.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if c.Tunnel.Device != DefaultDevice || c.Tunnel.MTU != 0 || c.Tunnel.BusyPoll != 0 {
		t.Errorf("tunnel = %+v, want device %q, mtu 0 and no busy polling", c.Tunnel, DefaultDevice)
	}
	if c.VXLAN.VNI != 4096 || c.VXLAN.Port != 4789 {
		t.Errorf("vxlan = %+v, want VNI 4096 port 4789", c.VXLAN)
	}
	if c.Metrics.Listen != "127.0.0.1:9469" {
		t.Errorf("metrics listen = %q", c.Metrics.Listen)
	}
	if c.NAT.Exclude != ExcludeIPPoolsOnly {
		t.Errorf("nat exclude = %q", c.NAT.Exclude)
	}
	a, b := c.Node("node-a"), c.Node("node-b")
	if got := a.Blocks[0].Prefix.String(); got != "192.168.0.0/26" {
		t.Errorf("node-a block = %s", got)
	}
	if got := b.Blocks[0].Prefix.String(); got != "192.168.0.64/26" {
		t.Errorf("node-b block = %s", got)
	}
	if a.TunnelAddr != netip.MustParseAddr("192.168.0.0") {
		t.Errorf("node-a tunnel address = %s, want the first address of its block", a.TunnelAddr)
	}
}

func TestParseBusyPoll(t *testing.T) {
	const pools = "[[pools]]\nname = \"p\"\ncidr = \"192.168.0.0/16\"\nvxlanMode = \"Always\"\n"
	tests := []struct {
		value string
		want  time.Duration
	}{
		{"0", 0},
		{"0s", 0},
		{"50us", 50 * time.Microsecond},
		{"50µs", 50 * time.Microsecond},
		{"1ms", time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.value, func(t *testing.T) {
			c, err := Parse("cluster.toml", []byte("[tunnel]\nbusyPoll = \""+tc.value+"\"\n"+pools+minimalNodes))
			if err != nil {
				t.Fatal(err)
			}
			if c.Tunnel.BusyPoll != tc.want {
				t.Errorf("busyPoll = %v, want %v", c.Tunnel.BusyPoll, tc.want)
			}
		})
	}
}

func TestTunnelAddress(t *testing.T) {
	tests := []struct {
		name  string
		pools string
		want  string // "" means none
	}{
		{"encapsulating pool", `[[pools]]
name = "p"
cidr = "10.1.0.0/16"
ipipMode = "CrossSubnet"`, "10.1.0.0"},
		{"pool without encapsulation gives none", `[[pools]]
name = "p"
cidr = "10.1.0.0/16"`, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("c.toml", []byte(tc.pools+"\n"+minimalNodes))
			if err != nil {
				t.Fatal(err)
			}
			got := c.Node("node-a").TunnelAddr
			if (tc.want == "" && got.IsValid()) || (tc.want != "" && got.String() != tc.want) {
				t.Errorf("tunnel address %v, want %q", got, tc.want)
			}
		})
	}
}

func TestTunnelAddressSkipsDisabledPools(t *testing.T) {
	src := `
[[pools]]
name = "old"
cidr = "10.2.0.0/16"
vxlanMode = "Always"
disabled = true

[[pools]]
name = "new"
cidr = "10.3.0.0/16"
vxlanMode = "Always"

[[nodes]]
name = "node-a"
address = "198.18.1.10/24"
blocks = ["10.2.0.0/26", "10.3.0.0/26"]
`
	c, err := Parse("c.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Node("node-a").TunnelAddr.String(); got != "10.3.0.0" {
		t.Errorf("tunnel address %s, want 10.3.0.0 (the first block of an enabled pool)", got)
	}
}

func TestVTEPMACMatchesFelix(t *testing.T) {
	// Felix: 'f' (0x66) followed by SHA-1(node name)[0:5].
	// SHA-1("node-a") = 0bd7c5a0f27e...
	got := VTEPMACFor("node-a").String()
	if !strings.HasPrefix(got, "66:") || len(got) != 17 {
		t.Fatalf("VTEP MAC %s: want 66:xx:xx:xx:xx:xx", got)
	}
	if got == VTEPMACFor("node-b").String() {
		t.Error("different nodes must get different MACs")
	}
	if got != VTEPMACFor("node-a").String() {
		t.Error("the MAC must be stable")
	}
}

func TestParseErrors(t *testing.T) {
	pools := `
[[pools]]
name = "ippool-1"
cidr = "192.168.0.0/16"
`
	tests := []struct {
		name     string
		src      string
		wantLine int
		wantKey  string // substring of Error.Key
		wantMsg  string // substring of Error.Msg
	}{
		{
			name: "typo'd key in a pool",
			src: `[[pools]]
name = "ippool-1"
cidr = "192.168.0.0/16"
ipipMod = "Always"
` + minimalNodes,
			wantLine: 4, wantKey: "pools[0]", wantMsg: `unknown key "ipipMod" (did you mean "ipipMode"?)`,
		},
		{
			name:     "unknown key in the second pool points at that pool",
			src:      pools + "\n[[pools]]\nname = \"two\"\ncidr = \"10.1.0.0/16\"\nnatOutgoin = true\n" + minimalNodes,
			wantLine: 9, wantKey: "pools[1]", wantMsg: `did you mean "natOutgoing"?`,
		},
		{
			name:     "unknown table",
			src:      "[tunel]\ndevice = \"x\"\n" + pools + minimalNodes,
			wantLine: 1, wantMsg: `unknown key "tunel" (did you mean "tunnel"?)`,
		},
		{
			name:     "unknown key in a node",
			src:      pools + minimalNodes + "adress = \"1.2.3.4/24\"\n",
			wantLine: 13, wantKey: "nodes[1]", wantMsg: `unknown key "adress"`,
		},
		{
			name:     "both encapsulations in one pool",
			src:      "[[pools]]\nname = \"mixed\"\ncidr = \"192.168.0.0/16\"\nipipMode = \"Always\"\nvxlanMode = \"Always\"\n" + minimalNodes,
			wantLine: 5, wantKey: `pools[0] "mixed" vxlanMode`, wantMsg: "ipipMode and vxlanMode cannot both be enabled (encapsulation types cannot be mixed within one pool",
		},
		{
			name:     "mode with the wrong case",
			src:      "[[pools]]\nname = \"p\"\ncidr = \"192.168.0.0/16\"\nipipMode = \"always\"\n" + minimalNodes,
			wantLine: 4, wantKey: "ipipMode", wantMsg: `did you mean "Always"?`,
		},
		{
			name:     "cidr not strictly masked",
			src:      "[[pools]]\nname = \"p\"\ncidr = \"192.168.0.1/16\"\n" + minimalNodes,
			wantLine: 3, wantKey: "cidr", wantMsg: "did you mean 192.168.0.0/16?",
		},
		{
			name:     "overlapping pools point at the later one",
			src:      pools + "\n[[pools]]\nname = \"two\"\ncidr = \"192.168.128.0/17\"\n" + minimalNodes,
			wantLine: 8, wantKey: `pools[1] "two" cidr`, wantMsg: "IPPool(two) CIDR overlaps with IPPool(ippool-1) CIDR 192.168.0.0/16",
		},
		{
			name:     "wrong type",
			src:      "[[pools]]\nname = \"p\"\ncidr = \"192.168.0.0/16\"\nblockSize = \"26\"\n" + minimalNodes,
			wantLine: 4, wantKey: "blockSize", wantMsg: "wrong type",
		},
		{
			name:     "TOML syntax error",
			src:      "[[pools]]\nname = \"p\ncidr = 1\n",
			wantLine: 2, wantMsg: "",
		},
		{
			name:     "node address without a prefix length",
			src:      pools + "[[nodes]]\nname = \"node-a\"\naddress = \"198.18.1.10\"\n",
			wantLine: 7, wantKey: `nodes[0] "node-a" address`, wantMsg: "has no prefix length",
		},
		{
			name:     "node address /32",
			src:      pools + "[[nodes]]\nname = \"node-a\"\naddress = \"198.18.1.10/32\"\n",
			wantLine: 7, wantKey: "address", wantMsg: "is a /32",
		},
		{
			name:     "duplicate node names",
			src:      pools + minimalNodes + "\n[[nodes]]\nname = \"node-a\"\naddress = \"198.18.1.12/24\"\n",
			wantLine: 15, wantKey: "nodes[2]", wantMsg: `duplicate node name "node-a"`,
		},
		{
			name:     "duplicate node addresses",
			src:      pools + minimalNodes + "\n[[nodes]]\nname = \"node-c\"\naddress = \"198.18.1.10/24\"\n",
			wantLine: 16, wantKey: "nodes[2]", wantMsg: "duplicate node address 198.18.1.10",
		},
		{
			name:     "node address inside a pool",
			src:      pools + "[[nodes]]\nname = \"node-a\"\naddress = \"192.168.5.1/24\"\n",
			wantLine: 7, wantKey: "address", wantMsg: `lies in pool "ippool-1"`,
		},
		{
			name:     "multicast VTEP MAC",
			src:      pools + "[[nodes]]\nname = \"node-a\"\naddress = \"198.18.1.10/24\"\nvtepMAC = \"01:00:5e:00:00:01\"\n",
			wantLine: 8, wantKey: "vtepMAC", wantMsg: "multicast",
		},
		{
			name:     "listed block outside every pool",
			src:      pools + "[[nodes]]\nname = \"node-a\"\naddress = \"198.18.1.10/24\"\nblocks = [\"10.0.0.0/26\"]\n",
			wantLine: 8, wantKey: "blocks", wantMsg: "lies in no pool",
		},
		{
			name:     "VNI out of range",
			src:      "[vxlan]\nvni = 16777216\n" + pools + minimalNodes,
			wantLine: 2, wantKey: "[vxlan] vni", wantMsg: "out of range",
		},
		{
			name:     "VXLAN port out of range",
			src:      "[vxlan]\nport = 0\n" + pools + minimalNodes,
			wantLine: 2, wantKey: "[vxlan] port", wantMsg: "out of range",
		},
		{
			name:     "bad device name",
			src:      "[tunnel]\ndevice = \"a/b\"\n" + pools + minimalNodes,
			wantLine: 2, wantKey: "[tunnel] device", wantMsg: "not a valid interface name",
		},
		{
			name:     "tunnel MTU too small",
			src:      "[tunnel]\nmtu = 100\n" + pools + minimalNodes,
			wantLine: 2, wantKey: "[tunnel] mtu", wantMsg: "out of range",
		},
		{
			name:     "busy poll not a duration",
			src:      "[tunnel]\nbusyPoll = \"50\"\n" + pools + minimalNodes,
			wantLine: 2, wantKey: "[tunnel] busyPoll", wantMsg: `"50" is not a duration from 0 (off) to 1ms`,
		},
		{
			name:     "busy poll negative",
			src:      "[tunnel]\nbusyPoll = \"-5us\"\n" + pools + minimalNodes,
			wantLine: 2, wantKey: "[tunnel] busyPoll", wantMsg: "from 0 (off) to 1ms",
		},
		{
			name:     "busy poll beyond its bound",
			src:      "[tunnel]\nbusyPoll = \"2ms\"\n" + pools + minimalNodes,
			wantLine: 2, wantKey: "[tunnel] busyPoll", wantMsg: "from 0 (off) to 1ms",
		},
		{
			name:     "bad NAT exclusion",
			src:      "[nat]\nexclude = \"Everything\"\n" + pools + minimalNodes,
			wantLine: 2, wantKey: "[nat] exclude", wantMsg: "IPPoolsAndHostIPs",
		},
		{
			name:     "bad NAT timeout",
			src:      "[nat]\nudpTimeout = \"soon\"\n" + pools + minimalNodes,
			wantLine: 2, wantKey: "[nat] udpTimeout", wantMsg: "not a positive duration",
		},
		{
			name:     "negative NAT limit",
			src:      "[nat]\nmaxFlowsPerSource = -1\n" + pools + minimalNodes,
			wantLine: 2, wantKey: "[nat] maxFlowsPerSource", wantMsg: "negative",
		},
		{
			name:     "metrics listen not an address",
			src:      "[metrics]\nlisten = \"localhost\"\n" + pools + minimalNodes,
			wantLine: 2, wantKey: "[metrics] listen", wantMsg: "not an address:port",
		},
		{
			name:     "no pools points at the end of the file",
			src:      minimalNodes,
			wantLine: 8, wantMsg: "no pools",
		},
		{
			name:     "no nodes points at the end of the file",
			src:      pools,
			wantLine: 4, wantMsg: "no nodes",
		},
		{
			name:     "an empty file names line 1",
			src:      "",
			wantLine: 1, wantMsg: "no pools",
		},
		{
			name:     "a table written inline points at its line",
			src:      "tunnel = { mtu = 100 }\n" + pools + minimalNodes,
			wantLine: 1, wantKey: "[tunnel] mtu", wantMsg: "out of range",
		},
		{
			name:     "a dotted key points at its line",
			src:      "# cluster\ntunnel.mtu = 100\n" + pools + minimalNodes,
			wantLine: 2, wantKey: "[tunnel] mtu", wantMsg: "out of range",
		},
		{
			name:     "nodes written as an inline array point at its line",
			src:      "\nnodes = [{name = \"a\", address = \"198.18.1.1\"}]\n" + pools,
			wantLine: 2, wantKey: `nodes[0] "a" address`, wantMsg: "has no prefix length",
		},
		{
			name:     "a quoted table header",
			src:      "[\"tunnel\"]\nmtu = 100\n" + pools + minimalNodes,
			wantLine: 2, wantKey: "[tunnel] mtu", wantMsg: "out of range",
		},
		{
			name: "a listed block larger than its disabled pool",
			src: pools + "[[pools]]\nname = \"old\"\ncidr = \"10.2.0.0/27\"\nblockSize = 26\ndisabled = true\n" +
				"[[nodes]]\nname = \"node-a\"\naddress = \"198.18.1.10/24\"\nblocks = [\"10.2.0.0/26\"]\n",
			wantLine: 13, wantKey: `nodes[0] "node-a" blocks`, wantMsg: `10.2.0.0/26 is not a block of pool "old": it does not lie wholly inside 10.2.0.0/27`,
		},
		{
			name:     "pools is neither tables nor a file name",
			src:      "pools = 3\n" + minimalNodes,
			wantLine: 1, wantKey: "pools", wantMsg: "must be [[pools]] tables or the name of a Calico IPPool YAML file",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("cluster.toml", []byte(tc.src))
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("want a *config.Error, got %v", err)
			}
			if ce.File != "cluster.toml" {
				t.Errorf("file = %q", ce.File)
			}
			if tc.wantLine != 0 && ce.Line != tc.wantLine {
				t.Errorf("line = %d, want %d (%v)", ce.Line, tc.wantLine, err)
			}
			if !strings.Contains(ce.Key, tc.wantKey) {
				t.Errorf("key = %q, want it to contain %q", ce.Key, tc.wantKey)
			}
			if !strings.Contains(ce.Msg, tc.wantMsg) {
				t.Errorf("message = %q, want it to contain %q", ce.Msg, tc.wantMsg)
			}
			if !strings.HasPrefix(err.Error(), "cluster.toml:") {
				t.Errorf("error %q does not start with the file name", err)
			}
		})
	}
}

func TestCalicoManifestsLoadUnchanged(t *testing.T) {
	want := map[string]struct {
		name, cidr string
		ipip, vxln pool.EncapMode
	}{
		"ipip-always.yaml":        {"ippool-ipip-1", "192.168.0.0/16", pool.ModeAlways, pool.ModeNever},
		"ipip-cross-subnet.yaml":  {"ippool-cross-subnet-1", "192.168.0.0/16", pool.ModeCrossSubnet, pool.ModeNever},
		"nat-outgoing.yaml":       {"ipip-nat-outgoing", "10.1.0.0/16", pool.ModeCrossSubnet, pool.ModeNever},
		"vxlan-always.yaml":       {"ippool-vxlan-1", "192.168.0.0/16", pool.ModeNever, pool.ModeAlways},
		"vxlan-cross-subnet.yaml": {"ippool-cross-subnet-1", "192.168.0.0/16", pool.ModeNever, pool.ModeCrossSubnet},
	}
	// The project's shared copy is authoritative when it is beside the repo;
	// testdata holds the same files so the test runs anywhere.
	dirs := []string{"testdata/calico-ippools"}
	if _, err := os.Stat("../../shared/calico-ippools"); err == nil {
		dirs = append(dirs, "../../shared/calico-ippools")
	}
	for _, dir := range dirs {
		for file, w := range want {
			t.Run(filepath.Join(dir, file), func(t *testing.T) {
				pools, err := LoadIPPools(filepath.Join(dir, file))
				if err != nil {
					t.Fatal(err)
				}
				if len(pools) != 1 {
					t.Fatalf("%d pools, want 1", len(pools))
				}
				p := pools[0]
				if p.Name != w.name || p.CIDR.String() != w.cidr || p.IPIPMode != w.ipip || p.VXLANMode != w.vxln || !p.NATOutgoing {
					t.Errorf("got %s %s ipip=%s vxlan=%s nat=%t", p.Name, p.CIDR, p.IPIPMode, p.VXLANMode, p.NATOutgoing)
				}

				// The cluster file form: pools = "file.yaml", relative to it.
				tmp := t.TempDir()
				data, err := os.ReadFile(filepath.Join(dir, file))
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(tmp, file), data, 0o644); err != nil {
					t.Fatal(err)
				}
				cluster := filepath.Join(tmp, "cluster.toml")
				if err := os.WriteFile(cluster, []byte("pools = \""+file+"\"\n"+minimalNodes), 0o644); err != nil {
					t.Fatal(err)
				}
				c, err := Load(cluster)
				if err != nil {
					t.Fatal(err)
				}
				if c.Pools[0].Name != w.name {
					t.Errorf("cluster pool %q, want %q", c.Pools[0].Name, w.name)
				}

				// import's TOML reads back to the same pool.
				back, err := Parse("imported.toml", []byte(FormatPoolsTOML(pools)+minimalNodes))
				if err != nil {
					t.Fatalf("imported TOML does not load: %v\n%s", err, FormatPoolsTOML(pools))
				}
				q := back.Pools[0]
				if q.Name != p.Name || q.CIDR != p.CIDR || q.IPIPMode != p.IPIPMode || q.VXLANMode != p.VXLANMode ||
					q.NATOutgoing != p.NATOutgoing || q.Disabled != p.Disabled || q.BlockSize != p.BlockSize ||
					q.NodeSelector.String() != p.NodeSelector.String() {
					t.Errorf("round trip changed the pool: %+v -> %+v", p, q)
				}
			})
		}
	}
}

func TestParseIPPoolsForms(t *testing.T) {
	tests := []struct {
		name     string
		src      string
		want     string // "name cidr ipip vxlan nat" of each pool, joined by ";"
		wantLine int
		wantErr  string
	}{
		{
			name: "multiple documents",
			src:  "kind: IPPool\nmetadata: {name: a}\nspec: {cidr: 10.1.0.0/16}\n---\nkind: IPPool\nmetadata: {name: b}\nspec: {cidr: 10.2.0.0/16, vxlanMode: Always}\n",
			want: "a 10.1.0.0/16 Never Never false;b 10.2.0.0/16 Never Always false",
		},
		{
			name: "IPPoolList",
			src:  "apiVersion: projectcalico.org/v3\nkind: IPPoolList\nitems:\n- metadata: {name: a}\n  spec: {cidr: 10.1.0.0/16, natOutgoing: true}\n",
			want: "a 10.1.0.0/16 Never Never true",
		},
		{
			name: "legacy ipip cross-subnet converts to ipipMode",
			src:  "apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata: {name: a}\nspec:\n  cidr: 10.1.0.0/16\n  ipip: {enabled: true, mode: cross-subnet}\n  nat-outgoing: true\n",
			want: "a 10.1.0.0/16 CrossSubnet Never true",
		},
		{
			name: "legacy ipip enabled with no mode is Always",
			src:  "kind: IPPool\nmetadata: {name: a}\nspec:\n  cidr: 10.1.0.0/16\n  ipip: {enabled: true}\n",
			want: "a 10.1.0.0/16 Always Never false",
		},
		{
			name: "legacy ipip disabled is Never",
			src:  "kind: IPPool\nmetadata: {name: a}\nspec:\n  cidr: 10.1.0.0/16\n  ipip: {enabled: false, mode: always}\n",
			want: "a 10.1.0.0/16 Never Never false",
		},
		{
			name:     "bad mode points at its line",
			src:      "kind: IPPool\nmetadata:\n  name: a\nspec:\n  cidr: 10.1.0.0/16\n  vxlanMode: always\n",
			wantLine: 6, wantErr: `IPPool "a" spec.vxlanMode: invalid value "always"`,
		},
		{
			name:     "unknown field",
			src:      "kind: IPPool\nmetadata:\n  name: a\nspec:\n  cidr: 10.1.0.0/16\n  ipipMod: Always\n",
			wantLine: 6, wantErr: `unknown or unsupported IPPool field "ipipMod"`,
		},
		{
			name:     "not an IPPool",
			src:      "kind: BGPPeer\nmetadata: {name: a}\n",
			wantLine: 1, wantErr: `"BGPPeer" is not an IPPool`,
		},
		{
			name:     "overlap between documents",
			src:      "kind: IPPool\nmetadata: {name: a}\nspec: {cidr: 10.1.0.0/16}\n---\nkind: IPPool\nmetadata: {name: b}\nspec:\n  cidr: 10.1.0.0/24\n",
			wantLine: 8, wantErr: "IPPool(b) CIDR overlaps with IPPool(a) CIDR 10.1.0.0/16",
		},
		{
			name: "as calicoctl get -o yaml prints it, defaults written out",
			src: "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: a\n  uid: 3f9a1c52\n  creationTimestamp: \"2026-12-02T16:00:00Z\"\n" +
				"spec:\n  cidr: 10.1.0.0/16\n  allowedUses:\n  - Workload\n  - Tunnel\n  assignmentMode: Automatic\n  blockSize: 26\n  ipipMode: Never\n  natOutgoing: true\n  nodeSelector: all()\n  vxlanMode: Always\n",
			want: "a 10.1.0.0/16 Never Always true",
		},
		{
			name:     "a use overlayd cannot honour",
			src:      "kind: IPPool\nmetadata: {name: a}\nspec:\n  cidr: 10.1.0.0/16\n  allowedUses: [LoadBalancer]\n",
			wantLine: 5, wantErr: `IPPool "a" spec.allowedUses: [LoadBalancer] is not supported`,
		},
		{
			name:     "manual assignment",
			src:      "kind: IPPool\nmetadata: {name: a}\nspec:\n  cidr: 10.1.0.0/16\n  assignmentMode: Manual\n",
			wantLine: 5, wantErr: `"Manual" is not supported`,
		},
		{
			name:     "a namespaceSelector",
			src:      "kind: IPPool\nmetadata: {name: a}\nspec:\n  cidr: 10.1.0.0/16\n  namespaceSelector: team == 'a'\n",
			wantLine: 5, wantErr: `"team == 'a'" is not supported`,
		},
		{
			name: "a trailing --- is an empty document, skipped",
			src:  "kind: IPPool\nmetadata: {name: a}\nspec: {cidr: 10.1.0.0/16}\n---\n",
			want: "a 10.1.0.0/16 Never Never false",
		},
		{
			name: "empty documents between pools are skipped",
			src:  "---\nkind: IPPool\nmetadata: {name: a}\nspec: {cidr: 10.1.0.0/16}\n---\n# nothing\n---\nkind: IPPool\nmetadata: {name: b}\nspec: {cidr: 10.2.0.0/16}\n",
			want: "a 10.1.0.0/16 Never Never false;b 10.2.0.0/16 Never Never false",
		},
		{
			name:     "YAML syntax error",
			src:      "kind: IPPool\nspec: [\n",
			wantLine: 2, wantErr: "YAML:",
		},
		{
			name:     "a control character, which YAML reports without a line",
			src:      "kind: IPPool\nmetadata: {name: a}\x01\n",
			wantLine: 2, wantErr: "YAML: control characters are not allowed",
		},
		{
			name:     "empty file",
			src:      "",
			wantLine: 1, wantErr: "no IPPool found",
		},
		{
			name:     "only empty documents",
			src:      "# pools\n---\n---\n",
			wantLine: 3, wantErr: "no IPPool found",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pools, err := ParseIPPools("pools.yaml", []byte(tc.src))
			if tc.wantErr != "" {
				var ce *Error
				if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want a *config.Error containing %q", err, tc.wantErr)
				}
				if tc.wantLine != 0 && ce.Line != tc.wantLine {
					t.Errorf("line %d, want %d", ce.Line, tc.wantLine)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range pools {
				got = append(got, strings.Join([]string{p.Name, p.CIDR.String(), string(p.IPIPMode), string(p.VXLANMode), map[bool]string{true: "true", false: "false"}[p.NATOutgoing]}, " "))
			}
			if s := strings.Join(got, ";"); s != tc.want {
				t.Errorf("got %s, want %s", s, tc.want)
			}
		})
	}
}

func TestPoolsFileErrorsNameTheYAMLFile(t *testing.T) {
	tmp := t.TempDir()
	if err := os.WriteFile(filepath.Join(tmp, "bad.yaml"), []byte("kind: IPPool\nmetadata: {name: a}\nspec:\n  cidr: 10.1.0.1/16\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cluster := filepath.Join(tmp, "cluster.toml")
	if err := os.WriteFile(cluster, []byte("pools = \"bad.yaml\"\n"+minimalNodes), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(cluster)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(tmp, "bad.yaml")+":4:") {
		t.Fatalf("error %v, want it to point at bad.yaml line 4", err)
	}

	if err := os.WriteFile(cluster, []byte("pools = \"missing.yaml\"\n"+minimalNodes), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Load(cluster)
	var ce *Error
	if !errors.As(err, &ce) || ce.Line != 1 || !strings.Contains(err.Error(), "missing.yaml") {
		t.Fatalf("error %v, want cluster.toml line 1 naming missing.yaml", err)
	}
}

func TestOneOf(t *testing.T) {
	tests := []struct {
		value, def string
		allowed    []string
		want       string
		wantErr    string
	}{
		{"", "b", []string{"a", "b"}, "b", ""},
		{"a", "b", []string{"a", "b"}, "a", ""},
		{"A", "b", []string{"a", "b"}, "", `allowed values are "a" and "b"`},
		{"d", "a", []string{"a", "b", "c"}, "", `allowed values are "a", "b" and "c"`},
		{"d", "a", []string{"a"}, "", `allowed values are "a"`},
	}
	for _, tc := range tests {
		got, err := OneOf(tc.value, tc.def, tc.allowed...)
		if got != tc.want || (err == nil) != (tc.wantErr == "") || (err != nil && err.Error() != tc.wantErr) {
			t.Errorf("OneOf(%q, %q, %q) = %q, %v; want %q, %q", tc.value, tc.def, tc.allowed, got, err, tc.want, tc.wantErr)
		}
	}
}
