package pool

// Calico's IPPool rules, checked one by one against projectcalico/calico at
// commit 87c15906 (master, 2026-08-22; the IPPool rules moved from Go into
// CEL rules on the CRD in #13493 on 2026-08-20, and their wording changed
// with them). Paths are relative to that repository; "CEL" means an
// +kubebuilder:validation:XValidation rule above IPPoolSpec in
// api/pkg/apis/projectcalico/v3/ippool.go, which libcalico-go also runs
// client-side (validator.go Validate -> defaultAndValidateCRD), so calicoctl
// in etcd mode gives the same messages.
//
//	rule (Calico source)                                    overlayd                   same?
//	cidr required: "IPPool CIDR must be specified"           New, cidr                  yes (message now Calico's)
//	  clientv3/ippool.go:364 validateAndSetDefaults
//	cidr parses: "IPPool CIDR must be a valid subnet"        New, cidr                  yes (message now Calico's)
//	  clientv3/ippool.go:375
//	strictly masked: "IPPool CIDR is not strictly masked"    New, cidr                  yes, plus the masked form
//	  clientv3/ippool.go:490 (validator.go:993, CEL :95)
//	link local: "IPPool CIDR overlaps with IPv4 link         New, cidr                  yes (was "Link Local", v3.31)
//	  local range 169.254.0.0/16"  CEL ippool.go:96
//	blockSize 20..32, 0 = 26: "blockSize must be between     New, blockSize             yes (was "IPv4 block size
//	  20 and 32 for IPv4 pools, and between 116 and 128       must be between 20 and 32", v3.31)
//	  for IPv6 pools"  CEL :98, default clientv3:403
//	pool >= block unless disabled: "IP pool size is too      New, blockSize             FIXED: applied to disabled
//	  small for use with Calico IPAM. ..."  CEL :99           pools too before
//	one encapsulation: "ipipMode and vxlanMode cannot        New, vxlanMode             yes (was "Cannot enable both
//	  both be enabled"  CEL :86                                                         VXLAN and IPIP ...", v3.31)
//	no IPIP on IPv6: "IPIP is not supported on IPv6 pools"   New, ipipMode              yes; overlayd refuses every
//	  CEL :89                                                                           IPv6 pool besides (IPv4 only)
//	no global( in nodeSelector: "global() selector is not    New, nodeSelector          FIXED: Calico's test is textual
//	  valid for IPPool nodeSelector"  CEL :93                                           (contains "global("); was a
//	                                                                                    parse of the selector
//	nodeSelector parses: validator.go:453 validateSelector  New, nodeSelector          yes (overlayd's message, with
//	                                                                                    the position)
//	nodeSelector at most 1024: ippool.go:135 MaxLength       New, nodeSelector          ADDED
//	nodeSelector default all(): ippool.go:134,               New                        yes
//	  clientv3/ippool.go:386
//	modes Never|Always|CrossSubnet, empty = Never:           parseMode                  yes (case-sensitive enum)
//	  ippool.go:177,191 Enum; clientv3/ippool.go:478,483
//	name <= 253 bytes: "name is too long by N bytes"         New, name                  ADDED wording
//	  validator.go:1239 validateObjectMeta
//	name is a DNS-1123 subdomain: "name must consist of      New, name                  yes (message now Calico's)
//	  lower case alphanumeric characters, '-' or '.' ..."
//	  validator.go:1250
//	no overlap: "IPPool(a) CIDR overlaps with IPPool(b)      ValidateSet                yes
//	  CIDR c"  clientv3/ippool.go:469
//	unique names: a name is a datastore key                  ValidateSet                yes
//	blocks are blockSize subnets of the pool, aligned,       Allocate, IPPool.HasBlock  FIXED: a listed block was
//	  inside it: ipam_block_reader_writer.go:584                                        only checked by its first
//	  blockGenerator                                                                    address
//	a block overlapping a pool has its blockSize: "IPPool    Allocate                   yes (condition; file wording)
//	  blocksSize conflicts with existing allocations ..."
//	  clientv3/ippool.go:103 Create
//	disabled pools give no new blocks: ipam.go:263           Allocate                   yes
//	  determinePools (GetEnabledPools)
//	a pool that stops selecting a node keeps the node's      Allocate                   differs on purpose: a
//	  non-empty blocks: ipam.go:2347 (RequireEmpty)                                     listed block of an enabled
//	                                                                                    pool must be selected (the
//	                                                                                    file has no "non-empty");
//	                                                                                    disabled pools' are kept
//	not here: allowedUses, namespaceSelector, disableBGPExport, assignmentMode and the
//	LoadBalancer rules (CEL :87,:88,:90,:91,:92,:94; validator.go:1003) concern fields
//	the cluster file does not have; datastore/calico checks them on IPPools read from
//	etcd (ippool_rules_test.go), and the YAML import takes only their defaults. IPv6 rules (CEL :97, blockSize 116..128) do not apply. CIDR and blockSize
//	"cannot be changed" (ippool.go:105,:130) are update rules of a datastore; cidr
//	MaxLength 48 (:104) cannot be reached by an IPv4 CIDR. overlayd adds loopback and
//	multicast ranges to link local: no workload could use them.

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestCalicoIPPoolRules(t *testing.T) {
	base := Spec{Name: "p", CIDR: "192.168.0.0/16"}
	with := func(f func(*Spec)) Spec { s := base; f(&s); return s }
	tests := []struct {
		name      string
		calico    string // where Calico has the rule; "overlayd" for overlayd's own
		spec      Spec
		wantField string
		wantMsg   string // substring; empty: valid
	}{
		{"cidr missing", "clientv3/ippool.go:364 validateAndSetDefaults",
			with(func(s *Spec) { s.CIDR = "" }), "cidr", "IPPool CIDR must be specified"},
		{"cidr without a prefix length", "clientv3/ippool.go:375 validateAndSetDefaults (cnet.ParseCIDR)",
			with(func(s *Spec) { s.CIDR = "192.168.0.0" }), "cidr", "IPPool CIDR must be a valid subnet"},
		{"cidr that is not an address", "clientv3/ippool.go:375 validateAndSetDefaults",
			with(func(s *Spec) { s.CIDR = "pods" }), "cidr", "IPPool CIDR must be a valid subnet"},
		{"cidr not strictly masked shows the masked form", "clientv3/ippool.go:490 validateAndSetDefaults",
			with(func(s *Spec) { s.CIDR = "192.168.0.1/16" }), "cidr", "IPPool CIDR is not strictly masked: 192.168.0.1/16 has host bits set (did you mean 192.168.0.0/16?)"},
		{"cidr inside link local", "ippool.go:96 CEL (pool address in 169.254.0.0/16)",
			with(func(s *Spec) { s.CIDR = "169.254.0.0/24" }), "cidr", "IPPool CIDR overlaps with IPv4 link local range 169.254.0.0/16"},
		{"cidr containing link local", "ippool.go:96 CEL (pool contains 169.254.0.0)",
			with(func(s *Spec) { s.CIDR = "169.0.0.0/8" }), "cidr", "IPPool CIDR overlaps with IPv4 link local range 169.254.0.0/16"},
		{"cidr next to link local", "ippool.go:96 CEL",
			with(func(s *Spec) { s.CIDR = "169.255.0.0/16" }), "", ""},
		{"loopback", "overlayd",
			with(func(s *Spec) { s.CIDR = "127.1.0.0/16" }), "cidr", "IPv4 loopback range 127.0.0.0/8"},
		{"multicast", "overlayd",
			with(func(s *Spec) { s.CIDR = "239.0.0.0/8" }), "cidr", "IPv4 multicast range 224.0.0.0/4"},
		{"IPv6 with IPIP", "ippool.go:89 CEL",
			with(func(s *Spec) { s.CIDR = "fd00::/48"; s.IPIPMode = "Always" }), "ipipMode", "IPIP is not supported on IPv6 pools"},
		{"IPv6 without IPIP", "overlayd (IPv4 only; Calico allows it)",
			with(func(s *Spec) { s.CIDR = "fd00::/48"; s.VXLANMode = "Always" }), "cidr", "IPv6 pools are not supported"},

		{"blockSize 0 means 26", "clientv3/ippool.go:403; ippool.go:98 CEL skips 0",
			with(func(s *Spec) { s.BlockSize = 0 }), "", ""},
		{"blockSize 19", "ippool.go:98 CEL",
			with(func(s *Spec) { s.BlockSize = 19 }), "blockSize", "blockSize must be between 20 and 32 for IPv4 pools, and between 116 and 128 for IPv6 pools"},
		{"blockSize 33", "ippool.go:98 CEL",
			with(func(s *Spec) { s.BlockSize = 33 }), "blockSize", "blockSize must be between 20 and 32 for IPv4 pools"},
		{"blockSize negative", "ippool.go:128 Minimum=0",
			with(func(s *Spec) { s.BlockSize = -1 }), "blockSize", "blockSize must be between 20 and 32"},
		{"blockSize 20", "ippool.go:98 CEL", with(func(s *Spec) { s.BlockSize = 20 }), "", ""},
		{"blockSize 32", "ippool.go:98 CEL", with(func(s *Spec) { s.BlockSize = 32 }), "", ""},
		{"enabled pool smaller than its block", "ippool.go:99 CEL",
			with(func(s *Spec) { s.CIDR = "192.168.0.0/27"; s.BlockSize = 26 }), "blockSize", "IP pool size is too small for use with Calico IPAM. It must be equal to or greater than the block size."},
		{"enabled pool smaller than the default block", "ippool.go:99 CEL (26 when blockSize is unset)",
			with(func(s *Spec) { s.CIDR = "192.168.0.0/28" }), "blockSize", "IP pool size is too small"},
		{"disabled pool smaller than its block", "ippool.go:99 CEL (disabled pools are exempt)",
			with(func(s *Spec) { s.CIDR = "192.168.0.0/27"; s.BlockSize = 26; s.Disabled = true }), "", ""},
		{"pool equal to its block", "ippool.go:99 CEL (prefixLength <= blockSize)",
			with(func(s *Spec) { s.CIDR = "192.168.0.0/26" }), "", ""},

		{"ipipMode Always", "ippool.go:191 Enum", with(func(s *Spec) { s.IPIPMode = "Always" }), "", ""},
		{"ipipMode CrossSubnet", "ippool.go:191 Enum", with(func(s *Spec) { s.IPIPMode = "CrossSubnet" }), "", ""},
		{"vxlanMode Never", "ippool.go:177 Enum", with(func(s *Spec) { s.VXLANMode = "Never" }), "", ""},
		{"modes are case-sensitive", "ippool.go:191 Enum; hint: overlayd",
			with(func(s *Spec) { s.IPIPMode = "always" }), "ipipMode", `did you mean "Always"`},
		{"unknown mode names the allowed values", "ippool.go:177 Enum",
			with(func(s *Spec) { s.VXLANMode = "Sometimes" }), "vxlanMode", `allowed values are "Never", "Always", "CrossSubnet"`},
		{"both encapsulations on", "ippool.go:86 CEL",
			with(func(s *Spec) { s.IPIPMode = "Always"; s.VXLANMode = "CrossSubnet" }), "vxlanMode", "ipipMode and vxlanMode cannot both be enabled"},
		{"one encapsulation on, the other Never", "ippool.go:86 CEL",
			with(func(s *Spec) { s.IPIPMode = "Never"; s.VXLANMode = "Always" }), "", ""},

		{"nodeSelector parses", "validator.go:453 validateSelector",
			with(func(s *Spec) { s.NodeSelector = "zone == 'a' && has(gpu)" }), "", ""},
		{"nodeSelector syntax error", "validator.go:453 validateSelector",
			with(func(s *Spec) { s.NodeSelector = "zone ==" }), "nodeSelector", "position"},
		{"global()", "ippool.go:93 CEL",
			with(func(s *Spec) { s.NodeSelector = "global()" }), "nodeSelector", "global() selector is not valid for IPPool nodeSelector"},
		{"global() negated", "ippool.go:93 CEL",
			with(func(s *Spec) { s.NodeSelector = "!global()" }), "nodeSelector", "global() selector is not valid"},
		{"global( inside a quoted value", "ippool.go:93 CEL (contains('global('): textual)",
			with(func(s *Spec) { s.NodeSelector = "zone == 'global('" }), "nodeSelector", "global() selector is not valid"},
		{"nodeSelector of 1024 characters", "ippool.go:135 MaxLength=1024",
			with(func(s *Spec) { s.NodeSelector = "all()" + strings.Repeat(" ", 1019) }), "", ""},
		{"nodeSelector of 1025 characters", "ippool.go:135 MaxLength=1024",
			with(func(s *Spec) { s.NodeSelector = "all()" + strings.Repeat(" ", 1020) }), "nodeSelector", "Too long: may not be more than 1024"},

		{"name missing", "validator.go:1250 validateObjectMeta",
			with(func(s *Spec) { s.Name = "" }), "name", "missing"},
		{"uppercase name", "validator.go:1250 validateObjectMeta",
			with(func(s *Spec) { s.Name = "Pool1" }), "name", "name must consist of lower case alphanumeric characters, '-' or '.'"},
		{"name of 253 bytes", "validator.go:1239 validateObjectMeta",
			with(func(s *Spec) { s.Name = strings.Repeat("a", 253) }), "", ""},
		{"name of 254 bytes", "validator.go:1239 validateObjectMeta",
			with(func(s *Spec) { s.Name = strings.Repeat("a", 254) }), "name", "name is too long by 1 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.spec)
			if tc.wantMsg == "" {
				if err != nil {
					t.Fatalf("want valid (%s), got %v", tc.calico, err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("want a *FieldError (%s), got %v", tc.calico, err)
			}
			if fe.Field != tc.wantField {
				t.Errorf("field = %q, want %q (%s)", fe.Field, tc.wantField, tc.calico)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not contain %q (%s)", err, tc.wantMsg, tc.calico)
			}
		})
	}
}

func TestCalicoPoolSetRules(t *testing.T) {
	mk := func(name, cidr string) *IPPool {
		p, err := New(Spec{Name: name, CIDR: cidr})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name    string
		calico  string
		pools   []*IPPool
		wantMsg string
	}{
		{"disjoint pools", "clientv3/ippool.go:469", []*IPPool{mk("a", "192.168.0.0/16"), mk("b", "10.1.0.0/16")}, ""},
		{"adjacent pools", "clientv3/ippool.go:469 (IsNetOverlap)", []*IPPool{mk("a", "10.0.0.0/16"), mk("b", "10.1.0.0/16")}, ""},
		{"overlap names both pools and the earlier CIDR", "clientv3/ippool.go:469",
			[]*IPPool{mk("a", "10.0.0.0/16"), mk("b", "10.0.128.0/17")}, "IPPool(b) CIDR overlaps with IPPool(a) CIDR 10.0.0.0/16"},
		{"a pool inside another", "clientv3/ippool.go:469",
			[]*IPPool{mk("a", "10.0.0.0/24"), mk("b", "10.0.0.0/8")}, "IPPool(b) CIDR overlaps with IPPool(a) CIDR 10.0.0.0/24"},
		{"duplicate names", "a name is the resource's key (model/resource.go)",
			[]*IPPool{mk("a", "10.0.0.0/16"), mk("a", "10.1.0.0/16")}, `duplicate pool name "a"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateSet(tc.pools)
			switch {
			case tc.wantMsg == "" && err != nil:
				t.Fatalf("want valid (%s), got %v", tc.calico, err)
			case tc.wantMsg != "" && (err == nil || !strings.Contains(err.Error(), tc.wantMsg)):
				t.Fatalf("error %v, want one containing %q (%s)", err, tc.wantMsg, tc.calico)
			}
		})
	}
}

// TestCalicoBlockRules checks the blocks a node lists against the way
// Calico's IPAM cuts pools into blocks.
func TestCalicoBlockRules(t *testing.T) {
	main := Spec{Name: "main", CIDR: "10.0.0.0/24"}
	zoneA := Spec{Name: "zone-a", CIDR: "10.1.0.0/24", NodeSelector: "zone == 'a'"}
	smallOld := Spec{Name: "small-old", CIDR: "10.2.0.0/27", BlockSize: 26, Disabled: true}
	oldZoneA := Spec{Name: "old-zone-a", CIDR: "10.3.0.0/24", NodeSelector: "zone == 'a'", Disabled: true}
	tests := []struct {
		name    string
		calico  string
		pools   []Spec
		block   string
		wantMsg string // substring; empty: accepted
	}{
		{"a block of the pool", "ipam_block_reader_writer.go:584 blockGenerator",
			[]Spec{main}, "10.0.0.64/26", ""},
		{"the pool's last block", "ipam_block_reader_writer.go:584 blockGenerator",
			[]Spec{main}, "10.0.0.192/26", ""},
		{"a block not aligned to its size", "ipam_block.go:546 getBlockCIDRForAddress (masks to blockSize)",
			[]Spec{main}, "10.0.0.65/26", "not strictly masked (did you mean 10.0.0.64/26?)"},
		{"a block smaller than the pool's blocks", "clientv3/ippool.go:103 Create (blockSize conflict)",
			[]Spec{main}, "10.0.0.64/27", `is not a block of pool "main" (10.0.0.0/24 is cut into /26 blocks)`},
		{"a block larger than the pool's blocks", "clientv3/ippool.go:103 Create (blockSize conflict)",
			[]Spec{main}, "10.0.0.0/25", "is not a block of pool"},
		{"a block larger than the whole pool", "ipam_block_reader_writer.go:584 blockGenerator (blocks lie inside the pool)",
			[]Spec{main}, "10.0.0.0/23", "is not a block of pool"},
		{"a block of a disabled pool smaller than its block size", "ippool.go:99 CEL lets the pool be; blockGenerator gives it no block",
			[]Spec{main, smallOld}, "10.2.0.0/26", `10.2.0.0/26 is not a block of pool "small-old": it does not lie wholly inside 10.2.0.0/27`},
		{"a block outside every pool", "ipam_block_reader_writer.go:559 getPoolForIP finds no pool",
			[]Spec{main}, "10.9.0.0/26", "lies in no pool"},
		{"a block of a pool that does not select the node", "overlayd: differs from ipam.go:2347, which keeps non-empty blocks",
			[]Spec{main, zoneA}, "10.1.0.0/26", `whose nodeSelector zone == "a" does not select this node`},
		{"a block of a disabled pool that does not select the node", "ipam.go:263 determinePools: disabled stops new blocks only",
			[]Spec{main, oldZoneA}, "10.3.0.0/26", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var pools []*IPPool
			for _, s := range tc.pools {
				pools = append(pools, mustPool(t, s))
			}
			_, err := Allocate(pools, []NodeRequest{{Name: "n", Blocks: []netip.Prefix{netip.MustParsePrefix(tc.block)}}})
			if tc.wantMsg == "" {
				if err != nil {
					t.Fatalf("want accepted (%s), got %v", tc.calico, err)
				}
				return
			}
			var be *BlockError
			if !errors.As(err, &be) || be.Index != 0 {
				t.Fatalf("want a *BlockError for listed block 0 (%s), got %v", tc.calico, err)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not contain %q (%s)", err, tc.wantMsg, tc.calico)
			}
		})
	}
}

// TestHasBlock is the containment rule on its own, since datastore code
// asks it of blocks read from etcd too.
func TestHasBlock(t *testing.T) {
	p := &IPPool{CIDR: netip.MustParsePrefix("10.2.0.0/27"), BlockSize: 26}
	q := &IPPool{CIDR: netip.MustParsePrefix("10.0.0.0/24"), BlockSize: 26}
	tests := []struct {
		name  string
		pool  *IPPool
		block string
		want  bool
	}{
		{"a block inside", q, "10.0.0.128/26", true},
		{"wrong size", q, "10.0.0.128/27", false},
		{"outside", q, "10.0.1.0/26", false},
		{"first address inside, block larger than the pool", p, "10.2.0.0/26", false},
		{"not masked", q, "10.0.0.129/26", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.pool.HasBlock(netip.MustParsePrefix(tc.block)); got != tc.want {
				t.Errorf("HasBlock(%s) of %s/%d = %v, want %v", tc.block, tc.pool.CIDR, tc.pool.BlockSize, got, tc.want)
			}
		})
	}
}
