package dataplane

import (
	"os"
	"sync"

	"golang.zx2c4.com/wireguard/tun"
)

// batchedDevice lets the router read a netstack in batches. The netstack's
// device hands over one packet per Read, and its sender waits, packet by
// packet, until a Read takes it; so the router's loop would encapsulate
// and send one datagram per wake-up. A pump goroutine keeps reading into a
// queue, and Read returns whatever has queued up, so a TCP window goes out
// in sendmmsg batches. Writes go straight through.
type batchedDevice struct {
	tun.Device
	full  chan packetBuf // read by the pump, waiting for Read
	empty chan packetBuf // free buffers for the pump
	done  chan struct{}  // closed when the pump has stopped
	err   error          // why the pump stopped; read after done

	closing   chan struct{} // closed by Close: the pump must not wait
	closeOnce sync.Once
}

type packetBuf struct {
	b []byte
	n int
}

// netstackBatch is how many packets one Read may return, and how many the
// queue holds.
const netstackBatch = 128

// NewBatchedDevice wraps a device that hands over one packet per Read (a
// netstack's) so that Read returns every packet queued, up to a batch of
// packets of at most mtu bytes.
func NewBatchedDevice(dev tun.Device, mtu int) tun.Device {
	d := &batchedDevice{Device: dev, full: make(chan packetBuf, netstackBatch), empty: make(chan packetBuf, netstackBatch),
		done: make(chan struct{}), closing: make(chan struct{})}
	for range netstackBatch {
		d.empty <- packetBuf{b: make([]byte, mtu)}
	}
	go d.pump()
	return d
}

func (d *batchedDevice) pump() {
	defer close(d.done)
	bufs, sizes := make([][]byte, 1), make([]int, 1)
	for {
		var p packetBuf
		select {
		case p = <-d.empty:
		case <-d.closing:
			d.err = os.ErrClosed
			return
		}
		bufs[0] = p.b
		n, err := d.Device.Read(bufs, sizes, 0)
		if err != nil {
			d.err = err
			return
		}
		if n == 0 {
			d.empty <- p
			continue
		}
		p.n = sizes[0]
		select {
		case d.full <- p:
		case <-d.closing:
			d.err = os.ErrClosed
			return
		}
	}
}

// Close implements tun.Device: it closes the device, which ends the pump.
func (d *batchedDevice) Close() error {
	d.closeOnce.Do(func() { close(d.closing) })
	return d.Device.Close()
}

// BatchSize implements tun.Device.
func (d *batchedDevice) BatchSize() int { return netstackBatch }

// Read implements tun.Device: it waits for one packet, then takes every
// packet already queued, up to len(bufs).
func (d *batchedDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	var p packetBuf
	select {
	case p = <-d.full:
	case <-d.done:
		select {
		case p = <-d.full:
		default:
			return 0, d.err // the pump sets it on every way out
		}
	}
	n := 0
	for {
		sizes[n] = copy(bufs[n][offset:], p.b[:p.n])
		d.empty <- p
		n++
		if n == len(bufs) {
			return n, nil
		}
		select {
		case p = <-d.full:
		default:
			return n, nil
		}
	}
}
