// Package ipam gives workloads addresses from their node's blocks, the way
// Calico's calico-ipam does: one address per attachment, named by a handle
// (<network>.<containerID>.<ifname>), taken in the block's FIFO order, the
// node's tunnel address never handed out.
//
// A Store keeps the allocations. FileStore keeps them for the file datastore,
// one file per block in Calico's AllocationBlock JSON under a per-block lock;
// datastore/etcd keeps them in Calico's own block and handle keys.
package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Store allocates and releases workload addresses of one node.
//
// A Store is safe for concurrent use, and several processes may use stores
// of the same node at once (a container runtime runs one plugin process per
// attachment): each block's read-modify-write is atomic, so no address is
// handed out twice.
type Store interface {
	// Assign gives req.Handle one address from the node's blocks, in the
	// pools req.Pools names (all the node's blocks when empty). A handle
	// that holds an address already gets it back, so a repeated ADD does not
	// leak. It wraps ErrBlocksFull (as a *BlocksFullError) when every block
	// it may use is full and no block can be added.
	Assign(ctx context.Context, req Request) (Allocation, error)
	// Release frees every address of handle and returns them; a handle that
	// holds nothing is not an error (DEL is idempotent).
	Release(ctx context.Context, handle string) ([]netip.Addr, error)
	// Lookup returns the addresses handle holds, none when it holds nothing.
	Lookup(ctx context.Context, handle string) ([]netip.Addr, error)
	// Blocks lists the node's blocks with their allocations, by address.
	Blocks(ctx context.Context) ([]BlockUse, error)
	// Close releases the store's connections and locks.
	Close() error
}

// Request asks for one address.
type Request struct {
	// Handle names the attachment; see Handle.
	Handle string
	// Attrs describe the owner (node, container, interface); stored with the
	// allocation as Calico's ActiveOwnerAttrs.
	Attrs map[string]string
	// Pools restricts the blocks to those of the pools with these names.
	Pools []string
}

// Allocation is one address in use.
type Allocation struct {
	Addr   netip.Addr        `json:"address"`
	Block  netip.Prefix      `json:"block"`
	Handle string            `json:"handle,omitempty"`
	Attrs  map[string]string `json:"attrs,omitempty"`
	// Tunnel marks the node's tunnel address: reserved, never released by
	// workload commands.
	Tunnel bool `json:"tunnel,omitempty"`
}

// BlockUse is one block of the node and what is allocated in it.
type BlockUse struct {
	CIDR        netip.Prefix `json:"cidr"`
	Node        string       `json:"node"`
	Pool        string       `json:"pool,omitempty"`
	Free        int          `json:"free"`
	Allocations []Allocation `json:"allocations"`
}

// Workloads counts the allocations that are not the tunnel address.
func (b BlockUse) Workloads() int {
	n := 0
	for _, a := range b.Allocations {
		if !a.Tunnel {
			n++
		}
	}
	return n
}

// Handle is the handle of an attachment, as Calico's CNI plugin names it
// (cni-plugin/internal/pkg/utils: <network>.<containerID>; overlayd adds the
// interface, as the CNI spec makes an attachment the triple).
func Handle(network, containerID, ifname string) string {
	return network + "." + containerID + "." + ifname
}

// HandleNetwork returns the network part of a handle Handle made, and
// whether it has that shape; tunnel handles have not.
func HandleNetwork(handle string) (string, bool) {
	network, rest, ok := strings.Cut(handle, ".")
	if !ok || network == "" || !strings.Contains(rest, ".") {
		return "", false
	}
	return network, true
}

// Owner attributes overlayd stores with a workload's allocation, besides
// Calico's "node".
const (
	AttrNode        = "node"
	AttrContainerID = "containerID"
	AttrIfName      = "ifname"
	AttrNetwork     = "network"
	AttrTimestamp   = "timestamp"
)

// ErrBlocksFull is wrapped by Assign's error when no block can give an
// address.
var ErrBlocksFull = errors.New("no free address in the node's blocks")

// BlocksFullError says which node ran out, in which blocks, and how to fix
// it.
type BlocksFullError struct {
	Node   string
	Blocks []netip.Prefix
	// InUse is how many addresses are allocated in Blocks (the tunnel
	// address included).
	InUse int
	// Fix says what to change so that Assign can succeed.
	Fix string
}

func (e *BlocksFullError) Error() string {
	blocks := "no block"
	if len(e.Blocks) > 0 {
		s := make([]string, len(e.Blocks))
		for i, b := range e.Blocks {
			s[i] = b.String()
		}
		blocks = strings.Join(s, ", ")
	}
	msg := fmt.Sprintf("node %q: no free address in its blocks (%s; %d addresses in use)", e.Node, blocks, e.InUse)
	if e.Fix != "" {
		msg += ": " + e.Fix
	}
	return msg
}

func (e *BlocksFullError) Unwrap() error { return ErrBlocksFull }

// ErrUnknownPool is wrapped when a request names a pool the cluster does not
// have, or one that gives no addresses (disabled).
var ErrUnknownPool = errors.New("unknown or disabled pool")
