package cni

import (
	"context"
	"errors"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/ipam"
)

// openEtcdStore opens the node's workload addresses in etcd.
func openEtcdStore(context.Context, *config.Cluster, string) (ipam.Store, error) {
	return nil, errors.New("the etcd IPAM store is not built in yet")
}
