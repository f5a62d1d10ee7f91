package cni

import (
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// What Calico's plugin sets on both sides of a workload's veth
// (cni-plugin/pkg/dataplane/linux/dataplane_linux.go).
var (
	// HostMAC is the host side's MAC: every workload sees the same gateway
	// MAC, so a workload moved between nodes keeps a valid neighbour entry.
	HostMAC = net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee}
	// Gateway is the workload's next hop: no node has it; the node answers
	// ARP for it by proxy ARP on the veth.
	Gateway = netip.MustParseAddr("169.254.1.1")
)

// RouteProtocol marks the /32 routes overlayd-cni adds on the node:
// overlayd's own sweep removes only its protocol (211), so a restarted
// overlayd leaves these alone, and `ip route show proto 212` lists them.
const RouteProtocol netlink.RouteProtocol = 212

// HostVeth is the host side's name of the veth of attachment (containerID,
// ifname): "ovl" and the first 12 hex digits of a SHA-1 of both, 15
// characters, the longest a Linux interface name may be. Deterministic, so
// DEL and GC find it without state.
func HostVeth(containerID, ifname string) string {
	sum := sha1.Sum([]byte(containerID + "." + ifname))
	return "ovl" + hex.EncodeToString(sum[:])[:12]
}

// hostSysctls are what Calico sets on the host side of a workload's veth:
// proxy ARP answers for 169.254.1.1 at once (proxy_delay 0 rather than up
// to 0.8 s), and the node forwards for it.
func hostSysctls(veth string) [][2]string {
	return [][2]string{
		{"net/ipv4/conf/" + veth + "/proxy_arp", "1"},
		{"net/ipv4/neigh/" + veth + "/proxy_delay", "0"},
		{"net/ipv4/conf/" + veth + "/forwarding", "1"},
	}
}

func writeSysctl(key, value string) error {
	if err := os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
	}
	return nil
}

// wiring is one attachment's links, as ADD made them.
type wiring struct {
	crash         func(point string)
	hostVeth      string
	hostMAC       net.HardwareAddr
	contIface     string
	contMAC       net.HardwareAddr
	addr          netip.Addr
	mtu           int
	netnsPath     string
	hostLinkIndex int
}

// wire makes the veth from the container's namespace, addresses it there,
// and finishes the host side. cmdAdd has checked, before allocating, that
// the container has no interface of that name. On error the caller removes the host veth
// (which takes its peer with it).
func wire(w *wiring) error {
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return fmt.Errorf("the node's network namespace: %w", err)
	}
	defer hostNS.Close()
	err = ns.WithNetNSPath(w.netnsPath, func(ns.NetNS) error {
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.MTU = w.contIface, w.mtu
		veth := &netlink.Veth{LinkAttrs: attrs, PeerName: w.hostVeth, PeerHardwareAddr: HostMAC,
			PeerNamespace: netlink.NsFd(int(hostNS.Fd()))}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("making veth %s (node side %s): %w", w.contIface, w.hostVeth, err)
		}
		w.crash(CrashVethMade)
		cont, err := netlink.LinkByName(w.contIface)
		if err != nil {
			return fmt.Errorf("finding %s: %w", w.contIface, err)
		}
		w.contMAC = cont.Attrs().HardwareAddr
		if err := netlink.AddrAdd(cont, &netlink.Addr{IPNet: ptr(hostNet(w.addr))}); err != nil {
			return fmt.Errorf("adding %v/32 to %s: %w", w.addr, w.contIface, err)
		}
		if err := netlink.LinkSetUp(cont); err != nil {
			return fmt.Errorf("bringing %s up: %w", w.contIface, err)
		}
		gw := hostNet(Gateway)
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: cont.Attrs().Index, Dst: &gw, Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("route to the gateway %v: %w", Gateway, err)
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: cont.Attrs().Index, Gw: Gateway.AsSlice()}); err != nil {
			return fmt.Errorf("default route via %v: %w", Gateway, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	host, err := netlink.LinkByName(w.hostVeth)
	if err != nil {
		return fmt.Errorf("finding the node side %s: %w", w.hostVeth, err)
	}
	w.hostMAC, w.hostLinkIndex = host.Attrs().HardwareAddr, host.Attrs().Index
	for _, kv := range hostSysctls(w.hostVeth) {
		if err := writeSysctl(kv[0], kv[1]); err != nil {
			return err
		}
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return fmt.Errorf("bringing %s up: %w", w.hostVeth, err)
	}
	dst := hostNet(w.addr)
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: w.hostLinkIndex, Dst: &dst, Scope: netlink.SCOPE_LINK, Protocol: RouteProtocol}); err != nil {
		return fmt.Errorf("route to %v via %s: %w", w.addr, w.hostVeth, err)
	}
	w.crash(CrashRouted)
	return nil
}

// unwire removes an attachment's links: the container's interface when its
// namespace still exists, and the host veth (with its route). Whatever is
// already gone is not an error.
func unwire(netnsPath, contIface, hostVeth string) error {
	var errs []error
	if netnsPath != "" {
		err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
			l, err := netlink.LinkByName(contIface)
			if err != nil {
				return nil
			}
			if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
				return fmt.Errorf("deleting %s in the container: %w", contIface, err)
			}
			return nil
		})
		var gone ns.NSPathNotExistErr
		if err != nil && !errors.As(err, &gone) {
			errs = append(errs, err)
		}
	}
	if err := deleteLink(hostVeth); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// deleteLink deletes a node-side link; a missing one is not an error.
func deleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return nil
		}
		return fmt.Errorf("finding %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("deleting %s: %w", name, err)
	}
	return nil
}

func ptr[T any](v T) *T { return &v }
