package cni

import (
	"context"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/datastore/etcd"
	"github.com/overlayd/overlayd/ipam"
)

// openEtcdStore opens the node's workload addresses in etcd, in Calico's
// block and handle keys; a full node claims another block there.
func openEtcdStore(ctx context.Context, c *config.Cluster, node string) (ipam.Store, error) {
	return etcd.OpenWorkloadStore(ctx, c.Datastore, node)
}
