package calico

import (
	"bytes"
	"encoding/json"
	"flag"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/pool"
)

var update = flag.Bool("update", false, "rewrite testdata/overlayd/*.json from the encoders")

// The fixed clock and uid of the objects overlayd writes in these tests.
var (
	testNow = time.Date(2026, 12, 2, 16, 0, 0, 123456789, time.UTC)
	testUID = "3f9a1c52-7b2e-4d8a-9c41-6e0b5d2f8a17"
)

// overlaydValues are the objects overlayd writes, one per key type, with the
// Calico struct (calico_structs_test.go) each must decode into.
func overlaydValues(t *testing.T) []struct {
	file   string
	value  any
	calico any
} {
	t.Helper()
	ippool, err := NewIPPool(pool.Spec{Name: "ippool-1", CIDR: "192.168.0.0/16", VXLANMode: "Always", NATOutgoing: true}, testUID, testNow)
	if err != nil {
		t.Fatal(err)
	}
	node := NewNode(NodeInfo{
		Name:            "node-a",
		Address:         netip.MustParsePrefix("198.18.1.1/24"),
		Labels:          map[string]string{"rack": "r1"},
		VXLANTunnelAddr: netip.MustParseAddr("192.168.0.0"),
		VTEPMAC:         config.VTEPMACFor("node-a"),
	}, testUID, testNow)
	nodeIPIP := NewNode(NodeInfo{
		Name:           "node-b",
		Address:        netip.MustParsePrefix("198.18.2.1/24"),
		IPIPTunnelAddr: netip.MustParseAddr("10.1.0.64"),
		VTEPMAC:        net.HardwareAddr{0x66, 1, 2, 3, 4, 5},
	}, testUID, testNow)
	block, err := NewBlock(netip.MustParsePrefix("192.168.0.0/29"), "node-a", testNow)
	if err != nil {
		t.Fatal(err)
	}
	handleID, attrs, err := TunnelAllocation("node-a", AttrTypeVXLAN)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := block.Assign(1, handleID, attrs); err != nil {
		t.Fatal(err)
	}
	handle := NewHandle()
	handle.Increment(block.CIDR, 1)
	workloads, workloadHandle := workloadBlock(t)
	return []struct {
		file   string
		value  any
		calico any
	}{
		{"ippool.json", ippool, &calicoIPPool{}},
		{"node-vxlan.json", node, &calicoNode{}},
		{"node-ipip.json", nodeIPIP, &calicoNode{}},
		{"block.json", block, &calicoAllocationBlock{}},
		{"affinity.json", &Affinity{State: StateConfirmed}, &calicoBlockAffinity{}},
		{"handle.json", handle, &calicoIPAMHandle{}},
		{"block-workload.json", workloads, &calicoAllocationBlock{}},
		{"handle-workload.json", workloadHandle, &calicoIPAMHandle{}},
		{"liveness.json", NewLiveness(testNow, 90*time.Second+500*time.Millisecond, true), &calicoStatusReport{}},
	}
}

// workloadBlock is a block after what a workload store does
// (datastore/etcd assign.go, whose test compares etcd's values with these
// golden files): the tunnel address, two workloads' addresses (handles
// <network>.<containerID>.<ifname>, owner attributes as the CNI plugin
// sets them), the first released again; each change one update
// (SequenceNumber incremented). handle is the second workload's handle.
func workloadBlock(t *testing.T) (block *Block, handle *Handle) {
	t.Helper()
	block, err := NewBlock(netip.MustParsePrefix("192.168.0.0/29"), "node-a", testNow)
	if err != nil {
		t.Fatal(err)
	}
	tunnelID, tunnelAttrs, err := TunnelAllocation("node-a", AttrTypeVXLAN)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := block.Assign(1, tunnelID, tunnelAttrs); err != nil {
		t.Fatal(err)
	}
	block.SequenceNumber++
	for _, id := range []string{"c1", "c2"} {
		attrs := map[string]string{"node": "node-a", "containerID": id, "ifname": "eth0", "network": "overlayd", "timestamp": testNow.String()}
		if _, err := block.Assign(1, "overlayd."+id+".eth0", attrs); err != nil {
			t.Fatal(err)
		}
		block.SequenceNumber++
	}
	if _, err := block.Release(block.OrdinalsOf("overlayd.c1.eth0")); err != nil {
		t.Fatal(err)
	}
	block.SequenceNumber++
	handle = NewHandle()
	handle.Increment(block.CIDR, 1)
	return block, handle
}

// TestOverlaydValuesAreCalicos holds what overlayd writes to the golden files
// and the golden files to Calico's structs: each must decode into Calico's
// struct with no unknown member, and Calico's struct must encode it to the
// very bytes overlayd wrote (same members, same order, same omissions).
func TestOverlaydValuesAreCalicos(t *testing.T) {
	for _, v := range overlaydValues(t) {
		t.Run(v.file, func(t *testing.T) {
			got, err := json.Marshal(v.value)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", "overlayd", v.file)
			if *update {
				var pretty bytes.Buffer
				if err := json.Indent(&pretty, got, "", " "); err != nil {
					t.Fatal(err)
				}
				pretty.WriteByte('\n')
				if err := os.WriteFile(path, pretty.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			golden := readCompact(t, path)
			if !bytes.Equal(got, golden) {
				t.Errorf("overlayd writes\n%s\nthe golden file %s holds\n%s", got, path, golden)
			}

			dec := json.NewDecoder(bytes.NewReader(golden))
			dec.DisallowUnknownFields()
			if err := dec.Decode(v.calico); err != nil {
				t.Fatalf("the golden value is not in Calico's field set: %v", err)
			}
			calico, err := json.Marshal(v.calico)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(calico, golden) {
				t.Errorf("Calico's struct writes the same content as\n%s\nnot as the golden file\n%s", calico, golden)
			}
		})
	}
}

func readCompact(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, data); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return buf.Bytes()
}

// jsonEqual compares two JSON texts as values: member order and spacing
// aside, equal texts have the same members with the same values.
func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatal(err)
	}
	return reflect.DeepEqual(va, vb)
}
