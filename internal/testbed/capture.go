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

// Capture records the frames crossing one interface of a host, from an
// AF_PACKET socket opened inside the host's namespace, in both directions.
type Capture struct {
	host  *Host
	iface string
	fd    int

	once    sync.Once
	stop    chan struct{} // closed by Stop
	done    chan struct{} // closed when the reader has returned
	mu      sync.Mutex
	frames  [][]byte
	packets []gopacket.Packet
}

// htons converts a protocol number to the network byte order AF_PACKET wants.
func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Capture starts recording every frame on iface of the host. Stop ends it
// and returns the frames decoded as Ethernet; the bed's Close stops any
// capture still running.
func (h *Host) Capture(iface string) (*Capture, error) {
	c := &Capture{host: h, iface: iface, fd: -1, stop: make(chan struct{}), done: make(chan struct{})}
	err := h.Do(func() error {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("binding to %s: %w", iface, err)
		}
		// A receive timeout lets the reader notice Stop.
		tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20); err != nil {
			unix.Close(fd)
			return err
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

func (c *Capture) read() {
	defer close(c.done)
	buf := make([]byte, 65536+64)
	for {
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		select {
		case <-c.stop:
			return
		default:
		}
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		frame := append([]byte(nil), buf[:n]...)
		c.mu.Lock()
		c.frames = append(c.frames, frame)
		c.mu.Unlock()
	}
}

// Stop ends the capture and returns what it recorded, decoded with
// gopacket from the Ethernet layer up. Later calls return the same packets.
func (c *Capture) Stop() []gopacket.Packet {
	c.once.Do(func() {
		close(c.stop)
		<-c.done
		unix.Close(c.fd)
		c.mu.Lock()
		defer c.mu.Unlock()
		c.packets = make([]gopacket.Packet, 0, len(c.frames))
		for _, f := range c.frames {
			c.packets = append(c.packets, gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default))
		}
		c.frames = nil
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.packets
}
