package testbed

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Impairment is what an impaired link does to the IPv4 frames crossing it,
// in each direction on its own; other frames (ARP) cross untouched, so that
// neighbour resolution does not add its own retries to a test. Every
// decision comes from a random stream seeded by Seed: the same frames in
// the same order meet the same fate.
//
// The kernel here has no netem, and the statistic match can drop and TEE
// can copy but nothing in netfilter reorders; a relay in user space does
// all three, counts each, and sees every encapsulation and NAT alike.
type Impairment struct {
	Loss      float64 // probability a frame is dropped
	Duplicate float64 // probability a frame is sent twice
	Reorder   float64 // probability a frame is held back until ReorderGap later frames overtook it
	// ReorderGap is how many later frames overtake a held one; 0 means 2.
	ReorderGap int
	Seed       uint64
}

// holdTimeout bounds how long a held frame waits for others to overtake
// it: when traffic stops, it goes out late but not reordered.
const holdTimeout = 10 * time.Millisecond

func (imp Impairment) gap() int {
	if imp.ReorderGap > 0 {
		return imp.ReorderGap
	}
	return 2
}

func (imp Impairment) check() error {
	for _, p := range []float64{imp.Loss, imp.Duplicate, imp.Reorder} {
		if !(p >= 0 && p <= 1) { // NaN too
			return fmt.Errorf("impairment %+v: probabilities lie in [0, 1]", imp)
		}
	}
	if imp.ReorderGap < 0 {
		return fmt.Errorf("impairment %+v: negative reorder gap", imp)
	}
	return nil
}

// verdict is the fate of one frame.
type verdict struct{ drop, duplicate, hold bool }

// decider draws verdicts from one direction's random stream.
type decider struct {
	imp Impairment
	rng *rand.Rand
}

func newDecider(imp Impairment, direction uint64) *decider {
	return &decider{imp: imp, rng: rand.New(rand.NewPCG(imp.Seed, direction))}
}

// next draws the three numbers of a frame whatever the first says, so that
// a frame's fate depends on its place in the stream only.
func (d *decider) next() verdict {
	drop, dup, hold := d.rng.Float64(), d.rng.Float64(), d.rng.Float64()
	return verdict{drop: drop < d.imp.Loss, duplicate: dup < d.imp.Duplicate, hold: hold < d.imp.Reorder}
}

// ImpairStats count what one direction of an impaired link did.
type ImpairStats struct {
	Frames     uint64 // IPv4 frames that reached the relay
	Dropped    uint64 // of those, dropped
	Duplicated uint64 // sent twice
	Reordered  uint64 // held back and overtaken by at least one later frame
	Passed     uint64 // frames other than IPv4, sent on untouched
	SendErrors uint64 // frames the relay failed to send on (lost, not dropped by choice)
	Largest    int    // the largest frame seen, link header included
}

// Plus is the sum of two directions' counts.
func (s ImpairStats) Plus(o ImpairStats) ImpairStats {
	return ImpairStats{
		Frames: s.Frames + o.Frames, Dropped: s.Dropped + o.Dropped, Duplicated: s.Duplicated + o.Duplicated,
		Reordered: s.Reordered + o.Reordered, Passed: s.Passed + o.Passed, SendErrors: s.SendErrors + o.SendErrors,
		Largest: max(s.Largest, o.Largest),
	}
}

func (s ImpairStats) String() string {
	return fmt.Sprintf("%d IPv4 frames: %d dropped, %d duplicated, %d reordered; %d others passed, %d send errors, largest %d bytes",
		s.Frames, s.Dropped, s.Duplicated, s.Reordered, s.Passed, s.SendErrors, s.Largest)
}

// ImpairedLink is a link of the bed with a relay spliced into it.
type ImpairedLink struct {
	// Relay is the namespace the relay forwards in: its interface "near"
	// faces the host Impair was given, "far" the link's other end.
	Relay *Host
	// Peer and PeerIface are the link's other end.
	Peer      *Host
	PeerIface string

	dirs    [2]*relayDirection // toPeer, fromPeer
	sockets [2]*os.File        // near, far
	once    sync.Once
	done    sync.WaitGroup
}

// Stats returns the counts of each direction: frames from the host Impair
// was given toward the peer, and back.
func (l *ImpairedLink) Stats() (toPeer, fromPeer ImpairStats) {
	return l.dirs[0].stats(), l.dirs[1].stats()
}

// Stop ends the relay: the link carries nothing afterwards. The bed's Close
// stops every relay.
func (l *ImpairedLink) Stop() {
	l.once.Do(func() {
		// Closing wakes a read or write in progress.
		for _, s := range l.sockets {
			s.Close()
		}
		l.done.Wait()
	})
}

// Impair splices a relay with these impairments into the veth link that
// ends in iface of host h. The interface moves into a new relay namespace
// (named "impair-" with the host and interface) and h gets a fresh veth of
// the same name in its place, with the same MAC address, MTU, IPv4
// addresses and bridge; routes through it other than those of its
// addresses are not restored, so impair links before adding routes to
// them. Both ends that send into the relay checksum and segment in
// software, so the relay sees the frames the wire would carry and can
// forward them unchanged. The bed's Close stops the relay.
func (b *Bed) Impair(h *Host, iface string, imp Impairment) (*ImpairedLink, error) {
	l, err := b.impair(h, iface, imp)
	if err != nil {
		return nil, fmt.Errorf("testbed: impair %s:%s: %w", h, iface, err)
	}
	return l, nil
}

// ifaceState is what Impair carries over to the fresh interface.
type ifaceState struct {
	mac         net.HardwareAddr
	mtu         int
	master      string
	addrs       []netip.Prefix
	peerIndex   int
	peerNetnsID int
}

func (b *Bed) impair(h *Host, iface string, imp Impairment) (*ImpairedLink, error) {
	if err := imp.check(); err != nil {
		return nil, err
	}
	var st ifaceState
	if err := h.Do(func() (err error) { st, err = readIface(iface); return err }); err != nil {
		return nil, err
	}
	peer, err := b.hostByNetnsID(h, st.peerNetnsID)
	if err != nil {
		return nil, err
	}
	var peerIface string
	if err := peer.Do(func() error {
		link, err := netlink.LinkByIndex(st.peerIndex)
		if err != nil {
			return fmt.Errorf("peer interface %d: %w", st.peerIndex, err)
		}
		peerIface = link.Attrs().Name
		return nil
	}); err != nil {
		return nil, err
	}
	relay, err := b.AddHost("impair-" + h.Name + "-" + iface)
	if err != nil {
		return nil, err
	}
	steps := []func() error{
		func() error { return h.IP("link", "set", iface, "netns", relay.NS) },
		func() error { return relay.IP("link", "set", iface, "name", "far") },
		func() error { return relay.IP("link", "set", "far", "up") },
		func() error {
			return b.Link(Endpoint{Host: h, Iface: iface, Bridge: st.master, MTU: st.mtu}, Endpoint{Host: relay, Iface: "near", MTU: st.mtu})
		},
		func() error { return h.IP("link", "set", iface, "address", st.mac.String()) },
		func() error {
			for _, a := range st.addrs {
				if err := h.IP("addr", "add", a.String(), "dev", iface); err != nil {
					return err
				}
			}
			return nil
		},
		func() error { return softwareChecksums(h, iface) },
		func() error { return softwareChecksums(peer, peerIface) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, err
		}
	}
	l := &ImpairedLink{Relay: relay, Peer: peer, PeerIface: peerIface}
	var near, far *os.File
	err = relay.Do(func() (err error) {
		if near, err = openRelaySocket("near"); err != nil {
			return err
		}
		if far, err = openRelaySocket("far"); err != nil {
			near.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	l.sockets = [2]*os.File{near, far}
	l.dirs[0] = &relayDirection{from: near, to: far, decide: newDecider(imp, 0), gap: imp.gap()}
	l.dirs[1] = &relayDirection{from: far, to: near, decide: newDecider(imp, 1), gap: imp.gap()}
	if err := b.register(func() { b.relays = append(b.relays, l) }); err != nil {
		near.Close()
		far.Close()
		return nil, err
	}
	for _, d := range l.dirs {
		l.done.Go(d.run)
	}
	return l, nil
}

func readIface(name string) (ifaceState, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return ifaceState{}, err
	}
	if _, ok := link.(*netlink.Veth); !ok {
		return ifaceState{}, fmt.Errorf("a %s, not a veth", link.Type())
	}
	a := link.Attrs()
	st := ifaceState{mac: a.HardwareAddr, mtu: a.MTU, peerIndex: a.ParentIndex, peerNetnsID: a.NetNsID}
	if a.MasterIndex != 0 {
		master, err := netlink.LinkByIndex(a.MasterIndex)
		if err != nil {
			return ifaceState{}, fmt.Errorf("its master: %w", err)
		}
		st.master = master.Attrs().Name
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return ifaceState{}, fmt.Errorf("addresses: %w", err)
	}
	for _, ad := range addrs {
		ip, _ := netip.AddrFromSlice(ad.IP.To4())
		ones, _ := ad.Mask.Size()
		st.addrs = append(st.addrs, netip.PrefixFrom(ip, ones))
	}
	return st, nil
}

// hostByNetnsID finds the host of the bed whose namespace h knows by id
// (a veth's IFLA_LINK_NETNSID).
func (b *Bed) hostByNetnsID(h *Host, id int) (*Host, error) {
	b.mu.Lock()
	hosts := append([]*Host(nil), b.order...)
	b.mu.Unlock()
	var found *Host
	err := h.Do(func() error {
		for _, o := range hosts {
			o.mu.RLock()
			got, err := netlink.GetNetNsIdByFd(int(o.handle))
			o.mu.RUnlock()
			if err == nil && got == id && o != h {
				found = o
				return nil
			}
		}
		return fmt.Errorf("the veth's peer (namespace id %d) is in no host of the bed", id)
	})
	return found, err
}

// softwareChecksums turns off transmit checksum offload on a host's
// interface, and with it every segmentation offload (they need it): what
// it sends to the relay is then whole, checksummed frames of at most its
// MTU, as on a wire, rather than super-frames with partial checksums that
// the relay could not send on as they are.
func softwareChecksums(h *Host, iface string) error {
	return h.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("%s: socket for ethtool: %w", h, err)
		}
		defer unix.Close(fd)
		value := struct{ cmd, data uint32 }{cmd: unix.ETHTOOL_STXCSUM, data: 0}
		var req struct {
			name [unix.IFNAMSIZ]byte
			data unsafe.Pointer
			_    [16]byte // the rest of struct ifreq
		}
		copy(req.name[:], iface)
		req.data = unsafe.Pointer(&value)
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&req))); errno != 0 {
			return fmt.Errorf("%s: %s: turn off transmit checksum offload: %w", h, iface, errno)
		}
		return nil
	})
}

// openRelaySocket opens a non-blocking AF_PACKET socket on an interface of
// the calling thread's namespace, that sees what arrives on it but not
// what the relay itself sends, as a pollable file (Close wakes a Read).
func openRelaySocket(iface string) (*os.File, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return nil, fmt.Errorf("AF_PACKET socket: %w", err)
	}
	setup := []struct {
		what string
		do   func() error
	}{
		{"PACKET_IGNORE_OUTGOING", func() error {
			return unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1)
		}},
		{"SO_RCVBUFFORCE", func() error { return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20) }},
		{"bind", func() error {
			return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index})
		}},
	}
	for _, s := range setup {
		if err := s.do(); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("%s: %s: %w", iface, s.what, err)
		}
	}
	return os.NewFile(uintptr(fd), "relay-"+iface), nil
}

// relayDirection forwards the frames arriving on one interface of the
// relay out of the other.
type relayDirection struct {
	from, to *os.File
	decide   *decider
	gap      int

	frames, dropped, duplicated, reordered, passed, sendErrors atomic.Uint64
	largest                                                    atomic.Int64
}

func (d *relayDirection) stats() ImpairStats {
	return ImpairStats{
		Frames: d.frames.Load(), Dropped: d.dropped.Load(), Duplicated: d.duplicated.Load(),
		Reordered: d.reordered.Load(), Passed: d.passed.Load(), SendErrors: d.sendErrors.Load(),
		Largest: int(d.largest.Load()),
	}
}

// etherTypeIPv4 at etherTypeOffset of an Ethernet header marks IPv4.
const (
	etherTypeOffset = 12
	etherTypeIPv4   = 0x0800
)

func isIPv4(frame []byte) bool {
	return len(frame) > etherTypeOffset+1 && int(frame[etherTypeOffset])<<8|int(frame[etherTypeOffset+1]) == etherTypeIPv4
}

func (d *relayDirection) run() {
	buf := make([]byte, 1<<17)
	held := make([]byte, 0, len(buf))
	var (
		holding   bool
		heldDup   bool
		overtaken int
	)
	release := func() {
		d.send(held, heldDup)
		if overtaken > 0 {
			d.reordered.Add(1)
		}
		holding = false
		d.from.SetReadDeadline(time.Time{})
	}
	for {
		n, err := d.from.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if holding {
				release()
			}
			continue
		}
		if err != nil {
			return // closed by Stop
		}
		frame := buf[:n]
		if int64(n) > d.largest.Load() {
			d.largest.Store(int64(n))
		}
		if !isIPv4(frame) {
			d.passed.Add(1)
			d.send(frame, false)
			continue
		}
		d.frames.Add(1)
		v := d.decide.next()
		switch {
		case v.drop:
			d.dropped.Add(1)
		case v.hold && !holding:
			held, heldDup, holding, overtaken = append(held[:0], frame...), v.duplicate, true, 0
			d.from.SetReadDeadline(time.Now().Add(holdTimeout))
		default:
			d.send(frame, v.duplicate)
			if holding {
				if overtaken++; overtaken >= d.gap {
					release()
				}
			}
		}
	}
}

// send writes a frame out, twice if duplicate.
func (d *relayDirection) send(frame []byte, duplicate bool) {
	copies := 1
	if duplicate {
		copies = 2
		d.duplicated.Add(1)
	}
	for range copies {
		if _, err := d.to.Write(frame); err != nil {
			d.sendErrors.Add(1)
		}
	}
}
