// Package kernel is overlayd's effects layer: it makes the kernel of the
// node's network namespace match the kernel part of a plan (plan.Kernel:
// the TUN link, its sysctls, routes in the main and NAT tables, policy
// rules), over netlink and /proc/sys, by difference. Every route and rule
// it adds carries protocol plan.RouteProtocol, so it tells its own from
// everyone else's, removes stale ones left by a crashed run, and on reload
// changes only what differs. Apply says what it changed in one Changes
// value, whatever the object.
package kernel

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/overlayd/overlayd/plan"
)

// Handle programs the network namespace it was opened in (a netlink handle
// keeps its namespace, whatever thread uses it later; /proc/sys is the
// opening thread's, so Apply's sysctls are written from the caller's).
type Handle struct {
	h *netlink.Handle
}

// Open opens a netlink handle in the calling thread's network namespace.
func Open() (*Handle, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("opening a netlink socket: %w", err)
	}
	return &Handle{h: h}, nil
}

// Close releases the netlink handle; what it programmed stays.
func (k *Handle) Close() { k.h.Close() }

// Object is the kind of kernel state a change is about.
type Object string

// The objects Apply changes.
const (
	ObjectLink   Object = "link"
	ObjectSysctl Object = "sysctl"
	ObjectRoute  Object = "route"
	ObjectRule   Object = "rule"
)

// Op is what happened to an object.
type Op string

// The operations.
const (
	OpAdded    Op = "added"
	OpReplaced Op = "replaced"
	OpRemoved  Op = "removed"
	OpSet      Op = "set"
)

// Change is one thing Apply did, rendered as a person would type it (the
// `ip route` arguments of a route, `key=value` of a sysctl).
type Change struct {
	Object Object `json:"object"`
	Op     Op     `json:"op"`
	What   string `json:"what"`
}

func (c Change) String() string { return fmt.Sprintf("%s %s: %s", c.Object, c.Op, c.What) }

// Changes is what an Apply or Clear did, in the order it did it.
type Changes []Change

// Count counts the changes of one object and operation.
func (cs Changes) Count(o Object, op Op) int {
	n := 0
	for _, c := range cs {
		if c.Object == o && c.Op == op {
			n++
		}
	}
	return n
}

// Apply makes the kernel what k says: the link's MTU, address and state,
// the sysctls, the routes and the rules; what overlayd owns and k does not
// want is removed. A steering rule is never in place without its
// exemptions or its NAT table route: stale rules go first, missing ones
// come last. It carries on past a failure and returns every failure
// joined, so one bad route does not leave the rest unprogrammed.
func (k *Handle) Apply(want plan.Kernel) (Changes, error) {
	var (
		ch   Changes
		errs []error
	)
	collect := func(c Changes, err error) {
		ch = append(ch, c...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	collect(k.applyLink(want.Link))
	collect(applySysctls(want.Sysctls))
	have, err := k.removeStaleRules(want.Rules)
	collect(have.removed, err)
	collect(k.reconcileRoutes(want.Routes))
	collect(k.addRules(want.Rules, have.kept))
	return ch, errors.Join(errs...)
}

// Clear removes every route and rule overlayd owns (what it does on exit);
// the link and sysctls go with the TUN device.
func (k *Handle) Clear() (Changes, error) {
	have, err := k.removeStaleRules(nil)
	ch, rerr := k.reconcileRoutes(nil)
	return append(have.removed, ch...), errors.Join(err, rerr)
}

func permHint(err error) error {
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("%w: this needs CAP_NET_ADMIN in the node's network namespace", err)
	}
	return err
}
