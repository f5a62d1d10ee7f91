package calico

import (
	"fmt"
	"maps"
	"time"
)

// The TypeMeta Calico stores on every v3 resource (clientv3/resources.go
// resourceToKVPair; api/pkg/apis/projectcalico/v3: GroupVersionCurrent).
const (
	APIVersion     = "projectcalico.org/v3"
	KindNameIPPool = "IPPool"
	KindNameNode   = "Node"
)

// ObjectMeta is the part of Kubernetes' metav1.ObjectMeta that Calico fills
// for a v3 resource it creates; the rest (namespace, annotations' peers,
// ownerReferences, ...) stays in Extra. Member names and order are
// apimachinery's pkg/apis/meta/v1/types.go.
type ObjectMeta struct {
	Name string `json:"name,omitempty"`
	UID  string `json:"uid,omitempty"`
	// CreationTimestamp is RFC 3339 in UTC with whole seconds, as
	// metav1.Time writes it; kept as text so that it round-trips exactly.
	CreationTimestamp string            `json:"creationTimestamp,omitempty"`
	Labels            map[string]string `json:"labels,omitempty"`
	Annotations       map[string]string `json:"annotations,omitempty"`
	Extra             Extra             `json:"-"`
}

// Members Calico never stores: resourceToKVPair clears them before a write.
var notStored = []string{"resourceVersion", "selfLink"}

// UnmarshalJSON keeps the members ObjectMeta does not model in Extra.
func (m *ObjectMeta) UnmarshalJSON(data []byte) error {
	type fields ObjectMeta
	*m = ObjectMeta{}
	extra, err := decodeObject(data, (*fields)(m))
	m.Extra = extra
	return err
}

// MarshalJSON writes the modelled members, then Extra, leaving out
// resourceVersion and selfLink as Calico does.
func (m ObjectMeta) MarshalJSON() ([]byte, error) {
	type fields ObjectMeta
	extra := m.Extra
	for _, k := range notStored {
		if _, ok := extra[k]; ok {
			extra = maps.Clone(extra)
			delete(extra, k)
		}
	}
	return encodeObject(fields(m), extra)
}

// newMeta is the metadata Calico's clientv3 Create gives a new resource.
func newMeta(name, uid string, created time.Time) ObjectMeta {
	return ObjectMeta{Name: name, UID: uid, CreationTimestamp: Timestamp(created)}
}

// Timestamp formats t as metav1.Time and Felix's status reports do: RFC 3339,
// UTC, whole seconds.
func Timestamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// checkType checks a resource's kind and apiVersion. Calico's decoder ignores
// them; overlayd rejects a value whose kind contradicts its key but accepts
// one that leaves them out.
func checkType(kind, apiVersion, want string) error {
	if kind != "" && kind != want {
		return fmt.Errorf("kind is %q, not %q", kind, want)
	}
	if apiVersion != "" && apiVersion != APIVersion {
		return fmt.Errorf("apiVersion is %q, not %q", apiVersion, APIVersion)
	}
	return nil
}
