package cni

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/ipam"
)

// callTimeout bounds one plugin call: a runtime waits for it.
const callTimeout = 60 * time.Second

// OpenStore opens the IPAM store of node in cluster c: the block files under
// the state directory with the file datastore, Calico's keys with etcd.
func OpenStore(ctx context.Context, c *config.Cluster, node string) (ipam.Store, error) {
	switch c.Datastore.Type {
	case config.DatastoreEtcd:
		return openEtcdStore(ctx, c, node)
	default:
		return ipam.NewFileStore(ipam.Dir(c), c, node)
	}
}

// storeError turns an IPAM store's error into the CNI error a runtime
// shows: a full node gets ErrBlocksFull with the fix.
func storeError(what string, err error) error {
	var full *ipam.BlocksFullError
	switch {
	case errors.As(err, &full):
		return types.NewError(ErrBlocksFull, full.Error(), "")
	case errors.Is(err, ipam.ErrUnknownPool):
		return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	default:
		return types.NewError(ErrStore, what, err.Error())
	}
}

// ipamCall is what every overlayd-ipam command starts with: the
// configuration, the cluster and the node's store.
func ipamCall(args *skel.CmdArgs) (*NetConf, ipam.Store, context.Context, context.CancelFunc, error) {
	conf, err := parseIPAM(args.StdinData)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	s, ctx, cancel, err := openNodeStore(conf)
	return conf, s, ctx, cancel, err
}

// openNodeStore loads conf's cluster and opens its node's IPAM store, with
// a context bounding the call; cancel also closes the store.
func openNodeStore(conf *NetConf) (ipam.Store, context.Context, context.CancelFunc, error) {
	c, _, err := loadCluster(conf)
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	s, err := OpenStore(ctx, c, conf.Node)
	if err != nil {
		cancel()
		return nil, nil, nil, storeError("opening the IPAM store", err)
	}
	return s, ctx, func() { s.Close(); cancel() }, nil
}

func (p plugin) ipamAdd(args *skel.CmdArgs) error {
	conf, s, ctx, cancel, err := ipamCall(args)
	if err != nil {
		return err
	}
	defer cancel()
	a, err := s.Assign(ctx, ipam.Request{
		Handle: ipam.Handle(conf.Name, args.ContainerID, args.IfName),
		Pools:  conf.IPAMConf.Pools,
		Attrs: map[string]string{
			ipam.AttrNode: conf.Node, ipam.AttrNetwork: conf.Name, ipam.AttrContainerID: args.ContainerID,
			ipam.AttrIfName: args.IfName, ipam.AttrTimestamp: time.Now().UTC().Format(time.RFC3339),
		},
	})
	if err != nil {
		return storeError("assigning an address", err)
	}
	p.hooks.crash(CrashAssigned)
	result := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		IPs:        []*current.IPConfig{{Address: hostNet(a.Addr)}},
	}
	return types.PrintResult(result, conf.CNIVersion)
}

func (p plugin) ipamDel(args *skel.CmdArgs) error {
	conf, s, ctx, cancel, err := ipamCall(args)
	if err != nil {
		return err
	}
	defer cancel()
	if _, err := s.Release(ctx, ipam.Handle(conf.Name, args.ContainerID, args.IfName)); err != nil {
		return storeError("releasing the address", err)
	}
	return nil
}

// ipamCheck verifies that the attachment still holds the address its
// previous result gave.
func (p plugin) ipamCheck(args *skel.CmdArgs) error {
	conf, s, ctx, cancel, err := ipamCall(args)
	if err != nil {
		return err
	}
	defer cancel()
	handle := ipam.Handle(conf.Name, args.ContainerID, args.IfName)
	held, err := s.Lookup(ctx, handle)
	if err != nil {
		return storeError("looking the attachment up", err)
	}
	if len(held) == 0 {
		return fmt.Errorf("IPAM: attachment %s holds no address: its reservation is gone", handle)
	}
	want, err := prevAddrs(conf)
	if err != nil {
		return err
	}
	for _, w := range want {
		if !slices.Contains(held, w) {
			return fmt.Errorf("IPAM: attachment %s holds %v, not %v: its reservation is gone", handle, held, w)
		}
	}
	return nil
}

// ipamGC releases every allocation of this network whose attachment is not
// in the runtime's valid list (spec 1.1).
func (p plugin) ipamGC(args *skel.CmdArgs) error {
	conf, s, ctx, cancel, err := ipamCall(args)
	if err != nil {
		return err
	}
	defer cancel()
	_, err = gcStore(ctx, s, conf)
	return err
}

// gcStore releases the stale allocations of conf's network and returns
// them.
func gcStore(ctx context.Context, s ipam.Store, conf *NetConf) ([]ipam.Allocation, error) {
	valid := map[string]bool{}
	for _, a := range conf.ValidAttachments {
		valid[ipam.Handle(conf.Name, a.ContainerID, a.IfName)] = true
	}
	blocks, err := s.Blocks(ctx)
	if err != nil {
		return nil, storeError("listing the allocations", err)
	}
	var stale []ipam.Allocation
	for _, b := range blocks {
		for _, a := range b.Allocations {
			if net, ok := ipam.HandleNetwork(a.Handle); ok && !a.Tunnel && net == conf.Name && !valid[a.Handle] {
				stale = append(stale, a)
			}
		}
	}
	var errs []error
	for _, a := range stale {
		if _, err := s.Release(ctx, a.Handle); err != nil {
			errs = append(errs, fmt.Errorf("releasing %s (%v): %w", a.Handle, a.Addr, err))
		}
	}
	if len(errs) > 0 {
		return stale, storeError("releasing stale allocations", errors.Join(errs...))
	}
	return stale, nil
}

// ipamStatus says whether an ADD could get an address now.
func (p plugin) ipamStatus(args *skel.CmdArgs) error {
	conf, s, ctx, cancel, err := ipamCall(args)
	if err != nil {
		return err
	}
	defer cancel()
	return capacity(ctx, s, conf)
}

// capacity fails with code 50 (plugin not available) when the node's blocks
// in the configured pools have no free address. With etcd a full node may
// still claim a block, which capacity does not try.
func capacity(ctx context.Context, s ipam.Store, conf *NetConf) error {
	blocks, err := s.Blocks(ctx)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "the IPAM store cannot be read", err.Error())
	}
	var names []string
	for _, b := range blocks {
		if len(conf.IPAMConf.Pools) > 0 && !slices.Contains(conf.IPAMConf.Pools, b.Pool) {
			continue
		}
		if b.Free > 0 {
			return nil
		}
		names = append(names, b.CIDR.String())
	}
	if len(names) == 0 {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("node %q has no block to give addresses from", conf.Node), "")
	}
	return types.NewError(types.ErrPluginNotAvailable,
		fmt.Sprintf("node %q: its blocks are full (%s)", conf.Node, strings.Join(names, ", ")), "")
}

// prevAddrs are the addresses of the previous result CHECK is given.
func prevAddrs(conf *NetConf) ([]netip.Addr, error) {
	if conf.RawPrevResult == nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "CHECK without a previous result (prevResult)", "")
	}
	if err := parsePrev(conf); err != nil {
		return nil, err
	}
	res, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "decoding the previous result", err.Error())
	}
	var addrs []netip.Addr
	for _, ip := range res.IPs {
		a, ok := netip.AddrFromSlice(ip.Address.IP)
		if ok {
			addrs = append(addrs, a.Unmap())
		}
	}
	return addrs, nil
}

func hostNet(a netip.Addr) net.IPNet {
	return net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

// parsePrev decodes the previous result the runtime put in the
// configuration.
func parsePrev(conf *NetConf) error {
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return types.NewError(types.ErrDecodingFailure, "decoding the previous result", err.Error())
	}
	return nil
}

// StaleAttachments lists network's allocations in s whose node-side veth
// does not exist in this network namespace: attachments whose container is
// gone without a DEL.
func StaleAttachments(ctx context.Context, s ipam.Store, network string) ([]ipam.Allocation, error) {
	blocks, err := s.Blocks(ctx)
	if err != nil {
		return nil, err
	}
	var stale []ipam.Allocation
	for _, b := range blocks {
		for _, a := range b.Allocations {
			id, ifname := a.Attrs[ipam.AttrContainerID], a.Attrs[ipam.AttrIfName]
			if net, ok := ipam.HandleNetwork(a.Handle); !ok || a.Tunnel || net != network || id == "" || ifname == "" {
				continue
			}
			if _, err := netlink.LinkByName(HostVeth(id, ifname)); err != nil {
				stale = append(stale, a)
			}
		}
	}
	return stale, nil
}
