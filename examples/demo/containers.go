package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/overlayd/overlayd/cni"
	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/internal/testbed"
)

// withStateDir writes a copy of the cluster file into dir with its
// [datastore] stateDir in dir, and returns the copy's path.
func withStateDir(file, dir string) (string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	data = append(data, fmt.Sprintf("\n[datastore]\nstateDir = %q\n", filepath.Join(dir, "state"))...)
	out := filepath.Join(dir, filepath.Base(file))
	return out, os.WriteFile(out, data, 0o644)
}

// attachContainers installs the plugins for each node with `overlayd cni
// install` and attaches one container namespace per node through libcni,
// run inside the node's namespace as the node's runtime would. It returns
// the containers and their addresses by node.
func attachContainers(ctx context.Context, bed *testbed.Bed, bin, file string, cfg *config.Cluster, tmp string) (map[string]*testbed.Host, map[string]netip.Addr, error) {
	binDir := filepath.Join(tmp, "cni-bin")
	workloads := map[string]*testbed.Host{}
	addrs := map[string]netip.Addr{}
	for _, n := range cfg.Nodes {
		confDir := filepath.Join(tmp, "net.d-"+n.Name)
		out, err := exec.CommandContext(ctx, bin, "cni", "install", "--bin-dir", binDir, "--conf-dir", confDir, "--config", file, "--node", n.Name).CombinedOutput()
		if err != nil {
			return nil, nil, fmt.Errorf("overlayd cni install on %s: %v: %s", n.Name, err, out)
		}
		list, err := libcni.ConfListFromFile(filepath.Join(confDir, cni.ConfListFile))
		if err != nil {
			return nil, nil, err
		}
		name := "c" + n.Name[len(n.Name)-1:]
		ct, err := bed.AddHost(name)
		if err != nil {
			return nil, nil, err
		}
		rt := &libcni.RuntimeConf{ContainerID: "demo-" + bed.ID() + "-" + name, NetNS: ct.NetnsPath(), IfName: "eth0"}
		cniConf := libcni.NewCNIConfigWithCacheDir([]string{binDir}, filepath.Join(tmp, "cni-cache"), nil)
		var res *current.Result
		err = bed.Host(n.Name).Do(func() error {
			r, err := cniConf.AddNetworkList(ctx, list, rt)
			if err != nil {
				return err
			}
			res, err = current.NewResultFromResult(r)
			return err
		})
		if err != nil {
			return nil, nil, fmt.Errorf("CNI ADD of container %s on %s: %w", name, n.Name, err)
		}
		addr, _ := netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
		ct.Addr = netip.PrefixFrom(addr, 32)
		workloads[n.Name], addrs[n.Name] = ct, addr
		block := ""
		for _, b := range n.Blocks {
			if b.Prefix.Contains(addr) {
				block = b.Prefix.String()
			}
		}
		fmt.Printf("    container %s on %s: eth0 %s/32 from its block %s, gateway %s, host veth %s\n",
			name, n.Name, addr, block, cni.Gateway, res.Interfaces[0].Name)
	}
	return workloads, addrs, nil
}
