package cni

import (
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestParsePlugin(t *testing.T) {
	const base = `"cniVersion":"1.0.0","name":"overlayd","type":"overlayd-cni","config":"/etc/overlayd/cluster.toml","node":"node-a"`
	tests := []struct {
		name  string
		conf  string
		code  uint // 0: accepted
		says  string
		pools []string
	}{
		{"the installed conflist's plugin", `{` + base + `,"ipam":{"type":"overlayd-ipam"}}`, 0, "", nil},
		{"pools in ipam", `{` + base + `,"ipam":{"type":"overlayd-ipam","pools":["a","b"]}}`, 0, "", []string{"a", "b"}},
		{"reserved keys a runtime adds", `{` + base + `,"ipam":{"type":"overlayd-ipam"},"runtimeConfig":{},"args":{},"prevResult":{"cniVersion":"1.0.0"},"cni.dev/valid-attachments":[],"cni.dev/attachments":[]}`, 0, "", nil},
		{"not JSON", `{"cniVersion":`, types.ErrDecodingFailure, "not a JSON object", nil},
		{"a misspelt key", `{` + base + `,"ipam":{"type":"overlayd-ipam"},"mut":1400}`, types.ErrUnsupportedField, `unknown key "mut" in the network configuration (did you mean "mtu"?)`, nil},
		{"a misspelt ipam key", `{` + base + `,"ipam":{"type":"overlayd-ipam","pool":["a"]}}`, types.ErrUnsupportedField, `did you mean "ipam.pools"?`, nil},
		{"no ipam", `{` + base + `}`, types.ErrInvalidNetworkConfig, `"ipam" is missing`, nil},
		{"no node", `{"cniVersion":"1.0.0","name":"n","type":"overlayd-cni","config":"/c","ipam":{"type":"overlayd-ipam"}}`, types.ErrInvalidNetworkConfig, `"node" is missing`, nil},
		{"no cluster file", `{"cniVersion":"1.0.0","name":"n","type":"overlayd-cni","node":"a","ipam":{"type":"overlayd-ipam"}}`, types.ErrInvalidNetworkConfig, `"config" is missing`, nil},
		{"an MTU too small", `{` + base + `,"mtu":100,"ipam":{"type":"overlayd-ipam"}}`, types.ErrInvalidNetworkConfig, `at least 576`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conf, err := parsePlugin([]byte(tt.conf))
			if tt.code == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if strings.Join(conf.IPAMConf.Pools, ",") != strings.Join(tt.pools, ",") {
					t.Errorf("pools %v, want %v", conf.IPAMConf.Pools, tt.pools)
				}
				return
			}
			var e *types.Error
			if !errors.As(err, &e) || e.Code != tt.code || !strings.Contains(e.Msg, tt.says) {
				t.Fatalf("got %v, want code %d saying %q", err, tt.code, tt.says)
			}
		})
	}
}

func TestParseIPAMLeavesTheMainPluginsKeysAlone(t *testing.T) {
	conf, err := parseIPAM([]byte(`{"cniVersion":"1.0.0","name":"br","type":"bridge","bridge":"cni0","isGateway":true,
		"ipam":{"type":"overlayd-ipam","config":"/etc/overlayd/cluster.toml","node":"node-a"}}`))
	if err != nil {
		t.Fatalf("overlayd-ipam under the bridge plugin: %v", err)
	}
	if conf.Config != "/etc/overlayd/cluster.toml" || conf.Node != "node-a" {
		t.Errorf("config %q node %q: want them from the ipam section", conf.Config, conf.Node)
	}
}

func TestHostVeth(t *testing.T) {
	a, b := HostVeth("c1", "eth0"), HostVeth("c1", "eth1")
	if len(a) != 15 || !strings.HasPrefix(a, "ovl") || a == b || a != HostVeth("c1", "eth0") {
		t.Fatalf("HostVeth: %q and %q: want 15 characters, ovl…, one per attachment, the same each time", a, b)
	}
}
