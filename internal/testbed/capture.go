package testbed

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"
)

// captureSnapLen is the most of a frame a capture keeps: a TSO/GRO super-
// packet on a veth is up to 64 KiB of IP plus its link header.
const captureSnapLen = 1 << 17

// Capture records the frames crossing one interface of a host, from an
// AF_PACKET socket opened inside the host's namespace, in both directions.
type Capture struct {
	host    *Host
	iface   string
	ifindex int
	fd      int

	once    sync.Once
	stop    chan struct{} // closed by Stop
	done    chan struct{} // closed when the reader has returned
	mu      sync.Mutex
	frames  []capturedFrame
	packets []gopacket.Packet
}

type capturedFrame struct {
	data    []byte
	info    gopacket.CaptureInfo
	hatype  uint16     // the interface's ARPHRD_* type: says which header comes first
	pkttype PacketType // the kernel's direction and addressing class
}

// PacketType is how the kernel classed a captured frame (PACKET_HOST,
// PACKET_OUTGOING, ...). Each packet Capture.Stop returns carries it as the
// only element of Metadata().AncillaryData; PacketTypeOf reads it.
type PacketType uint8

// The kernel's packet types (linux/if_packet.h).
const (
	PacketHost      PacketType = unix.PACKET_HOST      // addressed to this host
	PacketBroadcast PacketType = unix.PACKET_BROADCAST // link-layer broadcast
	PacketMulticast PacketType = unix.PACKET_MULTICAST // link-layer multicast
	PacketOtherHost PacketType = unix.PACKET_OTHERHOST // to another host, seen promiscuously
	PacketOutgoing  PacketType = unix.PACKET_OUTGOING  // sent by this host
)

// PacketTypeOf returns the kernel's class of a packet from a Capture; ok is
// false for packets that did not come from one.
func PacketTypeOf(p gopacket.Packet) (t PacketType, ok bool) {
	for _, a := range p.Metadata().AncillaryData {
		if t, ok := a.(PacketType); ok {
			return t, true
		}
	}
	return 0, false
}

// htons converts a protocol number to the network byte order AF_PACKET wants.
func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Capture starts recording every frame on iface of the host, in both
// directions. Stop ends it and returns the frames decoded with gopacket:
// from the Ethernet layer on Ethernet-like interfaces (veth, bridge, lo),
// from the IP layer on interfaces without a link header (TUN). The bed's
// Close stops any capture still running.
func (h *Host) Capture(iface string) (*Capture, error) {
	c := &Capture{host: h, iface: iface, fd: -1, stop: make(chan struct{}), done: make(chan struct{})}
	err := h.Do(func() error {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		c.ifindex = ifi.Index
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		if err := setupCaptureSocket(fd, ifi.Index); err != nil {
			unix.Close(fd)
			return fmt.Errorf("%s: %w", iface, err)
		}
		c.fd = fd
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("testbed: %s: capture on %s: %w", h.Name, iface, err)
	}
	b := h.bed
	if err := b.register(func() { b.captures = append(b.captures, c) }); err != nil {
		unix.Close(c.fd)
		return nil, fmt.Errorf("testbed: %w", err)
	}
	go c.read()
	return c, nil
}

func setupCaptureSocket(fd, ifindex int) error {
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex}); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	// A receive timeout lets the reader notice Stop.
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("SO_RCVTIMEO: %w", err)
	}
	// FORCE, as root, beyond rmem_max: a 10 MB transfer arrives faster than
	// the reader copies it.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20); err != nil {
		return fmt.Errorf("SO_RCVBUFFORCE: %w", err)
	}
	return nil
}

func (c *Capture) read() {
	defer close(c.done)
	buf := make([]byte, captureSnapLen)
	flags := unix.MSG_TRUNC // n is the frame's real length, even when cut
	// Draining ends when the queue is empty, or after a while under
	// traffic that never lets it empty.
	draining, drainUntil := false, time.Time{}
	stopped := func() bool {
		select {
		case <-c.stop:
			return true
		default:
			return false
		}
	}
	for {
		n, from, err := unix.Recvfrom(c.fd, buf, flags)
		if err != nil {
			switch {
			case errors.Is(err, unix.EINTR):
			case !errors.Is(err, unix.EAGAIN), draining:
				return
			case stopped():
				draining, flags, drainUntil = true, flags|unix.MSG_DONTWAIT, time.Now().Add(time.Second)
			}
			continue
		}
		if draining && time.Now().After(drainUntil) {
			return
		}
		if !draining && stopped() {
			// Keep what is already queued (the reply that ended the
			// caller's exchange may be among it), then return.
			draining, flags, drainUntil = true, flags|unix.MSG_DONTWAIT, time.Now().Add(time.Second)
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		// Frames of other interfaces can arrive between socket and bind.
		if !ok || ll.Ifindex != c.ifindex {
			continue
		}
		f := capturedFrame{
			data:    append([]byte(nil), buf[:min(n, len(buf))]...),
			info:    gopacket.CaptureInfo{Timestamp: time.Now(), CaptureLength: min(n, len(buf)), Length: n, InterfaceIndex: c.ifindex},
			hatype:  ll.Hatype,
			pkttype: PacketType(ll.Pkttype),
		}
		c.mu.Lock()
		c.frames = append(c.frames, f)
		c.mu.Unlock()
	}
}

// Stop ends the capture and returns what it recorded, in order, decoded
// with gopacket; each packet's metadata holds its capture time, lengths and
// PacketType. Later calls return the same packets.
func (c *Capture) Stop() []gopacket.Packet {
	c.once.Do(func() {
		close(c.stop)
		<-c.done
		unix.Close(c.fd)
		c.mu.Lock()
		defer c.mu.Unlock()
		c.packets = make([]gopacket.Packet, 0, len(c.frames))
		for _, f := range c.frames {
			c.packets = append(c.packets, decodeFrame(f))
		}
		c.frames = nil
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.packets
}

// decodeFrame decodes a frame from the header its interface type puts first.
func decodeFrame(f capturedFrame) gopacket.Packet {
	p := gopacket.NewPacket(f.data, firstLayer(f.hatype, f.data), gopacket.Default)
	md := p.Metadata()
	md.CaptureInfo = f.info
	md.AncillaryData = []any{f.pkttype}
	return p
}

func firstLayer(hatype uint16, data []byte) gopacket.LayerType {
	switch hatype {
	case unix.ARPHRD_ETHER, unix.ARPHRD_LOOPBACK:
		return layers.LayerTypeEthernet
	}
	// TUN (ARPHRD_NONE), IP tunnels and the like: the IP header comes first.
	if len(data) > 0 {
		switch data[0] >> 4 {
		case 4:
			return layers.LayerTypeIPv4
		case 6:
			return layers.LayerTypeIPv6
		}
	}
	return gopacket.LayerTypePayload
}
