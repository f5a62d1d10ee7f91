package calico

import (
	"bytes"
	"encoding/json"
	"net"
	"net/netip"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/pool"
)

// TestCalicoValuesRead reads values shaped as calicoctl, calico-node, Calico
// IPAM and Felix write them (testdata/calico, provenance in
// testdata/README.md): each is in Calico's field set, decodes to what
// overlayd needs, and encodes back with no member lost or changed.
func TestCalicoValuesRead(t *testing.T) {
	tests := []struct {
		file   string
		calico any                       // Calico's struct, to check the test data itself
		decode func([]byte) (any, error) // overlayd's decoder
		check  func(t *testing.T, v any) // what overlayd must read
	}{
		{
			file: "ippool-calicoctl.json", calico: &calicoIPPool{},
			decode: func(b []byte) (any, error) { return DecodeIPPool(b) },
			check: func(t *testing.T, v any) {
				p := mustPool(t, v.(*IPPool))
				want := pool.IPPool{Name: "ippoolv4-1", CIDR: netip.MustParsePrefix("192.168.0.0/16"),
					IPIPMode: pool.ModeAlways, VXLANMode: pool.ModeNever, NATOutgoing: true, BlockSize: 26}
				comparePool(t, p, &want, "all()")
			},
		},
		{
			file: "ippool-ignored-fields.json", calico: &calicoIPPool{},
			decode: func(b []byte) (any, error) { return DecodeIPPool(b) },
			check: func(t *testing.T, v any) {
				p := mustPool(t, v.(*IPPool))
				want := pool.IPPool{Name: "ippoolv4-2", CIDR: netip.MustParsePrefix("172.16.0.0/16"),
					IPIPMode: pool.ModeNever, VXLANMode: pool.ModeCrossSubnet, Disabled: true, BlockSize: 28}
				comparePool(t, p, &want, `rack == "r1"`)
			},
		},
		{
			file: "node-calico-node.json", calico: &calicoNode{},
			decode: func(b []byte) (any, error) { return DecodeNode(b) },
			check: func(t *testing.T, v any) {
				compareInfo(t, v.(*Node), NodeInfo{
					Name:           "kube-node-1",
					Address:        netip.MustParsePrefix("10.192.0.3/16"),
					Labels:         map[string]string{"kubernetes.io/hostname": "kube-node-1", "rack": "r1"},
					IPIPTunnelAddr: netip.MustParseAddr("10.244.120.64"),
					VTEPMAC:        config.VTEPMACFor("kube-node-1"),
				})
			},
		},
		{
			file: "node-calicoctl.json", calico: &calicoNode{},
			decode: func(b []byte) (any, error) { return DecodeNode(b) },
			check: func(t *testing.T, v any) {
				compareInfo(t, v.(*Node), NodeInfo{
					Name:    "node1",
					Address: netip.MustParsePrefix("1.2.3.4/24"),
					VTEPMAC: config.VTEPMACFor("node1"),
				})
			},
		},
		{
			file: "node-vxlan.json", calico: &calicoNode{},
			decode: func(b []byte) (any, error) { return DecodeNode(b) },
			check: func(t *testing.T, v any) {
				compareInfo(t, v.(*Node), NodeInfo{
					Name:            "kube-node-2",
					Address:         netip.MustParsePrefix("10.192.0.4/16"),
					VXLANTunnelAddr: netip.MustParseAddr("10.244.33.0"),
					VTEPMAC:         net.HardwareAddr{0x66, 0xde, 0xad, 0xbe, 0xef, 0x01},
				})
			},
		},
		{
			file: "block.json", calico: &calicoAllocationBlock{},
			decode: func(b []byte) (any, error) { return DecodeBlock(b) },
			check: func(t *testing.T, v any) {
				b := v.(*Block)
				if host, ok := b.Host(); !ok || host != "kube-node-1" {
					t.Errorf("Host() = %q, %v; want kube-node-1, true", host, ok)
				}
				if b.CIDR != netip.MustParsePrefix("10.244.120.64/26") {
					t.Errorf("CIDR = %s", b.CIDR)
				}
				// Tunnel, pod and the address in cooldown are in use; 61 free.
				if b.InUse() != 3 || b.Free() != 61 {
					t.Errorf("InUse, Free = %d, %d; want 3, 61", b.InUse(), b.Free())
				}
				if got := b.OrdinalsOf("ipip-tunnel-addr-kube-node-1"); !reflect.DeepEqual(got, []int{0}) {
					t.Errorf("OrdinalsOf(tunnel handle) = %v; want [0]", got)
				}
				// The next address handed out is the first of unallocated, 4.
				c := cloneBlock(t, b)
				addrs, err := c.Assign(1, "h", nil)
				if err != nil || addrs[0] != netip.MustParseAddr("10.244.120.68") {
					t.Errorf("Assign(1) = %v, %v; want 10.244.120.68", addrs, err)
				}
			},
		},
		{
			file: "affinity-confirmed.json", calico: &calicoBlockAffinity{},
			decode: func(b []byte) (any, error) { return DecodeAffinity(b) },
			check: func(t *testing.T, v any) {
				if !v.(*Affinity).Confirmed() {
					t.Error("a confirmed affinity reads as not confirmed")
				}
			},
		},
		{
			file: "affinity-pending.json", calico: &calicoBlockAffinity{},
			decode: func(b []byte) (any, error) { return DecodeAffinity(b) },
			check: func(t *testing.T, v any) {
				if v.(*Affinity).Confirmed() {
					t.Error("a pending affinity reads as confirmed; it must count as absent")
				}
			},
		},
		{
			file: "handle-pod.json", calico: &calicoIPAMHandle{},
			decode: func(b []byte) (any, error) { return DecodeHandle(b) },
			check: func(t *testing.T, v any) {
				if got := v.(*Handle).Block; !reflect.DeepEqual(got, map[string]int{"10.244.120.64/26": 1}) {
					t.Errorf("Block = %v", got)
				}
			},
		},
		{
			file: "liveness.json", calico: &calicoStatusReport{},
			decode: func(b []byte) (any, error) { return DecodeLiveness(b) },
			check: func(t *testing.T, v any) {
				if l := v.(*Liveness); l.Time != "2026-12-02T16:00:30Z" || l.Uptime != 172832.517 || l.FirstUpdate {
					t.Errorf("Liveness = %+v", l)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			data := readCompact(t, filepath.Join("testdata", "calico", tt.file))
			dec := json.NewDecoder(bytes.NewReader(data))
			dec.DisallowUnknownFields()
			if err := dec.Decode(tt.calico); err != nil {
				t.Fatalf("test data is not in Calico's field set: %v", err)
			}
			v, err := tt.decode(data)
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, v)
			again, err := json.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			if !jsonEqual(t, data, again) {
				t.Errorf("decode/encode changed the value:\nread  %s\nwrote %s", data, again)
			}
		})
	}
}

func mustPool(t *testing.T, p *IPPool) *pool.IPPool {
	t.Helper()
	v, err := p.Pool()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func comparePool(t *testing.T, got, want *pool.IPPool, selector string) {
	t.Helper()
	if got.Name != want.Name || got.CIDR != want.CIDR || got.IPIPMode != want.IPIPMode || got.VXLANMode != want.VXLANMode ||
		got.NATOutgoing != want.NATOutgoing || got.Disabled != want.Disabled || got.BlockSize != want.BlockSize {
		t.Errorf("pool = %+v\nwant %+v", *got, *want)
	}
	if s := got.NodeSelector.String(); s != selector {
		t.Errorf("nodeSelector = %q; want %q", s, selector)
	}
}

func compareInfo(t *testing.T, n *Node, want NodeInfo) {
	t.Helper()
	got, err := n.Info()
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != want.Name || got.Address != want.Address || !reflect.DeepEqual(got.Labels, want.Labels) ||
		got.IPIPTunnelAddr != want.IPIPTunnelAddr || got.VXLANTunnelAddr != want.VXLANTunnelAddr ||
		got.VTEPMAC.String() != want.VTEPMAC.String() {
		t.Errorf("Info() = %+v\nwant     %+v", got, want)
	}
}

func cloneBlock(t *testing.T, b *Block) *Block {
	t.Helper()
	data, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	c, err := DecodeBlock(data)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
