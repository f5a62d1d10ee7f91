// Package etcd is the etcd datastore: pools, nodes, blocks and their
// affinities in Calico's etcdv3 layout (package datastore/calico), read and
// written with etcd's own client. A node registers itself, claims its
// blocks in transactions, lists the layout at one revision and watches it
// from the next, and hands each new cluster to the daemon's apply.
package etcd

import (
	"crypto/tls"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/overlayd/overlayd/config"
)

// DialTimeout bounds each attempt to reach an endpoint.
const DialTimeout = 5 * time.Second

// Connect makes an etcd client for the [datastore] section d. It does not
// wait for etcd: the first request does.
func Connect(d config.Datastore) (*clientv3.Client, error) {
	if d.Type != config.DatastoreEtcd || len(d.Endpoints) == 0 {
		return nil, fmt.Errorf("the datastore is %q, not etcd with endpoints", d.Type)
	}
	var tlsConfig *tls.Config
	if d.CAFile != "" || d.CertFile != "" {
		info := transport.TLSInfo{TrustedCAFile: d.CAFile, CertFile: d.CertFile, KeyFile: d.KeyFile}
		c, err := info.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("etcd TLS files (caFile %q, certFile %q, keyFile %q): %w", d.CAFile, d.CertFile, d.KeyFile, err)
		}
		tlsConfig = c
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            d.Endpoints,
		DialTimeout:          DialTimeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		TLS:                  tlsConfig,
		// etcd's client logs through zap; overlayd reports what matters
		// itself, with the endpoints named.
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", strings.Join(d.Endpoints, ", "), err)
	}
	return cli, nil
}
