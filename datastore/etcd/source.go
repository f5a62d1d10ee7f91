package etcd

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/datastore"
	"github.com/overlayd/overlayd/datastore/calico"
)

// requestTimeout bounds what the watch and a reload ask of etcd at once
// (a list, a registration), so that a server that dies in the middle does
// not hang them.
const requestTimeout = 30 * time.Second

// Claimer claims a node's blocks; *IPAM is the one the source uses unless
// Options names another (tests).
type Claimer interface {
	EnsureBlocks(ctx context.Context, node Member, pools []*calico.IPPool) (Claimed, error)
}

// Options tune the source; a zero field takes its default.
type Options struct {
	// StateDir holds the snapshot; "": the [datastore] section's stateDir.
	StateDir string
	// StartTimeout is how long the first Load tries etcd before it starts
	// from the snapshot (default 10 s); WaitTimeout how long it keeps
	// trying when there is no snapshot before it gives up (default 60 s).
	StartTimeout, WaitTimeout time.Duration
	// BatchDelay is how long a watch collects changes after the first of a
	// burst before it rebuilds the cluster once (default 100 ms).
	BatchDelay time.Duration
	// ProbeInterval is how often a watching source checks that etcd
	// answers (default 5 s): a watch on a dead server just waits.
	ProbeInterval time.Duration
	// RetryMin and RetryMax bound the backoff between attempts to reach
	// etcd (defaults 250 ms and 10 s).
	RetryMin, RetryMax time.Duration
	// SnapshotInterval is the least time between two writes of the
	// snapshot (default 30 s): at 100,000 blocks it is megabytes, and a
	// busy cluster changes every batch. A change waits at most this long
	// to be written, and Close writes what is left.
	SnapshotInterval time.Duration
	// LeaseTTL is the liveness key's lease (default 90 s, as Felix);
	// LivenessInterval how often the report is rewritten (default 30 s).
	LeaseTTL, LivenessInterval time.Duration
	// IPAM claims the node's blocks; nil: NewIPAM on the source's client.
	IPAM Claimer
}

func (o Options) withDefaults(d config.Datastore) Options {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.StartTimeout, 10*time.Second)
	def(&o.WaitTimeout, 60*time.Second)
	def(&o.BatchDelay, 100*time.Millisecond)
	def(&o.ProbeInterval, 5*time.Second)
	def(&o.RetryMin, 250*time.Millisecond)
	def(&o.RetryMax, 10*time.Second)
	def(&o.SnapshotInterval, 30*time.Second)
	def(&o.LeaseTTL, 90*time.Second)
	def(&o.LivenessInterval, 30*time.Second)
	if o.StateDir == "" {
		o.StateDir = d.StateDir
	}
	if o.StateDir == "" {
		o.StateDir = config.DefaultStateDir
	}
	return o
}

// Source is the etcd datastore as a datastore.Source: it registers this
// node (its Node resource, its blocks, its liveness under a lease), lists
// pools, nodes, blocks and affinities at one revision, watches them from
// the next and builds the cluster from them (build).
//
// Load and Watch may run at the same time (a reload while watching); Watch
// calls apply from its own goroutine only, one call at a time.
type Source struct {
	cli       *clientv3.Client
	keys      calico.Keys
	endpoints []string
	node      string
	log       *slog.Logger
	o         Options
	ipam      Claimer
	started   time.Time

	// life is the source's own context, ended by Close; live is the
	// liveness lease's, ended too when this node is deleted.
	life, live         context.Context
	stop, stopLiveness context.CancelFunc
	liveness           sync.WaitGroup
	startLiveness      sync.Once
	closeOnce          sync.Once
	closeErr           error

	loadMu sync.Mutex // one Load at a time
	regMu  sync.Mutex // one register at a time
	loaded bool       // the first Load returned a cluster

	mu sync.Mutex // guards what follows
	// local is the file: node-local sections and this node's entry.
	local *config.Cluster
	// ix holds the keys the node reads, decoded, at revision rev, and
	// the cluster built from them.
	ix  *index
	rev int64
	// fresh says entries come from etcd, not from the snapshot.
	fresh bool
	// registered: this node's Node is written; deleted: someone deleted it
	// since, and it stays deleted until overlayd restarts.
	registered, deleted bool
	// claimPools are the pools of the last build to claim blocks from;
	// claimedFor is their signature when blocks were last ensured.
	claimPools []*calico.IPPool
	claimedFor string
	skipped    map[string]string // the last build's skipped entries, by key
	last       *config.Cluster   // the cluster last handed out
	status     datastore.Status
	// The snapshot: snapDue says the cluster changed since it was last
	// written, at snapAt; snapTimer, when set, writes it later.
	snapDue   bool
	snapAt    time.Time
	snapTimer *time.Timer

	snapMu sync.Mutex // one snapshot write at a time
}

var _ datastore.Source = (*Source)(nil)

// Open makes the etcd source of node, from the [datastore] section d and
// the file's cluster local (its node-local sections and node's own
// [[nodes]] entry). It does not reach etcd: Load does.
func Open(d config.Datastore, local *config.Cluster, node string, log *slog.Logger) (*Source, error) {
	return OpenWith(d, local, node, log, Options{})
}

// OpenWith is Open with options.
func OpenWith(d config.Datastore, local *config.Cluster, node string, log *slog.Logger, o Options) (*Source, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if local.Node(node) == nil {
		return nil, fmt.Errorf("node %q is not in %s (its nodes: %v): with [datastore] type = %q the file keeps this node's own [[nodes]] entry (name, address with prefix, labels)", node, local.Source, local.NodeNames(), config.DatastoreEtcd)
	}
	cli, err := Connect(d)
	if err != nil {
		return nil, err
	}
	o = o.withDefaults(d)
	keys := calico.Keys{Prefix: d.Prefix}
	s := &Source{
		cli: cli, keys: keys, endpoints: d.Endpoints, node: node, log: log.With("datastore", "etcd"), o: o,
		ipam: o.IPAM, started: time.Now(), local: local, ix: newIndex(keys, local, node),
		status: datastore.Status{Type: config.DatastoreEtcd, Since: time.Now()},
	}
	if s.ipam == nil {
		ipam := NewIPAM(cli, keys, log)
		ipam.MaxBlocksPerNode = d.MaxBlocksPerNode
		s.ipam = ipam
	}
	s.life, s.stop = context.WithCancel(context.Background())
	s.live, s.stopLiveness = context.WithCancel(s.life)
	return s, nil
}

// Close writes the snapshot if it is behind, ends the liveness lease
// (revoking it: the node is no longer live) and the connection to etcd.
func (s *Source) Close() error {
	s.closeOnce.Do(func() {
		s.stop()
		s.mu.Lock()
		if s.snapTimer != nil {
			s.snapTimer.Stop()
		}
		s.mu.Unlock()
		s.writeSnapshot()
		s.liveness.Wait()
		if err := s.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
			s.closeErr = fmt.Errorf("closing the etcd client: %w", err)
		}
	})
	return s.closeErr
}

// Status says whether etcd answers, since when, the revision of the
// cluster last handed out, and how many entries were skipped.
func (s *Source) Status() datastore.Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// Load returns the cluster. The first time it reaches etcd, registers this
// node, claims its blocks and lists the datastore; when etcd does not
// answer within StartTimeout it starts from the snapshot (Status.Up is
// false and Watch keeps trying), and with no snapshot it keeps trying
// until WaitTimeout, then fails. Later Loads (a reload) read the file's
// node-local sections again and rebuild from the datastore as watched.
func (s *Source) Load(ctx context.Context) (*config.Cluster, error) {
	s.loadMu.Lock()
	defer s.loadMu.Unlock()
	if !s.loaded {
		c, err := s.start(ctx)
		if err != nil {
			return nil, err
		}
		s.loaded = true
		return c, nil
	}
	if err := s.rereadFile(ctx); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := s.buildLocked()
	if err != nil {
		return nil, err
	}
	s.last = b.cluster
	return b.cluster, nil
}

// start is the first Load.
func (s *Source) start(ctx context.Context) (*config.Cluster, error) {
	t0 := time.Now()
	fallbackAt, giveUpAt := t0.Add(s.o.StartTimeout), t0.Add(s.o.WaitTimeout)
	triedSnapshot := false
	wait := s.o.RetryMin
	for {
		until := fallbackAt
		if triedSnapshot {
			until = giveUpAt
		}
		actx, cancel := context.WithDeadline(ctx, until)
		c, _, err := s.resync(actx)
		cancel()
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("reaching etcd at %s: %w", s.endpointList(), ctx.Err())
		}
		s.markDown(err)
		now := time.Now()
		if !triedSnapshot && !now.Before(fallbackAt) {
			triedSnapshot = true
			c, ok, serr := s.fromSnapshot()
			if serr != nil {
				s.log.Warn("cannot start from the datastore snapshot", "err", serr)
			}
			if ok {
				s.log.Warn("etcd does not answer: starting from the last snapshot and retrying", "endpoints", s.endpointList(), "after", now.Sub(t0).Round(time.Millisecond), "err", err)
				return c, nil
			}
		}
		if !now.Before(giveUpAt) {
			return nil, fmt.Errorf("etcd at %s did not answer within %s and there is no snapshot in %s to start from: check that etcd runs and that this node reaches it (the [datastore] endpoints, firewalls, and caFile/certFile/keyFile for https): %w",
				s.endpointList(), s.o.WaitTimeout, s.o.StateDir, err)
		}
		s.log.Warn("etcd does not answer yet: retrying", "endpoints", s.endpointList(), "in", wait, "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("reaching etcd at %s: %w", s.endpointList(), ctx.Err())
		case <-time.After(min(wait, time.Until(giveUpAt)+time.Millisecond)):
		}
		wait = min(2*wait, s.o.RetryMax)
	}
}

func (s *Source) endpointList() string { return strings.Join(s.endpoints, ", ") }

// rereadFile reads the cluster file again for its node-local sections and
// this node's entry; a changed address, labels or MAC is written to the
// node's Node resource.
func (s *Source) rereadFile(ctx context.Context) error {
	s.mu.Lock()
	path := s.local.Source
	s.mu.Unlock()
	if path == "" {
		return nil
	}
	c, err := config.Load(path)
	if err != nil {
		return err
	}
	if c.Datastore.Type != config.DatastoreEtcd {
		return fmt.Errorf("%s: [datastore] type is now %q: changing the datastore needs a restart", path, c.Datastore.Type)
	}
	me := c.Node(s.node)
	if me == nil {
		return fmt.Errorf("node %q is no longer in %s (its nodes: %v)", s.node, path, c.NodeNames())
	}
	s.mu.Lock()
	old := s.local.Node(s.node)
	changed := old.Address != me.Address || !maps.Equal(old.Labels, me.Labels) || old.VTEPMAC.String() != me.VTEPMAC.String()
	s.local = c
	s.ix.setLocal(c)
	reg := changed && s.registered && s.fresh
	s.mu.Unlock()
	if reg {
		if err := s.register(ctx); err != nil {
			s.log.Warn("this node's new address, labels or VTEP MAC are not written to the datastore yet", "err", err)
		}
	}
	return nil
}

// resync lists the datastore, registers this node if it is not yet, and
// builds the cluster; changed says whether it routes differently from the
// cluster last handed out.
func (s *Source) resync(ctx context.Context) (c *config.Cluster, changed bool, err error) {
	entries, rev, err := s.list(ctx)
	if err != nil {
		return nil, false, err
	}
	s.mu.Lock()
	s.ix, s.rev, s.fresh = s.indexOf(entries), rev, true
	b, err := s.buildLocked()
	registered := s.registered
	s.mu.Unlock()
	if err != nil {
		return nil, false, err
	}
	if !registered {
		if err := s.register(ctx); err != nil {
			return nil, false, err
		}
		if entries, rev, err = s.list(ctx); err != nil {
			return nil, false, err
		}
		s.mu.Lock()
		s.ix, s.rev = s.indexOf(entries), rev
		b, err = s.buildLocked()
		s.mu.Unlock()
		if err != nil {
			return nil, false, err
		}
	}
	s.markUp()
	changed = s.handOut(b)
	s.snapshotChanged()
	return b.cluster, changed, nil
}

// list reads the keys a node reads, all at the revision of the first Get.
func (s *Source) list(ctx context.Context) (map[string]*entry, int64, error) {
	entries := map[string]*entry{}
	var rev int64
	for i, prefix := range readPrefixes(s.keys) {
		opts := []clientv3.OpOption{clientv3.WithPrefix()}
		if i > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := s.cli.Get(ctx, prefix, opts...)
		if err != nil {
			return nil, 0, fmt.Errorf("listing %s in etcd at %s: %w", prefix, s.endpointList(), err)
		}
		if i == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			if e := decodeEntry(s.keys, string(kv.Key), kv.Value, kv.ModRevision); e != nil {
				entries[string(kv.Key)] = e
			}
		}
	}
	return entries, rev, nil
}

// indexOf indexes a listing's entries. s.mu is held.
func (s *Source) indexOf(entries map[string]*entry) *index {
	ix := newIndex(s.keys, s.local, s.node)
	for k, e := range entries {
		ix.put(k, e)
	}
	return ix
}

// buildLocked brings the cluster up to date with the entries, reports
// entries skipped since the last build, and keeps the pools to claim from.
// s.mu is held.
func (s *Source) buildLocked() (built, error) {
	b, err := s.ix.build()
	if err != nil {
		return built{}, err
	}
	for _, k := range slices.Sorted(maps.Keys(b.skipped)) {
		why := b.skipped[k]
		if s.skipped[k] == why {
			continue // reported when it first appeared
		}
		s.status.Skipped++
		s.status.LastError = fmt.Sprintf("skipped %s: %s", k, why)
		s.log.Warn("datastore entry skipped", "key", k, "why", why)
	}
	s.skipped = b.skipped
	s.claimPools = b.claimPools
	return b, nil
}

// handOut records b as the cluster handed out, at the entries' revision,
// and says whether it routes differently from the one before.
func (s *Source) handOut(b built) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	changed := !sameRouting(s.last, b.cluster)
	s.last = b.cluster
	s.status.Revision = s.rev
	return changed
}

func (s *Source) markUp() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.status.Up {
		s.status.Up, s.status.Since, s.status.LastError = true, time.Now(), ""
		s.log.Info("etcd answers", "endpoints", s.endpointList(), "revision", s.rev)
	}
}

func (s *Source) markDown(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.status.Up {
		s.status.Since = time.Now()
		s.log.Error("etcd does not answer: forwarding continues on the last cluster", "endpoints", s.endpointList(), "err", err)
	}
	s.status.Up = false
	s.status.LastError = err.Error()
}

// snapshotChanged notes that the cluster changed: the snapshot is written
// now when the last write is SnapshotInterval old (or there was none),
// else when it will be.
func (s *Source) snapshotChanged() {
	s.mu.Lock()
	s.snapDue = true
	if s.snapTimer != nil {
		s.mu.Unlock()
		return // a write is on its way
	}
	if wait := time.Until(s.snapAt.Add(s.o.SnapshotInterval)); wait > 0 && s.life.Err() == nil {
		s.snapTimer = time.AfterFunc(wait, s.writeSnapshot)
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	s.writeSnapshot()
}

// writeSnapshot keeps the entries, decoded, for a start without etcd, if
// they changed since it last did; failing to is logged, not fatal.
func (s *Source) writeSnapshot() {
	s.snapMu.Lock()
	defer s.snapMu.Unlock()
	s.mu.Lock()
	s.snapTimer = nil
	if !s.snapDue {
		s.mu.Unlock()
		return
	}
	snap, err := snapshotOf(s.ix, s.rev)
	s.snapDue, s.snapAt = false, time.Now()
	s.mu.Unlock()
	if err == nil {
		err = saveSnapshot(s.o.StateDir, snap)
	}
	if err != nil {
		s.log.Warn("the datastore snapshot is not saved: a start without etcd will use an older one or none", "err", err)
	}
}

// fromSnapshot builds the cluster from the snapshot; ok is false when there
// is none for this prefix.
func (s *Source) fromSnapshot() (*config.Cluster, bool, error) {
	snap, ok, err := loadSnapshot(s.o.StateDir)
	if err != nil || !ok {
		return nil, false, err
	}
	if snap.Prefix != s.keys.Prefix {
		return nil, false, fmt.Errorf("the snapshot in %s is of prefix %q, not %q", s.o.StateDir, snap.Prefix, s.keys.Prefix)
	}
	entries, err := snap.entries(s.keys)
	if err != nil {
		return nil, false, fmt.Errorf("%s: %w", s.o.StateDir, err)
	}
	s.mu.Lock()
	s.ix, s.rev, s.fresh = s.indexOf(entries), snap.Revision, false
	b, err := s.buildLocked()
	s.mu.Unlock()
	if err != nil {
		return nil, false, err
	}
	s.handOut(b)
	return b.cluster, true, nil
}

// register writes this node into the datastore: its blocks first
// (IPAM.EnsureBlocks, from the usable pools), so that its tunnel address is
// known, then its Node resource, then its liveness under a lease. A node
// deleted since it registered is not written again until overlayd
// restarts. A failed claim is logged and the node registers without new
// blocks; it is tried again when the pools change.
func (s *Source) register(ctx context.Context) error {
	s.regMu.Lock()
	defer s.regMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	s.mu.Lock()
	me := *s.local.Node(s.node)
	pools, sig := s.claimPools, poolSignature(s.claimPools, s.ix.entries, s.keys)
	first, deleted := !s.registered, s.deleted
	s.mu.Unlock()
	if deleted {
		return nil
	}
	if !first {
		// Deleted while this node was not watching: claim nothing for it.
		resp, err := s.cli.Get(ctx, s.keys.Node(s.node), clientv3.WithCountOnly())
		if err != nil {
			return fmt.Errorf("reading this node's Node: %w", err)
		}
		if resp.Count == 0 {
			s.nodeDeleted()
			return nil
		}
	}
	var (
		claimed  Claimed
		claimErr error
	)
	if len(pools) > 0 {
		claimed, claimErr = s.ipam.EnsureBlocks(ctx, Member{Name: me.Name, Labels: me.Labels}, pools)
		if claimErr != nil {
			s.log.Error("claiming this node's blocks failed: it runs without new blocks until the pools change", "err", claimErr)
		}
	}
	info := calico.NodeInfo{Name: me.Name, Address: me.Address, Labels: me.Labels, VTEPMAC: me.VTEPMAC}
	switch claimed.TunnelType {
	case calico.AttrTypeVXLAN:
		info.VXLANTunnelAddr = claimed.TunnelAddr
	case calico.AttrTypeIPIP:
		info.IPIPTunnelAddr = claimed.TunnelAddr
	}
	keepTunnel := claimErr != nil || len(pools) == 0
	if err := s.writeNode(ctx, info, keepTunnel, first); err != nil {
		if errors.Is(err, errNodeDeleted) {
			s.nodeDeleted()
			return nil
		}
		return err
	}
	s.mu.Lock()
	s.registered, s.claimedFor = true, sig
	s.mu.Unlock()
	if first {
		s.log.Info("registered in the datastore", "node", s.node, "blocks", claimed.Blocks, "tunnelAddress", claimed.TunnelAddr)
	}
	s.startLiveness.Do(func() {
		s.liveness.Add(1)
		go s.keepLive()
	})
	return nil
}

// poolSignature identifies the pools blocks were claimed from, by name and
// the revision each was last written at.
func poolSignature(pools []*calico.IPPool, entries map[string]*entry, keys calico.Keys) string {
	var b strings.Builder
	for _, p := range pools {
		var rev int64
		if e := entries[keys.IPPool(p.Metadata.Name)]; e != nil {
			rev = e.modRev
		}
		fmt.Fprintf(&b, "%s@%d;", p.Metadata.Name, rev)
	}
	return b.String()
}

var errNodeDeleted = errors.New("the node's Node resource was deleted")

// writeNode creates this node's Node (only if absent: Version == 0) or
// updates the one there (only if unchanged since read: ModRevision), keeping
// Calico's members. keepTunnel keeps the tunnel addresses it has. A node
// that is absent when create is false was deleted: errNodeDeleted.
func (s *Source) writeNode(ctx context.Context, info calico.NodeInfo, keepTunnel, create bool) error {
	key := s.keys.Node(s.node)
	const attempts = 5
	for range attempts {
		resp, err := s.cli.Get(ctx, key)
		if err != nil {
			return fmt.Errorf("reading this node's Node %s: %w", key, err)
		}
		var (
			n    *calico.Node
			cond clientv3.Cmp
			old  []byte
		)
		if len(resp.Kvs) == 0 {
			if !create {
				return errNodeDeleted
			}
			n = calico.NewNode(info, newUID(), time.Now())
			cond = clientv3.Compare(clientv3.Version(key), "=", 0)
		} else {
			kv := resp.Kvs[0]
			old = kv.Value
			cond = clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)
			if n, err = calico.DecodeNode(kv.Value); err != nil {
				s.log.Warn("this node's Node in the datastore is malformed: writing it anew", "key", key, "err", err)
				n = calico.NewNode(info, newUID(), time.Now())
			}
			if keepTunnel {
				if was, err := n.Info(); err == nil {
					info.IPIPTunnelAddr, info.VXLANTunnelAddr = was.IPIPTunnelAddr, was.VXLANTunnelAddr
				}
			}
			n.Metadata.Name = s.node
			n.SetInfo(info)
		}
		data, err := json.Marshal(n)
		if err != nil {
			return fmt.Errorf("encoding this node's Node: %w", err)
		}
		if old != nil && string(old) == string(data) {
			return nil
		}
		tx, err := s.cli.Txn(ctx).If(cond).Then(clientv3.OpPut(key, string(data))).Commit()
		if err != nil {
			return fmt.Errorf("writing this node's Node %s: %w", key, err)
		}
		if tx.Succeeded {
			return nil
		}
	}
	return fmt.Errorf("writing this node's Node %s: it changed under every one of %d attempts", key, attempts)
}

// newUID is a random (version 4) UUID, as Kubernetes gives a new object.
func newUID() string {
	var u [16]byte
	_, _ = rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// keepLive keeps this node's liveness report under a lease until Close: a
// lost lease (etcd down longer than its TTL) is granted again and the
// report written again. A node deleted from the datastore stops reporting
// (nodeDeleted).
func (s *Source) keepLive() {
	defer s.liveness.Done()
	wait := s.o.RetryMin
	first := true
	for s.live.Err() == nil {
		held, err := s.liveOnce(&first)
		if s.live.Err() != nil {
			return
		}
		if held {
			wait = s.o.RetryMin
		}
		s.log.Warn("this node's liveness lease is lost: granting a new one", "in", wait, "err", err)
		select {
		case <-s.live.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, s.o.RetryMax)
	}
}

// liveOnce grants a lease, writes the report under it and keeps it alive
// until the lease is lost or the source closes or this node is deleted
// (then it revokes it). held says whether the lease was granted at all.
func (s *Source) liveOnce(first *bool) (held bool, err error) {
	ctx := s.live
	ttl := int64(max(s.o.LeaseTTL/time.Second, 1))
	lease, err := s.cli.Grant(ctx, ttl)
	if err != nil {
		return false, fmt.Errorf("granting the liveness lease: %w", err)
	}
	defer func() {
		if ctx.Err() != nil {
			rctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_, _ = s.cli.Revoke(rctx, lease.ID) // best effort: the TTL ends it anyway
		}
	}()
	key := s.keys.Liveness(s.node)
	report := func() error {
		data, err := json.Marshal(calico.NewLiveness(time.Now(), time.Since(s.started), *first))
		if err != nil {
			return fmt.Errorf("encoding the liveness report: %w", err)
		}
		pctx, cancel := context.WithTimeout(ctx, min(s.o.LivenessInterval, requestTimeout))
		defer cancel()
		if _, err := s.cli.Put(pctx, key, string(data), clientv3.WithLease(lease.ID)); err != nil {
			return fmt.Errorf("writing the liveness report %s: %w", key, err)
		}
		*first = false
		return nil
	}
	if err := report(); err != nil {
		return true, err
	}
	alive, err := s.cli.KeepAlive(ctx, lease.ID)
	if err != nil {
		return true, fmt.Errorf("keeping the liveness lease alive: %w", err)
	}
	tick := time.NewTicker(s.o.LivenessInterval)
	defer tick.Stop()
	for {
		select {
		case _, ok := <-alive:
			if !ok {
				return true, errors.New("the lease expired or etcd ended it")
			}
		case <-tick.C:
			if err := report(); err != nil {
				s.log.Warn("the liveness report is not refreshed", "err", err)
			}
		case <-ctx.Done():
			return true, nil
		}
	}
}

// nodeDeleted records that this node's Node was deleted (`overlayd delete
// node`): the node is not registered again and stops its liveness reports
// until overlayd restarts.
func (s *Source) nodeDeleted() {
	s.mu.Lock()
	was := s.deleted
	s.deleted = true
	s.mu.Unlock()
	if !was {
		s.stopLiveness()
		s.log.Warn("this node's Node was deleted from the datastore: it is not registered again, claims no blocks and reports no liveness until overlayd restarts", "node", s.node)
	}
}
