// Package calico holds Calico's etcdv3 datastore layout: the keys and the JSON
// values that calicoctl, calico-node and Felix write, so that overlayd can read
// and write the same objects. It does no I/O: the etcd client, block claims
// and the watch are built on top of it.
//
// Where each fact comes from (github.com/projectcalico/calico):
//
//   - Resource keys /calico/resources/v3/projectcalico.org/<plural>/<name>:
//     libcalico-go/lib/backend/model/resource.go (ResourceKey.defaultDeletePath).
//   - Block keys and AllocationBlock: libcalico-go/lib/backend/model/block.go;
//     how a block is created, assigned from and released:
//     libcalico-go/lib/ipam/ipam_block.go (newBlock, autoAssign,
//     findOrAddAttribute, release, garbageCollect) and
//     lib/ipam/ipam_block_reader_writer.go (claimAffineBlock sets
//     affinity and affinity_claim_time; updateBlock increments sequenceNumber).
//   - Affinity keys and BlockAffinity: libcalico-go/lib/backend/model/block_affinity.go
//     (an empty value reads as {}).
//   - Handle keys and IPAMHandle: libcalico-go/lib/backend/model/ipam_handle.go;
//     counting: libcalico-go/lib/ipam/ipam_handle.go (incrementBlock, decrementBlock).
//   - Liveness key and StatusReport: libcalico-go/lib/backend/model/statusreports.go;
//     the timestamp format: felix/dataplane/linux/int_dataplane.go.
//   - Values are plain encoding/json of those structs
//     (libcalico-go/lib/backend/model/keys.go SerializeValue, parseJSONPointer);
//     a resource is stored without resourceVersion and selfLink, with kind and
//     apiVersion set, and gets uid and creationTimestamp on create
//     (libcalico-go/lib/clientv3/resources.go: Create, resourceToKVPair).
//   - IPPool: api/pkg/apis/projectcalico/v3/ippool.go; the defaults calicoctl
//     stores: libcalico-go/lib/clientv3/ippool.go (validateAndSetDefaults).
//   - Node: libcalico-go/lib/apis/internalapi/node.go (the v3 Node now lives
//     there); tunnel addresses and their handles:
//     node/pkg/allocateip/allocateip.go (generateHandleAndAttributes,
//     updateNodeWithAddress); the VTEP MAC fallback: felix/calc/vxlan_resolver.go
//     (vtepMACForHost, shared with config.VTEPMACFor).
//   - ObjectMeta and timestamps: k8s.io/apimachinery pkg/apis/meta/v1
//     (types.go, time.go: RFC 3339 in UTC, whole seconds).
//
// Objects keep the JSON members this package does not model in an Extra map,
// so a read-modify-write of an object Calico wrote keeps Calico's fields.
package calico
