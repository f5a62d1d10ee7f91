package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/overlayd/overlayd/cni"
)

func runCNI(env *cliEnv, args []string) error {
	fs := newFlagSet(env, "cni", "install --bin-dir DIR --conf-dir DIR --config FILE --node NAME [--cni-version V] [--pools A,B]", `
install: link this binary into the runtime's plugin directory as
overlayd-cni and overlayd-ipam, and write the conflist of the network
"overlayd" (`+cni.ConfListFile+`) into its configuration directory, after
checking that the cluster file validates and names the node. Containers
attached to it get their address from the node's blocks.`)
	binDir := fs.String("bin-dir", "/opt/cni/bin", "the runtime's CNI plugin directory")
	confDir := fs.String("conf-dir", "/etc/cni/net.d", "the runtime's CNI configuration directory")
	configPath := fs.String("config", "", "the cluster file overlayd runs on (required)")
	node := fs.String("node", "", "this node's name in the cluster file (required)")
	cniVersion := fs.String("cni-version", "1.0.0", `the conflist's cniVersion; "1.1.0" lets a runtime call GC and STATUS`)
	pools := fs.String("pools", "", "comma-separated pool names to take addresses from (default: any of the node's blocks)")
	positional, err := parseInterspersed(env, fs, args)
	if err != nil {
		return err
	}
	if len(positional) != 1 || positional[0] != "install" {
		return badInput(errors.New("want the subcommand install"))
	}
	if *configPath == "" || *node == "" {
		return badInput(errors.New("--config FILE and --node NAME are required"))
	}
	bin, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding this binary: %w", err)
	}
	o := cni.InstallOptions{Binary: bin, BinDir: *binDir, ConfDir: *confDir, Config: *configPath, Node: *node, CNIVersion: *cniVersion}
	if *pools != "" {
		o.Pools = strings.Split(*pools, ",")
	}
	done, err := cni.Install(o)
	if err != nil {
		return badInput(err)
	}
	for _, l := range done.Links {
		fmt.Fprintf(env.stdout, "linked %s -> %s\n", l, bin)
	}
	fmt.Fprintf(env.stdout, "wrote %s (network %q)\n", done.ConfList, cni.NetworkName)
	return nil
}
