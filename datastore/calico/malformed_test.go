package calico

import (
	"fmt"
	"strings"
	"testing"
)

// decoders are overlayd's decoders by key kind.
var decoders = []struct {
	kind   Kind
	decode func([]byte) (any, error)
}{
	{KindIPPool, func(b []byte) (any, error) { return DecodeIPPool(b) }},
	{KindNode, func(b []byte) (any, error) { return DecodeNode(b) }},
	{KindBlock, func(b []byte) (any, error) { return DecodeBlock(b) }},
	{KindAffinity, func(b []byte) (any, error) { return DecodeAffinity(b) }},
	{KindHandle, func(b []byte) (any, error) { return DecodeHandle(b) }},
	{KindLiveness, func(b []byte) (any, error) { return DecodeLiveness(b) }},
}

func decoderFor(k Kind) func([]byte) (any, error) {
	for _, d := range decoders {
		if d.kind == k {
			return d.decode
		}
	}
	panic(fmt.Sprint("no decoder for ", k))
}

// a /30 block: four allocations.
const goodBlock = `{"cidr":"10.0.0.0/30","affinity":"host:n","allocations":[0,null,null,null],"unallocated":[1,2,3],` +
	`"attributes":[{"handle_id":"h"}],"sequenceNumber":1,"sequenceNumberForAllocation":{"0":1},"deleted":false}`

func TestMalformedValuesAreErrors(t *testing.T) {
	tests := []struct {
		name string
		kind Kind
		data string
		msg  string
	}{
		{"truncated IPPool", KindIPPool, `{"kind":"IPPool","spec":{"cidr":"10.0.0.0/16"`, "unexpected end"},
		{"IPPool null", KindIPPool, `null`, "not a JSON object"},
		{"IPPool empty", KindIPPool, ``, "empty value"},
		{"IPPool of another kind", KindIPPool, `{"kind":"Node","metadata":{"name":"p"}}`, `kind is "Node"`},
		{"IPPool of another API version", KindIPPool, `{"kind":"IPPool","apiVersion":"projectcalico.org/v2"}`, "apiVersion"},
		{"IPPool natOutgoing a string", KindIPPool, `{"spec":{"cidr":"10.0.0.0/16","natOutgoing":"yes"}}`, "natOutgoing"},
		{"IPPool blockSize a string", KindIPPool, `{"spec":{"cidr":"10.0.0.0/16","blockSize":"26"}}`, "blockSize"},
		{"Node labels a list", KindNode, `{"kind":"Node","metadata":{"name":"n","labels":["a"]}}`, "labels"},
		{"Node bgp a string", KindNode, `{"kind":"Node","spec":{"bgp":"10.0.0.1/24"}}`, "bgp"},
		{"Node an array", KindNode, `[]`, "not a JSON object"},
		{"truncated block", KindBlock, goodBlock[:40], "unexpected end"},
		{"block with bad CIDR", KindBlock, strings.Replace(goodBlock, "10.0.0.0/30", "10.0.0.0/33", 1), "cidr"},
		{"block CIDR not a network", KindBlock, strings.Replace(goodBlock, "10.0.0.0/30", "10.0.0.1/30", 1), "not a network address"},
		{"block without CIDR", KindBlock, strings.Replace(goodBlock, `"cidr":"10.0.0.0/30",`, "", 1), "not an IPv4 CIDR"},
		{"IPv6 block", KindBlock, strings.Replace(goodBlock, "10.0.0.0/30", "fd00::/126", 1), "not an IPv4 CIDR"},
		{"block with too few allocations", KindBlock, strings.Replace(goodBlock, "[0,null,null,null]", "[0,null,null]", 1), "3 entries for a block of 4"},
		{"block with too many allocations", KindBlock, strings.Replace(goodBlock, "[0,null,null,null]", "[0,null,null,null,null]", 1), "5 entries for a block of 4"},
		{"block allocation pointing past the attributes", KindBlock, strings.Replace(goodBlock, "[0,null,null,null]", "[1,null,null,null]", 1), "attribute index 1 out of range"},
		{"block allocation negative", KindBlock, strings.Replace(goodBlock, "[0,null,null,null]", "[-1,null,null,null]", 1), "attribute index -1"},
		{"block unallocated out of range", KindBlock, strings.Replace(goodBlock, "[1,2,3]", "[1,2,4]", 1), "ordinal 4 out of range"},
		{"block unallocated twice", KindBlock, strings.Replace(goodBlock, "[1,2,3]", "[1,2,2]", 1), "listed twice"},
		{"block unallocated also allocated", KindBlock, strings.Replace(goodBlock, "[1,2,3]", "[0,1,2]", 1), "also allocated"},
		{"block allocations a string", KindBlock, strings.Replace(goodBlock, "[0,null,null,null]", `"0"`, 1), "allocations"},
		{"block sequence number negative", KindBlock, strings.Replace(goodBlock, `"sequenceNumber":1`, `"sequenceNumber":-1`, 1), "sequenceNumber"},
		{"affinity state a number", KindAffinity, `{"state":1,"deleted":false}`, "state"},
		{"affinity truncated", KindAffinity, `{"state":"confirmed"`, "unexpected end"},
		{"handle with a bad block", KindHandle, `{"block":{"10.0.0.0-26":1},"deleted":false}`, "not a CIDR"},
		{"handle with a zero count", KindHandle, `{"block":{"10.0.0.0/26":0},"deleted":false}`, "not positive"},
		{"handle count a string", KindHandle, `{"block":{"10.0.0.0/26":"1"}}`, "block"},
		{"liveness uptime a string", KindLiveness, `{"time":"2026-12-02T16:00:30Z","uptime":"1"}`, "uptime"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := decoderFor(tt.kind)([]byte(tt.data))
			if err == nil || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("decode = %+v, %v; want an error containing %q", v, err, tt.msg)
			}
		})
	}
	t.Run("the block these are made from is good", func(t *testing.T) {
		if _, err := DecodeBlock([]byte(goodBlock)); err != nil {
			t.Fatal(err)
		}
	})
}

func TestEmptyAffinityIsAnUnconfirmedOne(t *testing.T) {
	a, err := DecodeAffinity(nil)
	if err != nil || a.Confirmed() || a.State != "" {
		t.Errorf("DecodeAffinity(empty) = %+v, %v; want an affinity without state, as Calico reads it", a, err)
	}
}
