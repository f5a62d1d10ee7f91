package config

import (
	"net/url"
	"path/filepath"
)

// The datastores a cluster's pools, nodes and blocks can live in.
const (
	// DatastoreFile: the cluster file itself, the same on every node.
	DatastoreFile = "file"
	// DatastoreEtcd: etcd, in Calico's etcdv3 layout; the file keeps the
	// node-local sections and this node's own [[nodes]] entry.
	DatastoreEtcd = "etcd"
)

// Defaults of the [datastore] section, Calico's where Calico has one.
const (
	DefaultDatastorePrefix = "/calico"
	DefaultStateDir        = "/var/lib/overlayd"
)

// Datastore is where the cluster's pools, nodes and blocks come from.
type Datastore struct {
	Type      string   // DatastoreFile or DatastoreEtcd
	Endpoints []string // etcd client URLs (http, https or unix)
	Prefix    string   // the key prefix, "/calico" as in Calico
	// CAFile verifies the servers; CertFile and KeyFile are this client's.
	CAFile, CertFile, KeyFile string
	// StateDir keeps overlayd's state on disk: with etcd the last snapshot
	// of the datastore, so a node starts on it when etcd cannot be reached;
	// with the file the workloads' IPAM blocks (package ipam).
	StateDir string
	// MaxBlocksPerNode limits the blocks one node may claim; 0: no limit.
	MaxBlocksPerNode int
}

type fileDatastore struct {
	Type      string   `toml:"type"`
	Endpoints []string `toml:"endpoints"`
	Prefix    string   `toml:"prefix"`
	CAFile    string   `toml:"caFile"`
	CertFile  string   `toml:"certFile"`
	KeyFile   string   `toml:"keyFile"`
	StateDir  string   `toml:"stateDir"`
	MaxBlocks int      `toml:"maxBlocksPerNode"`
}

func (p *parser) datastore(fd fileDatastore, c *Cluster) error {
	fail := func(key, format string, args ...any) error {
		return p.errAt("datastore", 0, "", key, format, args...)
	}
	typ, err := OneOf(fd.Type, DatastoreFile, DatastoreFile, DatastoreEtcd)
	if err != nil {
		return fail("type", "invalid value %q: %v (the default is %q: this file)", fd.Type, err, DatastoreFile)
	}
	d := Datastore{Type: typ, Prefix: fd.Prefix, StateDir: fd.StateDir}
	if typ == DatastoreFile {
		if fd.MaxBlocks != 0 {
			return fail("maxBlocksPerNode", "is for type = %q; in this file a node's blocks are listed or allocated here (type = %q)", DatastoreEtcd, DatastoreFile)
		}
		for _, k := range []struct{ key, v string }{{"prefix", fd.Prefix}, {"caFile", fd.CAFile}, {"certFile", fd.CertFile}, {"keyFile", fd.KeyFile}} {
			if k.v != "" {
				return fail(k.key, "is for type = %q; this file is the datastore (type = %q)", DatastoreEtcd, DatastoreFile)
			}
		}
		if len(fd.Endpoints) > 0 {
			return fail("endpoints", "is for type = %q; this file is the datastore (type = %q)", DatastoreEtcd, DatastoreFile)
		}
		d.StateDir = p.stateDir(fd.StateDir)
		c.Datastore = d
		return nil
	}
	if len(fd.Endpoints) == 0 {
		return fail("endpoints", "missing: etcd's client URLs, e.g. [\"https://198.18.0.1:2379\"]")
	}
	for _, e := range fd.Endpoints {
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "unix" && u.Scheme != "unixs") || (u.Host == "" && u.Path == "") {
			return fail("endpoints", "%q is not an etcd client URL (http://HOST:PORT, https://HOST:PORT or unix://PATH)", e)
		}
		d.Endpoints = append(d.Endpoints, e)
	}
	if d.Prefix == "" {
		d.Prefix = DefaultDatastorePrefix
	} else if d.Prefix[0] != '/' || len(d.Prefix) > 1 && d.Prefix[len(d.Prefix)-1] == '/' {
		return fail("prefix", "%q: a key prefix starts with / and does not end with one (Calico's is %q)", d.Prefix, DefaultDatastorePrefix)
	}
	if (fd.CertFile == "") != (fd.KeyFile == "") {
		return fail("certFile", "certFile and keyFile go together: the client's certificate and its key")
	}
	for _, f := range []struct {
		dst *string
		v   string
	}{{&d.CAFile, fd.CAFile}, {&d.CertFile, fd.CertFile}, {&d.KeyFile, fd.KeyFile}} {
		if f.v != "" {
			*f.dst = p.resolve(f.v)
		}
	}
	if fd.MaxBlocks < 0 {
		return fail("maxBlocksPerNode", "%d is negative: a number of blocks, or 0 for no limit", fd.MaxBlocks)
	}
	d.MaxBlocksPerNode = fd.MaxBlocks
	d.StateDir = p.stateDir(fd.StateDir)
	c.Datastore = d
	return nil
}

// stateDir is the state directory the file names, relative to the file, or
// DefaultStateDir.
func (p *parser) stateDir(dir string) string {
	switch {
	case dir == "":
		return DefaultStateDir
	case filepath.IsAbs(dir):
		return dir
	default:
		return p.resolve(dir)
	}
}
