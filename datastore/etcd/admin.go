package etcd

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/datastore/calico"
	"github.com/overlayd/overlayd/pool"
	"github.com/overlayd/overlayd/pool/selector"
)

// Admin reads and changes the datastore as calicoctl (etcd mode) does, for
// `overlayd apply`, `get`, `delete` and `ipam show`. A change is one
// transaction that compares versions (create: Version == 0; update and
// delete: ModRevision == read); a listing reads one revision, page by page.
// Errors from etcd name its endpoints.
type Admin struct {
	cli  *clientv3.Client
	keys calico.Keys
	ipam *IPAM
	// Now and NewUID stamp a new IPPool's creationTimestamp and uid, as
	// Calico's clientv3 Create does; tests may replace them.
	Now    func() time.Time
	NewUID func() string
}

// NewAdmin is the Admin of the etcd behind cli, under keys' prefix.
func NewAdmin(cli *clientv3.Client, keys calico.Keys) *Admin {
	return &Admin{cli: cli, keys: keys, ipam: NewIPAM(cli, keys, nil), Now: time.Now, NewUID: uuid.NewString}
}

// OpenAdmin connects to the [datastore] section d (Connect) and makes its
// Admin; Close closes the connection.
func OpenAdmin(d config.Datastore) (*Admin, error) {
	cli, err := Connect(d)
	if err != nil {
		return nil, err
	}
	return NewAdmin(cli, calico.Keys{Prefix: d.Prefix}), nil
}

// Close closes the connection to etcd.
func (a *Admin) Close() error { return a.cli.Close() }

// ErrNotFound is returned when the pool or node to delete does not exist.
var ErrNotFound = errors.New("not found")

// ErrConflict is returned when other writers kept changing what a command
// read while it tried to write; nothing was written.
var ErrConflict = errors.New("the datastore kept changing under this command; nothing was written: try again")

// applyAttempts bounds how often Apply re-reads and retries after another
// writer changed the pools between its read and its write.
const applyAttempts = 5

// pageSize is how many keys a listing asks etcd for at a time: 100,000
// blocks are not one response.
const pageSize = 1000

// etcdErr names the endpoints in an error from etcd, and says what a
// timeout usually means.
func (a *Admin) etcdErr(err error) error {
	endpoints := strings.Join(a.cli.Endpoints(), ", ")
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("etcd at %s did not answer in time (is it running, and reachable from here?): %w", endpoints, err)
	}
	return fmt.Errorf("etcd at %s: %w", endpoints, err)
}

// list reads every key under prefix at revision rev (0: the current one),
// in key order, a page at a time. It returns the revision it read at.
func (a *Admin) list(ctx context.Context, prefix string, rev int64, opts ...clientv3.OpOption) ([]*kv, int64, error) {
	end := clientv3.GetPrefixRangeEnd(prefix)
	var out []*kv
	for key := prefix; ; {
		o := append([]clientv3.OpOption{clientv3.WithRange(end), clientv3.WithRev(rev), clientv3.WithLimit(pageSize)}, opts...)
		resp, err := a.cli.Get(ctx, key, o...)
		if err != nil {
			return nil, 0, a.etcdErr(err)
		}
		if rev == 0 {
			// Later pages read at the first one's revision. (A header
			// always holds the store's current revision, not the one read.)
			rev = resp.Header.Revision
		}
		for _, e := range resp.Kvs {
			out = append(out, &kv{key: string(e.Key), value: e.Value, modRevision: e.ModRevision})
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return out, rev, nil
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// kv is one key as read.
type kv struct {
	key         string
	value       []byte
	modRevision int64
}

// ---- IPPools -------------------------------------------------------------

// ApplyAction is what Apply did with one pool, in kubectl's words.
type ApplyAction string

// The actions of Apply.
const (
	Created    ApplyAction = "created"
	Configured ApplyAction = "configured"
	Unchanged  ApplyAction = "unchanged"
)

// Applied is the outcome for one pool of Apply.
type Applied struct {
	Name   string      `json:"name"`
	Action ApplyAction `json:"action"`
}

// storedPool is an IPPool key as read: the object, when it decodes, and the
// pool in overlayd's terms, when it also passes Calico's validation.
type storedPool struct {
	kv    *kv
	name  string
	obj   *calico.IPPool
	valid *pool.IPPool
	err   error
}

// readPools lists the IPPool keys at revision rev (0: the current one).
func (a *Admin) readPools(ctx context.Context, rev int64) ([]*storedPool, int64, error) {
	kvs, rev, err := a.list(ctx, a.keys.IPPools(), rev)
	if err != nil {
		return nil, 0, err
	}
	out := make([]*storedPool, 0, len(kvs))
	for _, e := range kvs {
		k, err := a.keys.Parse(e.key)
		if err != nil || k.Kind != calico.KindIPPool {
			continue // not a pool's key (a deeper path): not listed, as Calico's list skips it
		}
		s := &storedPool{kv: e, name: k.Name}
		if s.obj, s.err = calico.DecodeIPPool(e.value); s.err == nil {
			s.valid, s.err = s.obj.Pool()
		}
		out = append(out, s)
	}
	return out, rev, nil
}

// ApplyIPPools creates the pools that do not exist and updates those that
// do, as `calicoctl apply` does, all in one transaction: either every pool
// is written or none is. Each pool is checked against the pools in etcd
// with Calico's rules: a new pool may not overlap another pool, nor blocks
// of another size; an existing pool's CIDR and block size cannot change.
// A refusal is a *pool.FieldError. An update changes the members the
// manifest sets (modes, natOutgoing, disabled, nodeSelector) and keeps the
// rest of what is stored: uid, creationTimestamp, labels, allowedUses and
// members overlayd does not model. A pool whose stored form already says
// the same is "unchanged" and not written.
func (a *Admin) ApplyIPPools(ctx context.Context, pools []*pool.IPPool) ([]Applied, error) {
	if err := pool.ValidateSet(pools); err != nil {
		return nil, err
	}
	for range applyAttempts {
		applied, txn, err := a.planApply(ctx, pools)
		if err != nil {
			return nil, err
		}
		if txn == nil {
			return applied, nil // nothing to write
		}
		resp, err := txn.Commit()
		if err != nil {
			return nil, a.etcdErr(err)
		}
		if resp.Succeeded {
			return applied, nil
		}
	}
	return nil, ErrConflict
}

// planApply reads the stored pools, checks pools against them and returns
// the outcome for each pool and the transaction that writes them, or a nil
// transaction when every pool is unchanged.
func (a *Admin) planApply(ctx context.Context, pools []*pool.IPPool) ([]Applied, clientv3.Txn, error) {
	stored, rev, err := a.readPools(ctx, 0)
	if err != nil {
		return nil, nil, err
	}
	byName := map[string]*storedPool{}
	for _, s := range stored {
		byName[s.name] = s
	}
	var creates []*pool.IPPool
	// Any pool created or changed since the read fails the transaction:
	// the overlap checks below hold at the write.
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(a.keys.IPPools()).WithPrefix(), "<", rev+1)}
	var ops []clientv3.Op
	applied := make([]Applied, len(pools))
	for i, p := range pools {
		key := a.keys.IPPool(p.Name)
		applied[i].Name = p.Name
		s, ok := byName[p.Name]
		if !ok {
			creates = append(creates, p)
			obj, err := calico.NewIPPool(specOf(p), a.NewUID(), a.Now())
			if err != nil {
				return nil, nil, err
			}
			value, err := obj.MarshalJSON()
			if err != nil {
				return nil, nil, err
			}
			applied[i].Action = Created
			cmps = append(cmps, clientv3.Compare(clientv3.Version(key), "=", 0))
			ops = append(ops, clientv3.OpPut(key, string(value)))
			continue
		}
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", s.kv.modRevision))
		if s.obj == nil {
			return nil, nil, fmt.Errorf("IPPool %q in etcd cannot be read, so it cannot be updated (%v): delete it with `overlayd delete ippool %s` and apply again", p.Name, s.err, p.Name)
		}
		if err := checkUpdate(s.obj, p); err != nil {
			return nil, nil, err
		}
		if s.valid != nil && s.valid.Equal(p) {
			applied[i].Action = Unchanged
			continue
		}
		update(s.obj, p)
		value, err := s.obj.MarshalJSON()
		if err != nil {
			return nil, nil, err
		}
		applied[i].Action = Configured
		ops = append(ops, clientv3.OpPut(key, string(value)))
	}
	if err := a.checkCreates(ctx, creates, stored, rev); err != nil {
		return nil, nil, err
	}
	if len(ops) == 0 {
		return applied, nil, nil
	}
	return applied, a.cli.Txn(ctx).If(cmps...).Then(ops...), nil
}

// checkCreates applies the rules Calico checks when it creates a pool: no
// overlap with another pool (ValidateSet says it in Calico's words), and no
// existing block in its range of another size.
func (a *Admin) checkCreates(ctx context.Context, creates []*pool.IPPool, stored []*storedPool, rev int64) error {
	if len(creates) == 0 {
		return nil
	}
	for _, c := range creates {
		for _, s := range stored {
			other := s.valid
			if other == nil && s.obj != nil {
				// A pool overlayd does not accept (IPv6, say) still
				// claims its range, as in Calico.
				cidr, err := netip.ParsePrefix(s.obj.Spec.CIDR)
				if err != nil {
					continue // Calico skips a pool with an invalid CIDR too
				}
				other = &pool.IPPool{Name: s.name, CIDR: cidr.Masked()}
			}
			if other == nil {
				continue
			}
			if err := pool.ValidateSet([]*pool.IPPool{other, c}); err != nil {
				return err
			}
		}
	}
	blocks, _, err := a.list(ctx, a.keys.Blocks(), rev, clientv3.WithKeysOnly())
	if err != nil {
		return err
	}
	for _, b := range blocks {
		k, err := a.keys.Parse(b.key)
		if err != nil || k.Kind != calico.KindBlock {
			continue
		}
		for _, c := range creates {
			if c.CIDR.Overlaps(k.CIDR) && k.CIDR.Bits() != c.BlockSize {
				return &pool.FieldError{Pool: c.Name, Field: "blockSize", Msg: fmt.Sprintf(
					"IPPool blocksSize conflicts with existing allocations that use a different blockSize (block %s is a /%d, the pool's blocks are /%d)",
					k.CIDR, k.CIDR.Bits(), c.BlockSize)}
			}
		}
	}
	return nil
}

// checkUpdate applies Calico's rules for an update: the CIDR and the block
// size cannot change (clientv3/ippool.go validateAndSetDefaults).
func checkUpdate(old *calico.IPPool, p *pool.IPPool) error {
	cidr, err := netip.ParsePrefix(old.Spec.CIDR)
	if err != nil || cidr.Masked() != p.CIDR {
		return &pool.FieldError{Pool: p.Name, Field: "cidr", Msg: fmt.Sprintf(
			"IPPool CIDR cannot be modified (etcd has %s, the manifest %s): create a pool with the new CIDR, then delete this one", old.Spec.CIDR, p.CIDR)}
	}
	if bs := defaultBlockSize(old.Spec.BlockSize); bs != p.BlockSize {
		return &pool.FieldError{Pool: p.Name, Field: "blockSize", Msg: fmt.Sprintf(
			"IPPool BlockSize cannot be modified (etcd has %d, the manifest %d)", bs, p.BlockSize)}
	}
	return nil
}

// defaultBlockSize is the block size Calico reads for a stored one: 0 means
// the default (clientv3/ippool.go convertIpPoolFromStorage).
func defaultBlockSize(n int) int {
	if n == 0 {
		return pool.DefaultBlockSize
	}
	return n
}

// samePool reports whether two validated pools say the same thing.
// update writes p's members into the stored object and leaves the rest.
func update(obj *calico.IPPool, p *pool.IPPool) {
	if obj.Kind == "" || obj.APIVersion == "" {
		obj.Kind, obj.APIVersion = calico.KindNameIPPool, calico.APIVersion
	}
	obj.Spec.CIDR = p.CIDR.String() // the same network, in Calico's normal form
	obj.Spec.IPIPMode = string(p.IPIPMode)
	obj.Spec.VXLANMode = string(p.VXLANMode)
	obj.Spec.NATOutgoing = p.NATOutgoing
	obj.Spec.Disabled = p.Disabled
	obj.Spec.BlockSize = p.BlockSize
	// Keep the selector as written when it means the same.
	if old, err := selector.Parse(obj.Spec.NodeSelector); err != nil || old.String() != p.NodeSelector.String() {
		obj.Spec.NodeSelector = p.NodeSelector.String()
	}
}

// specOf is a validated pool as a spec, for calico.NewIPPool.
func specOf(p *pool.IPPool) pool.Spec {
	return pool.Spec{
		Name: p.Name, CIDR: p.CIDR.String(), IPIPMode: string(p.IPIPMode), VXLANMode: string(p.VXLANMode),
		NATOutgoing: p.NATOutgoing, Disabled: p.Disabled, NodeSelector: p.NodeSelector.String(), BlockSize: p.BlockSize,
	}
}

// PoolEntry is one IPPool in etcd. Pool is the object with the defaults
// Calico fills when it reads one (blockSize, nodeSelector, modes and
// allowedUses: clientv3/ippool.go convertIpPoolFromStorage),
// so it reads as `calicoctl get -o json` shows it; it is nil when the value
// cannot be read. Error says why the entry cannot be read or fails Calico's
// validation (overlayd's nodes skip such a pool).
type PoolEntry struct {
	Name  string         `json:"name"`
	Pool  *calico.IPPool `json:"resource,omitempty"`
	Error string         `json:"error,omitempty"`
}

// IPPools lists the IPPools in etcd, by name.
func (a *Admin) IPPools(ctx context.Context) ([]PoolEntry, error) {
	stored, _, err := a.readPools(ctx, 0)
	if err != nil {
		return nil, err
	}
	return poolEntries(stored), nil
}

func poolEntries(stored []*storedPool) []PoolEntry {
	out := make([]PoolEntry, 0, len(stored))
	for _, s := range stored {
		e := PoolEntry{Name: s.name, Pool: s.obj}
		if s.err != nil {
			e.Error = s.err.Error()
		}
		if s.obj != nil {
			readDefaults(s.obj)
		}
		out = append(out, e)
	}
	return out
}

// readDefaults fills what Calico's client fills in a pool it reads.
func readDefaults(p *calico.IPPool) {
	s := &p.Spec
	if s.BlockSize == 0 {
		if cidr, err := netip.ParsePrefix(s.CIDR); err == nil && cidr.Addr().Is4() {
			s.BlockSize = pool.DefaultBlockSize
		}
	}
	if len(s.AllowedUses) == 0 {
		s.AllowedUses = []string{calico.AllowedUseWorkload, calico.AllowedUseTunnel}
	}
	if s.NodeSelector == "" {
		s.NodeSelector = pool.DefaultNodeSelector
	}
	if s.IPIPMode == "" {
		s.IPIPMode = string(pool.ModeNever)
	}
	if s.VXLANMode == "" {
		s.VXLANMode = string(pool.ModeNever)
	}
}

// PoolDeleted is what DeleteIPPool did.
type PoolDeleted struct {
	Name string `json:"name"`
	// CIDR is the deleted pool's; invalid when its value could not be read.
	CIDR netip.Prefix `json:"cidr"`
	// Released are the pool's blocks deleted with their affinities, and
	// the handles (tunnel addresses) that lost addresses in them.
	Released Released `json:"released"`
	// Blocks are the blocks left in the pool's range: those no affinity
	// names, which Calico leaves too (their addresses stay allocated until
	// their owners release them).
	Blocks []netip.Prefix `json:"blocks"`
}

// ErrPoolInUse is wrapped by DeleteIPPool when blocks of the pool hold
// workload addresses.
var ErrPoolInUse = errors.New("blocks of the pool hold workload addresses")

// attrTypeWireGuard is the allocation type of calico-node's WireGuard
// tunnel address (node/pkg/allocateip), which overlayd never allocates but
// which is a tunnel address all the same.
const attrTypeWireGuard = "wireguardTunnelAddress"

// workloadAddrs counts the block's addresses allocated to workloads: not
// a node's tunnel address, nor one its owner released (in Calico's release
// cooldown).
func workloadAddrs(b *calico.Block) int {
	n := 0
	for _, idx := range b.Allocations {
		if idx == nil {
			continue
		}
		attr := b.Attributes[*idx]
		switch attr.ActiveOwnerAttrs[calico.AttrType] {
		case calico.AttrTypeVXLAN, calico.AttrTypeIPIP, attrTypeWireGuard:
			continue
		}
		if attr.ReleasedAt == nil {
			n++
		}
	}
	return n
}

// DeleteIPPool deletes the IPPool name as `calicoctl delete ippool` does
// (clientv3/ippool.go Delete): the pool is disabled, so that no node
// claims or assigns from it meanwhile; each of its blocks that an affinity
// names is released (ipam.go ReleasePoolAffinities), here with its tunnel
// addresses and their handles, as IPAM.ReleaseNode releases a node's; then
// the pool is deleted, if it was not changed since it was disabled.
//
// Unlike Calico, which strips the affinity from a block with workloads and
// leaves the workloads' routes to chance, it refuses while blocks of the
// pool hold workload addresses, naming them, and changes nothing
// (ErrPoolInUse). A pool whose value cannot be read is deleted alone: that
// is how a malformed entry is removed. A pool that does not exist is
// ErrNotFound.
func (a *Admin) DeleteIPPool(ctx context.Context, name string) (PoolDeleted, error) {
	key := a.keys.IPPool(name)
	resp, err := a.cli.Get(ctx, key)
	if err != nil {
		return PoolDeleted{}, a.etcdErr(err)
	}
	if len(resp.Kvs) == 0 {
		return PoolDeleted{}, fmt.Errorf("IPPool %q: %w", name, ErrNotFound)
	}
	e := resp.Kvs[0]
	out := PoolDeleted{Name: name}
	obj, err := calico.DecodeIPPool(e.Value)
	if err == nil {
		if cidr, err := netip.ParsePrefix(obj.Spec.CIDR); err == nil {
			out.CIDR = cidr.Masked()
		}
	}
	modRev := e.ModRevision
	if out.CIDR.IsValid() {
		if err := a.refuseInUse(ctx, name, out.CIDR); err != nil {
			return out, err
		}
		if !obj.Spec.Disabled {
			obj.Spec.Disabled = true
			value, err := obj.MarshalJSON()
			if err != nil {
				return out, fmt.Errorf("IPPool %q: encoding it disabled: %w", name, err)
			}
			txn, err := a.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).Then(clientv3.OpPut(key, string(value))).Commit()
			if err != nil {
				return out, a.etcdErr(err)
			}
			if !txn.Succeeded {
				return out, fmt.Errorf("IPPool %q changed while it was being deleted: %w", name, ErrConflict)
			}
			modRev = txn.Header.Revision
		}
		if out.Released, err = a.releasePool(ctx, name, out.CIDR); err != nil {
			return out, err
		}
	}
	txn, err := a.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).Then(clientv3.OpDelete(key)).Commit()
	if err != nil {
		return out, a.etcdErr(err)
	}
	if !txn.Succeeded {
		return out, fmt.Errorf("IPPool %q changed while it was being deleted (it is disabled, its free blocks released): %w", name, ErrConflict)
	}
	if !out.CIDR.IsValid() {
		return out, nil
	}
	blocks, _, err := a.list(ctx, a.keys.Blocks(), 0, clientv3.WithKeysOnly())
	if err != nil {
		return out, err
	}
	for _, b := range blocks {
		if k, err := a.keys.Parse(b.key); err == nil && k.Kind == calico.KindBlock && out.CIDR.Overlaps(k.CIDR) {
			out.Blocks = append(out.Blocks, k.CIDR)
		}
	}
	return out, nil
}

// refuseInUse returns an error wrapping ErrPoolInUse, naming the blocks in
// cidr that hold workload addresses, if any.
func (a *Admin) refuseInUse(ctx context.Context, name string, cidr netip.Prefix) error {
	kvs, _, err := a.list(ctx, a.keys.Blocks(), 0)
	if err != nil {
		return err
	}
	var inUse []string
	for _, e := range kvs {
		k, err := a.keys.Parse(e.key)
		if err != nil || k.Kind != calico.KindBlock || !cidr.Overlaps(k.CIDR) {
			continue
		}
		b, err := calico.DecodeBlock(e.value)
		if err != nil {
			continue // a malformed block is left as it is; `overlayd get blocks` shows it
		}
		if n := workloadAddrs(b); n > 0 {
			host, _ := b.Host()
			inUse = append(inUse, fmt.Sprintf("%s (node %q, %d)", k.CIDR, host, n))
		}
	}
	if len(inUse) == 0 {
		return nil
	}
	const named = 10
	list := strings.Join(inUse[:min(len(inUse), named)], ", ")
	if len(inUse) > named {
		list += fmt.Sprintf(" and %d more", len(inUse)-named)
	}
	return fmt.Errorf("IPPool %q: %d of its blocks hold workload addresses: %s; release them first (delete those workloads, or their nodes with `overlayd delete node`), then delete the pool; nothing was changed: %w",
		name, len(inUse), list, ErrPoolInUse)
}

// releasePool releases every block of cidr that an affinity names, with
// its affinity and its addresses (tunnel addresses: blocks with workload
// addresses were refused before), as ReleaseNode does for a node's.
func (a *Admin) releasePool(ctx context.Context, name string, cidr netip.Prefix) (Released, error) {
	kvs, _, err := a.list(ctx, a.keys.Affinities(), 0)
	if err != nil {
		return Released{}, err
	}
	var r Released
	handles := map[string]bool{}
	for _, e := range kvs {
		k, err := a.keys.Parse(e.key)
		if err != nil || k.Kind != calico.KindAffinity || !cidr.Overlaps(k.CIDR) {
			continue
		}
		// A workload may have been given an address since the check, by an
		// assigner that does not look at the pool: look again.
		if err := a.refuseInUseBlock(ctx, name, k.CIDR); err != nil {
			return r, err
		}
		aff := affinityKV{cidr: k.CIDR, kv: &mvccpb.KeyValue{Key: []byte(e.key), Value: e.value, ModRevision: e.modRevision}}
		var released bool
		var hs []string
		err = errChanged
		for i := 0; i < releaseRetries && errors.Is(err, errChanged); i++ {
			if i > 0 {
				if aff.kv, err = a.ipam.get(ctx, e.key); err != nil {
					return r, err
				}
				if aff.kv == nil {
					break // someone else released it
				}
			}
			released, hs, err = a.ipam.releaseBlock(ctx, k.Name, aff)
		}
		if err != nil {
			return r, fmt.Errorf("IPPool %q (disabled, not deleted): releasing block %s of node %q: %w", name, k.CIDR, k.Name, err)
		}
		if released {
			r.Blocks = append(r.Blocks, k.CIDR)
		}
		for _, h := range hs {
			handles[h] = true
		}
	}
	slices.SortFunc(r.Blocks, blockOrder)
	r.Handles = slices.Sorted(maps.Keys(handles))
	return r, nil
}

// refuseInUseBlock is refuseInUse for one block, read now.
func (a *Admin) refuseInUseBlock(ctx context.Context, name string, cidr netip.Prefix) error {
	kv, err := a.ipam.get(ctx, a.keys.Block(cidr))
	if err != nil || kv == nil {
		return err
	}
	b, err := calico.DecodeBlock(kv.Value)
	if err != nil {
		return nil // releaseBlock says why it cannot release it
	}
	if n := workloadAddrs(b); n > 0 {
		host, _ := b.Host()
		return fmt.Errorf("IPPool %q: block %s (node %q) was given %d workload addresses while the pool was being deleted; the pool is disabled, not deleted: release them, then delete it again: %w",
			name, cidr, host, n, ErrPoolInUse)
	}
	return nil
}

// ---- Nodes ---------------------------------------------------------------

// NodeEntry is one Node resource in etcd: the object (nil when its value
// cannot be read), what overlayd reads of it, and whether its liveness key
// is present (its lease alive). Error says why the entry cannot be read.
type NodeEntry struct {
	Name  string          `json:"name"`
	Node  *calico.Node    `json:"resource,omitempty"`
	Info  calico.NodeInfo `json:"-"`
	Live  bool            `json:"live"`
	Error string          `json:"error,omitempty"`
}

// Nodes lists the Node resources in etcd, by name.
func (a *Admin) Nodes(ctx context.Context) ([]NodeEntry, error) {
	kvs, rev, err := a.list(ctx, a.keys.Nodes(), 0)
	if err != nil {
		return nil, err
	}
	live, _, err := a.list(ctx, a.keys.Livenesses(), rev, clientv3.WithKeysOnly())
	if err != nil {
		return nil, err
	}
	alive := map[string]bool{}
	for _, l := range live {
		if k, err := a.keys.Parse(l.key); err == nil && k.Kind == calico.KindLiveness {
			alive[k.Name] = true
		}
	}
	out := make([]NodeEntry, 0, len(kvs))
	for _, e := range kvs {
		k, err := a.keys.Parse(e.key)
		if err != nil || k.Kind != calico.KindNode {
			continue
		}
		n := NodeEntry{Name: k.Name, Live: alive[k.Name]}
		n.Node, err = calico.DecodeNode(e.value)
		if err == nil {
			n.Info, err = n.Node.Info()
		}
		if err != nil {
			n.Error = err.Error()
		}
		out = append(out, n)
	}
	return out, nil
}

// NodeDeleted is what DeleteNode did.
type NodeDeleted struct {
	Name     string   `json:"name"`
	Released Released `json:"released"`
	// Node and Liveness report whether the Node resource and the liveness
	// key existed and were deleted.
	Node     bool `json:"node"`
	Liveness bool `json:"liveness"`
}

// DeleteNode removes a node from the cluster, as `calicoctl delete node`
// does: IPAM releases its blocks, affinities and handles, then its Node
// resource and its liveness key are deleted. The node's overlayd should be
// stopped first, or it registers again. A node of which nothing is left is
// ErrNotFound.
func (a *Admin) DeleteNode(ctx context.Context, name string) (NodeDeleted, error) {
	out := NodeDeleted{Name: name}
	released, err := a.ipam.ReleaseNode(ctx, name)
	if errors.Is(err, context.DeadlineExceeded) {
		err = a.etcdErr(err)
	}
	if err != nil {
		return out, fmt.Errorf("releasing the blocks of node %q: %w", name, err)
	}
	out.Released = released
	resp, err := a.cli.Txn(ctx).Then(clientv3.OpDelete(a.keys.Node(name)), clientv3.OpDelete(a.keys.Liveness(name))).Commit()
	if err != nil {
		return out, a.etcdErr(err)
	}
	out.Node = resp.Responses[0].GetResponseDeleteRange().Deleted > 0
	out.Liveness = resp.Responses[1].GetResponseDeleteRange().Deleted > 0
	if !out.Node && !out.Liveness && len(released.Blocks) == 0 && len(released.Handles) == 0 {
		return out, fmt.Errorf("node %q (no Node resource, liveness key, block or handle): %w", name, ErrNotFound)
	}
	return out, nil
}

// ---- Blocks and IPAM -----------------------------------------------------

// BlockEntry is one block, or one affinity whose block does not exist (a
// claim that did not finish: BlockMissing). Node is the block's affinity
// (host:<node>), else the affinity key's node; AffinityState is the state
// of that node's affinity key (confirmed, pending, pendingDeletion), empty
// when there is none. Error says why the block's value cannot be read.
type BlockEntry struct {
	CIDR          netip.Prefix `json:"cidr"`
	Node          string       `json:"node,omitempty"`
	AffinityState string       `json:"affinityState,omitempty"`
	InUse         int          `json:"inUse"`
	Size          int          `json:"size"`
	BlockMissing  bool         `json:"blockMissing,omitempty"`
	Error         string       `json:"error,omitempty"`
}

// Blocks lists the IPv4 blocks and the affinities without a block, by CIDR.
func (a *Admin) Blocks(ctx context.Context) ([]BlockEntry, error) {
	blocks, _, err := a.readBlocks(ctx, 0)
	return blocks, err
}

// readBlocks lists blocks and affinities at revision rev (0: the current
// one).
func (a *Admin) readBlocks(ctx context.Context, rev int64) ([]BlockEntry, int64, error) {
	kvs, rev, err := a.list(ctx, a.keys.Blocks(), rev)
	if err != nil {
		return nil, 0, err
	}
	affs, _, err := a.list(ctx, a.keys.Affinities(), rev)
	if err != nil {
		return nil, 0, err
	}
	// affinity states by block and node
	type blockNode struct {
		cidr netip.Prefix
		node string
	}
	states := map[blockNode]string{}
	var order []blockNode
	for _, e := range affs {
		k, err := a.keys.Parse(e.key)
		if err != nil || k.Kind != calico.KindAffinity {
			continue
		}
		state := "malformed"
		if aff, err := calico.DecodeAffinity(e.value); err == nil {
			state = aff.State
			if aff.Deleted {
				state += " (deleted)"
			}
		}
		bn := blockNode{k.CIDR, k.Name}
		states[bn] = state
		order = append(order, bn)
	}
	var out []BlockEntry
	seen := map[netip.Prefix]bool{}
	for _, e := range kvs {
		k, err := a.keys.Parse(e.key)
		if err != nil || k.Kind != calico.KindBlock {
			continue
		}
		seen[k.CIDR] = true
		entry := BlockEntry{CIDR: k.CIDR, Size: 1 << (32 - k.CIDR.Bits())}
		b, err := calico.DecodeBlock(e.value)
		if err != nil {
			entry.Error = err.Error()
			out = append(out, entry)
			continue
		}
		if b.CIDR != k.CIDR {
			entry.Error = fmt.Sprintf("the value's cidr %s is not the key's", b.CIDR)
		}
		entry.InUse = b.InUse()
		if host, ok := b.Host(); ok {
			entry.Node = host
			entry.AffinityState = states[blockNode{k.CIDR, host}]
		}
		out = append(out, entry)
	}
	for _, bn := range order {
		if !seen[bn.cidr] {
			out = append(out, BlockEntry{CIDR: bn.cidr, Node: bn.node, AffinityState: states[bn], BlockMissing: true})
		}
	}
	slices.SortStableFunc(out, func(x, y BlockEntry) int { return comparePrefix(x.CIDR, y.CIDR) })
	return out, rev, nil
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// IPAMUse is the address use of the cluster, as `calicoctl ipam show` sums
// it.
type IPAMUse struct {
	Pools []PoolUse `json:"pools"`
	// Unpooled are the blocks in no pool's range (a deleted pool's, say).
	Unpooled []BlockEntry   `json:"unpooled,omitempty"`
	Handles  []HandleEntry  `json:"handles"`
	Skipped  []SkippedEntry `json:"skipped,omitempty"`
}

// PoolUse is one pool's address use: Size addresses, InUse of them
// allocated in its blocks.
type PoolUse struct {
	Name   string       `json:"name"`
	CIDR   netip.Prefix `json:"cidr"`
	Size   int          `json:"size"`
	InUse  int          `json:"inUse"`
	Blocks []BlockEntry `json:"blocks"`
}

// HandleEntry is one IPAM handle: how many addresses it holds in which
// block (by CIDR).
type HandleEntry struct {
	ID     string         `json:"id"`
	Blocks map[string]int `json:"blocks"`
}

// SkippedEntry is an entry the summary could not count, and why.
type SkippedEntry struct {
	Key   string `json:"key"`
	Error string `json:"error"`
}

// IPAMUse sums up the address use at one revision: per pool the addresses
// in use and the blocks, the blocks in no pool, and the handles. Entries
// that cannot be read are listed in Skipped.
func (a *Admin) IPAMUse(ctx context.Context) (IPAMUse, error) {
	var sum IPAMUse
	stored, rev, err := a.readPools(ctx, 0)
	if err != nil {
		return sum, err
	}
	blocks, _, err := a.readBlocks(ctx, rev)
	if err != nil {
		return sum, err
	}
	handles, _, err := a.list(ctx, a.keys.Handles(), rev)
	if err != nil {
		return sum, err
	}
	for _, s := range stored {
		if s.valid == nil {
			sum.Skipped = append(sum.Skipped, SkippedEntry{Key: s.kv.key, Error: s.err.Error()})
			continue
		}
		sum.Pools = append(sum.Pools, PoolUse{Name: s.name, CIDR: s.valid.CIDR, Size: 1 << (32 - s.valid.CIDR.Bits())})
	}
	for _, b := range blocks {
		if b.BlockMissing {
			continue // an affinity without its block holds no address
		}
		if b.Error != "" {
			sum.Skipped = append(sum.Skipped, SkippedEntry{Key: a.keys.Block(b.CIDR), Error: b.Error})
			continue
		}
		i := slices.IndexFunc(sum.Pools, func(p PoolUse) bool { return p.CIDR.Overlaps(b.CIDR) })
		if i < 0 {
			sum.Unpooled = append(sum.Unpooled, b)
			continue
		}
		sum.Pools[i].InUse += b.InUse
		sum.Pools[i].Blocks = append(sum.Pools[i].Blocks, b)
	}
	for _, e := range handles {
		k, err := a.keys.Parse(e.key)
		if err != nil || k.Kind != calico.KindHandle {
			continue
		}
		h, err := calico.DecodeHandle(e.value)
		if err != nil {
			sum.Skipped = append(sum.Skipped, SkippedEntry{Key: e.key, Error: err.Error()})
			continue
		}
		sum.Handles = append(sum.Handles, HandleEntry{ID: k.Name, Blocks: h.Block})
	}
	return sum, nil
}
