package calico

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/overlayd/overlayd/pool"
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

// FuzzIPPool feeds any bytes to the IPPool read from etcd and its
// validation: no panic; a refusal names the member (*pool.FieldError); and
// a pool that passes is one calicoctl could have written: NewIPPool of its
// spec passes too and validates to the same pool.
func FuzzIPPool(f *testing.F) {
	for _, dir := range []string{"calico", "overlayd"} {
		files, _ := filepath.Glob(filepath.Join("testdata", dir, "ippool*.json"))
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	f.Add([]byte(`{"kind":"IPPool","metadata":{"name":"lb"},"spec":{"cidr":"10.3.0.0/16","allowedUses":["LoadBalancer"],"assignmentMode":"Manual"}}`))
	f.Add([]byte(`{"kind":"IPPool","metadata":{"name":"old"},"spec":{"cidr":"10.2.0.0/27","blockSize":26,"disabled":true,"namespaceSelector":"team == 'a'","allowedUses":["Workload"]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := DecodeIPPool(data)
		if err != nil {
			return
		}
		v, err := p.Pool()
		if err != nil {
			var fe *pool.FieldError
			if !errors.As(err, &fe) || fe.Field == "" {
				t.Fatalf("Pool() = %v, want a *pool.FieldError naming the member", err)
			}
			return
		}
		again, err := NewIPPool(p.PoolSpec(), testUID, testNow)
		if err != nil {
			t.Fatalf("Pool() accepted %s, NewIPPool refuses its spec: %v", data, err)
		}
		v2, err := again.Pool()
		if err != nil || !v2.Equal(v) {
			t.Fatalf("written out by NewIPPool, %+v validates to %+v, %v", v, v2, err)
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
