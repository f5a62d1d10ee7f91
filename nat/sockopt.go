package nat

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/overlayd/overlayd/encap"
)

// ipMarks are the IPv4 header fields a flow's host socket copies from the
// workload's packet, so the re-originated packet lives as long on the path
// (traceroute sees the hops beyond the node) and gets the same treatment.
type ipMarks struct {
	// ttl is the TTL the packet had when it reached the NAT: the node's
	// kernel already took its hop off when it routed the packet into the
	// TUN, and a locally sent packet is not decremented again. 0 means
	// unknown: the host's default.
	ttl uint8
	// tos is the workload's DSCP; the ECN bits are left to the host
	// socket, whose transport negotiates ECN for its own leg.
	tos uint8
}

func marksOf(ttl, tos uint8) ipMarks { return ipMarks{ttl: ttl, tos: tos &^ encap.ECNMask} }

// set applies the marks to a socket; an unknown TTL leaves the socket's.
// The TOS is set even when 0: an echo flow's socket may carry an earlier
// request's.
func (m ipMarks) set(fd int) error {
	if m.ttl != 0 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL, int(m.ttl)); err != nil {
			return fmt.Errorf("IP_TTL %d: %w", m.ttl, err)
		}
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TOS, int(m.tos)); err != nil {
		return fmt.Errorf("IP_TOS %#x: %w", m.tos, err)
	}
	return nil
}

// withFD runs fn on the socket's descriptor.
func withFD(c syscall.Conn, fn func(fd int) error) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// tcpAlive says whether a host TCP socket still has a connection: an ICMP
// error reported through IP_RECVERR leaves it established, a timeout or a
// reset closes it.
func tcpAlive(c syscall.Conn) bool {
	alive := false
	_ = withFD(c, func(fd int) error {
		info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return err
		}
		alive = info.State != tcpStateClose
		return nil
	})
	return alive
}

// tcpStateClose is Linux's TCP_CLOSE, the state of a socket whose
// connection has ended.
const tcpStateClose = 7
