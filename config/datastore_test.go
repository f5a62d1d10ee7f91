package config

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

const etcdNode = `
[[nodes]]
name = "node-a"
address = "198.18.1.10/24"
labels = { zone = "a" }
`

func TestDatastoreSection(t *testing.T) {
	t.Run("the default is the file", func(t *testing.T) {
		c, err := Parse("cluster.toml", []byte("[[pools]]\nname = \"p\"\ncidr = \"192.168.0.0/16\"\n"+minimalNodes))
		if err != nil {
			t.Fatal(err)
		}
		if c.Datastore.Type != DatastoreFile || len(c.Pools) != 1 {
			t.Errorf("datastore %+v, %d pools; want the file with its pool", c.Datastore, len(c.Pools))
		}
	})
	t.Run("etcd: pools and blocks come from etcd, node-local settings from the file", func(t *testing.T) {
		src := `[datastore]
type = "etcd"
endpoints = ["https://198.18.0.1:2379", "unix:///run/etcd.sock"]
caFile = "ca.pem"
certFile = "/etc/overlayd/client.pem"
keyFile = "client-key.pem"
maxBlocksPerNode = 4
` + etcdNode
		c, err := Parse("/etc/overlayd/cluster.toml", []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		d := c.Datastore
		want := Datastore{
			Type: DatastoreEtcd, Endpoints: []string{"https://198.18.0.1:2379", "unix:///run/etcd.sock"}, Prefix: "/calico",
			CAFile: "/etc/overlayd/ca.pem", CertFile: "/etc/overlayd/client.pem", KeyFile: "/etc/overlayd/client-key.pem",
			StateDir: DefaultStateDir, MaxBlocksPerNode: 4,
		}
		if d.Type != want.Type || !slices.Equal(d.Endpoints, want.Endpoints) || d.Prefix != want.Prefix || d.CAFile != want.CAFile ||
			d.CertFile != want.CertFile || d.KeyFile != want.KeyFile || d.StateDir != want.StateDir || d.MaxBlocksPerNode != want.MaxBlocksPerNode {
			t.Errorf("datastore\n %+v\nwant\n %+v", d, want)
		}
		if len(c.Pools) != 0 || len(c.Nodes) != 1 || len(c.Nodes[0].Blocks) != 0 || c.Nodes[0].Labels["zone"] != "a" {
			t.Errorf("pools %v, nodes %+v: want no pools and node-a without blocks", c.Pools, c.Nodes)
		}
	})
}

func TestDatastoreErrors(t *testing.T) {
	etcd := "[datastore]\ntype = \"etcd\"\nendpoints = [\"http://198.18.0.1:2379\"]\n"
	tests := []struct {
		name, src string
		wantKey   string
		wantMsg   string
	}{
		{"an unknown type", "[datastore]\ntype = \"consul\"\n" + etcdNode, "datastore", `invalid value "consul": allowed values are "file" and "etcd"`},
		{"a typo'd key", "[datastore]\ntype = \"etcd\"\nendpoint = [\"http://a:1\"]\n" + etcdNode, "datastore", `did you mean "endpoints"?`},
		{"etcd without endpoints", "[datastore]\ntype = \"etcd\"\n" + etcdNode, "endpoints", "missing: etcd's client URLs"},
		{"an endpoint that is no URL", "[datastore]\ntype = \"etcd\"\nendpoints = [\"198.18.0.1:2379\"]\n" + etcdNode, "endpoints", "is not an etcd client URL"},
		{"a prefix without its slash", etcd + "prefix = \"calico\"\n" + etcdNode, "prefix", "starts with /"},
		{"a negative block limit", etcd + "maxBlocksPerNode = -1\n" + etcdNode, "maxBlocksPerNode", "is negative"},
		{"a certificate without its key", etcd + "certFile = \"c.pem\"\n" + etcdNode, "certFile", "go together"},
		{"pools in the file with etcd", etcd + "[[pools]]\nname = \"p\"\ncidr = \"192.168.0.0/16\"\n" + etcdNode, "pools", "the pools live in etcd"},
		{"blocks in the file with etcd", etcd + etcdNode + "blocks = [\"192.168.0.0/26\"]\n", "blocks", "claims its blocks in etcd"},
		{"etcd settings with the file datastore", "[datastore]\nendpoints = [\"http://a:1\"]\n[[pools]]\nname = \"p\"\ncidr = \"192.168.0.0/16\"\n" + minimalNodes, "endpoints", `is for type = "etcd"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("cluster.toml", []byte(tc.src))
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("want a *config.Error, got %v", err)
			}
			if !strings.Contains(ce.Key, tc.wantKey) || !strings.Contains(ce.Msg, tc.wantMsg) || ce.Line == 0 {
				t.Errorf("error %v (key %q, line %d); want key %q, a line and %q", err, ce.Key, ce.Line, tc.wantKey, tc.wantMsg)
			}
		})
	}
}
