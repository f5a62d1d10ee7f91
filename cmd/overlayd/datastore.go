package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/overlayd/overlayd/cni"
	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/datastore/etcd"
	"github.com/overlayd/overlayd/ipam"
	"github.com/overlayd/overlayd/pool"
)

// The commands that manage an etcd datastore, as calicoctl (etcd mode)
// does: apply, get, delete and ipam show. The work is etcd.Admin's; these
// parse flags, call it and print.

// defaultEtcdTimeout bounds a command's talk with etcd, so that an etcd that
// cannot be reached is an error, not a hang.
const defaultEtcdTimeout = 10 * time.Second

// datastoreFlags find the etcd datastore: the cluster file's [datastore]
// section.
type datastoreFlags struct {
	config  string
	timeout time.Duration
}

func (f *datastoreFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.config, "config", "", "the cluster file, whose [datastore] section says where etcd is (required)")
	fs.DurationVar(&f.timeout, "timeout", defaultEtcdTimeout, "how long to wait for etcd")
}

// open loads the cluster file and connects to its etcd. On a file
// datastore it says that the file is the datastore, with what to do
// instead (hint).
func (f *datastoreFlags) open(hint string) (*etcd.Admin, context.Context, context.CancelFunc, error) {
	if f.config == "" {
		return nil, nil, nil, badInput(errors.New("--config FILE is required: the cluster file whose [datastore] section says where etcd is"))
	}
	c, err := config.Load(f.config)
	if err != nil {
		return nil, nil, nil, badInput(err)
	}
	if c.Datastore.Type != config.DatastoreEtcd {
		return nil, nil, nil, badInput(fmt.Errorf("%s has no etcd datastore ([datastore] type = %q): the file itself holds the pools, nodes and blocks; %s, then run `overlayd reload` on each node",
			f.config, c.Datastore.Type, hint))
	}
	admin, err := etcd.OpenAdmin(c.Datastore)
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	return admin, ctx, func() { cancel(); admin.Close() }, nil
}

// The hints for a file datastore.
const (
	hintEdit  = "edit its [[pools]] and [[nodes]] there (`overlayd check --config FILE --node NAME` shows a node's blocks and routes)"
	hintApply = "add the pools to it as [[pools]] tables (`overlayd import FILE.yaml` prints them as TOML)"
)

// parseInterspersed parses flags that may come before, between or after the
// positional arguments (`overlayd get ippools --config F`), and returns the
// positional ones.
func parseInterspersed(env *cliEnv, fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := parseFlags(env, fs, args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return positional, nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

// A resource kind of get and delete, with calicoctl's aliases.
type resourceKind struct {
	name    string
	aliases []string
}

var (
	kindIPPools = resourceKind{"ippools", []string{"ippool", "ippools", "ipp", "ipps", "pool", "pools"}}
	kindNodes   = resourceKind{"nodes", []string{"node", "nodes", "no", "nos"}}
	kindBlocks  = resourceKind{"blocks", []string{"block", "blocks", "ipamblock", "ipamblocks"}}
)

// resolveKind finds the kind arg names among kinds, or says what it may
// have meant.
func resolveKind(arg string, kinds ...resourceKind) (resourceKind, error) {
	var all, names []string
	for _, k := range kinds {
		if slices.Contains(k.aliases, strings.ToLower(arg)) {
			return k, nil
		}
		all = append(all, k.aliases...)
		names = append(names, k.name)
	}
	msg := fmt.Sprintf("unknown resource kind %q", arg)
	if s := config.Closest(arg, all); s != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", s)
	}
	return resourceKind{}, badInput(fmt.Errorf("%s; the kinds here are %s", msg, strings.Join(names, ", ")))
}

func runApply(env *cliEnv, args []string) error {
	fs := newFlagSet(env, "apply", "-f FILE.yaml --config FILE", `
Creates or updates the IPPools of a Calico manifest (IPPool or IPPoolList,
one or more documents, as for calicoctl apply) in the etcd datastore of the
cluster file, and says for each pool whether it was created, configured or
unchanged. Each pool is checked with Calico's rules and against the pools
already in etcd: a new pool may not overlap another, and an existing pool's
cidr and blockSize cannot change. A file is all or nothing: its pools are
written in one transaction, or none is. An update keeps what the stored pool
has beyond the manifest (uid, creationTimestamp, labels, allowedUses, ...).`)
	var df datastoreFlags
	df.register(fs)
	var file string
	fs.StringVar(&file, "f", "", "the IPPool manifest (YAML)")
	fs.StringVar(&file, "filename", "", "same as -f")
	positional, err := parseInterspersed(env, fs, args)
	if err != nil {
		return err
	}
	if len(positional) > 0 {
		return badInput(fmt.Errorf("unexpected arguments %q (the manifest goes after -f)", positional))
	}
	if file == "" {
		return badInput(errors.New("missing -f FILE.yaml: the IPPool manifest to apply"))
	}
	pools, err := config.LoadIPPools(file)
	if err != nil {
		return badInput(err)
	}
	admin, ctx, done, err := df.open(hintApply)
	if err != nil {
		return err
	}
	defer done()
	applied, err := admin.ApplyIPPools(ctx, pools)
	var fe *pool.FieldError
	if errors.As(err, &fe) {
		return badInput(fmt.Errorf("%s: %w (nothing was written)", file, err))
	}
	if err != nil {
		return err
	}
	for _, a := range applied {
		fmt.Fprintf(env.stdout, "ippool.projectcalico.org/%s %s\n", a.Name, a.Action)
	}
	return nil
}

func runGet(env *cliEnv, args []string) error {
	fs := newFlagSet(env, "get", "ippools|nodes|blocks --config FILE [-o wide|json]", `
Lists the IPPools, Nodes or IPAM blocks in the etcd datastore of the cluster
file, like calicoctl get:
  ippools  NAME, CIDR, SELECTOR; wide adds IPIP, VXLAN, NATOUTGOING, DISABLED, BLOCKSIZE
  nodes    NAME, ADDRESS, TUNNEL ADDRESS, VTEP MAC, LIVE (its liveness key is
           present); wide adds LABELS
  blocks   CIDR, NODE (its affinity), AFFINITY STATE, IN USE/SIZE
An entry whose value cannot be read is listed as malformed, with why.
-o json (or --json) prints the entries with the stored objects.`)
	var df datastoreFlags
	df.register(fs)
	output := fs.String("o", "", "output format: wide or json")
	asJSON := fs.Bool("json", false, "print JSON (same as -o json)")
	positional, err := parseInterspersed(env, fs, args)
	if err != nil {
		return err
	}
	if len(positional) != 1 {
		return badInput(errors.New("want one resource kind: ippools, nodes or blocks"))
	}
	kind, err := resolveKind(positional[0], kindIPPools, kindNodes, kindBlocks)
	if err != nil {
		return err
	}
	switch *output {
	case "", "wide":
	case "json":
		*asJSON = true
	default:
		return badInput(fmt.Errorf("-o %q: the formats are wide and json", *output))
	}
	wide := *output == "wide"
	admin, ctx, done, err := df.open(hintEdit)
	if err != nil {
		return err
	}
	defer done()
	var entries any
	var show func(io.Writer)
	switch kind.name {
	case kindIPPools.name:
		pools, err := admin.IPPools(ctx)
		if err != nil {
			return err
		}
		entries, show = pools, func(w io.Writer) { printPools(w, pools, wide) }
	case kindNodes.name:
		nodes, err := admin.Nodes(ctx)
		if err != nil {
			return err
		}
		entries, show = nodes, func(w io.Writer) { printNodes(w, nodes, wide) }
	case kindBlocks.name:
		blocks, err := admin.Blocks(ctx)
		if err != nil {
			return err
		}
		entries, show = blocks, func(w io.Writer) { printBlocks(w, blocks) }
	}
	if *asJSON {
		return writeJSON(env.stdout, entries)
	}
	show(env.stdout)
	return nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// malformed is the note under a table for the entries that cannot be read.
type malformed []string

func (m *malformed) add(what, err string) { *m = append(*m, fmt.Sprintf("  %s: %s", what, err)) }

func (m malformed) print(w io.Writer) {
	if len(m) > 0 {
		fmt.Fprintf(w, "\nmalformed or invalid (overlayd's nodes skip them):\n%s\n", strings.Join(m, "\n"))
	}
}

func printPools(w io.Writer, pools []etcd.PoolEntry, wide bool) {
	tw := tabwriter.NewWriter(w, 2, 0, 2, ' ', 0)
	fmt.Fprint(tw, "NAME\tCIDR\tSELECTOR")
	if wide {
		fmt.Fprint(tw, "\tIPIP\tVXLAN\tNATOUTGOING\tDISABLED\tBLOCKSIZE")
	}
	fmt.Fprintln(tw)
	var bad malformed
	for _, p := range pools {
		if p.Error != "" {
			bad.add(fmt.Sprintf("ippool %s", p.Name), p.Error)
		}
		if p.Pool == nil {
			// Every cell written: a short line would end tabwriter's columns.
			fmt.Fprintf(tw, "%s\t(malformed)\t-", p.Name)
			if wide {
				fmt.Fprint(tw, strings.Repeat("\t-", 5))
			}
			fmt.Fprintln(tw)
			continue
		}
		s := p.Pool.Spec
		fmt.Fprintf(tw, "%s\t%s\t%s", p.Name, s.CIDR, s.NodeSelector)
		if wide {
			fmt.Fprintf(tw, "\t%s\t%s\t%t\t%t\t%d", s.IPIPMode, s.VXLANMode, s.NATOutgoing, s.Disabled, s.BlockSize)
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	bad.print(w)
}

func printNodes(w io.Writer, nodes []etcd.NodeEntry, wide bool) {
	tw := tabwriter.NewWriter(w, 2, 0, 2, ' ', 0)
	fmt.Fprint(tw, "NAME\tADDRESS\tTUNNEL ADDRESS\tVTEP MAC\tLIVE")
	if wide {
		fmt.Fprint(tw, "\tLABELS")
	}
	fmt.Fprintln(tw)
	var bad malformed
	for _, n := range nodes {
		if n.Error != "" {
			bad.add(fmt.Sprintf("node %s", n.Name), n.Error)
			fmt.Fprintf(tw, "%s\t(malformed)\t-\t-\t%s", n.Name, yesNo(n.Live))
			if wide {
				fmt.Fprint(tw, "\t-")
			}
			fmt.Fprintln(tw)
			continue
		}
		i := n.Info
		var tunnel []string
		for _, t := range []struct {
			addr netip.Addr
			kind string
		}{{i.VXLANTunnelAddr, "vxlan"}, {i.IPIPTunnelAddr, "ipip"}} {
			if t.addr.IsValid() {
				tunnel = append(tunnel, fmt.Sprintf("%s (%s)", t.addr, t.kind))
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s", n.Name, orDash(prefixString(i.Address)), orDash(strings.Join(tunnel, ", ")), i.VTEPMAC, yesNo(n.Live))
		if wide {
			fmt.Fprintf(tw, "\t%s", orDash(formatLabels(i.Labels)))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	bad.print(w)
}

func printBlocks(w io.Writer, blocks []etcd.BlockEntry) {
	tw := tabwriter.NewWriter(w, 2, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CIDR\tNODE\tAFFINITY STATE\tIN USE/SIZE")
	var bad malformed
	for _, b := range blocks {
		use := fmt.Sprintf("%d/%d", b.InUse, b.Size)
		switch {
		case b.Error != "":
			bad.add(fmt.Sprintf("block %s", b.CIDR), b.Error)
			use = "(malformed)"
		case b.BlockMissing:
			use = "(no block)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", b.CIDR, orDash(b.Node), orDash(b.AffinityState), use)
	}
	tw.Flush()
	bad.print(w)
}

func prefixString(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	return p.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func formatLabels(labels map[string]string) string {
	var kv []string
	for k, v := range labels {
		kv = append(kv, k+"="+v)
	}
	slices.Sort(kv)
	return strings.Join(kv, ",")
}

func runDelete(env *cliEnv, args []string) error {
	fs := newFlagSet(env, "delete", "ippool|node NAME --config FILE", `
Deletes from the etcd datastore of the cluster file, like calicoctl delete:
  ippool NAME  the IPPool; its blocks stay, with their addresses allocated
               until their owners release them (as in Calico), and are listed
  node NAME    the node: its blocks, affinities and handles are released,
               then its Node resource and liveness key are deleted. Stop
               overlayd on that node first, or it joins again.`)
	var df datastoreFlags
	df.register(fs)
	positional, err := parseInterspersed(env, fs, args)
	if err != nil {
		return err
	}
	if len(positional) == 0 {
		return badInput(errors.New("want a resource kind and a name: ippool NAME or node NAME"))
	}
	kind, err := resolveKind(positional[0], kindIPPools, kindNodes)
	if err != nil {
		return err
	}
	if len(positional) != 2 {
		return badInput(fmt.Errorf("want one %s name after %q", strings.TrimSuffix(kind.name, "s"), positional[0]))
	}
	name := positional[1]
	admin, ctx, done, err := df.open(hintEdit)
	if err != nil {
		return err
	}
	defer done()
	if kind.name == kindIPPools.name {
		d, err := admin.DeleteIPPool(ctx, name)
		if err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "ippool.projectcalico.org/%s deleted\n", name)
		if len(d.Released.Blocks) > 0 {
			fmt.Fprintf(env.stdout, "released %s (%s) and %s", count(len(d.Released.Blocks), "block"), joinPrefixes(d.Released.Blocks), count(len(d.Released.Handles), "handle"))
			if len(d.Released.Handles) > 0 {
				fmt.Fprintf(env.stdout, " (%s)", strings.Join(d.Released.Handles, ", "))
			}
			fmt.Fprintln(env.stdout)
		}
		if len(d.Blocks) > 0 {
			fmt.Fprintf(env.stdout, "blocks left in %s: %d (%s); as in Calico, their addresses stay allocated until released (`overlayd get blocks`)\n",
				d.CIDR, len(d.Blocks), joinPrefixes(d.Blocks))
		}
		return nil
	}
	d, err := admin.DeleteNode(ctx, name)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "node.projectcalico.org/%s deleted\n", name)
	fmt.Fprintf(env.stdout, "released %s", count(len(d.Released.Blocks), "block"))
	if len(d.Released.Blocks) > 0 {
		fmt.Fprintf(env.stdout, " (%s)", joinPrefixes(d.Released.Blocks))
	}
	fmt.Fprintf(env.stdout, " and %s", count(len(d.Released.Handles), "handle"))
	if len(d.Released.Handles) > 0 {
		fmt.Fprintf(env.stdout, " (%s)", strings.Join(d.Released.Handles, ", "))
	}
	fmt.Fprintln(env.stdout)
	if !d.Node {
		fmt.Fprintf(env.stdout, "it had no Node resource\n")
	}
	if d.Liveness {
		fmt.Fprintf(env.stdout, "its liveness key was deleted: if overlayd still runs there, it will join again\n")
	}
	return nil
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

func runIPAM(env *cliEnv, args []string) error {
	fs := newFlagSet(env, "ipam", "show|release|gc --config FILE [--node NAME] [flags]", `
show: the address use, like calicoctl ipam show. With etcd and no --node,
per IPPool the addresses in use and free (--show-blocks: each block with its
node and use; --show-handles: each handle and its addresses). With --node,
or with the file datastore, each block of the node(s) and every allocation
in it: address, handle, container.

release HANDLE|ADDRESS --node NAME: free a workload's address by hand (the
tunnel address stays reserved).

gc --node NAME [--network NAME]: free the addresses of the node's
attachments whose veth no longer exists on this host (run it on the node,
where overlayd-cni made them).`)
	var df datastoreFlags
	df.register(fs)
	node := fs.String("node", "", "the node whose workload addresses to show or mend")
	network := fs.String("network", cni.NetworkName, "gc: the CNI network whose attachments to check")
	showBlocks := fs.Bool("show-blocks", false, "list each block with its node and use")
	showHandles := fs.Bool("show-handles", false, "list each handle with the addresses it holds")
	asJSON := fs.Bool("json", false, "print JSON")
	positional, err := parseInterspersed(env, fs, args)
	if err != nil {
		return err
	}
	sub := ""
	if len(positional) > 0 {
		sub = positional[0]
	}
	switch {
	case sub == "show" && len(positional) == 1:
	case sub == "release" && len(positional) == 2 && *node != "":
	case sub == "gc" && len(positional) == 1 && *node != "":
	default:
		msg := "want a subcommand: show, release HANDLE|ADDRESS --node NAME, or gc --node NAME"
		if sub != "" && sub != "show" && sub != "release" && sub != "gc" {
			msg = fmt.Sprintf("unknown subcommand %q", sub)
			if s := config.Closest(sub, []string{"show", "release", "gc"}); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			msg += "; ipam has show, release and gc"
		}
		return badInput(errors.New(msg))
	}
	if df.config == "" {
		return badInput(errors.New("--config FILE is required: the cluster file"))
	}
	c, err := config.Load(df.config)
	if err != nil {
		return badInput(err)
	}
	if sub == "show" && *node == "" && c.Datastore.Type == config.DatastoreEtcd {
		admin, ctx, done, err := df.open(hintEdit)
		if err != nil {
			return err
		}
		defer done()
		use, err := admin.IPAMUse(ctx)
		if err != nil {
			return err
		}
		if *asJSON {
			return writeJSON(env.stdout, use)
		}
		printIPAM(env.stdout, use, *showBlocks, *showHandles)
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), df.timeout)
	defer cancel()
	nodes := []string{*node}
	if *node == "" {
		nodes = nodes[:0]
		for _, n := range c.Nodes {
			nodes = append(nodes, n.Name)
		}
	}
	if *node != "" && c.Node(*node) == nil {
		return badInput(fmt.Errorf("node %q is not in %s", *node, df.config))
	}
	switch sub {
	case "release":
		return ipamRelease(ctx, env, c, *node, positional[1])
	case "gc":
		return ipamGC(ctx, env, c, *node, *network)
	}
	var all []ipam.BlockUse
	for _, n := range nodes {
		s, err := cni.OpenStore(ctx, c, n)
		if err != nil {
			return err
		}
		use, err := s.Blocks(ctx)
		s.Close()
		if err != nil {
			return err
		}
		all = append(all, use...)
	}
	if *asJSON {
		return writeJSON(env.stdout, all)
	}
	printAllocations(env.stdout, all)
	return nil
}

// printAllocations lists blocks and what is allocated in them.
func printAllocations(w io.Writer, blocks []ipam.BlockUse) {
	tw := tabwriter.NewWriter(w, 2, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "BLOCK\tNODE\tPOOL\tIN USE\tFREE")
	for _, b := range blocks {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\n", b.CIDR, b.Node, orDash(b.Pool), len(b.Allocations), b.Free)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 2, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tBLOCK\tHANDLE\tCONTAINER\tIFNAME")
	for _, b := range blocks {
		for _, a := range b.Allocations {
			container, ifname := a.Attrs[ipam.AttrContainerID], a.Attrs[ipam.AttrIfName]
			if a.Tunnel {
				container = "(tunnel address)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", a.Addr, a.Block, orDash(a.Handle), orDash(container), orDash(ifname))
		}
	}
	tw.Flush()
}

// ipamRelease frees one handle's addresses, or the handle holding one
// address.
func ipamRelease(ctx context.Context, env *cliEnv, c *config.Cluster, node, what string) error {
	s, err := cni.OpenStore(ctx, c, node)
	if err != nil {
		return err
	}
	defer s.Close()
	handle := what
	if addr, err := netip.ParseAddr(what); err == nil {
		handle = ""
		blocks, err := s.Blocks(ctx)
		if err != nil {
			return err
		}
		for _, b := range blocks {
			for _, a := range b.Allocations {
				if a.Addr == addr {
					if a.Tunnel {
						return badInput(fmt.Errorf("%v is node %q's tunnel address: it stays reserved", addr, node))
					}
					handle = a.Handle
				}
			}
		}
		if handle == "" {
			return badInput(fmt.Errorf("%v is not allocated in node %q's blocks", addr, node))
		}
	}
	freed, err := s.Release(ctx, handle)
	if err != nil {
		return err
	}
	if len(freed) == 0 {
		fmt.Fprintf(env.stdout, "handle %s held no address\n", handle)
		return nil
	}
	fmt.Fprintf(env.stdout, "released %v (handle %s)\n", freed, handle)
	return nil
}

// ipamGC frees the addresses of network's attachments on node whose host
// veth is gone.
func ipamGC(ctx context.Context, env *cliEnv, c *config.Cluster, node, network string) error {
	s, err := cni.OpenStore(ctx, c, node)
	if err != nil {
		return err
	}
	defer s.Close()
	stale, err := cni.StaleAttachments(ctx, s, network)
	if err != nil {
		return err
	}
	for _, a := range stale {
		freed, err := s.Release(ctx, a.Handle)
		if err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "released %v (handle %s: no veth %s on this host)\n", freed, a.Handle, cni.HostVeth(a.Attrs[ipam.AttrContainerID], a.Attrs[ipam.AttrIfName]))
	}
	fmt.Fprintf(env.stdout, "%d stale attachments released\n", len(stale))
	return nil
}

func printIPAM(w io.Writer, use etcd.IPAMUse, showBlocks, showHandles bool) {
	tw := tabwriter.NewWriter(w, 2, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "GROUPING\tCIDR\tNODE\tIPS TOTAL\tIPS IN USE\tIPS FREE")
	row := func(grouping string, cidr netip.Prefix, node string, total, inUse int) {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", grouping, cidr, orDash(node), total, share(inUse, total), share(total-inUse, total))
	}
	for _, p := range use.Pools {
		row("IP Pool "+p.Name, p.CIDR, "", p.Size, p.InUse)
		if showBlocks {
			for _, b := range p.Blocks {
				row("Block", b.CIDR, b.Node, b.Size, b.InUse)
			}
		}
	}
	if showBlocks {
		for _, b := range use.Unpooled {
			row("Block (no pool)", b.CIDR, b.Node, b.Size, b.InUse)
		}
	}
	tw.Flush()
	if !showBlocks && len(use.Unpooled) > 0 {
		fmt.Fprintf(w, "%s in no pool (--show-blocks lists them)\n", count(len(use.Unpooled), "block"))
	}
	fmt.Fprintf(w, "\n%s in use\n", count(len(use.Handles), "handle"))
	if showHandles && len(use.Handles) > 0 {
		tw := tabwriter.NewWriter(w, 2, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "HANDLE\tADDRESSES")
		for _, h := range use.Handles {
			var in []string
			for cidr, n := range h.Blocks {
				in = append(in, fmt.Sprintf("%d in %s", n, cidr))
			}
			slices.Sort(in)
			fmt.Fprintf(tw, "%s\t%s\n", h.ID, strings.Join(in, ", "))
		}
		tw.Flush()
	}
	if len(use.Skipped) > 0 {
		var bad malformed
		for _, s := range use.Skipped {
			bad.add(s.Key, s.Error)
		}
		bad.print(w)
	}
}

// share is "n (p%)", as calicoctl ipam show writes it.
func share(n, total int) string {
	if total == 0 {
		return fmt.Sprintf("%d", n)
	}
	return fmt.Sprintf("%d (%.0f%%)", n, 100*float64(n)/float64(total))
}

// count is "1 block", "2 blocks".
func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
