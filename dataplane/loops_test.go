package dataplane

import (
	"bytes"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/conn"
	"github.com/overlayd/overlayd/encap"
	"github.com/overlayd/overlayd/plan"
)

// The packet loops run here as they do in overlayd, through Router.Run,
// on the in-memory TUN device and transports of fakes_test.go: no root, no
// namespace. Each test injects packets where the kernel or the underlay
// would deliver them and checks what comes out and what was counted.

var (
	fragNeeded     = layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodeFragmentationNeeded)
	netUnreachable = layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodeNet)
)

// TestEncapsulationBackToBack sends a packet into one node's TUN device and
// takes it out of another's: the sender encapsulates it (outer headers
// checked with gopacket), the in-memory underlay carries it, the receiver
// accepts and decapsulates it, and the packet arrives byte for byte.
func TestEncapsulationBackToBack(t *testing.T) {
	tests := []struct {
		name     string
		from, to string
		kind     plan.Encap
		inner    pkt
	}{
		{"VXLAN from node A to node B", "node-a", "node-b", plan.EncapVXLAN,
			pkt{src: "192.168.0.5", dst: "192.168.0.70", df: true}},
		{"VXLAN back from node B to node A, TCP", "node-b", "node-a", plan.EncapVXLAN,
			pkt{src: "192.168.0.70", dst: "192.168.0.5", df: true, tcp: true}},
		{"VXLAN to node C on another subnet, the largest packet that fits", "node-a", "node-c", plan.EncapVXLAN,
			pkt{src: "192.168.0.5", dst: "192.168.0.130", size: 1450, df: true}},
		{"VXLAN from the host, sourced from the tunnel address", "node-a", "node-b", plan.EncapVXLAN,
			pkt{src: "192.168.0.0", dst: "192.168.0.70"}},
		{"IP-in-IP from node A to node B, DSCP and ECN in the outer header", "node-a", "node-b", plan.EncapIPIP,
			pkt{src: "10.1.0.5", dst: "10.1.0.70", df: true, tos: 0xb8 | 0x02}},
		{"IP-in-IP without DF, TCP", "node-a", "node-b", plan.EncapIPIP,
			pkt{src: "10.1.0.5", dst: "10.1.0.70", tcp: true}},
		{"IP-in-IP to node C, the largest packet that fits", "node-a", "node-c", plan.EncapIPIP,
			pkt{src: "10.1.0.5", dst: "10.1.0.130", size: 1480, df: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			network := newMemNetwork()
			nodes := map[string]*testNode{}
			for _, name := range []string{"node-a", "node-b", "node-c"} {
				nodes[name] = startNode(t, network, planFor(t, testCluster, name), nodeOpts{})
			}
			from, to := nodes[tc.from], nodes[tc.to]
			inner := tc.inner.build(t)
			from.tun.inject(inner)

			waitCounts(t, from, "tx."+tc.kind.String()+"=1")
			waitCounts(t, to, "rx."+tc.kind.String()+"=1")
			for name, n := range nodes {
				if name != tc.from && name != tc.to {
					if got := counts(n.r.Stats()); got != "" {
						t.Errorf("%s, a bystander, counted %q", name, got)
					}
				}
			}
			if got := to.tun.written(); len(got) != 1 || !bytes.Equal(got[0], inner) {
				t.Errorf("%s's TUN got %x, want the packet sent, %x", tc.to, got, inner)
			}

			tr := from.vxlan
			if tc.kind == plan.EncapIPIP {
				tr = from.ipip
			}
			sent := tr.sentMsgs()
			if len(sent) != 1 {
				t.Fatalf("%s sent %d %s messages, want 1", tc.from, len(sent), tc.kind)
			}
			checkOuter(t, tc.kind, sent[0], inner, tc.from, tc.to)

			// Bytes on the wire: the inner packet and the whole
			// encapsulation, outer IPv4 header included.
			wire := uint64(len(inner) + tc.kind.Overhead())
			fs, ts := from.r.Stats(), to.r.Stats()
			if got := fs.TxBytes[tc.kind.String()]; got != wire {
				t.Errorf("%s counted %d bytes sent, want %d", tc.from, got, wire)
			}
			if got := ts.RxBytes[tc.kind.String()]; got != wire {
				t.Errorf("%s counted %d bytes received, want %d", tc.to, got, wire)
			}
			if got, want := fs.Peers[tc.to], (PeerStats{TxPackets: 1, TxBytes: wire, PathMTU: 1500}); got != want {
				t.Errorf("%s's counters for %s: %+v, want %+v", tc.from, tc.to, got, want)
			}
			if got, want := ts.Peers[tc.from], (PeerStats{RxPackets: 1, RxBytes: wire, PathMTU: 1500}); got != want {
				t.Errorf("%s's counters for %s: %+v, want %+v", tc.to, tc.from, got, want)
			}
		})
	}
}

// checkOuter checks the encapsulation of one message node from sent to
// node to for the packet inner, decoding it with gopacket.
func checkOuter(t *testing.T, kind plan.Encap, m sentMsg, inner []byte, from, to string) {
	t.Helper()
	if m.to != underlayOf(t, to) {
		t.Errorf("sent to %v, want %s at %v", net.IP(m.to[:]), to, net.IP(a4s(to)))
	}
	switch kind {
	case plan.EncapVXLAN:
		if m.port != config.DefaultVXLANPort {
			t.Errorf("sent to UDP port %d, want %d", m.port, config.DefaultVXLANPort)
		}
		if m.flow != encap.FlowHash(inner) {
			t.Errorf("flow hash %#x, want the inner packet's %#x (the socket picks the source port by it)", m.flow, encap.FlowHash(inner))
		}
		p := gopacket.NewPacket(m.b, layers.LayerTypeVXLAN, gopacket.Default)
		vx, _ := p.Layer(layers.LayerTypeVXLAN).(*layers.VXLAN)
		eth, _ := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
		if vx == nil || eth == nil {
			t.Fatalf("not VXLAN and Ethernet: %v", p)
		}
		if !vx.ValidIDFlag || vx.VNI != testVNI {
			t.Errorf("VXLAN I flag %v VNI %d, want the I flag and VNI %d", vx.ValidIDFlag, vx.VNI, testVNI)
		}
		if wantSrc, wantDst := macOf(from), macOf(to); !bytes.Equal(eth.SrcMAC, wantSrc[:]) || !bytes.Equal(eth.DstMAC, wantDst[:]) {
			t.Errorf("inner Ethernet %v -> %v, want the VTEP MACs %x -> %x", eth.SrcMAC, eth.DstMAC, wantSrc, wantDst)
		}
		if eth.EthernetType != layers.EthernetTypeIPv4 {
			t.Errorf("EtherType %v, want IPv4", eth.EthernetType)
		}
		if !bytes.Equal(eth.Payload, inner) {
			t.Errorf("VXLAN carries\n%x\nwant the packet unchanged\n%x", eth.Payload, inner)
		}
	case plan.EncapIPIP:
		if m.port != 0 {
			t.Errorf("IP-in-IP message with port %d, want 0", m.port)
		}
		p := gopacket.NewPacket(m.b, layers.LayerTypeIPv4, gopacket.Default)
		outer, _ := p.Layers()[0].(*layers.IPv4)
		if outer == nil {
			t.Fatalf("not IPv4: %v", p)
		}
		if wantSrc := underlayOf(t, from); !outer.SrcIP.Equal(net.IP(wantSrc[:])) {
			t.Errorf("outer source %v, want %s's underlay address", outer.SrcIP, from)
		}
		wantDst := underlayOf(t, to)
		if !outer.DstIP.Equal(net.IP(wantDst[:])) {
			t.Errorf("outer destination %v, want %v", outer.DstIP, net.IP(wantDst[:]))
		}
		if outer.Protocol != layers.IPProtocolIPv4 || outer.TTL != encap.OuterTTL || int(outer.Length) != len(m.b) {
			t.Errorf("outer protocol %v TTL %d length %d, want IPv4 (4), TTL %d, length %d", outer.Protocol, outer.TTL, outer.Length, encap.OuterTTL, len(m.b))
		}
		if outer.TOS != inner[1] {
			t.Errorf("outer TOS %#x, want the inner %#x (RFC 6040)", outer.TOS, inner[1])
		}
		if innerDF := inner[6]&0x40 != 0; (outer.Flags&layers.IPv4DontFragment != 0) != innerDF {
			t.Errorf("outer flags %v, want DF %v as in the inner packet", outer.Flags, innerDF)
		}
		if s := onesSum(m.b[:20]); s != 0xffff {
			t.Errorf("outer checksum is wrong (sum %#04x)", s)
		}
		if !bytes.Equal(outer.Payload, inner) {
			t.Errorf("IP-in-IP carries\n%x\nwant the packet unchanged\n%x", outer.Payload, inner)
		}
	}
}

// natExcludeHosts is testCluster with node addresses exempt from NAT.
const natExcludeHosts = "[nat]\nexclude = \"IPPoolsAndHostIPs\"\n" + testCluster

// TestSendSide feeds node A's TUN device one packet at a time and checks
// what the send loop makes of it: which transport sends it, what is handed
// to the NAT, what is dropped and counted, and which ICMP error goes back
// into the TUN.
func TestSendSide(t *testing.T) {
	ipv6 := func(t testing.TB) []byte {
		ip := &layers.IPv6{Version: 6, NextHeader: layers.IPProtocolUDP, HopLimit: 64,
			SrcIP: net.ParseIP("fd00::5"), DstIP: net.ParseIP("fd00::70")}
		udp := &layers.UDP{SrcPort: 40000, DstPort: 5201}
		if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
			t.Fatal(err)
		}
		return serialize(t, ip, udp, gopacket.Payload("not IPv4"))
	}
	tests := []struct {
		name    string
		cluster string // "": testCluster
		opts    nodeOpts
		refuse  bool // the underlay refuses every send
		in      pkt
		raw     func(testing.TB) []byte // instead of in
		want    string                  // the counters afterwards
		sentBy  plan.Encap              // EncapNone: nothing sent
		icmp    *icmpWant               // the error written back to the TUN
		toNAT   bool
	}{
		{name: "VXLAN pool to a remote block: sent over VXLAN",
			in: pkt{src: "192.168.0.5", dst: "192.168.0.70", df: true}, want: "tx.vxlan=1", sentBy: plan.EncapVXLAN},
		{name: "IP-in-IP pool to a remote block: sent over IP-in-IP",
			in: pkt{src: "10.1.0.5", dst: "10.1.0.70", df: true}, want: "tx.ipip=1", sentBy: plan.EncapIPIP},
		{name: "too big for VXLAN with DF: fragmentation needed, next-hop MTU 1450",
			in:   pkt{src: "192.168.0.5", dst: "192.168.0.70", size: 1451, df: true},
			want: "drop.too_big=1 icmp_sent=1", icmp: &icmpWant{fragNeeded, "192.168.0.64", 1450}},
		{name: "too big for IP-in-IP with DF: fragmentation needed, next-hop MTU 1480",
			in:   pkt{src: "10.1.0.5", dst: "10.1.0.70", size: 1481, df: true, tcp: true},
			want: "drop.too_big=1 icmp_sent=1", icmp: &icmpWant{fragNeeded, "192.168.0.64", 1480}},
		{name: "too big for node C's tunnel: the error comes from node C's tunnel address",
			in:   pkt{src: "192.168.0.5", dst: "192.168.0.130", size: 9000, df: true},
			want: "drop.too_big=1 icmp_sent=1", icmp: &icmpWant{fragNeeded, "192.168.0.128", 1450}},
		{name: "too big without DF: sent, for the underlay to fragment",
			in: pkt{src: "192.168.0.5", dst: "192.168.0.70", size: 1451}, want: "tx.vxlan=1", sentBy: plan.EncapVXLAN},
		{name: "block of a pool routed directly: network unreachable",
			in:   pkt{src: "10.2.0.5", dst: "10.2.0.70"},
			want: "drop.no_route=1 icmp_sent=1", icmp: &icmpWant{code: netUnreachable, from: "10.2.0.70"}},
		{name: "pool address in no block: network unreachable",
			in:   pkt{src: "192.168.0.5", dst: "192.168.200.1", tcp: true},
			want: "drop.no_route=1 icmp_sent=1", icmp: &icmpWant{code: netUnreachable, from: "192.168.200.1"}},
		{name: "unused address of a local block: network unreachable",
			in:   pkt{src: "192.168.0.5", dst: "192.168.0.9"},
			want: "drop.no_route=1 icmp_sent=1", icmp: &icmpWant{code: netUnreachable, from: "192.168.0.9"}},
		{name: "natOutgoing pool to outside every pool: handed to the NAT",
			in: pkt{src: "192.168.0.5", dst: "203.0.113.9", tcp: true}, want: "nat=1", toNAT: true},
		{name: "natOutgoing pool to a node address, IPPoolsOnly: handed to the NAT",
			in: pkt{src: "192.168.0.5", dst: "198.18.1.11"}, want: "nat=1", toNAT: true},
		{name: "natOutgoing pool to a node address, IPPoolsAndHostIPs: not overlay",
			cluster: natExcludeHosts, in: pkt{src: "192.168.0.5", dst: "198.18.1.11"}, want: "drop.not_overlay=1"},
		{name: "natOutgoing pool to outside with no NAT running: not overlay",
			opts: nodeOpts{noNAT: true}, in: pkt{src: "192.168.0.5", dst: "203.0.113.9"}, want: "drop.not_overlay=1"},
		{name: "pool without natOutgoing to outside every pool: not overlay",
			in: pkt{src: "10.1.0.5", dst: "203.0.113.9"}, want: "drop.not_overlay=1"},
		{name: "host address to outside every pool: not overlay",
			in: pkt{src: "198.18.1.10", dst: "203.0.113.9"}, want: "drop.not_overlay=1"},
		{name: "IPv6: not IPv4", raw: ipv6, want: "drop.not_ipv4=1"},
		{name: "shorter than an IPv4 header: not IPv4",
			raw: func(testing.TB) []byte { return []byte{0x45, 0, 0, 10, 0, 0, 0, 0, 64, 17} }, want: "drop.not_ipv4=1"},
		{name: "the underlay refuses the send: counted as a send error",
			refuse: true, in: pkt{src: "192.168.0.5", dst: "192.168.0.70"},
			want: "drop.send_error=1 io.socket_write=1 tx.vxlan=1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cluster := tc.cluster
			if cluster == "" {
				cluster = testCluster
			}
			a := newNode(t, nil, planFor(t, cluster, "node-a"), tc.opts)
			a.vxlan.refuse, a.ipip.refuse = tc.refuse, tc.refuse
			a.start(t)
			var in []byte
			if tc.raw != nil {
				in = tc.raw(t)
			} else {
				in = tc.in.build(t)
			}
			a.tun.inject(in)
			waitCounts(t, a, tc.want)

			for _, tr := range []*memTransport{a.vxlan, a.ipip} {
				sent := tr.sentMsgs()
				want := 0
				if tr.kind == tc.sentBy {
					want = 1
				}
				if len(sent) != want {
					t.Errorf("%d messages sent over %s, want %d", len(sent), tr.kind, want)
				}
				if len(sent) == 1 {
					checkOuter(t, tr.kind, sent[0], in, "node-a", "node-b")
				}
			}
			replies := a.tun.written()
			switch {
			case tc.icmp == nil && len(replies) != 0:
				t.Errorf("wrote %d packets back to the TUN, want none: %x", len(replies), replies)
			case tc.icmp != nil && len(replies) != 1:
				t.Errorf("wrote %d packets back to the TUN, want one ICMP error", len(replies))
			case tc.icmp != nil:
				checkICMP(t, replies[0], in, *tc.icmp)
			}
			if a.nat != nil {
				got := a.nat.packets()
				if tc.toNAT && (len(got) != 1 || !bytes.Equal(got[0], in)) {
					t.Errorf("the NAT got %x, want the packet %x", got, in)
				}
				if !tc.toNAT && len(got) != 0 {
					t.Errorf("the NAT got %x, want nothing", got)
				}
			}
		})
	}
}

// TestReceiveSide hands node B's transports packets as a socket would
// deliver them, from nodes of the cluster and from strangers, and checks
// that only what node A or C may send to node B reaches B's TUN device;
// everything else is dropped and counted by reason.
func TestReceiveSide(t *testing.T) {
	macB := macOf("node-b")
	vxlan := func(from string, vni uint32, inner pkt) func(testing.TB) datagram {
		return func(t testing.TB) datagram { return vxlanFrom(t, from, vni, inner.build(t), macB) }
	}
	ipip := func(from string, inner pkt) func(testing.TB) datagram {
		return func(t testing.TB) datagram { return ipipFrom(t, from, "node-b", inner.build(t)) }
	}
	tests := []struct {
		name string
		over plan.Encap
		in   func(testing.TB) datagram
		want string
	}{
		{"VXLAN from node A: delivered", plan.EncapVXLAN,
			vxlan("node-a", testVNI, pkt{src: "192.168.0.5", dst: "192.168.0.70"}), "rx.vxlan=1"},
		{"VXLAN from node C on another subnet: delivered", plan.EncapVXLAN,
			vxlan("node-c", testVNI, pkt{src: "192.168.0.130", dst: "192.168.0.70", tcp: true}), "rx.vxlan=1"},
		{"IP-in-IP from node A: delivered", plan.EncapIPIP,
			ipip("node-a", pkt{src: "10.1.0.5", dst: "10.1.0.70"}), "rx.ipip=1"},
		{"VXLAN carrying the IP-in-IP pool's traffic: delivered, as during a mode switch", plan.EncapVXLAN,
			vxlan("node-a", testVNI, pkt{src: "10.1.0.5", dst: "10.1.0.70"}), "rx.vxlan=1"},
		{"IP-in-IP carrying the VXLAN pool's traffic: delivered, as during a mode switch", plan.EncapIPIP,
			ipip("node-a", pkt{src: "192.168.0.5", dst: "192.168.0.70"}), "rx.ipip=1"},
		{"VXLAN from an address that is no node: unknown peer", plan.EncapVXLAN,
			vxlan("198.18.3.10", testVNI, pkt{src: "192.168.0.5", dst: "192.168.0.70"}), "drop.unknown_peer=1"},
		{"IP-in-IP from an address that is no node: unknown peer", plan.EncapIPIP,
			ipip("198.18.3.10", pkt{src: "10.1.0.5", dst: "10.1.0.70"}), "drop.unknown_peer=1"},
		{"VXLAN with another VNI: wrong VNI", plan.EncapVXLAN,
			vxlan("node-a", testVNI+1, pkt{src: "192.168.0.5", dst: "192.168.0.70"}), "drop.wrong_vni=1"},
		{"inner source in node C's block, sent by node A: spoofed source", plan.EncapVXLAN,
			vxlan("node-a", testVNI, pkt{src: "192.168.0.130", dst: "192.168.0.70"}), "drop.spoofed_source=1"},
		{"inner source in node C's block over IP-in-IP, sent by node A: spoofed source", plan.EncapIPIP,
			ipip("node-a", pkt{src: "10.1.0.130", dst: "10.1.0.70"}), "drop.spoofed_source=1"},
		{"inner source in the receiver's own block: spoofed source", plan.EncapVXLAN,
			vxlan("node-a", testVNI, pkt{src: "192.168.0.71", dst: "192.168.0.70"}), "drop.spoofed_source=1"},
		{"inner source in a pool but in no block: spoofed source", plan.EncapVXLAN,
			vxlan("node-a", testVNI, pkt{src: "192.168.200.1", dst: "192.168.0.70"}), "drop.spoofed_source=1"},
		{"inner source outside every pool: spoofed source", plan.EncapVXLAN,
			vxlan("node-a", testVNI, pkt{src: "203.0.113.7", dst: "192.168.0.70"}), "drop.spoofed_source=1"},
		{"inner destination in node C's block: not local", plan.EncapVXLAN,
			vxlan("node-a", testVNI, pkt{src: "192.168.0.5", dst: "192.168.0.130"}), "drop.not_local=1"},
		{"inner destination back in the sender's block: not local", plan.EncapIPIP,
			ipip("node-a", pkt{src: "10.1.0.5", dst: "10.1.0.6"}), "drop.not_local=1"},
		{"inner destination outside every pool: not local", plan.EncapVXLAN,
			vxlan("node-a", testVNI, pkt{src: "192.168.0.5", dst: "203.0.113.7"}), "drop.not_local=1"},
		{"IP-in-IP with a bad outer checksum: bad checksum", plan.EncapIPIP,
			func(t testing.TB) datagram {
				d := ipipFrom(t, "node-a", "node-b", pkt{src: "10.1.0.5", dst: "10.1.0.70"}.build(t))
				d.b[10] ^= 0xff
				return d
			}, "drop.bad_checksum=1"},
		{"VXLAN without the I flag: missing I flag", plan.EncapVXLAN,
			func(t testing.TB) datagram {
				d := vxlanFrom(t, "node-a", testVNI, pkt{src: "192.168.0.5", dst: "192.168.0.70"}.build(t), macB)
				d.b[0] = 0
				return d
			}, "drop.missing_i_flag=1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := startNode(t, nil, planFor(t, testCluster, "node-b"), nodeOpts{})
			d := tc.in(t)
			tr := b.vxlan
			if tc.over == plan.EncapIPIP {
				tr = b.ipip
			}
			tr.inject(d)
			waitCounts(t, b, tc.want)

			got := b.tun.written()
			if delivered := strings.HasPrefix(tc.want, "rx."); delivered {
				lead := encap.VXLANPayloadLen
				if tc.over == plan.EncapIPIP {
					lead = encap.IPIPOverhead
				}
				if inner := d.b[lead:]; len(got) != 1 || !bytes.Equal(got[0], inner) {
					t.Errorf("the TUN got %x, want the inner packet %x", got, inner)
				}
			} else if len(got) != 0 {
				t.Errorf("the TUN got %d packets, want none: %x", len(got), got)
			}
			if sent := len(b.vxlan.sentMsgs()) + len(b.ipip.sentMsgs()); sent != 0 {
				t.Errorf("node B sent %d messages in answer, want none", sent)
			}
		})
	}
}

// TestARPReplyInsideVXLAN: a peer's kernel VXLAN device asks, inside VXLAN,
// who has the receiver's VTEP (tunnel) address; the receive loop answers
// behind the same VXLAN header, back to the asker, and answers nothing
// else. A data packet from node A follows each request, so that once it is
// counted the request has been dealt with too.
func TestARPReplyInsideVXLAN(t *testing.T) {
	tests := []struct {
		name     string
		from     string
		vni      uint32
		senderIP string
		target   string
		want     string
		answered bool
	}{
		{"node A asks for node B's tunnel address: answered", "node-a", testVNI, "192.168.0.0", "192.168.0.64",
			"arp_replies=1 rx.vxlan=1", true},
		{"node C asks for node B's tunnel address: answered", "node-c", testVNI, "192.168.0.128", "192.168.0.64",
			"arp_replies=1 rx.vxlan=1", true},
		{"a request for another address: not answered", "node-a", testVNI, "192.168.0.0", "192.168.0.70",
			"rx.vxlan=1", false},
		{"a request with another VNI: wrong VNI", "node-a", testVNI + 1, "192.168.0.0", "192.168.0.64",
			"drop.wrong_vni=1 rx.vxlan=1", false},
		{"a request from an address that is no node: unknown peer", "198.18.3.10", testVNI, "192.168.0.0", "192.168.0.64",
			"drop.unknown_peer=1 rx.vxlan=1", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := startNode(t, nil, planFor(t, testCluster, "node-b"), nodeOpts{})
			req := arpRequest(t, tc.from, tc.vni, tc.senderIP, tc.target)
			follow := pkt{src: "192.168.0.5", dst: "192.168.0.70"}.build(t)
			b.vxlan.inject(req, vxlanFrom(t, "node-a", testVNI, follow, macOf("node-b")))
			waitCounts(t, b, tc.want)

			if got := b.tun.written(); len(got) != 1 || !bytes.Equal(got[0], follow) {
				t.Errorf("the TUN got %x, want only the packet that followed, %x", got, follow)
			}
			sent := b.vxlan.sentMsgs()
			if !tc.answered {
				if len(sent) != 0 {
					t.Errorf("sent %d messages, want no answer", len(sent))
				}
				return
			}
			if len(sent) != 1 {
				t.Fatalf("sent %d messages, want one ARP reply", len(sent))
			}
			checkARPReply(t, sent[0], req, tc.from, tc.senderIP, tc.target)
		})
	}
}

// checkARPReply checks m is node B's answer to req from node from: the
// same VXLAN header back to the asker's VXLAN port, the Ethernet and ARP
// addresses turned around, node B's VTEP MAC for target.
func checkARPReply(t *testing.T, m sentMsg, req datagram, from, senderIP, target string) {
	t.Helper()
	if m.to != underlayOf(t, from) || m.port != config.DefaultVXLANPort {
		t.Errorf("reply sent to %v port %d, want %s at %v port %d", net.IP(m.to[:]), m.port, from, net.IP(req.from[:]), config.DefaultVXLANPort)
	}
	if len(m.b) != len(req.b) {
		t.Errorf("reply of %d bytes, want the request's %d", len(m.b), len(req.b))
	}
	p := gopacket.NewPacket(m.b, layers.LayerTypeVXLAN, gopacket.Default)
	vx, _ := p.Layer(layers.LayerTypeVXLAN).(*layers.VXLAN)
	eth, _ := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	arp, _ := p.Layer(layers.LayerTypeARP).(*layers.ARP)
	if vx == nil || eth == nil || arp == nil {
		t.Fatalf("the reply is not ARP in VXLAN: %v", p)
	}
	if !vx.ValidIDFlag || vx.VNI != testVNI {
		t.Errorf("reply's VXLAN I flag %v VNI %d, want VNI %d", vx.ValidIDFlag, vx.VNI, testVNI)
	}
	asker, ours := macOf(from), macOf("node-b")
	if !bytes.Equal(eth.DstMAC, asker[:]) || !bytes.Equal(eth.SrcMAC, ours[:]) || eth.EthernetType != layers.EthernetTypeARP {
		t.Errorf("reply's Ethernet %v -> %v type %v, want %x -> %x ARP", eth.SrcMAC, eth.DstMAC, eth.EthernetType, ours, asker)
	}
	if arp.Operation != layers.ARPReply ||
		!bytes.Equal(arp.SourceHwAddress, ours[:]) || !bytes.Equal(arp.SourceProtAddress, a4s(target)) ||
		!bytes.Equal(arp.DstHwAddress, asker[:]) || !bytes.Equal(arp.DstProtAddress, a4s(senderIP)) {
		t.Errorf("ARP op %d %x/%v -> %x/%v, want a reply %x/%s -> %x/%s", arp.Operation,
			arp.SourceHwAddress, net.IP(arp.SourceProtAddress), arp.DstHwAddress, net.IP(arp.DstProtAddress),
			ours, target, asker, senderIP)
	}
}

// TestBacklogsLargerThanABatch queues more packets than one read takes
// before the loops start: each loop works through the backlog batch by
// batch, and every packet comes out once, in order.
func TestBacklogsLargerThanABatch(t *testing.T) {
	t.Run("send loop: three and a half TUN batches to two nodes over both encapsulations", func(t *testing.T) {
		const batch, count = 8, 3*8 + 5
		network := newMemNetwork()
		b := startNode(t, network, planFor(t, testCluster, "node-b"), nodeOpts{})
		c := startNode(t, network, planFor(t, testCluster, "node-c"), nodeOpts{})
		a := newNode(t, network, planFor(t, testCluster, "node-a"), nodeOpts{tunBatch: batch})
		dsts := []struct {
			src, dst string
			at       *testNode
		}{{"192.168.0.5", "192.168.0.70", b}, {"10.1.0.5", "10.1.0.70", b}, {"192.168.0.5", "192.168.0.130", c}}
		want := map[*testNode][][]byte{}
		var in [][]byte
		for i := range count {
			d := dsts[i%len(dsts)]
			p := pkt{src: d.src, dst: d.dst, seq: uint32(i)}.build(t)
			in = append(in, p)
			want[d.at] = append(want[d.at], p)
		}
		a.tun.inject(in...)
		a.start(t)

		waitCounts(t, a, "tx.ipip=10 tx.vxlan=19")
		waitCounts(t, b, "rx.ipip=10 rx.vxlan=10")
		waitCounts(t, c, "rx.vxlan=9")
		for _, n := range []*testNode{b, c} {
			// One receive loop per encapsulation writes to the TUN, so
			// only the order within each encapsulation is kept.
			got := n.tun.written()
			if !sameSet(got, want[n]) {
				t.Errorf("%s's TUN got sequence numbers %v, want %v, each once and unchanged", n.name, seqs(got), seqs(want[n]))
			}
		}
		if m := a.tun.maxRead.Load(); m != batch {
			t.Errorf("the largest read took %d packets, want the batch size %d", m, batch)
		}
		if r := a.tun.readCalls.Load(); r < (count+batch-1)/batch {
			t.Errorf("%d reads for %d packets in batches of %d", r, count, batch)
		}
	})

	t.Run("send loop: a backlog of too-big packets is answered in full", func(t *testing.T) {
		const batch, count = 8, 2*8 + 3
		a := newNode(t, nil, planFor(t, testCluster, "node-a"), nodeOpts{tunBatch: batch})
		var in [][]byte
		for i := range count {
			in = append(in, pkt{src: "192.168.0.5", dst: "192.168.0.70", size: 1451 + i, df: true, seq: uint32(i)}.build(t))
		}
		a.tun.inject(in...)
		a.start(t)
		waitCounts(t, a, fmt.Sprintf("drop.too_big=%d icmp_sent=%d", count, count))
		replies := a.tun.written()
		if len(replies) != count {
			t.Fatalf("%d ICMP errors, want %d", len(replies), count)
		}
		for i, r := range replies {
			checkICMP(t, r, in[i], icmpWant{fragNeeded, "192.168.0.64", 1450})
		}
	})

	t.Run("receive loop: more than conn.MaxBatch datagrams queued", func(t *testing.T) {
		const count = 2*conn.MaxBatch + 7
		b := newNode(t, nil, planFor(t, testCluster, "node-b"), nodeOpts{})
		var in []datagram
		var want [][]byte
		for i := range count {
			p := pkt{src: "192.168.0.5", dst: "192.168.0.70", seq: uint32(i)}.build(t)
			in = append(in, vxlanFrom(t, "node-a", testVNI, p, macOf("node-b")))
			want = append(want, p)
		}
		b.vxlan.inject(in...)
		b.start(t)
		waitCounts(t, b, fmt.Sprintf("rx.vxlan=%d", count))
		if got := b.tun.written(); !slices.EqualFunc(got, want, bytes.Equal) {
			t.Errorf("the TUN got sequence numbers %v, want %v in order and unchanged", seqs(got), seqs(want))
		}
		if m := b.vxlan.maxRead.Load(); m != conn.MaxBatch {
			t.Errorf("the largest read took %d datagrams, want conn.MaxBatch, %d", m, conn.MaxBatch)
		}
	})
}

// sameSet reports whether got and want hold the same packets, each once,
// in any order.
func sameSet(got, want [][]byte) bool {
	if len(got) != len(want) {
		return false
	}
	left := map[string]int{}
	for _, p := range want {
		left[string(p)]++
	}
	for _, p := range got {
		if left[string(p)] == 0 {
			return false
		}
		left[string(p)]--
	}
	return true
}

func seqs(pkts [][]byte) []uint32 {
	var s []uint32
	for _, p := range pkts {
		s = append(s, seqOf(p))
	}
	return s
}

// editCluster returns cluster with old replaced by new, which must occur.
func editCluster(t testing.TB, cluster, old, new string) string {
	t.Helper()
	if !strings.Contains(cluster, old) {
		t.Fatalf("the cluster has no %q to replace", old)
	}
	return strings.Replace(cluster, old, new, 1)
}

// TestUpdateWhilePacketsFlow swaps node A's plan while a stream of packets
// flows through it to one workload address. Every packet arrives once and
// unchanged; the packets that take the old route are exactly those before
// some point of the stream, the rest take the new one; and every packet
// that entered the TUN after Update returned takes the new route.
func TestUpdateWhilePacketsFlow(t *testing.T) {
	moved := editCluster(t, editCluster(t, testCluster,
		`blocks = ["192.168.0.64/26", "10.1.0.64/26", "10.2.0.64/26"]`, `blocks = ["10.1.0.64/26", "10.2.0.64/26"]`),
		`blocks = ["192.168.0.128/26", "10.1.0.128/26"]`, `blocks = ["192.168.0.128/26", "10.1.0.128/26", "192.168.0.64/26"]`)
	switched := editCluster(t, testCluster, "vxlanMode = \"Always\"\nnatOutgoing = true", "ipipMode = \"Always\"\nnatOutgoing = true")
	type route struct {
		kind plan.Encap
		node string
	}
	tests := []struct {
		name      string
		next      string            // node A's cluster after the update
		receivers map[string]string // node name: its cluster throughout
		old, new  route
	}{
		{"the block moves from node B to node C", moved,
			map[string]string{"node-b": testCluster, "node-c": moved},
			route{plan.EncapVXLAN, "node-b"}, route{plan.EncapVXLAN, "node-c"}},
		{"the pool switches from VXLAN to IP-in-IP", switched,
			map[string]string{"node-b": testCluster},
			route{plan.EncapVXLAN, "node-b"}, route{plan.EncapIPIP, "node-b"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			network := newMemNetwork()
			receivers := map[string]*testNode{}
			for name, cluster := range tc.receivers {
				receivers[name] = startNode(t, network, planFor(t, cluster, name), nodeOpts{})
			}
			a := startNode(t, network, planFor(t, testCluster, "node-a"), nodeOpts{})
			next := planFor(t, tc.next, "node-a")

			// The stream's packets differ only in their sequence number;
			// the UDP checksum is off (zero) so none needs computing.
			template := pkt{src: "192.168.0.5", dst: "192.168.0.70"}.build(t)
			template[26], template[27] = 0, 0
			packet := func(seq int) []byte {
				p := slices.Clone(template)
				p[28], p[29], p[30], p[31] = byte(seq>>24), byte(seq>>16), byte(seq>>8), byte(seq)
				return p
			}
			var (
				updated    atomic.Bool
				firstAfter atomic.Int64 // the first packet injected after Update returned
				injected   atomic.Int64
				stop, done = make(chan struct{}), make(chan struct{})
			)
			firstAfter.Store(-1)
			go func() {
				defer close(done)
				for seq := 0; ; seq++ {
					select {
					case <-stop:
						return
					default:
					}
					if updated.Load() && firstAfter.Load() < 0 {
						firstAfter.Store(int64(seq))
					}
					a.tun.inject(packet(seq))
					injected.Store(int64(seq + 1))
				}
			}()
			sentBy := func(r route) int {
				tr := a.vxlan
				if r.kind == plan.EncapIPIP {
					tr = a.ipip
				}
				n := 0
				for _, m := range tr.sentMsgs() {
					if m.to == underlayOf(t, r.node) {
						n++
					}
				}
				return n
			}
			eventually(t, func() bool { return sentBy(tc.old) >= 100 },
				func() string { return fmt.Sprintf("%d packets took the old route", sentBy(tc.old)) })
			if err := a.r.Update(next, nil, nil); err != nil {
				t.Fatal(err)
			}
			updated.Store(true)
			eventually(t, func() bool { return firstAfter.Load() >= 0 && sentBy(tc.new) >= 100 },
				func() string {
					return fmt.Sprintf("%d packets took the new route; first packet injected after the update: %d", sentBy(tc.new), firstAfter.Load())
				})
			close(stop)
			<-done
			total := int(injected.Load())

			delivered := func() int {
				n := 0
				for _, r := range receivers {
					n += len(r.tun.written())
				}
				return n
			}
			eventually(t, func() bool { return delivered() == total },
				func() string { return fmt.Sprintf("%d of %d packets delivered", delivered(), total) })

			// How node A sent each packet.
			routeOf := make([]*route, total)
			for _, r := range []route{tc.old, tc.new} {
				tr, lead := a.vxlan, encap.VXLANPayloadLen
				if r.kind == plan.EncapIPIP {
					tr, lead = a.ipip, encap.IPIPOverhead
				}
				for _, m := range tr.sentMsgs() {
					if m.to != underlayOf(t, r.node) {
						continue
					}
					seq := int(seqOf(m.b[lead:]))
					if routeOf[seq] != nil {
						t.Fatalf("packet %d sent twice", seq)
					}
					routeOf[seq] = &r
				}
			}
			cut := -1 // the first packet that took the new route
			for seq, r := range routeOf {
				switch {
				case r == nil:
					t.Fatalf("packet %d was not sent by either route", seq)
				case *r == tc.new && cut < 0:
					cut = seq
				case *r == tc.old && cut >= 0:
					t.Fatalf("packet %d took the old route after packet %d took the new one", seq, cut)
				}
			}
			if cut <= 0 || cut >= total {
				t.Fatalf("the routes changed at packet %d of %d: not in the middle of the stream", cut, total)
			}
			if f := int(firstAfter.Load()); f < 0 || cut > f {
				t.Errorf("packet %d entered after Update returned but took the old route (the new one from packet %d)", f, cut)
			}

			// Where each packet arrived: once, unchanged, at the node its
			// route went to.
			arrived := make([]string, total)
			for name, r := range receivers {
				for _, p := range r.tun.written() {
					seq := int(seqOf(p))
					if arrived[seq] != "" {
						t.Errorf("packet %d arrived at %s and at %s", seq, arrived[seq], name)
					}
					arrived[seq] = name
					if !bytes.Equal(p, packet(seq)) {
						t.Errorf("packet %d arrived changed: %x", seq, p)
					}
					if routeOf[seq].node != name {
						t.Errorf("packet %d was sent to %s but arrived at %s", seq, routeOf[seq].node, name)
					}
				}
			}
			for _, n := range append([]*testNode{a}, mapValues(receivers)...) {
				s := n.r.Stats()
				for reason, v := range s.Drops {
					if v != 0 {
						t.Errorf("%s dropped %d packets: %s", n.name, v, reason)
					}
				}
			}
			t.Logf("%d packets, the new route from packet %d; %d entered after Update returned", total, cut, total-int(firstAfter.Load()))
		})
	}
}

func mapValues[K comparable, V any](m map[K]V) []V {
	var vs []V
	for _, v := range m {
		vs = append(vs, v)
	}
	return vs
}
