package nat

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"syscall"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// segment is a TCP header (no options) with seq, flags and a payload of n
// bytes, as admit sees it.
func segment(seq uint32, flags header.TCPFlags, n int) (header.TCP, int) {
	t := header.TCP(make([]byte, header.TCPMinimumSize))
	t.Encode(&header.TCPFields{SrcPort: 40000, DstPort: 80, SeqNum: seq, DataOffset: header.TCPMinimumSize, Flags: flags})
	return t, header.TCPMinimumSize + n
}

func TestNoteWorkloadSeq(t *testing.T) {
	type seg struct {
		seq   uint32
		flags header.TCPFlags
		n     int
	}
	tests := []struct {
		name string
		segs []seg
		want uint32
	}{
		{"the SYN takes one number", []seg{{1000, header.TCPFlagSyn, 0}}, 1001},
		{"data moves it on", []seg{{1000, header.TCPFlagSyn, 0}, {1001, header.TCPFlagAck, 100}}, 1101},
		{"a retransmission does not move it back", []seg{{1001, header.TCPFlagAck, 100}, {1001, header.TCPFlagAck, 50}}, 1101},
		{"a FIN takes one number", []seg{{1001, header.TCPFlagAck | header.TCPFlagFin, 10}}, 1012},
		{"across the wrap", []seg{{0xffffff00, header.TCPFlagAck, 0x80}, {0xffffff80, header.TCPFlagAck, 0x100}}, 0x80},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var e entry
			for _, s := range tc.segs {
				e.noteWorkloadSeq(segment(s.seq, s.flags, s.n))
			}
			if got := e.workloadSeqEnd.Load(); got != tc.want {
				t.Errorf("workloadSeqEnd %#x, want %#x", got, tc.want)
			}
		})
	}
}

func TestTCPQuote(t *testing.T) {
	syn := append(ipv4Header(t), make([]byte, quotedPayload)...)
	e := entry{synQuote: syn}
	e.workloadSeqEnd.Store(0x01020304)
	q := header.IPv4(e.tcpQuote())
	if !q.IsChecksumValid() || q.TotalLength() != header.IPv4MinimumSize+header.TCPMinimumSize {
		t.Errorf("quoted IPv4 header: checksum valid %v, total length %d", q.IsChecksumValid(), q.TotalLength())
	}
	if len(q) != header.IPv4MinimumSize+quotedPayload {
		t.Fatalf("a quote of %d bytes, want the IPv4 header and 8 bytes of TCP", len(q))
	}
	if got := binary.BigEndian.Uint32(q[header.IPv4MinimumSize+4:]); got != 0x01020304 {
		t.Errorf("quoted sequence number %#x, want 0x01020304", got)
	}
	if syn[header.IPv4MinimumSize+4] != 0 {
		t.Error("tcpQuote changed the SYN's quote")
	}
}

// ipv4Header is a TCP packet's IPv4 header from 10.1.0.5 to 198.18.3.10.
func ipv4Header(t *testing.T) []byte {
	t.Helper()
	b := make([]byte, header.IPv4MinimumSize)
	putIPv4(b, 0, header.IPv4MinimumSize+header.TCPMinimumSize, protoTCP, netip.MustParseAddr("10.1.0.5"), netip.MustParseAddr("198.18.3.10"))
	return b
}

func TestUnreachableCode(t *testing.T) {
	tests := []struct {
		err      error
		typ      header.ICMPv4Type
		code     header.ICMPv4Code
		fromICMP bool
	}{
		{syscall.EHOSTUNREACH, header.ICMPv4DstUnreachable, header.ICMPv4HostUnreachable, true},
		{syscall.ENETUNREACH, header.ICMPv4DstUnreachable, header.ICMPv4NetUnreachable, true},
		{syscall.ECONNREFUSED, header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, true},
		{fmt.Errorf("read: %w", syscall.ENOPROTOOPT), header.ICMPv4DstUnreachable, header.ICMPv4ProtoUnreachable, true},
		{syscall.ECONNRESET, 0, 0, false},
		{syscall.ETIMEDOUT, 0, 0, false},
		{syscall.EACCES, 0, 0, false}, // a connect's only
	}
	for _, tc := range tests {
		t.Run(tc.err.Error(), func(t *testing.T) {
			var typ header.ICMPv4Type
			code, ok := unreachableCode(tc.err, true)
			if ok {
				typ = header.ICMPv4DstUnreachable
			}
			if typ != tc.typ || code != tc.code || ok != tc.fromICMP {
				t.Errorf("got %d/%d %v, want %d/%d %v", typ, code, ok, tc.typ, tc.code, tc.fromICMP)
			}
		})
	}
	// On a connect or a send, a refusal is a reset's, a prohibition the
	// host's firewall's.
	for _, tc := range []struct {
		err  error
		code header.ICMPv4Code
		ok   bool
	}{
		{syscall.ECONNREFUSED, header.ICMPv4PortUnreachable, false},
		{syscall.EACCES, header.ICMPv4AdminProhibited, true},
		{syscall.EPERM, header.ICMPv4AdminProhibited, true},
		{syscall.EHOSTDOWN, header.ICMPv4DestinationHostUnknown, true},
	} {
		if code, ok := unreachableCode(tc.err, false); ok != tc.ok || (ok && code != tc.code) {
			t.Errorf("connect %v: got %d %v, want %d %v", tc.err, code, ok, tc.code, tc.ok)
		}
	}
}
