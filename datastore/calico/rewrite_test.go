package calico

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

// readMember digs a member out of a JSON text by path.
func readMember(t *testing.T, data []byte, path ...string) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

// TestRewriteKeepsCalicosFields changes what overlayd owns in objects Calico
// wrote and checks that the members overlayd does not model survive.
func TestRewriteKeepsCalicosFields(t *testing.T) {
	t.Run("a node's tunnel address changes, its BGP AS, IPv6 address, orchRefs, wireguard and status stay", func(t *testing.T) {
		data, err := os.ReadFile(filepath.Join("testdata", "calico", "node-calico-node.json"))
		if err != nil {
			t.Fatal(err)
		}
		n, err := DecodeNode(data)
		if err != nil {
			t.Fatal(err)
		}
		info, err := n.Info()
		if err != nil {
			t.Fatal(err)
		}
		info.IPIPTunnelAddr = netip.Addr{}
		info.VXLANTunnelAddr = netip.MustParseAddr("10.244.120.65")
		n.SetInfo(info)
		out, err := json.Marshal(n)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			path []string
			want any
		}{
			{[]string{"spec", "ipv4VXLANTunnelAddr"}, "10.244.120.65"},
			{[]string{"spec", "bgp", "ipv4IPIPTunnelAddr"}, nil},
			{[]string{"spec", "bgp", "ipv4Address"}, "10.192.0.3/16"},
			{[]string{"spec", "bgp", "asNumber"}, 64512.0},
			{[]string{"spec", "bgp", "ipv6Address"}, "2001::102/64"},
			{[]string{"spec", "bgp", "routeReflectorClusterID"}, "224.0.0.1"},
			{[]string{"spec", "wireguard", "interfaceIPv4Address"}, "10.244.120.70"},
			{[]string{"status", "wireguardPublicKey"}, "jlkVyQYooZYzI2wFfNhSZez5eWh44yfq1wKVjLvSXgY="},
			{[]string{"metadata", "uid"}, "d4c3b2a1-0f9e-4d8c-b7a6-958473625140"},
			{[]string{"spec", "vxlanTunnelMACAddr"}, nil}, // the derived MAC is not written
		} {
			if got := readMember(t, out, c.path...); got != c.want {
				t.Errorf("%v = %v; want %v", c.path, got, c.want)
			}
		}
		if refs, _ := readMember(t, out, "spec", "orchRefs").([]any); len(refs) != 1 {
			t.Errorf("orchRefs lost: %s", out)
		}
	})

	t.Run("an address assigned in a Calico block keeps the cooldown entry and the other owners", func(t *testing.T) {
		data := readCompact(t, filepath.Join("testdata", "calico", "block.json"))
		b, err := DecodeBlock(data)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Assign(1, "overlayd.c1.eth0", map[string]string{AttrNode: "kube-node-1"}); err != nil {
			t.Fatal(err)
		}
		out, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		if got := readMember(t, out, "affinity_claim_time"); got != "2026-11-30T09:12:44Z" {
			t.Errorf("affinity_claim_time = %v", got)
		}
		attrs, _ := readMember(t, out, "attributes").([]any)
		if len(attrs) != 4 {
			t.Fatalf("attributes = %v; want Calico's three and overlayd's", attrs)
		}
		if got := attrs[2].(map[string]any)["releasedAt"]; got != "2026-12-02T15:59:31Z" {
			t.Errorf("the cooldown entry lost releasedAt: %v", attrs[2])
		}
	})

	t.Run("resourceVersion and selfLink are not stored, as in Calico's resourceToKVPair", func(t *testing.T) {
		p, err := DecodeIPPool([]byte(`{"kind":"IPPool","apiVersion":"projectcalico.org/v3",
			"metadata":{"name":"p","resourceVersion":"42","selfLink":"/x","namespace":""},"spec":{"cidr":"10.0.0.0/16"}}`))
		if err != nil {
			t.Fatal(err)
		}
		out, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		want := `{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"p","namespace":""},"spec":{"cidr":"10.0.0.0/16"}}`
		if string(out) != want {
			t.Errorf("wrote %s\nwant  %s", out, want)
		}
	})

	t.Run("members of a newer Calico are kept in order after the known ones", func(t *testing.T) {
		in := `{"state":"confirmed","deleted":false,"zNew":{"a":1},"aNew":[1, 2]}`
		a, err := DecodeAffinity([]byte(in))
		if err != nil {
			t.Fatal(err)
		}
		a.State = StatePendingDeletion
		out, err := json.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		want := `{"state":"pendingDeletion","deleted":false,"aNew":[1,2],"zNew":{"a":1}}`
		if string(out) != want {
			t.Errorf("wrote %s\nwant  %s", out, want)
		}
	})
}
