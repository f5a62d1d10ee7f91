// Package cni is overlayd's CNI plugin and IPAM plugin, one binary
// dispatched on its name: overlayd-cni wires a container to its node the
// way Calico's plugin does (a veth, the address as /32, 169.254.1.1 as the
// gateway, a /32 route on the node), and overlayd-ipam gives the address
// from the node's blocks (package ipam), for overlayd-cni or any other main
// plugin.
package cni

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/overlayd/overlayd/config"
)

// The plugins' names: the binary's name decides which it is.
const (
	PluginName = "overlayd-cni"
	IPAMName   = "overlayd-ipam"
)

// CNI error codes overlayd returns besides the spec's well-known ones.
const (
	// ErrBlocksFull: the node's blocks have no free address and no block
	// can be added.
	ErrBlocksFull uint = 100
	// ErrStore: the IPAM state could not be read or written.
	ErrStore uint = 101
)

// NetConf is the plugin's configuration, as the runtime hands it over.
type NetConf struct {
	types.PluginConf
	// Config is the cluster file: the same file overlayd runs on.
	Config string `json:"config"`
	// Node is this node's name in the cluster.
	Node string `json:"node"`
	// MTU overrides the workload MTU the plan gives (0: the plan's).
	MTU int `json:"mtu,omitempty"`
	// IPAMConf is the "ipam" section as overlayd-ipam reads it.
	IPAMConf IPAMConf `json:"-"`
}

// IPAMConf is the "ipam" section for overlayd-ipam.
type IPAMConf struct {
	Type string `json:"type"`
	// Pools restricts the addresses to these pools (names); empty: the
	// node's blocks in any pool.
	Pools []string `json:"pools,omitempty"`
	// Config and Node, when set, override the top-level keys (a main plugin
	// other than overlayd-cni has none).
	Config string `json:"config,omitempty"`
	Node   string `json:"node,omitempty"`
}

// reservedKeys are the keys the CNI spec and runtimes put in a plugin's
// configuration; any "cni.dev/" key is reserved too.
var reservedKeys = []string{"cniVersion", "name", "type", "args", "ipMasq", "ipam", "dns", "capabilities", "runtimeConfig", "prevResult"}

var pluginKeys = []string{"config", "node", "mtu"}

var ipamKeys = []string{"type", "pools", "config", "node"}

// parsePlugin decodes overlayd-cni's configuration: every key must be known.
func parsePlugin(data []byte) (*NetConf, error) {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(data, &keys); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "the network configuration is not a JSON object", err.Error())
	}
	if err := checkKeys(keys, "", append(slices.Clone(reservedKeys), pluginKeys...)); err != nil {
		return nil, err
	}
	conf, err := parseCommon(data)
	if err != nil {
		return nil, err
	}
	if conf.IPAMConf.Type == "" {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, `"ipam" is missing: overlayd-cni needs an IPAM plugin, e.g. "ipam": {"type": "overlayd-ipam"}`, "")
	}
	if conf.MTU < 0 || conf.MTU != 0 && conf.MTU < 576 {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf(`"mtu" %d: at least 576, or 0 for the plan's`, conf.MTU), "")
	}
	return conf, nil
}

// parseIPAM decodes overlayd-ipam's view: only its own "ipam" section is
// held to its keys, since the main plugin's keys are the main plugin's.
func parseIPAM(data []byte) (*NetConf, error) {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(data, &keys); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "the network configuration is not a JSON object", err.Error())
	}
	return parseCommon(data)
}

func parseCommon(data []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "decoding the network configuration", err.Error())
	}
	var withIPAM struct {
		IPAM map[string]json.RawMessage `json:"ipam"`
	}
	if err := json.Unmarshal(data, &withIPAM); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, `decoding "ipam"`, err.Error())
	}
	if withIPAM.IPAM != nil {
		if err := checkKeys(withIPAM.IPAM, "ipam.", ipamKeys); err != nil {
			return nil, err
		}
		raw, _ := json.Marshal(withIPAM.IPAM)
		if err := json.Unmarshal(raw, &conf.IPAMConf); err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, `decoding "ipam"`, err.Error())
		}
	}
	if conf.IPAMConf.Config != "" {
		conf.Config = conf.IPAMConf.Config
	}
	if conf.IPAMConf.Node != "" {
		conf.Node = conf.IPAMConf.Node
	}
	if conf.Name == "" {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, `"name" is missing: the network's name`, "")
	}
	if conf.Config == "" {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, `"config" is missing: the path of overlayd's cluster file, e.g. "/etc/overlayd/cluster.toml"`, "")
	}
	if conf.Node == "" {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, `"node" is missing: this node's name in the cluster file`, "")
	}
	return conf, nil
}

// checkKeys refuses a key that is neither allowed nor reserved, with the
// closest allowed key as a suggestion.
func checkKeys(keys map[string]json.RawMessage, where string, allowed []string) error {
	var unknown []string
	for k := range keys {
		if !slices.Contains(allowed, k) && !strings.HasPrefix(k, "cni.dev/") {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	sort.Strings(unknown)
	msg := fmt.Sprintf("unknown key %q in the network configuration", where+unknown[0])
	if s := config.Closest(unknown[0], allowed); s != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", where+s)
	}
	known := slices.Clone(allowed)
	sort.Strings(known)
	return types.NewError(types.ErrUnsupportedField, msg, "allowed: "+strings.Join(known, ", "))
}

// loadCluster reads the cluster file and finds the node in it.
func loadCluster(conf *NetConf) (*config.Cluster, *config.Node, error) {
	c, err := config.Load(conf.Config)
	if err != nil {
		return nil, nil, types.NewError(types.ErrInvalidNetworkConfig, "overlayd's cluster file does not validate", err.Error())
	}
	n := c.Node(conf.Node)
	if n == nil {
		names := make([]string, len(c.Nodes))
		for i, n := range c.Nodes {
			names[i] = n.Name
		}
		return nil, nil, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("node %q is not in the cluster file %s", conf.Node, conf.Config), "its nodes: "+strings.Join(names, ", "))
	}
	return c, n, nil
}
