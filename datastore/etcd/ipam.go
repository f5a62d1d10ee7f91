package etcd

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/overlayd/overlayd/datastore/calico"
)

// IPAM claims and releases a node's blocks in Calico's layout: affinity,
// block and handle, each change one transaction that compares versions.
type IPAM struct {
	cli  *clientv3.Client
	keys calico.Keys
	log  *slog.Logger
	// MaxBlocksPerNode limits the blocks one node may claim; 0: no limit.
	MaxBlocksPerNode int
}

// NewIPAM makes the IPAM of the etcd behind cli, under keys' prefix.
func NewIPAM(cli *clientv3.Client, keys calico.Keys, log *slog.Logger) *IPAM {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &IPAM{cli: cli, keys: keys, log: log}
}

// Member is a node as IPAM needs it: its name and labels (for the pools'
// nodeSelectors).
type Member struct {
	Name   string
	Labels map[string]string
}

// Claimed is what a node holds after EnsureBlocks.
type Claimed struct {
	// Blocks are the node's blocks (confirmed affinity), by address.
	Blocks []netip.Prefix
	// TunnelAddr is the node's tunnel address, allocated under Calico's
	// handle (vxlan-tunnel-addr-<node> or ipip-tunnel-addr-<node>) in its
	// first block of an enabled pool with IP-in-IP or VXLAN; invalid when
	// there is none. TunnelType is calico.AttrTypeVXLAN or AttrTypeIPIP.
	TunnelAddr netip.Addr
	TunnelType string
}

// EnsureBlocks makes node hold a block in the first enabled pool whose
// nodeSelector selects it (as the cluster file's allocation does), adopts
// the blocks it already holds (a restart gets them back), and allocates its
// tunnel address. Claims are transactions (affinity, block and handle each
// created only if absent); a conflict makes the node adopt a block that is
// already its own or try its next candidate, starting at a point seeded by
// its name.
func (m *IPAM) EnsureBlocks(ctx context.Context, node Member, pools []*calico.IPPool) (Claimed, error) {
	return Claimed{}, errors.ErrUnsupported
}

// Released is what ReleaseNode removed.
type Released struct {
	Blocks  []netip.Prefix
	Handles []string
}

// ReleaseNode removes node's affinities, its blocks (with the addresses
// allocated in them) and their handles: `overlayd delete node`.
func (m *IPAM) ReleaseNode(ctx context.Context, node string) (Released, error) {
	return Released{}, errors.ErrUnsupported
}
