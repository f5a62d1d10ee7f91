package dataplane

import (
	"errors"
	"os"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun"
)

// chanDevice is a tun.Device whose Read hands over one packet from a
// channel at a time, as the netstack's does.
type chanDevice struct {
	tun.Device // nil: only Read and Close are used
	pkts       chan []byte
}

func (c *chanDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	p, ok := <-c.pkts
	if !ok {
		return 0, os.ErrClosed
	}
	sizes[0] = copy(bufs[0][offset:], p)
	return 1, nil
}

func (c *chanDevice) Close() error { return nil }

func TestBatchedDevice(t *testing.T) {
	const offset = 16
	readBufs := func() ([][]byte, []int) {
		bufs := make([][]byte, netstackBatch)
		for i := range bufs {
			bufs[i] = make([]byte, offset+100)
		}
		return bufs, make([]int, netstackBatch)
	}
	tests := []struct {
		name   string
		queued int // packets the device has before Read is called
		want   int // packets one Read returns
	}{
		{"one packet", 1, 1},
		{"what has queued up, in one read", 10, 10},
		{"at most a batch", netstackBatch + 5, netstackBatch},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := &chanDevice{pkts: make(chan []byte, tc.queued)}
			for i := range tc.queued {
				src.pkts <- []byte{byte(i), 0x45}
			}
			d := NewBatchedDevice(src, 100).(*batchedDevice)
			defer d.Close()
			// Let the pump queue what it can.
			deadline := time.Now().Add(2 * time.Second)
			for len(d.full) < min(tc.queued, netstackBatch) && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			bufs, sizes := readBufs()
			n, err := d.Read(bufs, sizes, offset)
			if err != nil || n != tc.want {
				t.Fatalf("Read = %d, %v; want %d packets", n, err, tc.want)
			}
			for i := range n {
				if sizes[i] != 2 || bufs[i][offset] != byte(i) || bufs[i][offset+1] != 0x45 {
					t.Errorf("packet %d: size %d, bytes %x; want packet %d, in order, after the offset", i, sizes[i], bufs[i][offset:offset+2], i)
				}
			}
		})
	}
	t.Run("a closed device ends a waiting Read", func(t *testing.T) {
		src := &chanDevice{pkts: make(chan []byte)}
		d := NewBatchedDevice(src, 100)
		errc := make(chan error, 1)
		go func() {
			bufs, sizes := readBufs()
			_, err := d.Read(bufs, sizes, offset)
			errc <- err
		}()
		time.Sleep(10 * time.Millisecond)
		close(src.pkts) // what the netstack's Close does
		d.Close()
		select {
		case err := <-errc:
			if !errors.Is(err, os.ErrClosed) {
				t.Errorf("Read after Close: %v, want os.ErrClosed", err)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("Read still waits after Close")
		}
	})
}
