package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/datastore/calico"
	"github.com/overlayd/overlayd/internal/atomicfile"
	"github.com/overlayd/overlayd/pool"
)

// Dir is where a cluster's file-datastore allocations live: "ipam" under
// its state directory.
func Dir(c *config.Cluster) string {
	return filepath.Join(c.Datastore.StateDir, "ipam")
}

// FileStore keeps one node's allocations for the file datastore: each block
// is a file holding Calico's AllocationBlock JSON, named like Calico's block
// key (192.168.0.0-26.json), replaced atomically (temporary file, fsync,
// rename, fsync of the directory). A lock file per block (flock) makes each
// read-modify-write exclusive across processes; it is held for that alone.
//
// The node's blocks are the cluster file's: a full node cannot claim more,
// so Assign's error says to add one there.
type FileStore struct {
	dir     string
	node    string
	file    string // the cluster file, for messages
	blocks  []pool.Block
	tunnel  netip.Addr
	tunnelH string            // the tunnel address's handle
	tunnelA map[string]string // and its attributes
	now     func() time.Time
}

// NewFileStore opens the allocations of node in cluster c under dir (see
// Dir); dir is made by the first change, so reading changes nothing.
func NewFileStore(dir string, c *config.Cluster, node string) (*FileStore, error) {
	n := c.Node(node)
	if n == nil {
		return nil, fmt.Errorf("node %q is not in the cluster file %s", node, c.Source)
	}
	s := &FileStore{dir: dir, node: node, file: c.Source, blocks: n.Blocks, tunnel: n.TunnelAddr, now: time.Now}
	if n.TunnelAddr.IsValid() {
		attrType := calico.AttrTypeIPIP
		for _, b := range n.Blocks {
			if b.Prefix.Contains(n.TunnelAddr) && b.Pool != nil && b.Pool.VXLANMode != pool.ModeNever {
				attrType = calico.AttrTypeVXLAN
			}
		}
		var err error
		if s.tunnelH, s.tunnelA, err = calico.TunnelAllocation(node, attrType); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Close does nothing: locks are held only inside a call.
func (s *FileStore) Close() error { return nil }

// Assign implements Store.
func (s *FileStore) Assign(ctx context.Context, req Request) (Allocation, error) {
	if req.Handle == "" {
		return Allocation{}, errors.New("IPAM assign: no handle")
	}
	blocks, err := s.usable(req.Pools)
	if err != nil {
		return Allocation{}, err
	}
	held, err := s.lookup(req.Handle)
	if err != nil {
		return Allocation{}, err
	}
	if len(held) > 0 {
		return held[0], nil
	}
	inUse := 0
	for _, b := range blocks {
		if err := ctx.Err(); err != nil {
			return Allocation{}, err
		}
		var got netip.Addr
		err := s.update(b.Prefix, func(blk *calico.Block) (bool, error) {
			if blk.Free() == 0 {
				inUse += blk.Size()
				return false, nil
			}
			addrs, err := blk.Assign(1, req.Handle, req.Attrs)
			if err != nil {
				return false, err
			}
			blk.SequenceNumber++
			got = addrs[0]
			return true, nil
		})
		if err != nil {
			return Allocation{}, err
		}
		if got.IsValid() {
			return Allocation{Addr: got, Block: b.Prefix, Handle: req.Handle, Attrs: req.Attrs}, nil
		}
	}
	full := &BlocksFullError{Node: s.node, InUse: inUse,
		Fix: fmt.Sprintf("give the node another block: add one to its [[nodes]] entry (blocks = [...]) in %s, then `overlayd reload`", s.file)}
	for _, b := range blocks {
		full.Blocks = append(full.Blocks, b.Prefix)
	}
	return Allocation{}, full
}

// usable returns the node's blocks in the named pools (all when none is
// named); a name the cluster does not have, or a disabled pool, is an error.
func (s *FileStore) usable(pools []string) ([]pool.Block, error) {
	if len(pools) == 0 {
		return s.blocks, nil
	}
	var out []pool.Block
	for _, name := range pools {
		found := false
		for _, b := range s.blocks {
			if b.Pool != nil && b.Pool.Name == name {
				if b.Pool.Disabled {
					return nil, fmt.Errorf("pool %q is disabled: %w", name, ErrUnknownPool)
				}
				out = append(out, b)
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("node %q has no block in pool %q (its blocks: %s): %w", s.node, name, describe(s.blocks), ErrUnknownPool)
		}
	}
	return out, nil
}

func describe(blocks []pool.Block) string {
	if len(blocks) == 0 {
		return "none"
	}
	s := make([]string, len(blocks))
	for i, b := range blocks {
		s[i] = b.Prefix.String()
		if b.Pool != nil {
			s[i] += " of pool " + b.Pool.Name
		}
	}
	return strings.Join(s, ", ")
}

// Release implements Store.
func (s *FileStore) Release(ctx context.Context, handle string) ([]netip.Addr, error) {
	if isTunnelHandle(handle, s.node) {
		return nil, fmt.Errorf("handle %q is the node's tunnel address: it stays reserved", handle)
	}
	cidrs, err := s.files()
	if err != nil {
		return nil, err
	}
	var freed []netip.Addr
	for _, cidr := range cidrs {
		if err := ctx.Err(); err != nil {
			return freed, err
		}
		err := s.update(cidr, func(blk *calico.Block) (bool, error) {
			ords := blk.OrdinalsOf(handle)
			if len(ords) == 0 {
				return false, nil
			}
			if _, err := blk.Release(ords); err != nil {
				return false, err
			}
			blk.SequenceNumber++
			for _, o := range ords {
				freed = append(freed, blk.Addr(o))
			}
			return true, nil
		})
		if err != nil {
			return freed, err
		}
	}
	return freed, nil
}

// Lookup implements Store.
func (s *FileStore) Lookup(_ context.Context, handle string) ([]netip.Addr, error) {
	held, err := s.lookup(handle)
	addrs := make([]netip.Addr, len(held))
	for i, a := range held {
		addrs[i] = a.Addr
	}
	return addrs, err
}

func (s *FileStore) lookup(handle string) ([]Allocation, error) {
	use, err := s.Blocks(context.Background())
	if err != nil {
		return nil, err
	}
	var held []Allocation
	for _, b := range use {
		for _, a := range b.Allocations {
			if a.Handle == handle {
				held = append(held, a)
			}
		}
	}
	return held, nil
}

// Blocks implements Store: the node's blocks of the cluster file, then any
// block file of the node the file no longer lists (it still holds
// allocations, or a reload would have been refused).
func (s *FileStore) Blocks(context.Context) ([]BlockUse, error) {
	cidrs, err := s.files()
	if err != nil {
		return nil, err
	}
	var out []BlockUse
	for _, cidr := range cidrs {
		blk, err := s.read(cidr)
		if err != nil {
			return nil, err
		}
		out = append(out, s.use(blk))
	}
	return out, nil
}

// BlockUse reads one block of the node: what it holds now. A block nothing
// was ever allocated in reads as holding only the tunnel address (when it is
// the tunnel's block).
func (s *FileStore) BlockUse(cidr netip.Prefix) (BlockUse, error) {
	blk, err := s.read(cidr)
	if err != nil {
		return BlockUse{}, err
	}
	return s.use(blk), nil
}

func (s *FileStore) use(blk *calico.Block) BlockUse {
	u := BlockUse{CIDR: blk.CIDR, Node: s.node, Free: blk.Free()}
	if i := slices.IndexFunc(s.blocks, func(b pool.Block) bool { return b.Prefix == blk.CIDR }); i >= 0 && s.blocks[i].Pool != nil {
		u.Pool = s.blocks[i].Pool.Name
	}
	for ord, idx := range blk.Allocations {
		if idx == nil || *idx >= len(blk.Attributes) {
			continue
		}
		attr := blk.Attributes[*idx]
		a := Allocation{Addr: blk.Addr(ord), Block: blk.CIDR, Attrs: attr.ActiveOwnerAttrs}
		if attr.HandleID != nil {
			a.Handle = *attr.HandleID
		}
		a.Tunnel = isTunnelHandle(a.Handle, s.node)
		u.Allocations = append(u.Allocations, a)
	}
	return u
}

// files lists the node's blocks: those of the cluster file in its order,
// then other block files affine to the node, by address.
func (s *FileStore) files() ([]netip.Prefix, error) {
	cidrs := make([]netip.Prefix, 0, len(s.blocks))
	for _, b := range s.blocks {
		cidrs = append(cidrs, b.Prefix)
	}
	entries, err := os.ReadDir(s.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return cidrs, nil
	}
	if err != nil {
		return nil, fmt.Errorf("IPAM state directory: %w", err)
	}
	var extra []netip.Prefix
	for _, e := range entries {
		cidr, ok := blockOfFile(e.Name())
		if !ok || slices.Contains(cidrs, cidr) {
			continue
		}
		blk, err := s.readFile(cidr)
		if err != nil {
			return nil, err
		}
		if host, ok := blk.Host(); ok && host == s.node {
			extra = append(extra, cidr)
		}
	}
	slices.SortFunc(extra, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return append(cidrs, extra...), nil
}

// blockOfFile parses a block file name, "192.168.0.0-26.json".
func blockOfFile(name string) (netip.Prefix, bool) {
	base, ok := strings.CutSuffix(name, ".json")
	if !ok {
		return netip.Prefix{}, false
	}
	p, err := netip.ParsePrefix(strings.Replace(base, "-", "/", 1))
	return p, err == nil
}

func (s *FileStore) path(cidr netip.Prefix, ext string) string {
	return filepath.Join(s.dir, strings.Replace(cidr.String(), "/", "-", 1)+ext)
}

// read returns the block as stored, or as it would be created.
func (s *FileStore) read(cidr netip.Prefix) (*calico.Block, error) {
	blk, err := s.readFile(cidr)
	if errors.Is(err, fs.ErrNotExist) {
		return s.fresh(cidr)
	}
	return blk, err
}

func (s *FileStore) readFile(cidr netip.Prefix) (*calico.Block, error) {
	data, err := os.ReadFile(s.path(cidr, ".json"))
	if err != nil {
		return nil, err
	}
	blk, err := calico.DecodeBlock(data)
	if err != nil {
		return nil, fmt.Errorf("IPAM block file %s: %w", s.path(cidr, ".json"), err)
	}
	if blk.CIDR != cidr {
		return nil, fmt.Errorf("IPAM block file %s holds block %s", s.path(cidr, ".json"), blk.CIDR)
	}
	return blk, nil
}

// fresh is a new block of the node with its tunnel address reserved when it
// lies in it.
func (s *FileStore) fresh(cidr netip.Prefix) (*calico.Block, error) {
	blk, err := calico.NewBlock(cidr, s.node, s.now())
	if err != nil {
		return nil, err
	}
	if err := s.reserveTunnel(blk); err != nil {
		return nil, err
	}
	return blk, nil
}

// reserveTunnel allocates the node's tunnel address in blk to its handle,
// when it lies in blk and is free.
func (s *FileStore) reserveTunnel(blk *calico.Block) error {
	if !s.tunnel.IsValid() || !blk.CIDR.Contains(s.tunnel) {
		return nil
	}
	ord, err := blk.Ordinal(s.tunnel)
	if err != nil {
		return err
	}
	i := slices.Index(blk.Unallocated, ord)
	if i < 0 {
		return nil // allocated already: to the tunnel, or the file changed under a workload
	}
	blk.Unallocated = append(append([]int{ord}, blk.Unallocated[:i]...), blk.Unallocated[i+1:]...)
	if _, err := blk.Assign(1, s.tunnelH, s.tunnelA); err != nil {
		return err
	}
	blk.SequenceNumber++
	return nil
}

// update runs change on the block under its lock and writes the block back
// atomically when change says it changed it.
func (s *FileStore) update(cidr netip.Prefix, change func(*calico.Block) (bool, error)) error {
	unlock, err := s.lock(cidr)
	if err != nil {
		return err
	}
	defer unlock()
	blk, err := s.readFile(cidr)
	created := errors.Is(err, fs.ErrNotExist)
	if created {
		blk, err = s.fresh(cidr)
	}
	if err != nil {
		return err
	}
	changed, err := change(blk)
	if err != nil || !(changed || created) {
		return err
	}
	return s.write(cidr, blk)
}

// lock takes the block's lock file, exclusively.
func (s *FileStore) lock(cidr netip.Prefix) (unlock func(), err error) {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return nil, fmt.Errorf("IPAM state directory: %w", err)
	}
	f, err := os.OpenFile(s.path(cidr, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("IPAM lock of block %s: %w", cidr, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("IPAM lock of block %s: %w", cidr, err)
	}
	return func() { f.Close() }, nil // closing the descriptor drops the lock
}

// write replaces the block's file atomically (package atomicfile), so a
// crash leaves the old block or the new one, never half of one.
func (s *FileStore) write(cidr netip.Prefix, blk *calico.Block) error {
	data, err := json.Marshal(blk)
	if err != nil {
		return fmt.Errorf("IPAM block %s: %w", cidr, err)
	}
	if err := atomicfile.Write(s.path(cidr, ".json"), data, 0o644); err != nil {
		return fmt.Errorf("IPAM block %s: %w", cidr, err)
	}
	return nil
}

// isTunnelHandle reports whether handle is one of node's tunnel address
// handles, whatever its address: a file that moved the tunnel address
// leaves the old one reserved under its handle.
func isTunnelHandle(handle, node string) bool {
	for _, t := range []string{calico.AttrTypeVXLAN, calico.AttrTypeIPIP} {
		if h, _, err := calico.TunnelAllocation(node, t); err == nil && h == handle {
			return true
		}
	}
	return false
}
