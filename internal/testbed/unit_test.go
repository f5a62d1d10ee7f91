package testbed

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"
)

// These tests need neither root nor namespaces.

func TestPatternIsIndependentOfReadSizes(t *testing.T) {
	whole := make([]byte, 1000)
	if _, err := io.ReadFull(pattern(7), whole); err != nil {
		t.Fatal(err)
	}
	for _, step := range []int{1, 3, 7, 8, 13, 64, 999} {
		r, got := pattern(7), make([]byte, 0, 1000)
		buf := make([]byte, step)
		for len(got) < len(whole) {
			n, _ := r.Read(buf[:min(step, len(whole)-len(got))])
			got = append(got, buf[:n]...)
		}
		if !bytes.Equal(got, whole) {
			t.Errorf("reads of %d bytes give another stream", step)
		}
	}
	other := make([]byte, 1000)
	_, _ = io.ReadFull(pattern(8), other)
	if bytes.Equal(other, whole) {
		t.Error("seeds 7 and 8 give the same stream")
	}
}

func TestVerifyStream(t *testing.T) {
	const size = 200000
	good := make([]byte, size)
	_, _ = io.ReadFull(pattern(1), good)
	corrupt := func(at int) []byte {
		b := bytes.Clone(good)
		b[at] ^= 0x40
		return b
	}
	tests := []struct {
		name    string
		stream  []byte
		wantN   int
		wantErr string // empty: no error
	}{
		{"the exact stream passes", good, size, ""},
		{"a flipped first byte is found", corrupt(0), -1, "byte 0 differs"},
		{"a flipped byte deep inside is found at its offset", corrupt(150001), -1, "byte 150001 differs"},
		{"a short stream says how much arrived", good[:size-10], size - 10, "ended after 199990 of 200000"},
		{"an empty stream fails", nil, 0, "ended after 0 of 200000"},
		{"a long stream fails", append(bytes.Clone(good), 1, 2, 3), -1, "more than the 200000 sent"},
		{"another seed's stream fails", func() []byte { b := make([]byte, size); _, _ = io.ReadFull(pattern(2), b); return b }(), -1, "byte 0 differs"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Odd-sized reads, as a TCP stream would give.
			n, err := verifyStream(io.LimitReader(&chunkReader{data: tc.stream, chunk: 7777}, int64(len(tc.stream))), 1, size)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("error %v, want none", err)
				}
			} else if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
			if tc.wantN >= 0 && n != tc.wantN {
				t.Errorf("reported %d bytes, want %d", n, tc.wantN)
			}
		})
	}
}

func TestVerifyStreamReportsReadErrors(t *testing.T) {
	broken := errors.New("connection reset")
	r := io.MultiReader(io.LimitReader(pattern(1), 100), &failingReader{broken})
	n, err := verifyStream(r, 1, 1000)
	if !errors.Is(err, broken) || n != 100 {
		t.Errorf("got %d, %v; want 100 bytes and the read error", n, err)
	}
}

type chunkReader struct {
	data  []byte
	chunk int
}

func (c *chunkReader) Read(b []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(b[:min(len(b), c.chunk)], c.data)
	c.data = c.data[n:]
	return n, nil
}

type failingReader struct{ err error }

func (f *failingReader) Read([]byte) (int, error) { return 0, f.err }

func TestParseNamespace(t *testing.T) {
	tests := []struct {
		name    string
		ns      string
		wantBed string
		wantPID int
		wantOK  bool
	}{
		{"a node of a bed", "ovtb-1234-0a1b2c3d-node-a", "ovtb-1234-0a1b2c3d", 1234, true},
		{"a workload with digits", "ovtb-7-ffffffff-wl-a1", "ovtb-7-ffffffff", 7, true},
		{"someone else's namespace", "cni-1234-0a1b2c3d-x", "", 0, false},
		{"our prefix without a host", "ovtb-1234-0a1b2c3d", "", 0, false},
		{"a nonce that is not 8 hex digits", "ovtb-1234-0a1b2c-node-a", "", 0, false},
		{"upper case is not ours", "ovtb-1234-0A1B2C3D-node-a", "", 0, false},
		{"PID 0 is nobody's", "ovtb-0-0a1b2c3d-node-a", "", 0, false},
		{"a PID too large for an int", "ovtb-99999999999999999999-0a1b2c3d-x", "", 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bed, pid, ok := parseNamespace(tc.ns)
			if bed != tc.wantBed || pid != tc.wantPID || ok != tc.wantOK {
				t.Errorf("parseNamespace(%q) = %q, %d, %t; want %q, %d, %t", tc.ns, bed, pid, ok, tc.wantBed, tc.wantPID, tc.wantOK)
			}
		})
	}
}

func TestNewBedIDParsesBack(t *testing.T) {
	a, err := newBedID()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := newBedID()
	if a == b {
		t.Errorf("two bed IDs are both %s", a)
	}
	bed, pid, ok := parseNamespace(a + "-node-a")
	if !ok || bed != a || pid != unix.Getpid() {
		t.Errorf("a namespace of bed %s parses as %q, %d, %t", a, bed, pid, ok)
	}
}

func TestWorkloadIface(t *testing.T) {
	a := WorkloadIface("wl-a1")
	if len(a) != 15 || !strings.HasPrefix(a, "cali") {
		t.Errorf("WorkloadIface(wl-a1) = %q, want cali and 11 hex digits", a)
	}
	if a != WorkloadIface("wl-a1") {
		t.Error("WorkloadIface is not deterministic")
	}
	if a == WorkloadIface("wl-a2") {
		t.Error("two workloads get the same interface name")
	}
	if err := checkIfaceName(a); err != nil {
		t.Error(err)
	}
}

func TestSysctlPath(t *testing.T) {
	tests := []struct {
		key, want string
		ok        bool
	}{
		{"net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward", true},
		{"net.ipv4.conf.cali0123456789a.proxy_arp", "/proc/sys/net/ipv4/conf/cali0123456789a/proxy_arp", true},
		{"kernel.pid_max", "", false},          // global: would change the machine
		{"net.ipv4/../../kernel/x", "", false}, // no escaping /proc/sys/net
	}
	for _, tc := range tests {
		t.Run(tc.key, func(t *testing.T) {
			got, err := sysctlPath(tc.key)
			if (err == nil) != tc.ok || got != tc.want {
				t.Errorf("sysctlPath(%q) = %q, %v; want %q, ok %t", tc.key, got, err, tc.want, tc.ok)
			}
		})
	}
}

func TestCheckIfaceName(t *testing.T) {
	for _, name := range []string{"", "sixteen-chars-xx", "a/b", "a b", "eth0:1"} {
		if checkIfaceName(name) == nil {
			t.Errorf("checkIfaceName(%q) accepted a name the kernel refuses", name)
		}
	}
	for _, name := range []string{"eth0", "to-node-a", "fifteen-chars-x"} {
		if err := checkIfaceName(name); err != nil {
			t.Errorf("checkIfaceName(%q): %v", name, err)
		}
	}
}

func TestAllAnswered(t *testing.T) {
	tests := []struct {
		name   string
		out    string
		count  int
		wantOK bool
	}{
		{"all answered", "3 packets transmitted, 3 received, 0% packet loss, time 402ms", 3, true},
		{"one lost is a failure even though ping exits 0", "3 packets transmitted, 2 received, 33.3333% packet loss", 3, false},
		{"errors reported", "1 packets transmitted, 0 received, +1 errors, 100% packet loss", 1, false},
		{"no summary", "ping: connect: Network is unreachable", 1, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := allAnswered([]byte(tc.out), tc.count); (err == nil) != tc.wantOK {
				t.Errorf("allAnswered(%q, %d) = %v, want ok %t", tc.out, tc.count, err, tc.wantOK)
			}
		})
	}
}

func TestDecodeFrameByLinkType(t *testing.T) {
	ip := serialize(t, &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolICMPv4,
		SrcIP: []byte{198, 18, 1, 10}, DstIP: []byte{198, 18, 1, 11}},
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 7, Seq: 1})
	eth := serialize(t, &layers.Ethernet{SrcMAC: []byte{2, 0, 0, 0, 0, 1}, DstMAC: []byte{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4},
		gopacket.Payload(ip))
	tests := []struct {
		name      string
		hatype    uint16
		data      []byte
		wantFirst gopacket.LayerType
	}{
		{"veth frames start with Ethernet", unix.ARPHRD_ETHER, eth, layers.LayerTypeEthernet},
		{"lo frames start with Ethernet", unix.ARPHRD_LOOPBACK, eth, layers.LayerTypeEthernet},
		{"TUN packets start with IPv4", unix.ARPHRD_NONE, ip, layers.LayerTypeIPv4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := decodeFrame(capturedFrame{data: tc.data, hatype: tc.hatype, pkttype: PacketOutgoing,
				info: gopacket.CaptureInfo{CaptureLength: len(tc.data), Length: len(tc.data)}})
			if got := p.Layers()[0].LayerType(); got != tc.wantFirst {
				t.Errorf("first layer %v, want %v", got, tc.wantFirst)
			}
			icmp, ok := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
			if !ok || icmp.Id != 7 {
				t.Errorf("the ICMP echo was not decoded: %v", p)
			}
			if pt, ok := PacketTypeOf(p); !ok || pt != PacketOutgoing {
				t.Errorf("PacketTypeOf = %v, %t; want outgoing", pt, ok)
			}
			if p.Metadata().Length != len(tc.data) {
				t.Errorf("metadata length %d, want %d", p.Metadata().Length, len(tc.data))
			}
		})
	}
}

func serialize(t *testing.T, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
