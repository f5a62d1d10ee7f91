package kernel

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/overlayd/overlayd/plan"
)

// applyLink sets the device's MTU, gives it the tunnel address as a /32
// (none when invalid) and brings it up, each only where it differs.
func (k *Handle) applyLink(want plan.Link) (Changes, error) {
	var ch Changes
	link, err := k.h.LinkByName(want.Device)
	if err != nil {
		return nil, fmt.Errorf("device %q: %w", want.Device, err)
	}
	if link.Attrs().MTU != want.MTU {
		if err := k.h.LinkSetMTU(link, want.MTU); err != nil {
			return ch, fmt.Errorf("setting MTU %d on %s: %w", want.MTU, want.Device, permHint(err))
		}
		ch = append(ch, Change{Object: ObjectLink, Op: OpSet, What: fmt.Sprintf("%s mtu %d", want.Device, want.MTU)})
	}
	if want.Addr.IsValid() {
		has, err := k.hasAddr(link, want.Addr)
		if err != nil {
			return ch, err
		}
		if !has {
			a := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(want.Addr.AsSlice()), Mask: net.CIDRMask(32, 32)}}
			if err := k.h.AddrReplace(link, a); err != nil {
				return ch, fmt.Errorf("adding %s/32 to %s: %w", want.Addr, want.Device, permHint(err))
			}
			ch = append(ch, Change{Object: ObjectLink, Op: OpAdded, What: fmt.Sprintf("%s address %s/32", want.Device, want.Addr)})
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := k.h.LinkSetUp(link); err != nil {
			return ch, fmt.Errorf("bringing %s up: %w", want.Device, permHint(err))
		}
		ch = append(ch, Change{Object: ObjectLink, Op: OpSet, What: want.Device + " up"})
	}
	return ch, nil
}

func (k *Handle) hasAddr(link netlink.Link, addr netip.Addr) (bool, error) {
	addrs, err := k.h.AddrList(link, unix.AF_INET)
	if err != nil {
		return false, fmt.Errorf("listing %s's addresses: %w", link.Attrs().Name, err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && ip == addr {
			ones, _ := a.Mask.Size()
			return ones == 32, nil
		}
	}
	return false, nil
}

// InterfaceOf returns the name and MTU of the device that holds addr: the
// node's underlay interface.
func (k *Handle) InterfaceOf(addr netip.Addr) (string, int, error) {
	addrs, err := k.h.AddrList(nil, unix.AF_INET)
	if err != nil {
		return "", 0, fmt.Errorf("listing addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && ip == addr {
			link, err := k.h.LinkByIndex(a.LinkIndex)
			if err != nil {
				return "", 0, fmt.Errorf("device of %s: %w", addr, err)
			}
			return link.Attrs().Name, link.Attrs().MTU, nil
		}
	}
	return "", 0, fmt.Errorf("no interface in this network namespace has the node address %s: is --node right, and is the underlay configured?", addr)
}
