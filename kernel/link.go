package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ConfigureLink sets a device's MTU, gives it addr as a /32 (none when addr
// is invalid) and brings it up. It is idempotent, so a restart or a reload
// applies it again safely.
func (k *Routes) ConfigureLink(name string, mtu int, addr netip.Addr) error {
	link, err := k.h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("device %q: %w", name, err)
	}
	if link.Attrs().MTU != mtu {
		if err := k.h.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("setting MTU %d on %s: %w", mtu, name, permHint(err))
		}
	}
	if addr.IsValid() {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(addr.AsSlice()), Mask: net.CIDRMask(32, 32)}}
		if err := k.h.AddrReplace(link, a); err != nil {
			return fmt.Errorf("adding %s/32 to %s: %w", addr, name, permHint(err))
		}
	}
	if err := k.h.LinkSetUp(link); err != nil {
		return fmt.Errorf("bringing %s up: %w", name, permHint(err))
	}
	return nil
}

// InterfaceOf returns the name and MTU of the device that holds addr: the
// node's underlay interface.
func (k *Routes) InterfaceOf(addr netip.Addr) (string, int, error) {
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

func permHint(err error) error {
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("%w: this needs CAP_NET_ADMIN in the node's network namespace", err)
	}
	return err
}
