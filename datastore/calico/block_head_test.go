package calico

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// checkHeadAgrees fails unless DecodeBlockHead accepts data exactly when
// DecodeBlock does, with the same error (a type error names the same member
// and value; the Go type it was read into differs), and reads the same head.
func checkHeadAgrees(t *testing.T, data []byte) {
	t.Helper()
	b, err := DecodeBlock(data)
	h, herr := DecodeBlockHead(data)
	same := func() bool {
		var typ, htyp *json.UnmarshalTypeError
		if errors.As(err, &typ) && errors.As(herr, &htyp) {
			return typ.Field == htyp.Field && typ.Value == htyp.Value
		}
		return err.Error() == herr.Error()
	}
	if (err == nil) != (herr == nil) || err != nil && !same() {
		t.Fatalf("DecodeBlock: %v\nDecodeBlockHead: %v\nvalue: %s", err, herr, data)
	}
	if err != nil {
		return
	}
	host, affine := b.Host()
	want := BlockHead{CIDR: b.CIDR, Host: host, Affine: affine, Deleted: b.Deleted, InUse: b.InUse()}
	if h != want {
		t.Fatalf("DecodeBlockHead = %+v, want %+v from DecodeBlock\nvalue: %s", h, want, data)
	}
}

func TestBlockHeadAgreesWithDecodeBlock(t *testing.T) {
	tests := []struct{ name, data string }{
		{"good", goodBlock},
		{"not affine", strings.Replace(goodBlock, `"host:n"`, "null", 1)},
		{"affine to no host", strings.Replace(goodBlock, `"host:n"`, `"virtual:v"`, 1)},
		{"deleted", strings.Replace(goodBlock, `"deleted":false`, `"deleted":true`, 1)},
		{"with members overlayd does not model", strings.Replace(goodBlock, `"deleted":false`, `"deleted":false,"future":{"a":[1]}`, 1)},
		{"attribute with extra members", strings.Replace(goodBlock, `{"handle_id":"h"}`, `{"handle_id":"h","x":1}`, 1)},
		{"attribute a number", strings.Replace(goodBlock, `{"handle_id":"h"}`, `7`, 1)},
		{"attribute handle a number", strings.Replace(goodBlock, `{"handle_id":"h"}`, `{"handle_id":7}`, 1)},
		{"attribute null", strings.Replace(goodBlock, `{"handle_id":"h"}`, `null`, 1)},
		{"claim time a number", strings.Replace(goodBlock, `"sequenceNumber":1`, `"affinity_claim_time":1,"sequenceNumber":1`, 1)},
		{"member names in another case", strings.Replace(goodBlock, `"cidr"`, `"CIDR"`, 1)},
		{"null", "null"},
		{"empty", ""},
		{"an array", "[]"},
		{"truncated", goodBlock[:40]},
		{"bad CIDR", strings.Replace(goodBlock, "10.0.0.0/30", "10.0.0.0/33", 1)},
		{"CIDR not a network", strings.Replace(goodBlock, "10.0.0.0/30", "10.0.0.1/30", 1)},
		{"too few allocations", strings.Replace(goodBlock, "[0,null,null,null]", "[0,null,null]", 1)},
		{"allocation past the attributes", strings.Replace(goodBlock, "[0,null,null,null]", "[1,null,null,null]", 1)},
		{"unallocated twice", strings.Replace(goodBlock, "[1,2,3]", "[1,2,2]", 1)},
		{"allocations a string", strings.Replace(goodBlock, "[0,null,null,null]", `"0"`, 1)},
		{"sequence number negative", strings.Replace(goodBlock, `"sequenceNumber":1`, `"sequenceNumber":-1`, 1)},
	}
	for _, dir := range []string{"calico", "overlayd"} {
		data, err := os.ReadFile(filepath.Join("testdata", dir, "block.json"))
		if err != nil {
			t.Fatal(err)
		}
		tests = append(tests, struct{ name, data string }{dir + "'s block", string(data)})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { checkHeadAgrees(t, []byte(tt.data)) })
	}
}

// FuzzBlockHead: DecodeBlockHead and DecodeBlock agree on any bytes.
func FuzzBlockHead(f *testing.F) {
	f.Add([]byte(goodBlock))
	f.Add([]byte(`{"cidr":"10.0.0.0/32","allocations":[null],"unallocated":[0]}`))
	f.Fuzz(func(t *testing.T, data []byte) { checkHeadAgrees(t, data) })
}
