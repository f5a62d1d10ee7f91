package conn

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// SourceFilter is a transport that can have the kernel drop what no peer
// sent before it reaches the socket's queue. A forged packet then costs no
// wake-up, no receive call and no copy; the userspace checks stay, as the
// filter is only ever as new as the last plan. The kernel counts what the
// filter drops in the socket's drops (SocketDrops), so nothing is dropped
// unseen.
//
// Only VXLAN's UDP socket has one: a raw socket's filter drops without
// counting (Linux's sock_queue_rcv_skb_reason), so IP-in-IP keeps its
// check in userspace, where every forged packet is counted.
type SourceFilter interface {
	DropCounter
	// FilterSources lets through only datagrams whose outer source is
	// one of peers and whose VNI is vni. Calling it again replaces the
	// filter atomically. With more peers than a classic BPF program
	// holds, only the VNI is checked (filtered is then false).
	FilterSources(peers []netip.Addr, vni uint32) (filtered bool, err error)
}

// DropCounter is a transport that reports what the kernel dropped at its
// sockets.
type DropCounter interface {
	// SocketDrops is how many packets the kernel dropped at the
	// transport's sockets: refused by a filter, or with no room left in
	// the receive buffer. The kernel keeps one count for both.
	SocketDrops() (uint64, error)
}

var (
	_ SourceFilter = (*UDPConn)(nil)
	_ DropCounter  = (*IPIPConn)(nil)
)

// maxFilterPeers is the most peers a filter lists: two instructions each,
// within classic BPF's 4096 (BPF_MAXINSNS) with room for the rest.
const maxFilterPeers = 2000

// outerSourceOff is where a filter loads the outer IPv4 source from:
// SKF_NET_OFF (-0x100000, as the kernel's unsigned offset) plus 12 reads
// the network header's bytes 12..15 wherever the socket's data starts.
const outerSourceOff = 1<<32 - 0x100000 + 12

// vxlanVNIWord is the offset, from the UDP header where a UDP socket's
// filter starts, of the VXLAN header's second word: VNI << 8 | reserved.
const vxlanVNIWord = 8 + 4

// refuseAll has the kernel refuse every packet to a socket that only
// sends, which would otherwise queue, unread, whatever reaches its port.
func refuseAll(c *batchConn) error {
	return attachFilter(c, []bpf.Instruction{bpf.RetConstant{Val: 0}})
}

// vxlanProgram is the VXLAN socket's filter: the VNI, then, withSources,
// the outer source. A datagram too short to hold a VXLAN header fails the
// load and is dropped.
func vxlanProgram(peers []netip.Addr, vni uint32, withSources bool) []bpf.Instruction {
	prog := []bpf.Instruction{
		bpf.LoadAbsolute{Off: vxlanVNIWord, Size: 4},
		bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0xffffff00},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: vni << 8, SkipTrue: 1},
		bpf.RetConstant{Val: 0},
	}
	if !withSources {
		return append(prog, bpf.RetConstant{Val: 0xffffffff})
	}
	prog = append(prog, bpf.LoadAbsolute{Off: outerSourceOff, Size: 4})
	for _, p := range peers {
		// A match falls through to the accept after it; a miss skips it.
		prog = append(prog,
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: binary.BigEndian.Uint32(p.AsSlice()), SkipTrue: 0, SkipFalse: 1},
			bpf.RetConstant{Val: 0xffffffff})
	}
	return append(prog, bpf.RetConstant{Val: 0})
}

// attachFilter replaces the socket's filter with prog.
func attachFilter(c *batchConn, prog []bpf.Instruction) error {
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return fmt.Errorf("assembling the socket filter: %w", err)
	}
	insns := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		insns[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	fprog := unix.SockFprog{Len: uint16(len(insns)), Filter: &insns[0]}
	var optErr error
	err = c.rc.Control(func(fd uintptr) {
		optErr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog)
	})
	if err = errors.Join(err, optErr); err != nil {
		return fmt.Errorf("attaching the socket filter: %w", err)
	}
	return nil
}

// skMeminfoDrops is SK_MEMINFO_DROPS, the index of the drop count in what
// SO_MEMINFO returns (Linux 4.7 and later), and skMeminfoVars its length.
const (
	skMeminfoDrops = 8
	skMeminfoVars  = 9
)

// socketDrops reads the socket's drop count (sk_drops).
func socketDrops(c *batchConn) (uint64, error) {
	var info [skMeminfoVars]uint32
	var errno unix.Errno
	err := c.rc.Control(func(fd uintptr) {
		size := uint32(unsafe.Sizeof(info))
		_, _, errno = unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_MEMINFO,
			uintptr(unsafe.Pointer(&info[0])), uintptr(unsafe.Pointer(&size)), 0)
	})
	if err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, fmt.Errorf("SO_MEMINFO: %w", errno)
	}
	return uint64(info[skMeminfoDrops]), nil
}

// FilterSources implements SourceFilter on the listening socket.
func (c *UDPConn) FilterSources(peers []netip.Addr, vni uint32) (bool, error) {
	withSources := len(peers) <= maxFilterPeers
	return withSources, attachFilter(c.batchConn, vxlanProgram(peers, vni, withSources))
}

// SocketDrops implements DropCounter, over the listening socket and the
// ones that only send (which refuse everything).
func (c *UDPConn) SocketDrops() (uint64, error) {
	var sum uint64
	for _, bc := range c.sockets() {
		n, err := socketDrops(bc)
		if err != nil {
			return sum, err
		}
		sum += n
	}
	return sum, nil
}

// sockets are the listening socket and the senders.
func (c *UDPConn) sockets() []*batchConn {
	all := []*batchConn{c.batchConn, c.frag.batchConn}
	for _, s := range c.senders {
		all = append(all, s.batchConn)
	}
	return all
}

// SocketDrops implements DropCounter.
func (c *IPIPConn) SocketDrops() (uint64, error) { return socketDrops(c.batchConn) }
