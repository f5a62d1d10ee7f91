package testbed

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A three-member etcd cluster of real server processes on nodes A, B and C
// of the standard bed (C across the router): it serves through every
// member, survives one member's crash, stops answering with none, and has
// its data back after a restart. The client is the one overlayd uses, so
// the test also proves it speaks to this server.
func TestEtcdCluster(t *testing.T) {
	RequireEtcd(t)
	b := NewStandard(t, Options{})
	a, nodeB, c, outside := b.Host("node-a"), b.Host("node-b"), b.Host("node-c"), b.Host("outside")
	var token, dir string
	t.Cleanup(func() { // after the cluster and the bed are closed
		if token == "" {
			return
		}
		if pids := processesMentioning(t, token); len(pids) > 0 {
			t.Errorf("etcd processes of cluster %s survived the test: %v", token, pids)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the cluster's data directory %s is still there (%v)", dir, err)
		}
	})
	start := time.Now()
	e := StartEtcdForTest(t, b, []*Host{a, nodeB, c}, EtcdOptions{UnixSockets: true})
	token, dir = e.Token, e.Dir
	t.Logf("3 members up in %v: %v", time.Since(start).Round(time.Millisecond), e.Endpoints())
	if got, want := strings.Join(e.Endpoints(), " "), "http://198.18.1.10:2379 http://198.18.1.11:2379 http://198.18.2.10:2379"; got != want {
		t.Errorf("Endpoints() = %s, want %s", got, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ma, mb, mc := e.Member("node-a"), e.Member("node-b"), e.Member("node-c")

	// One client per member, each from another host, so every request
	// crosses the bed; and one with every endpoint, as a node has.
	viaA := memberClient(t, ma, c)
	viaC := memberClient(t, mc, a)
	all, err := e.Client(outside)
	if err != nil {
		t.Fatal(err)
	}
	defer all.Close()

	t.Run("a put through one member is read through another", func(t *testing.T) {
		if _, err := viaA.Put(ctx, "/t/hello", "world"); err != nil {
			t.Fatal(err)
		}
		expectValue(ctx, t, viaC, "/t/hello", "world")
	})
	t.Run("the unix sockets serve the machine's namespace", func(t *testing.T) {
		u, err := clientv3.New(clientv3.Config{Endpoints: e.UnixEndpoints(), DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		defer u.Close()
		expectValue(ctx, t, u, "/t/hello", "world")
	})
	t.Run("client v3.7 against this server", func(t *testing.T) {
		clientCompatibility(ctx, t, all)
	})
	if t.Failed() {
		return
	}

	leader := leaderOf(ctx, t, e, all)
	t.Run("one member killed: writes still succeed", func(t *testing.T) {
		if err := leader.Kill(); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := retryPut(ctx, all, "/t/during", "one down"); err != nil {
			t.Fatalf("no write with %s down: %v", leader.Name, err)
		}
		t.Logf("leader %s killed; a write through all endpoints succeeded after %v", leader.Name, time.Since(start).Round(time.Millisecond))
		for _, m := range []*EtcdMember{ma, mb, mc} {
			if m == leader {
				continue
			}
			cl := memberClient(t, m, outside)
			expectValue(ctx, t, cl, "/t/during", "one down")
		}
	})
	t.Run("all members killed: a client times out", func(t *testing.T) {
		for _, m := range e.Members() {
			if err := m.Kill(); err != nil {
				t.Fatal(err)
			}
			if m.Running() {
				t.Errorf("member %s still running after Kill", m.Name)
			}
		}
		short, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := all.Get(short, "/t/hello")
		if err == nil {
			t.Fatal("a read succeeded with every member killed")
		}
		if !errors.Is(err, context.DeadlineExceeded) && status.Code(err) != codes.DeadlineExceeded {
			t.Errorf("the read failed with %v, want a timeout", err)
		}
	})
	t.Run("restarted, the members have the data back", func(t *testing.T) {
		for _, m := range e.Members() {
			if err := m.Restart(); err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		if err := e.WaitHealthy(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("healthy again %v after the restart", time.Since(start).Round(time.Millisecond))
		// The old leader was down for the second write: it has it from
		// its peers.
		cl := memberClient(t, leader, nodeB)
		expectValue(ctx, t, cl, "/t/hello", "world")
		expectValue(ctx, t, cl, "/t/during", "one down")
		if _, err := all.Put(ctx, "/t/after", "back"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("Stop and Restart one member", func(t *testing.T) {
		if err := mb.Stop(); err != nil {
			t.Fatalf("SIGTERM: %v", err)
		}
		if err := mb.Restart(); err != nil {
			t.Fatal(err)
		}
		if err := e.WaitHealthy(ctx); err != nil {
			t.Fatal(err)
		}
		expectValue(ctx, t, memberClient(t, mb, a), "/t/after", "back")
	})
}

// clientCompatibility exercises what the datastore needs of etcd: a create
// guarded by Version == 0, an update guarded by ModRevision, a watch from a
// revision with previous values, a lease kept alive (and one let go), and a
// watch from a compacted revision failing with ErrCompacted.
func clientCompatibility(ctx context.Context, t *testing.T, cl *clientv3.Client) {
	t.Run("Txn: create if Version == 0, update if ModRevision matches", func(t *testing.T) {
		create := func(v string) *clientv3.TxnResponse {
			t.Helper()
			r, err := cl.Txn(ctx).
				If(clientv3.Compare(clientv3.Version("/t/txn"), "=", 0)).
				Then(clientv3.OpPut("/t/txn", v)).
				Else(clientv3.OpGet("/t/txn")).Commit()
			if err != nil {
				t.Fatal(err)
			}
			return r
		}
		if r := create("first"); !r.Succeeded {
			t.Fatal("the create of a new key failed its Version == 0 compare")
		}
		r := create("second")
		if r.Succeeded {
			t.Fatal("a second create succeeded")
		}
		kvs := r.Responses[0].GetResponseRange().Kvs
		if len(kvs) != 1 || string(kvs[0].Value) != "first" {
			t.Fatalf("the failed create's Else read %v", kvs)
		}
		rev := kvs[0].ModRevision
		update := func(v string) bool {
			t.Helper()
			r, err := cl.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision("/t/txn"), "=", rev)).Then(clientv3.OpPut("/t/txn", v)).Commit()
			if err != nil {
				t.Fatal(err)
			}
			return r.Succeeded
		}
		if !update("updated") {
			t.Error("the update at the read's ModRevision failed")
		}
		if update("stale") {
			t.Error("an update at a stale ModRevision succeeded")
		}
		expectValue(ctx, t, cl, "/t/txn", "updated")
	})
	t.Run("Watch from a revision WithPrevKV sees a put and a delete", func(t *testing.T) {
		p, err := cl.Put(ctx, "/t/w/k", "v1")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Put(ctx, "/t/w/k", "v2"); err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Delete(ctx, "/t/w/k"); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		// From the revision after the first put: the past events come
		// first, from history.
		wc := cl.Watch(clientv3.WithRequireLeader(wctx), "/t/w/", clientv3.WithPrefix(), clientv3.WithRev(p.Header.Revision+1), clientv3.WithPrevKV())
		var got []string
		for resp := range wc {
			if err := resp.Err(); err != nil {
				t.Fatal(err)
			}
			for _, ev := range resp.Events {
				s := fmt.Sprintf("%s %s=%s", ev.Type, ev.Kv.Key, ev.Kv.Value)
				if ev.PrevKv != nil {
					s += " prev=" + string(ev.PrevKv.Value)
				}
				got = append(got, s)
			}
			if len(got) >= 2 {
				break
			}
		}
		want := []string{"PUT /t/w/k=v2 prev=v1", "DELETE /t/w/k= prev=v2"}
		if strings.Join(got, "; ") != strings.Join(want, "; ") {
			t.Errorf("events %q, want %q", got, want)
		}
	})
	t.Run("a lease kept alive stays, one let go expires", func(t *testing.T) {
		start := time.Now()
		kept, err := cl.Grant(ctx, 2)
		if err != nil {
			t.Fatal(err)
		}
		gone, err := cl.Grant(ctx, 2)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Put(ctx, "/t/lease/kept", "x", clientv3.WithLease(kept.ID)); err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Put(ctx, "/t/lease/gone", "x", clientv3.WithLease(gone.ID)); err != nil {
			t.Fatal(err)
		}
		kctx, cancel := context.WithCancel(ctx)
		defer cancel()
		ka, err := cl.KeepAlive(kctx, kept.ID)
		if err != nil {
			t.Fatal(err)
		}
		answers := make(chan int, 1)
		go func() {
			n := 0
			for r := range ka {
				if r.TTL > 0 {
					n++
				}
			}
			answers <- n
		}()
		// Once the lease let go has expired, the kept one, granted
		// before it with the same TTL, is past its TTL too.
		for {
			r, err := cl.Get(ctx, "/t/lease/gone")
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Kvs) == 0 {
				break
			}
			select {
			case <-ctx.Done():
				t.Fatal("the lease let go never expired")
			case <-time.After(100 * time.Millisecond):
			}
		}
		expectValue(ctx, t, cl, "/t/lease/kept", "x")
		since := time.Since(start)
		cancel()
		if n := <-answers; n < 2 {
			t.Errorf("%d keep-alive answers in %v, want several", n, since)
		}
		ttl, err := cl.TimeToLive(ctx, kept.ID, clientv3.WithAttachedKeys())
		if err != nil || ttl.TTL <= 0 || len(ttl.Keys) != 1 {
			t.Errorf("TimeToLive of the kept lease: %+v, %v", ttl, err)
		}
		if _, err := cl.Revoke(ctx, kept.ID); err != nil {
			t.Fatal(err)
		}
		expectValue(ctx, t, cl, "/t/lease/kept", "")
	})
	t.Run("Watch from a compacted revision fails with ErrCompacted", func(t *testing.T) {
		first, err := cl.Put(ctx, "/t/c", "1")
		if err != nil {
			t.Fatal(err)
		}
		last, err := cl.Put(ctx, "/t/c", "2")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Compact(ctx, last.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Get(ctx, "/t/c", clientv3.WithRev(first.Header.Revision)); !errors.Is(err, rpctypes.ErrCompacted) {
			t.Errorf("a read at a compacted revision: %v, want %v", err, rpctypes.ErrCompacted)
		}
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		resp, ok := <-cl.Watch(wctx, "/t/c", clientv3.WithRev(first.Header.Revision), clientv3.WithPrevKV())
		if !ok {
			t.Fatal("the watch closed without an answer")
		}
		if !errors.Is(resp.Err(), rpctypes.ErrCompacted) || resp.CompactRevision != last.Header.Revision {
			t.Errorf("watch from revision %d after compacting at %d: err %v, compact revision %d; want ErrCompacted at %d",
				first.Header.Revision, last.Header.Revision, resp.Err(), resp.CompactRevision, last.Header.Revision)
		}
		// The re-list a watcher then does: a read at the current
		// revision, and a watch from the next.
		r, err := cl.Get(ctx, "/t/c")
		if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "2" || r.Kvs[0].Version != 2 || r.Kvs[0].CreateRevision != first.Header.Revision {
			t.Fatalf("re-list: %v, %v", r, err)
		}
		wc := cl.Watch(wctx, "/t/c", clientv3.WithRev(r.Header.Revision+1), clientv3.WithPrevKV())
		if _, err := cl.Put(ctx, "/t/c", "3"); err != nil {
			t.Fatal(err)
		}
		resp = <-wc
		if err := resp.Err(); err != nil || len(resp.Events) != 1 || resp.Events[0].Type != mvccpb.PUT || string(resp.Events[0].PrevKv.Value) != "2" {
			t.Errorf("watch after the re-list: %+v, %v", resp.Events, err)
		}
	})
}

func memberClient(t *testing.T, m *EtcdMember, from *Host) *clientv3.Client {
	t.Helper()
	c, err := m.Client(from)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// expectValue reads key (linearizably) and compares; "" means absent.
func expectValue(ctx context.Context, t *testing.T, c *clientv3.Client, key, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r, err := c.Get(ctx, key)
	if err != nil {
		t.Fatalf("get %s through %v: %v", key, c.Endpoints(), err)
	}
	got := ""
	if len(r.Kvs) > 0 {
		got = string(r.Kvs[0].Value)
	}
	if got != want {
		t.Errorf("get %s through %v = %q, want %q", key, c.Endpoints(), got, want)
	}
}

// leaderOf asks the cluster which member leads.
func leaderOf(ctx context.Context, t *testing.T, e *Etcd, c *clientv3.Client) *EtcdMember {
	t.Helper()
	for _, m := range e.Members() {
		st, err := c.Status(ctx, m.ClientURL)
		if err != nil {
			t.Fatal(err)
		}
		if st.Header.MemberId == st.Leader {
			return m
		}
	}
	t.Fatal("no member is the leader")
	return nil
}

// retryPut puts until it succeeds or 10 s pass, as the datastore does
// while etcd elects a new leader.
func retryPut(ctx context.Context, c *clientv3.Client, key, value string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		try, cancelTry := context.WithTimeout(ctx, time.Second)
		_, err := c.Put(try, key, value)
		cancelTry()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// processesMentioning lists the processes whose command line contains s.
func processesMentioning(t *testing.T, s string) []string {
	t.Helper()
	cmdlines, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, f := range cmdlines {
		data, err := os.ReadFile(f)
		if err != nil {
			continue // it exited
		}
		if strings.Contains(string(data), s) {
			found = append(found, filepath.Base(filepath.Dir(f))+": "+strings.ReplaceAll(string(data), "\x00", " "))
		}
	}
	return found
}

// Dedicated etcd hosts on their own subnet behind the router: a one-member
// cluster there serves node C; no hosts, or a member that cannot start, is
// an error at once, not a hang; the data of crashed runs is swept.
func TestEtcdOnDedicatedHosts(t *testing.T) {
	RequireEtcd(t)
	b := NewStandard(t, Options{})
	hosts, err := b.AddEtcdHosts(1)
	if err != nil {
		t.Fatal(err)
	}
	if got := hosts[0].Name + " " + hosts[0].Addr.String(); got != "etcd-1 198.18.5.11/24" {
		t.Errorf("dedicated host: %s", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// What a crashed run left behind (its PID is beyond pid_max).
	stale := filepath.Join(os.TempDir(), "ovtb-999999999-0123abcd-etcd-42")
	if err := os.MkdirAll(filepath.Join(stale, "etcd-1", "member"), 0o700); err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(stale)
	if _, err := b.StartEtcd(ctx, nil, EtcdOptions{}); err == nil {
		t.Error("StartEtcd with no hosts succeeded")
	}
	// A member that cannot start fails StartEtcd at once, with its
	// output, and leaves no data behind.
	_, err = b.StartEtcd(ctx, hosts, EtcdOptions{Args: []string{"--no-such-flag"}})
	if err == nil || !strings.Contains(err.Error(), "no-such-flag") {
		t.Errorf("StartEtcd with a bad flag: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(os.TempDir(), b.ID()+"-etcd-*")); len(left) > 0 {
		t.Errorf("a failed StartEtcd left %v", left)
	}
	e := StartEtcdForTest(t, b, hosts, EtcdOptions{})
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the data of a crashed run's cluster is still there: %v", err)
	}
	if got := strings.Join(e.Endpoints(), " "); got != "http://198.18.5.11:2379" {
		t.Errorf("Endpoints() = %s", got)
	}
	if e.UnixEndpoints() != nil {
		t.Errorf("UnixEndpoints() = %v without UnixSockets", e.UnixEndpoints())
	}
	cl, err := e.Client(b.Host("node-c"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.Put(ctx, "/t/k", "v"); err != nil {
		t.Fatal(err)
	}
	expectValue(ctx, t, cl, "/t/k", "v")
}
