// Package encap is the per-packet core of overlayd's data path: IP-in-IP and
// VXLAN encapsulation and decapsulation done in place, the ICMP and ARP
// answers a router owes its peers, and the checksums they need.
//
// Every buffer follows one convention (see [Headroom]): the packet starts
// Headroom bytes into its buffer, so encapsulation writes the outer headers in
// front of it without moving a byte and decapsulation is a re-slice. Headers
// are read and written through gVisor's header views ([]byte types with
// accessors) and [VXLAN], written here in the same style; nothing on the
// per-packet path allocates.
//
// Decapsulation trusts nothing: every packet that is not accepted is given a
// [DropReason] the caller counts.
package encap
