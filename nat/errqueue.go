package nat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// icmpReport is an ICMP error the kernel matched to one of our host
// sockets and queued on its error queue (IP_RECVERR).
type icmpReport struct {
	typ, code uint8
	// info is the next-hop MTU for "fragmentation needed".
	info uint32
	// offender is who sent the ICMP error: the destination itself or a
	// router on the way.
	offender netip.Addr
	// payload is the start of what we had sent (UDP: the datagram's
	// payload; ping socket: the echo request).
	payload []byte
}

// setRecvErr asks the kernel to queue the ICMP errors it matches to the
// socket, with their type, code and sender, instead of only setting a bare
// errno (and, for an unconnected UDP socket, not even that).
func setRecvErr(fd int) error {
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_RECVERR, 1); err != nil {
		return fmt.Errorf("IP_RECVERR: %w", err)
	}
	return nil
}

// readErrQueue takes every report waiting on the socket's error queue; it
// never waits. Reports of local errors (not ICMP) are skipped.
func readErrQueue(c syscall.Conn) ([]icmpReport, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var reports []icmpReport
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		reports, rerr = readErrQueueFD(int(fd))
		return true // done either way: never wait for more
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return reports, fmt.Errorf("reading the error queue: %w", err)
	}
	return reports, nil
}

// readErrQueueFD is readErrQueue on a bare descriptor, for a socket the
// standard library has already given up (a failed connect closes its own).
func readErrQueueFD(fd int) ([]icmpReport, error) {
	var reports []icmpReport
	buf := make([]byte, 576)
	oob := make([]byte, unix.CmsgSpace(int(unsafe.Sizeof(unix.SockExtendedErr{}))+unix.SizeofSockaddrInet4))
	for {
		n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) {
				return reports, nil
			}
			return reports, err
		}
		if r, ok := parseRecvErr(oob[:oobn]); ok {
			r.payload = append([]byte(nil), buf[:n]...)
			reports = append(reports, r)
		}
	}
}

// parseRecvErr decodes the IP_RECVERR control message: a struct
// sock_extended_err and, after it, the offender's sockaddr_in.
func parseRecvErr(oob []byte) (icmpReport, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return icmpReport{}, false
	}
	const eeSize = int(unsafe.Sizeof(unix.SockExtendedErr{}))
	for _, m := range msgs {
		if m.Header.Level != unix.IPPROTO_IP || m.Header.Type != unix.IP_RECVERR || len(m.Data) < eeSize {
			continue
		}
		// struct sock_extended_err: u32 errno, u8 origin, type, code, pad,
		// u32 info, u32 data, in host byte order.
		origin, typ, code := m.Data[4], m.Data[5], m.Data[6]
		if origin != unix.SO_EE_ORIGIN_ICMP {
			return icmpReport{}, false
		}
		r := icmpReport{typ: typ, code: code, info: binary.NativeEndian.Uint32(m.Data[8:12])}
		// sockaddr_in: family (host order), port, then the address.
		if sa := m.Data[eeSize:]; len(sa) >= 8 && binary.NativeEndian.Uint16(sa) == unix.AF_INET {
			r.offender = netip.AddrFrom4([4]byte(sa[4:8]))
		}
		return r, true
	}
	return icmpReport{}, false
}
