package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/internal/atomicfile"
)

// NetworkName is the network the installed conflist defines; runtimes
// attach with it (`podman run --network overlayd`).
const NetworkName = "overlayd"

// ConfListFile is the conflist's file name in the runtime's directory.
const ConfListFile = "10-overlayd.conflist"

// InstallOptions say where the plugins and their configuration go.
type InstallOptions struct {
	// Binary is the overlayd executable the links point at.
	Binary string
	// BinDir gets the links overlayd-cni and overlayd-ipam (the runtime's
	// plugin directory, e.g. /opt/cni/bin).
	BinDir string
	// ConfDir gets ConfListFile (e.g. /etc/cni/net.d).
	ConfDir string
	// Config is the cluster file and Node this node's name in it; both are
	// checked before anything is written.
	Config, Node string
	// CNIVersion of the conflist: "1.0.0" unless a runtime that supports
	// GC and STATUS wants "1.1.0".
	CNIVersion string
	// Pools restricts the addresses to these pools (none: any of the
	// node's blocks).
	Pools []string
}

// Installed says what Install wrote.
type Installed struct {
	Links    []string
	ConfList string
}

// ConfList is the conflist Install writes.
func ConfList(o InstallOptions) ([]byte, error) {
	ipamConf := map[string]any{"type": IPAMName}
	if len(o.Pools) > 0 {
		ipamConf["pools"] = o.Pools
	}
	list := map[string]any{
		"cniVersion": o.CNIVersion,
		"name":       NetworkName,
		"plugins": []any{map[string]any{
			"type":   PluginName,
			"config": o.Config,
			"node":   o.Node,
			"ipam":   ipamConf,
		}},
	}
	return json.MarshalIndent(list, "", "  ")
}

// Install checks the cluster file and node, then writes the plugin links
// and the conflist, each replaced atomically.
func Install(o InstallOptions) (Installed, error) {
	if o.CNIVersion == "" {
		o.CNIVersion = "1.0.0"
	}
	if o.BinDir == "" || o.ConfDir == "" || o.Config == "" || o.Node == "" {
		return Installed{}, errors.New("cni install needs --bin-dir, --conf-dir, --config and --node")
	}
	abs, err := filepath.Abs(o.Config)
	if err != nil {
		return Installed{}, err
	}
	o.Config = abs
	c, err := config.Load(o.Config)
	if err != nil {
		return Installed{}, err
	}
	if c.Node(o.Node) == nil {
		return Installed{}, fmt.Errorf("node %q is not in %s", o.Node, o.Config)
	}
	var done Installed
	for _, dir := range []string{o.BinDir, o.ConfDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return done, err
		}
	}
	for _, name := range []string{PluginName, IPAMName} {
		link := filepath.Join(o.BinDir, name)
		tmp := link + ".new"
		_ = os.Remove(tmp)
		if err := os.Symlink(o.Binary, tmp); err != nil {
			return done, fmt.Errorf("linking %s: %w", link, err)
		}
		if err := os.Rename(tmp, link); err != nil {
			return done, fmt.Errorf("linking %s: %w", link, err)
		}
		done.Links = append(done.Links, link)
	}
	data, err := ConfList(o)
	if err != nil {
		return done, err
	}
	path := filepath.Join(o.ConfDir, ConfListFile)
	if err := atomicfile.Write(path, append(data, '\n'), 0o644); err != nil {
		return done, err
	}
	done.ConfList = path
	return done, nil
}
