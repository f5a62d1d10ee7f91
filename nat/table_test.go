package nat

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

func key(proto, src string, sport uint16) flowKey {
	return flowKey{proto: proto, inside: netip.AddrPortFrom(netip.MustParseAddr(src), sport),
		dest: netip.MustParseAddrPort("198.18.3.10:80")}
}

func TestTableLimits(t *testing.T) {
	tests := []struct {
		name       string
		max, per   int
		adds       []flowKey
		wantRefuse string // reason for the last add; "" if it is admitted
	}{
		{"under the limits", 10, 10, []flowKey{key("tcp", "10.1.0.5", 1), key("tcp", "10.1.0.5", 2)}, ""},
		{"per-source limit", 10, 2, []flowKey{key("tcp", "10.1.0.5", 1), key("tcp", "10.1.0.5", 2), key("tcp", "10.1.0.5", 3)}, RefusedPerSource},
		{"another source is not held back", 10, 2, []flowKey{key("tcp", "10.1.0.5", 1), key("tcp", "10.1.0.5", 2), key("tcp", "10.1.0.6", 3)}, ""},
		{"table limit", 2, 10, []flowKey{key("tcp", "10.1.0.5", 1), key("udp", "10.1.0.6", 2), key("tcp", "10.1.0.7", 3)}, RefusedTableFull},
		{"the same flow twice is one entry", 1, 1, []flowKey{key("udp", "10.1.0.5", 1), key("udp", "10.1.0.5", 1)}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tb := newTable(tc.max, tc.per, Timeouts{})
			var reason string
			for _, k := range tc.adds {
				_, reason = tb.add(k, "SYN_SENT")
			}
			if reason != tc.wantRefuse {
				t.Errorf("last add refused with %q, want %q", reason, tc.wantRefuse)
			}
		})
	}
}

func TestTableRemoveFreesTheSource(t *testing.T) {
	tb := newTable(10, 1, Timeouts{})
	e, _ := tb.add(key("tcp", "10.1.0.5", 1), "ESTABLISHED")
	if _, r := tb.add(key("tcp", "10.1.0.5", 2), "SYN_SENT"); r != RefusedPerSource {
		t.Fatalf("second flow: %q, want refused", r)
	}
	tb.remove(e, true)
	if _, r := tb.add(key("tcp", "10.1.0.5", 2), "SYN_SENT"); r != "" {
		t.Errorf("after the first flow ended: %q, want admitted", r)
	}
	if tb.expired.Load() != 1 || tb.created.Load() != 2 {
		t.Errorf("expired %d created %d, want 1 and 2", tb.expired.Load(), tb.created.Load())
	}
}

func TestTimeoutsFollowState(t *testing.T) {
	tb := newTable(10, 10, Timeouts{UDPUnreplied: 2 * time.Second})
	u, _ := tb.add(key("udp", "10.1.0.5", 1), "UNREPLIED")
	if got := tb.timeout(u); got != 2*time.Second {
		t.Errorf("unreplied UDP: %s, want the configured 2s", got)
	}
	u.countIn(10)
	if got := tb.timeout(u); got != 180*time.Second {
		t.Errorf("assured UDP: %s, want conntrack's 180s", got)
	}
	tc, _ := tb.add(key("tcp", "10.1.0.5", 2), "ESTABLISHED")
	if got := tb.timeout(tc); got != 432000*time.Second {
		t.Errorf("established TCP: %s, want conntrack's 5 days", got)
	}
}

func TestFormatConntrack(t *testing.T) {
	tb := newTable(10, 10, Timeouts{})
	e, _ := tb.add(key("tcp", "10.1.0.5", 40000), "ESTABLISHED")
	out := netip.MustParseAddrPort("198.18.1.10:51000")
	e.outside.Store(&out)
	e.countOut(100)
	e.countIn(200)
	var b bytes.Buffer
	FormatConntrack(&b, tb.snapshot())
	want := "tcp  6 src=10.1.0.5 dst=198.18.3.10 sport=40000 dport=80 packets=1 bytes=100 src=198.18.3.10 dst=198.18.1.10 sport=80 dport=51000 packets=1 bytes=200 ESTABLISHED"
	if !strings.Contains(b.String(), want) || !strings.Contains(b.String(), "1 flow entries") {
		t.Errorf("got\n%s\nwant a line with\n%s", b.String(), want)
	}
}

func TestEchoReply(t *testing.T) {
	src, dst := netip.MustParseAddr("198.18.3.10"), netip.MustParseAddr("10.1.0.5")
	pkt := echoReply(src, dst, 0x1234, 7, []byte("payload"))
	p := gopacket.NewPacket(pkt, layers.LayerTypeIPv4, gopacket.Default)
	ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	icmp, _ := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if ip == nil || icmp == nil {
		t.Fatalf("does not decode: %v", p)
	}
	if !ip.SrcIP.Equal(net.IP(src.AsSlice())) || !ip.DstIP.Equal(net.IP(dst.AsSlice())) {
		t.Errorf("from %s to %s", ip.SrcIP, ip.DstIP)
	}
	if icmp.TypeCode.Type() != layers.ICMPv4TypeEchoReply || icmp.Id != 0x1234 || icmp.Seq != 7 || string(icmp.Payload) != "payload" {
		t.Errorf("echo reply %+v", icmp)
	}
	// Both checksums verify: recomputing them changes nothing.
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true}, ip, icmp, gopacket.Payload(icmp.Payload)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), pkt) {
		t.Errorf("checksums differ from gopacket's:\n%x\n%x", pkt, buf.Bytes())
	}
}

func BenchmarkTableLookup(b *testing.B) {
	tb := newTable(1<<20, 1<<20, Timeouts{})
	keys := make([]flowKey, 10000)
	for i := range keys {
		keys[i] = flowKey{proto: "udp", inside: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), uint16(i)),
			dest: netip.MustParseAddrPort("198.18.3.10:53")}
		tb.add(keys[i], "UNREPLIED")
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if tb.lookup(keys[i%len(keys)]) == nil {
			b.Fatal("missing flow")
		}
		i++
	}
}
