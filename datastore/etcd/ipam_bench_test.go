package etcd

import (
	"context"
	"fmt"
	"math/bits"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/overlayd/overlayd/datastore/calico"
	"github.com/overlayd/overlayd/internal/etcdtest"
	"github.com/overlayd/overlayd/pool"
)

// benchEnvInt reads a positive integer setting of the benchmark from the
// environment, def when unset.
func benchEnvInt(b *testing.B, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return n
}

// BenchmarkEnsureBlocks: N nodes join at once (one goroutine each, sharing
// a few clients) against one embedded etcd and claim a /26 block each from
// one VXLAN pool with (by default) four times as many blocks as nodes,
// rounded up to a power of two. Each iteration
// uses a fresh key prefix. Reported per iteration: claims, conflicts
// (candidates lost to other nodes) and the time until every node holds its
// block (settle-ms).
//
//	OVERLAYD_IPAM_BENCH_NODES   nodes joining at once (default 200; the
//	                            issue's scale point is 5000)
//	OVERLAYD_IPAM_BENCH_CLIENTS etcd clients they share (default 8)
//	OVERLAYD_IPAM_BENCH_SPARE   blocks in the pool per node (default 4;
//	                            1 makes the pool as tight as it can be)
func BenchmarkEnsureBlocks(b *testing.B) {
	nodes := benchEnvInt(b, "OVERLAYD_IPAM_BENCH_NODES", 200)
	clients := benchEnvInt(b, "OVERLAYD_IPAM_BENCH_CLIENTS", 8)
	spare := benchEnvInt(b, "OVERLAYD_IPAM_BENCH_SPARE", 4)
	const blockSize = 26
	poolBits := blockSize - bits.Len(uint(spare*nodes-1))
	if poolBits < 8 {
		b.Fatalf("%d nodes need a pool larger than a /8 of /%d blocks", nodes, blockSize)
	}
	p, err := calico.NewIPPool(pool.Spec{Name: "bench", CIDR: fmt.Sprintf("10.0.0.0/%d", poolBits), VXLANMode: "Always", BlockSize: blockSize}, "uid", time.Now())
	if err != nil {
		b.Fatal(err)
	}
	pools := []*calico.IPPool{p}
	srv := etcdtest.Start(b)
	clis := make([]*clientv3.Client, clients)
	for i := range clis {
		clis[i] = ipamClient(b, srv)
	}
	ctx := context.Background()
	var claims, conflicts int
	var settle time.Duration
	b.ResetTimer()
	for it := range b.N {
		keys := calico.Keys{Prefix: fmt.Sprintf("/bench-%d", it)}
		ipams := make([]*IPAM, clients)
		for i, cli := range clis {
			ipams[i] = NewIPAM(cli, keys, nil)
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		var failed error
		start := time.Now()
		for n := range nodes {
			wg.Go(func() {
				c, err := ipams[n%clients].EnsureBlocks(ctx, Member{Name: fmt.Sprintf("node-%05d", n)}, pools)
				mu.Lock()
				defer mu.Unlock()
				if err != nil && failed == nil {
					failed = err
				}
				claims += len(c.New)
				conflicts += c.Conflicts
			})
		}
		wg.Wait()
		settle += time.Since(start)
		if failed != nil {
			b.Fatal(failed)
		}
	}
	b.ReportMetric(float64(claims)/float64(b.N), "claims/op")
	b.ReportMetric(float64(conflicts)/float64(b.N), "conflicts/op")
	b.ReportMetric(float64(settle.Milliseconds())/float64(b.N), "settle-ms/op")
}
