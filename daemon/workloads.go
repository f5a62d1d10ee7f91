package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/ipam"
	"github.com/overlayd/overlayd/pool"
)

// workloadsKeepTheirBlocks refuses a cluster file that takes from node a
// block in which containers still hold addresses (overlayd-cni's, in the
// file datastore's block files): applying it would route their traffic
// elsewhere. The file must keep the block until they are gone.
func workloadsKeepTheirBlocks(c *config.Cluster, node string) error {
	if c.Datastore.Type != config.DatastoreFile || c.Node(node) == nil {
		return nil
	}
	if _, err := os.Stat(ipam.Dir(c)); errors.Is(err, fs.ErrNotExist) {
		return nil // no container was ever attached here
	}
	s, err := ipam.NewFileStore(ipam.Dir(c), c, node)
	if err != nil {
		return err
	}
	defer s.Close()
	blocks, err := s.Blocks(context.Background())
	if err != nil {
		return fmt.Errorf("reading the workloads' addresses: %w", err)
	}
	var lost []string
	for _, b := range blocks {
		if !slices.ContainsFunc(c.Node(node).Blocks, func(nb pool.Block) bool { return nb.Prefix == b.CIDR }) && b.Workloads() > 0 {
			lost = append(lost, fmt.Sprintf("%s (%d workload addresses)", b.CIDR, b.Workloads()))
		}
	}
	if len(lost) > 0 {
		return fmt.Errorf("%s takes from node %q blocks whose containers still hold addresses: %s; keep them in its blocks until those containers are gone (`overlayd ipam show --config %s --node %s` lists them)",
			c.Source, node, strings.Join(lost, ", "), c.Source, node)
	}
	return nil
}
