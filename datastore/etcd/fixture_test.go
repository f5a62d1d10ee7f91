package etcd

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/datastore/calico"
	"github.com/overlayd/overlayd/pool"
)

// layout is a datastore's contents in Calico's layout, made with the calico
// package as calicoctl and calico-node would write them; tests build it,
// then decode it (build tests) or put it into etcd (source tests).
type layout struct {
	t    *testing.T
	keys calico.Keys
	kv   map[string]string
	now  time.Time
}

func newLayout(t *testing.T) *layout {
	return &layout{t: t, kv: map[string]string{}, now: time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)}
}

func (l *layout) encode(v any) string {
	l.t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		l.t.Fatal(err)
	}
	return string(data)
}

// pool writes an IPPool created at the layout's clock, which then ticks: a
// pool written later is younger.
func (l *layout) pool(spec pool.Spec) *layout {
	l.t.Helper()
	p, err := calico.NewIPPool(spec, "uid-"+spec.Name, l.now)
	if err != nil {
		l.t.Fatal(err)
	}
	l.now = l.now.Add(time.Second)
	l.kv[l.keys.IPPool(spec.Name)] = l.encode(p)
	return l
}

// node writes a Node as calico-node does: address with prefix, and a VXLAN
// tunnel address when vxlanTunnel is not "".
func (l *layout) node(name, address, vxlanTunnel string) *layout {
	l.t.Helper()
	info := calico.NodeInfo{Name: name, Address: netip.MustParsePrefix(address), Labels: map[string]string{"name": name}}
	if vxlanTunnel != "" {
		info.VXLANTunnelAddr = netip.MustParseAddr(vxlanTunnel)
	}
	l.kv[l.keys.Node(name)] = l.encode(calico.NewNode(info, "uid-"+name, l.now))
	return l
}

// blockOnly writes the block affine to host, without its affinity key.
func (l *layout) blockOnly(cidr, host string) *layout {
	l.t.Helper()
	b, err := calico.NewBlock(netip.MustParsePrefix(cidr), host, l.now)
	if err != nil {
		l.t.Fatal(err)
	}
	l.kv[l.keys.Block(b.CIDR)] = l.encode(b)
	return l
}

// affinity writes host's affinity for cidr in state.
func (l *layout) affinity(host, cidr, state string) *layout {
	l.kv[l.keys.Affinity(host, netip.MustParsePrefix(cidr))] = l.encode(calico.Affinity{State: state})
	return l
}

// block writes a claimed block: the block and its confirmed affinity.
func (l *layout) block(cidr, host string) *layout {
	return l.blockOnly(cidr, host).affinity(host, cidr, calico.StateConfirmed)
}

func (l *layout) raw(key, value string) *layout {
	l.kv[key] = value
	return l
}

// entries decodes the layout as a list would.
func (l *layout) entries() map[string]*entry {
	out := map[string]*entry{}
	for k, v := range l.kv {
		if e := decodeEntry(l.keys, k, []byte(v), 1); e != nil {
			out[k] = e
		}
	}
	return out
}

// put writes the layout into etcd.
func (l *layout) put(cli *clientv3.Client) {
	l.t.Helper()
	for k, v := range l.kv {
		if _, err := cli.Put(context.Background(), k, v); err != nil {
			l.t.Fatalf("putting %s: %v", k, err)
		}
	}
}

// putSpaced writes the layout into etcd one key at a time, gap apart, so
// that a watcher sees the changes arrive one by one.
func (l *layout) putSpaced(cli *clientv3.Client, gap time.Duration) {
	l.t.Helper()
	for k, v := range l.kv {
		if _, err := cli.Put(context.Background(), k, v); err != nil {
			l.t.Fatalf("putting %s: %v", k, err)
		}
		time.Sleep(gap)
	}
}

// localFile is the cluster file of node in etcd mode: its own entry only.
func localFile(t *testing.T, endpoint, node, address string) *config.Cluster {
	t.Helper()
	src := fmt.Sprintf("[datastore]\ntype = \"etcd\"\nendpoints = [%q]\nstateDir = %q\n\n[[nodes]]\nname = %q\naddress = %q\nlabels = { zone = \"a\" }\n",
		endpoint, t.TempDir(), node, address)
	c, err := config.Parse("cluster.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// blocksOf renders a cluster's blocks as "node:block" in node order.
func blocksOf(c *config.Cluster) string {
	var out []string
	for _, n := range c.Nodes {
		for _, b := range n.Blocks {
			out = append(out, n.Name+":"+b.Prefix.String())
		}
	}
	return strings.Join(out, " ")
}
