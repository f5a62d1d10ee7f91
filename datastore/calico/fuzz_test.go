package calico

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// FuzzDecode feeds any bytes to every decoder: none may panic, and a value
// one accepts must encode and decode again to the same JSON.
func FuzzDecode(f *testing.F) {
	for _, dir := range []string{"calico", "overlayd"} {
		files, _ := filepath.Glob(filepath.Join("testdata", dir, "*.json"))
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	f.Add([]byte(goodBlock))
	f.Add([]byte(`{"cidr":"10.0.0.0/32","allocations":[null],"unallocated":[0]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, d := range decoders {
			v, err := d.decode(data)
			if err != nil {
				continue
			}
			out, err := json.Marshal(v)
			if err != nil {
				t.Fatalf("%s: decoded %q but cannot encode it: %v", d.kind, data, err)
			}
			again, err := d.decode(out)
			if err != nil {
				t.Fatalf("%s: cannot decode what it encoded: %v\n%s", d.kind, err, out)
			}
			out2, err := json.Marshal(again)
			if err != nil || string(out2) != string(out) {
				t.Fatalf("%s: encoding is not stable:\n%s\n%s", d.kind, out, out2)
			}
		}
	})
}

// FuzzParseKey: Parse never panics, and a key it accepts is the key its
// builder writes.
func FuzzParseKey(f *testing.F) {
	for _, k := range []string{
		"/calico/resources/v3/projectcalico.org/ippools/p",
		"/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26",
		"/calico/ipam/v2/host/n/ipv4/block/10.0.0.0-26",
		"/calico/ipam/v2/handle/h",
		"/calico/felix/v2/no-region/host/n/status",
	} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var keys Keys
		k, err := keys.Parse(s)
		if err != nil {
			return
		}
		var built string
		switch k.Kind {
		case KindIPPool:
			built = keys.IPPool(k.Name)
		case KindNode:
			built = keys.Node(k.Name)
		case KindBlock:
			built = keys.Block(k.CIDR)
		case KindAffinity:
			built = keys.Affinity(k.Name, k.CIDR)
		case KindHandle:
			built = keys.Handle(k.Name)
		case KindLiveness:
			built = keys.Liveness(k.Name)
		}
		if built != s {
			t.Errorf("Parse(%q) = %+v, which builds %q", s, k, built)
		}
	})
}
