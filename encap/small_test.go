package encap

import (
	"regexp"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

func TestDropReasonNames(t *testing.T) {
	snake := regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)
	seen := make(map[string]DropReason)
	for r := range NumDropReasons {
		name := r.String()
		if !snake.MatchString(name) || name == "unknown" {
			t.Errorf("DropReason(%d) = %q, want a snake_case name of its own", r, name)
		}
		if other, dup := seen[name]; dup {
			t.Errorf("DropReason(%d) and DropReason(%d) are both %q", other, r, name)
		}
		seen[name] = r
	}
	if NoDrop.String() != "none" {
		t.Errorf("NoDrop = %q, want none", NoDrop.String())
	}
	if got := NumDropReasons.String(); got != "unknown" {
		t.Errorf("NumDropReasons.String() = %q, want unknown", got)
	}
}

func TestVXLANHeader(t *testing.T) {
	cases := []struct {
		name string
		vni  uint32
		want uint32
	}{
		{"Calico default", 4096, 4096},
		{"zero", 0, 0},
		{"largest", MaxVNI, MaxVNI},
		{"bits above 24 dropped", 1<<24 | 5, 5},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := VXLAN([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xaa})
			h.Encode(tc.vni)
			if h.VNI() != tc.want || !h.HasVNI() || h.Flags() != VXLANFlagVNI || h[7] != 0 || h[1]|h[2]|h[3] != 0 {
				t.Errorf("header %x: VNI %d flags %#x, want VNI %d, I flag only, reserved zero", h[:8], h.VNI(), h.Flags(), tc.want)
			}
			if len(h.Payload()) != 1 || h.Payload()[0] != 0xaa {
				t.Errorf("payload %x, want aa", h.Payload())
			}
			p := gopacket.NewPacket(h[:8], layers.LayerTypeVXLAN, gopacket.Lazy)
			vx, ok := p.Layer(layers.LayerTypeVXLAN).(*layers.VXLAN)
			if !ok || vx.VNI != tc.want || !vx.ValidIDFlag || vx.GBPExtension {
				t.Errorf("gopacket reads %+v, want VNI %d with the I flag", vx, tc.want)
			}
		})
	}
	if (VXLAN{0xf7, 0, 0, 0, 0, 0, 0, 0}).HasVNI() {
		t.Error("HasVNI true without the I flag")
	}
}

func TestNewBatch(t *testing.T) {
	const count, size = 4, Headroom + 1500
	b := NewBatch(count, size)
	if len(b.Bufs) != count || len(b.Sizes) != count {
		t.Fatalf("batch of %d buffers and %d sizes, want %d", len(b.Bufs), len(b.Sizes), count)
	}
	for i, buf := range b.Bufs {
		if len(buf) != size || cap(buf) != size {
			t.Errorf("buffer %d: len %d cap %d, want %d (capacity ending with the buffer)", i, len(buf), cap(buf), size)
		}
		for j := range buf {
			buf[j] = byte(i + 1)
		}
	}
	for i, buf := range b.Bufs {
		for j, v := range buf {
			if v != byte(i+1) {
				t.Fatalf("buffer %d byte %d = %d: buffers overlap", i, j, v)
			}
		}
	}
	b.Sizes[2] = 100
	if p := b.Packet(2); len(p) != 100 || &p[0] != &b.Bufs[2][Headroom] {
		t.Errorf("Packet(2) is not Bufs[2][Headroom:Headroom+100]")
	}
	grown := append(b.Bufs[1], 0xee)
	if b.Bufs[2][0] != 3 || &grown[0] == &b.Bufs[1][0] {
		t.Error("growing a buffer spilled into its neighbour")
	}
}

func TestNewBatchRejectsBadSizes(t *testing.T) {
	cases := []struct {
		name           string
		count, bufSize int
	}{
		{"negative count", -1, 2048},
		{"buffer all headroom", 4, Headroom},
		{"buffer smaller than headroom", 4, 10},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Errorf("NewBatch(%d, %d) did not panic", tc.count, tc.bufSize)
				}
			}()
			NewBatch(tc.count, tc.bufSize)
		})
	}
}
