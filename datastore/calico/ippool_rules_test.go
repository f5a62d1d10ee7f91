package calico

import (
	"errors"
	"strings"
	"testing"

	"github.com/overlayd/overlayd/pool"
)

// TestCalicoRulesOnUnusedMembers checks Calico's rules on the IPPool
// members overlayd carries but does not use. Sources are in
// projectcalico/calico at 87c15906: "CEL :N" is an XValidation rule above
// IPPoolSpec in api/pkg/apis/projectcalico/v3/ippool.go, line N. The
// members overlayd uses are checked by pool.New (pool/calico_rules_test.go).
func TestCalicoRulesOnUnusedMembers(t *testing.T) {
	tests := []struct {
		name      string
		calico    string
		spec      string // members besides cidr
		wantField string
		wantMsg   string // empty: valid
	}{
		{"no allowedUses means Workload and Tunnel", "clientv3/ippool.go validateAndSetDefaults",
			``, "", ""},
		{"as calicoctl writes it", "clientv3/ippool.go validateAndSetDefaults",
			`"allowedUses":["Workload","Tunnel"],"assignmentMode":"Automatic","nodeSelector":"all()"`, "", ""},
		{"an unknown use", "validator.go:1003 validateIPPoolSpec",
			`"allowedUses":["Workload","Pods"]`, "allowedUses", "unknown use: Pods"},
		{"a use twice", "ippool.go:146 listType=set",
			`"allowedUses":["Workload","Workload"]`, "allowedUses", `Duplicate value: "Workload"`},
		{"eleven uses", "ippool.go:145 MaxItems=10",
			`"allowedUses":["Workload","Workload","Workload","Workload","Workload","Workload","Workload","Workload","Workload","Workload","Workload"]`,
			"allowedUses", "Too many: 11: must have at most 10 items"},
		{"a load balancer pool", "CEL :87, :88, :90, :91",
			`"allowedUses":["LoadBalancer"],"assignmentMode":"Manual"`, "", ""},
		{"a load balancer pool with VXLAN", "CEL :87",
			`"allowedUses":["LoadBalancer"],"vxlanMode":"Always"`, "allowedUses", "LoadBalancer IP pool cannot have IPIP or VXLAN enabled"},
		{"a load balancer pool with IPIP Never", "CEL :87",
			`"allowedUses":["LoadBalancer"],"ipipMode":"Never"`, "", ""},
		{"load balancer and workloads", "CEL :88",
			`"allowedUses":["LoadBalancer","Workload"]`, "allowedUses", "LoadBalancer cannot be combined with Workload or Tunnel allowed uses"},
		{"a load balancer pool without BGP export", "CEL :90",
			`"allowedUses":["LoadBalancer"],"disableBGPExport":true`, "disableBGPExport", "LoadBalancer IP pools cannot disable BGP export"},
		{"a load balancer pool for some nodes", "CEL :91",
			`"allowedUses":["LoadBalancer"],"nodeSelector":"zone == 'a'"`, "nodeSelector", "IP Pool with AllowedUse LoadBalancer must have nodeSelector set to all()"},
		{"a namespaceSelector on a workload pool", "CEL :92",
			`"allowedUses":["Workload"],"namespaceSelector":"team == 'a'"`, "", ""},
		{"a namespaceSelector on a tunnel pool", "CEL :92",
			`"allowedUses":["Tunnel"],"namespaceSelector":"team == 'a'"`, "namespaceSelector", "IP Pool with AllowedUse Tunnel cannot have namespaceSelector"},
		{"a namespaceSelector with allowedUses defaulted", "CEL :92 after clientv3 defaults allowedUses",
			`"namespaceSelector":"team == 'a'"`, "namespaceSelector", "cannot have namespaceSelector"},
		{"a namespaceSelector that does not parse", "validator.go:453 validateSelector",
			`"allowedUses":["Workload"],"namespaceSelector":"team =="`, "namespaceSelector", "position"},
		{"global() in a namespaceSelector", "CEL :94",
			`"allowedUses":["Workload"],"namespaceSelector":"global()"`, "namespaceSelector", "global() selector is not valid for IPPool namespaceSelector"},
		{"a namespaceSelector of 1025 characters", "ippool.go:140 MaxLength=1024",
			`"allowedUses":["Workload"],"namespaceSelector":"all()` + strings.Repeat(" ", 1020) + `"`, "namespaceSelector", "Too long: may not be more than 1024"},
		{"assignmentMode Manual", "ippool.go:210 Enum",
			`"assignmentMode":"Manual"`, "", ""},
		{"an unknown assignmentMode", "ippool.go:210 Enum",
			`"assignmentMode":"Sometimes"`, "assignmentMode", `Unsupported value: "Sometimes": supported values: "Automatic", "Manual"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			members := `"cidr":"10.0.0.0/16"`
			if tt.spec != "" {
				members += "," + tt.spec
			}
			p, err := DecodeIPPool([]byte(`{"kind":"IPPool","metadata":{"name":"p"},"spec":{` + members + `}}`))
			if err != nil {
				t.Fatal(err)
			}
			_, err = p.Pool()
			if tt.wantMsg == "" {
				if err != nil {
					t.Fatalf("want valid (%s), got %v", tt.calico, err)
				}
				return
			}
			var fe *pool.FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("want a *pool.FieldError (%s), got %v", tt.calico, err)
			}
			if fe.Field != tt.wantField || !strings.Contains(fe.Msg, tt.wantMsg) {
				t.Errorf("error %q (field %q), want field %q and %q (%s)", err, fe.Field, tt.wantField, tt.wantMsg, tt.calico)
			}
		})
	}
}
