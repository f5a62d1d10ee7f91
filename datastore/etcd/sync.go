package etcd

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/overlayd/overlayd/config"
)

// errCompacted says the watch's next revision is compacted away: the
// datastore must be listed again.
var errCompacted = errors.New("the watch's revision was compacted")

// Watch follows the datastore from the revision Load listed and calls apply
// with each cluster that routes differently from the last, one call at a
// time, from this goroutine only, until ctx ends.
//
// Changes are collected for BatchDelay after the first of a burst, then the
// cluster is rebuilt once. A compacted revision makes it list again. When
// etcd stops answering (a probe every ProbeInterval: a watch on a dead
// server just waits) Status says so, apply is not called and the last
// cluster stays; it retries with backoff and resumes from the last
// revision it saw. A source started from the snapshot lists (and
// registers this node) as soon as etcd answers.
func (s *Source) Watch(ctx context.Context, apply func(*config.Cluster)) error {
	s.mu.Lock()
	relist := !s.fresh
	s.mu.Unlock()
	wait := s.o.RetryMin
	backoff := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(wait):
		}
		wait = min(2*wait, s.o.RetryMax)
		return true
	}
	for ctx.Err() == nil {
		if relist {
			rctx, cancel := context.WithTimeout(ctx, requestTimeout)
			c, changed, err := s.resync(rctx)
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					break
				}
				s.markDown(err)
				if !backoff() {
					break
				}
				continue
			}
			relist = false
			if changed {
				apply(c)
			}
			s.claimIfPoolsChanged(ctx)
		} else if err := s.probe(ctx); err != nil {
			if ctx.Err() != nil {
				break
			}
			s.markDown(err)
			if !backoff() {
				break
			}
			continue
		}
		s.markUp()
		wait = s.o.RetryMin
		err := s.follow(ctx, apply)
		switch {
		case ctx.Err() != nil:
		case errors.Is(err, errCompacted):
			s.log.Info("the watch fell behind a compaction: listing the datastore again", "err", err)
			relist = true
		default:
			s.markDown(err)
			backoff()
		}
	}
	return nil
}

// follow watches everything under the prefix from the revision after the
// entries' and applies what changes, until the watch fails, a probe finds
// etcd gone, or ctx ends. The probe runs beside the watch and ends it: the
// client's Watch itself waits as long as the server is unreachable.
func (s *Source) follow(ctx context.Context, apply func(*config.Cluster)) error {
	s.mu.Lock()
	from := s.rev + 1
	s.mu.Unlock()
	wctx, cancel := context.WithCancelCause(clientv3.WithRequireLeader(ctx))
	probing := make(chan struct{})
	defer func() {
		cancel(nil)
		<-probing
	}()
	go func() {
		defer close(probing)
		s.probeUntil(wctx, cancel)
	}()
	watch := s.cli.Watch(wctx, s.root(), clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithPrevKV())
	var batch <-chan time.Time // set while changes wait to be applied
	flush := func() {
		if batch != nil {
			batch = nil
			s.rebuild(ctx, apply)
		}
	}
	ended := func() error {
		flush()
		if err := context.Cause(wctx); err != nil {
			return err
		}
		return fmt.Errorf("the watch of %s ended", s.root())
	}
	for {
		select {
		case <-wctx.Done():
			return ended()
		case resp, ok := <-watch:
			if !ok {
				return ended()
			}
			if err := resp.Err(); err != nil {
				if resp.CompactRevision != 0 || errors.Is(err, rpctypes.ErrCompacted) {
					// The changes collected are superseded by the list.
					return fmt.Errorf("%w (from revision %d, compacted up to %d): %w", errCompacted, from, resp.CompactRevision, err)
				}
				flush()
				return fmt.Errorf("watching %s in etcd at %s: %w", s.root(), s.endpointList(), err)
			}
			if len(resp.Events) == 0 {
				continue
			}
			if !s.ingest(resp.Events) {
				continue // keys a node does not read: liveness reports, handles
			}
			if batch == nil {
				batch = time.After(s.o.BatchDelay)
			}
		case <-batch:
			flush()
		}
	}
}

// probeUntil probes etcd every ProbeInterval until ctx ends, and ends it
// with the error of the first probe that fails.
func (s *Source) probeUntil(ctx context.Context, cancel context.CancelCauseFunc) {
	tick := time.NewTicker(s.o.ProbeInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if err := s.probe(ctx); err != nil {
				cancel(err)
				return
			}
		}
	}
}

// root is the watched prefix: everything under the datastore's prefix.
func (s *Source) root() string {
	p := s.keys.Prefix
	if p == "" {
		p = "/calico"
	}
	for len(p) > 1 && p[len(p)-1] == '/' {
		p = p[:len(p)-1]
	}
	return p + "/"
}

// ingest applies watch events to the entries and says whether any entry
// changed. A key overlayd does not read is ignored; the deletion of this
// node's own Node is noted.
func (s *Source) ingest(events []*clientv3.Event) (changed bool) {
	self := s.keys.Node(s.node)
	deletedSelf := false
	s.mu.Lock()
	for _, ev := range events {
		key := string(ev.Kv.Key)
		s.rev = max(s.rev, ev.Kv.ModRevision)
		if ev.Type == clientv3.EventTypeDelete {
			if s.ix.remove(key) {
				changed = true
			}
			deletedSelf = deletedSelf || key == self && s.registered
			continue
		}
		if e := decodeEntry(s.keys, key, ev.Kv.Value, ev.Kv.ModRevision); e != nil {
			s.ix.put(key, e)
			changed = true
		}
	}
	s.mu.Unlock()
	if deletedSelf {
		s.nodeDeleted()
	}
	return changed
}

// rebuild builds the cluster from the entries, applies it when it routes
// differently, notes it for the snapshot, and claims blocks when the pools
// changed.
func (s *Source) rebuild(ctx context.Context, apply func(*config.Cluster)) {
	s.mu.Lock()
	b, err := s.buildLocked()
	s.mu.Unlock()
	if err != nil {
		s.log.Error("the datastore's cluster cannot be built: keeping the last one", "err", err)
		return
	}
	if s.handOut(b) {
		apply(b.cluster)
		s.snapshotChanged()
	}
	s.claimIfPoolsChanged(ctx)
}

// claimIfPoolsChanged ensures this node's blocks again when the pools it
// may claim from changed since it last did (a pool appeared, was enabled
// or changed its selector).
func (s *Source) claimIfPoolsChanged(ctx context.Context) {
	s.mu.Lock()
	due := s.registered && !s.deleted && len(s.claimPools) > 0 &&
		poolSignature(s.claimPools, s.ix.entries, s.keys) != s.claimedFor
	s.mu.Unlock()
	if !due {
		return
	}
	if err := s.register(ctx); err != nil {
		s.log.Error("claiming blocks from the changed pools failed: tried again on the next change", "err", err)
	}
}

// probe checks that etcd answers a linearizable read (which needs a
// leader), within a bound.
func (s *Source) probe(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, min(DialTimeout, max(s.o.ProbeInterval, time.Second)))
	defer cancel()
	if _, err := s.cli.Get(pctx, s.keys.Node(s.node)); err != nil {
		return fmt.Errorf("etcd at %s does not answer: %w", s.endpointList(), err)
	}
	return nil
}
