package etcd

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/overlayd/overlayd/datastore/calico"
	"github.com/overlayd/overlayd/internal/atomicfile"
)

// SnapshotFile is the file in the state directory that keeps the last
// datastore contents a node listed, so that it can start when etcd cannot
// be reached.
const SnapshotFile = "snapshot.json"

// snapshotVersion is the snapshot format written: 2, the keys decoded as
// the index holds them. Version 1 (no "version" member) held every key's
// raw value; it is still read.
const snapshotVersion = 2

// snapshot is the keys a node reads, at one revision.
type snapshot struct {
	Version  int       `json:"version,omitempty"`
	Prefix   string    `json:"prefix"`
	Revision int64     `json:"revision"`
	Saved    time.Time `json:"saved"`
	// Entries are version 1's raw values, decoded again when read.
	Entries map[string]snapshotEntry `json:"entries,omitempty"`
	// Version 2: what a node keeps of each key. Pools are few and keep
	// their whole object; a block keeps its head, not its allocations.
	Pools      []snapshotPool      `json:"pools,omitempty"`
	Nodes      []snapshotNode      `json:"nodes,omitempty"`
	Blocks     []snapshotBlock     `json:"blocks,omitempty"`
	Affinities []snapshotAffinity  `json:"affinities,omitempty"`
	Malformed  []snapshotMalformed `json:"malformed,omitempty"`
}

type snapshotEntry struct {
	Value       string `json:"value"`
	ModRevision int64  `json:"modRevision"`
}

// snapshotPool is an IPPool: the modRevision says when blocks were last
// claimed from it (poolSignature).
type snapshotPool struct {
	Name        string          `json:"name"`
	ModRevision int64           `json:"modRevision"`
	Value       json.RawMessage `json:"value"`
}

// snapshotNode is a Node as the node reads it (calico.NodeInfo).
type snapshotNode struct {
	Name            string            `json:"name"`
	Address         netip.Prefix      `json:"address,omitzero"`
	Labels          map[string]string `json:"labels,omitempty"`
	IPIPTunnelAddr  netip.Addr        `json:"ipipTunnelAddr,omitzero"`
	VXLANTunnelAddr netip.Addr        `json:"vxlanTunnelAddr,omitzero"`
	VTEPMAC         string            `json:"vtepMAC,omitempty"`
}

// snapshotBlock is a block's head: its host is its "host:<node>" affinity.
type snapshotBlock struct {
	CIDR    netip.Prefix `json:"cidr"`
	Host    string       `json:"host,omitempty"`
	Affine  bool         `json:"affine,omitempty"`
	Deleted bool         `json:"deleted,omitempty"`
}

type snapshotAffinity struct {
	Node      string       `json:"node"`
	CIDR      netip.Prefix `json:"cidr"`
	State     string       `json:"state"`
	Confirmed bool         `json:"confirmed,omitempty"`
}

// snapshotMalformed is a key skipped for its value (or the key itself):
// it stays skipped, and counted, after a start from the snapshot.
type snapshotMalformed struct {
	Key   string `json:"key"`
	Error string `json:"error"`
}

// snapshotOf is the index's entries as a snapshot at revision rev.
func snapshotOf(ix *index, rev int64) (*snapshot, error) {
	snap := &snapshot{Version: snapshotVersion, Prefix: ix.keys.Prefix, Revision: rev, Saved: time.Now().UTC()}
	malformed := func(e *entry) {
		snap.Malformed = append(snap.Malformed, snapshotMalformed{Key: e.id, Error: e.err.Error()})
	}
	for _, e := range ix.entries {
		switch {
		case e.err != nil:
			malformed(e)
		case e.key.Kind == calico.KindIPPool:
			value, err := json.Marshal(e.ippool)
			if err != nil {
				return nil, fmt.Errorf("datastore snapshot: IPPool %s: %w", e.key.Name, err)
			}
			snap.Pools = append(snap.Pools, snapshotPool{Name: e.key.Name, ModRevision: e.modRev, Value: value})
		case e.key.Kind == calico.KindNode:
			n := e.node
			sn := snapshotNode{Name: e.key.Name, Address: n.Address, Labels: n.Labels, IPIPTunnelAddr: n.IPIPTunnelAddr, VXLANTunnelAddr: n.VXLANTunnelAddr}
			if n.VTEPMAC != nil {
				sn.VTEPMAC = n.VTEPMAC.String()
			}
			snap.Nodes = append(snap.Nodes, sn)
		}
	}
	for cidr, bs := range ix.blocks {
		if b := bs.block; b != nil && b.err != nil {
			malformed(b)
		} else if b != nil {
			snap.Blocks = append(snap.Blocks, snapshotBlock{CIDR: cidr, Host: b.host, Affine: b.affine, Deleted: b.deleted})
		}
		for _, a := range bs.affinities {
			if a.err != nil {
				malformed(a)
				continue
			}
			snap.Affinities = append(snap.Affinities, snapshotAffinity{Node: a.key.Name, CIDR: cidr, State: a.state, Confirmed: a.confirmed})
		}
	}
	// In order, so that two snapshots of one datastore are the same file.
	slices.SortFunc(snap.Pools, func(a, b snapshotPool) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(snap.Nodes, func(a, b snapshotNode) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(snap.Blocks, func(a, b snapshotBlock) int { return blockOrder(a.CIDR, b.CIDR) })
	slices.SortFunc(snap.Affinities, func(a, b snapshotAffinity) int {
		return cmp.Or(blockOrder(a.CIDR, b.CIDR), cmp.Compare(a.Node, b.Node))
	})
	slices.SortFunc(snap.Malformed, func(a, b snapshotMalformed) int { return cmp.Compare(a.Key, b.Key) })
	return snap, nil
}

// entries are the snapshot's keys, decoded, by key.
func (snap *snapshot) entries(keys calico.Keys) (map[string]*entry, error) {
	out := map[string]*entry{}
	switch snap.Version {
	case 0, 1:
		for k, v := range snap.Entries {
			if e := decodeEntry(keys, k, []byte(v.Value), v.ModRevision); e != nil {
				out[k] = e
			}
		}
		return out, nil
	case snapshotVersion:
	default:
		return nil, fmt.Errorf("the datastore snapshot is of version %d; this overlayd reads versions 1 and %d (delete it to start without one)", snap.Version, snapshotVersion)
	}
	for _, p := range snap.Pools {
		k := keys.IPPool(p.Name)
		if e := decodeEntry(keys, k, p.Value, p.ModRevision); e != nil {
			out[k] = e
		}
	}
	for _, n := range snap.Nodes {
		info := calico.NodeInfo{Name: n.Name, Address: n.Address, Labels: n.Labels, IPIPTunnelAddr: n.IPIPTunnelAddr, VXLANTunnelAddr: n.VXLANTunnelAddr}
		if n.VTEPMAC != "" {
			mac, err := net.ParseMAC(n.VTEPMAC)
			if err != nil {
				return nil, fmt.Errorf("the datastore snapshot's node %s: %w", n.Name, err)
			}
			info.VTEPMAC = mac
		}
		out[keys.Node(n.Name)] = &entry{key: calico.Key{Kind: calico.KindNode, Name: n.Name}, node: &info}
	}
	for _, b := range snap.Blocks {
		out[keys.Block(b.CIDR)] = &entry{key: calico.Key{Kind: calico.KindBlock, CIDR: b.CIDR}, host: b.Host, affine: b.Affine, deleted: b.Deleted}
	}
	for _, a := range snap.Affinities {
		out[keys.Affinity(a.Node, a.CIDR)] = &entry{key: calico.Key{Kind: calico.KindAffinity, Name: a.Node, CIDR: a.CIDR}, state: a.State, confirmed: a.Confirmed}
	}
	for _, m := range snap.Malformed {
		k, _ := keys.Parse(m.Key) // the zero Key for one that does not parse, as decodeEntry leaves it
		out[m.Key] = &entry{key: k, err: errors.New(m.Error)}
	}
	return out, nil
}

// saveSnapshot writes s to dir/snapshot.json atomically: a temporary file,
// synced, renamed over the old one, and the directory synced, so a crash
// leaves the old snapshot or the new one. The directory is made 0700 and
// the file is 0600: it holds the cluster's layout.
func saveSnapshot(dir string, s *snapshot) error {
	data, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encoding the datastore snapshot: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("datastore snapshot: the state directory: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(dir, SnapshotFile), data, 0o600); err != nil {
		return fmt.Errorf("datastore snapshot: %w", err)
	}
	return nil
}

// loadSnapshot reads dir/snapshot.json; ok is false when there is none.
func loadSnapshot(dir string) (s *snapshot, ok bool, err error) {
	path := filepath.Join(dir, SnapshotFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("datastore snapshot: %w", err)
	}
	s = new(snapshot)
	if err := json.Unmarshal(data, s); err != nil {
		return nil, false, fmt.Errorf("datastore snapshot %s: %w (delete it to start without one)", path, err)
	}
	return s, true, nil
}
