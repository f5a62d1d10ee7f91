package pool

import (
	"errors"
	"strings"
	"testing"
)

func TestNewDefaults(t *testing.T) {
	p, err := New(Spec{Name: "default-ipv4-ippool", CIDR: "192.168.0.0/16"})
	if err != nil {
		t.Fatal(err)
	}
	if p.IPIPMode != ModeNever || p.VXLANMode != ModeNever {
		t.Errorf("modes = %q/%q, want Never/Never", p.IPIPMode, p.VXLANMode)
	}
	if p.BlockSize != DefaultBlockSize {
		t.Errorf("blockSize = %d, want %d", p.BlockSize, DefaultBlockSize)
	}
	if got := p.NodeSelector.String(); !strings.Contains(got, "all()") {
		t.Errorf("nodeSelector = %q, want all()", got)
	}
	if p.NATOutgoing || p.Disabled {
		t.Errorf("natOutgoing/disabled default to false, got %v/%v", p.NATOutgoing, p.Disabled)
	}
	if !p.NodeSelector.Matches(map[string]string{}) {
		t.Error("the default selector must select a node without labels")
	}
}

func TestNewValidation(t *testing.T) {
	base := Spec{Name: "p", CIDR: "192.168.0.0/16"}
	with := func(f func(*Spec)) Spec { s := base; f(&s); return s }
	tests := []struct {
		name      string
		spec      Spec
		wantField string
		wantMsg   string // substring; empty: valid
	}{
		{"ipipMode Always is accepted", with(func(s *Spec) { s.IPIPMode = "Always" }), "", ""},
		{"ipipMode CrossSubnet is accepted", with(func(s *Spec) { s.IPIPMode = "CrossSubnet" }), "", ""},
		{"vxlanMode Never is accepted", with(func(s *Spec) { s.VXLANMode = "Never" }), "", ""},
		{"modes are case-sensitive", with(func(s *Spec) { s.IPIPMode = "always" }), "ipipMode", `did you mean "Always"`},
		{"unknown mode names the allowed values", with(func(s *Spec) { s.VXLANMode = "Sometimes" }), "vxlanMode", `allowed values are "Never", "Always", "CrossSubnet"`},
		{"both encapsulations on", with(func(s *Spec) { s.IPIPMode = "Always"; s.VXLANMode = "CrossSubnet" }), "vxlanMode", "Cannot enable both VXLAN and IPIP on the same IPPool"},
		{"both encapsulations on says they cannot be mixed", with(func(s *Spec) { s.IPIPMode = "CrossSubnet"; s.VXLANMode = "Always" }), "vxlanMode", "cannot be mixed within one pool"},
		{"missing cidr", with(func(s *Spec) { s.CIDR = "" }), "cidr", "missing"},
		{"cidr that does not parse", with(func(s *Spec) { s.CIDR = "192.168.0.0" }), "cidr", "is not a CIDR"},
		{"cidr not strictly masked shows the masked form", with(func(s *Spec) { s.CIDR = "192.168.0.1/16" }), "cidr", "IPPool CIDR is not strictly masked: 192.168.0.1/16 has host bits set (did you mean 192.168.0.0/16?)"},
		{"IPv6 with encapsulation", with(func(s *Spec) { s.CIDR = "fd00::/48"; s.VXLANMode = "Always" }), "cidr", "IPv4 pools only"},
		{"IPv6 without encapsulation", with(func(s *Spec) { s.CIDR = "fd00::/48" }), "cidr", "IPv6 pools are not supported"},
		{"link-local", with(func(s *Spec) { s.CIDR = "169.254.0.0/24" }), "cidr", "IPPool CIDR overlaps with IPv4 Link Local range 169.254.0.0/16"},
		{"a range containing link-local", with(func(s *Spec) { s.CIDR = "169.0.0.0/8" }), "cidr", "Link Local"},
		{"loopback", with(func(s *Spec) { s.CIDR = "127.1.0.0/16" }), "cidr", "loopback"},
		{"multicast", with(func(s *Spec) { s.CIDR = "239.0.0.0/8" }), "cidr", "multicast"},
		{"blockSize below 20", with(func(s *Spec) { s.BlockSize = 19 }), "blockSize", "IPv4 block size must be between 20 and 32"},
		{"blockSize above 32", with(func(s *Spec) { s.BlockSize = 33 }), "blockSize", "IPv4 block size must be between 20 and 32"},
		{"blockSize 32 is allowed", with(func(s *Spec) { s.BlockSize = 32 }), "", ""},
		{"blockSize 20 is allowed", with(func(s *Spec) { s.BlockSize = 20 }), "", ""},
		{"pool smaller than its block", with(func(s *Spec) { s.CIDR = "192.168.0.0/27"; s.BlockSize = 26 }), "blockSize", "IP pool size is too small for use with Calico IPAM"},
		{"pool equal to its block", with(func(s *Spec) { s.CIDR = "192.168.0.0/26" }), "", ""},
		{"selector parses", with(func(s *Spec) { s.NodeSelector = "zone == 'a' && has(gpu)" }), "", ""},
		{"selector syntax error", with(func(s *Spec) { s.NodeSelector = "zone ==" }), "nodeSelector", "position"},
		{"global() is rejected", with(func(s *Spec) { s.NodeSelector = "global()" }), "nodeSelector", "global() selector is not valid for IPPool nodeSelector - use all() instead"},
		{"missing name", with(func(s *Spec) { s.Name = "" }), "name", "missing"},
		{"uppercase name", with(func(s *Spec) { s.Name = "Pool1" }), "name", "RFC 1123"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.spec)
			if tc.wantMsg == "" {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("want a *FieldError, got %v", err)
			}
			if fe.Field != tc.wantField {
				t.Errorf("field = %q, want %q", fe.Field, tc.wantField)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not contain %q", err, tc.wantMsg)
			}
		})
	}
}

func TestValidateSet(t *testing.T) {
	mk := func(name, cidr string) *IPPool {
		p, err := New(Spec{Name: name, CIDR: cidr})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name    string
		pools   []*IPPool
		wantMsg string
	}{
		{"disjoint pools", []*IPPool{mk("a", "192.168.0.0/16"), mk("b", "10.1.0.0/16")}, ""},
		{"adjacent pools", []*IPPool{mk("a", "10.0.0.0/16"), mk("b", "10.1.0.0/16")}, ""},
		{"overlap names both pools and the earlier CIDR", []*IPPool{mk("a", "10.0.0.0/16"), mk("b", "10.0.128.0/17")}, "IPPool(b) CIDR overlaps with IPPool(a) CIDR 10.0.0.0/16"},
		{"a pool inside another", []*IPPool{mk("a", "10.0.0.0/24"), mk("b", "10.0.0.0/8")}, "IPPool(b) CIDR overlaps with IPPool(a) CIDR 10.0.0.0/24"},
		{"duplicate names", []*IPPool{mk("a", "10.0.0.0/16"), mk("a", "10.1.0.0/16")}, `duplicate pool name "a"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateSet(tc.pools)
			switch {
			case tc.wantMsg == "" && err != nil:
				t.Fatalf("want valid, got %v", err)
			case tc.wantMsg != "" && (err == nil || !strings.Contains(err.Error(), tc.wantMsg)):
				t.Fatalf("error %v, want one containing %q", err, tc.wantMsg)
			}
		})
	}
}
