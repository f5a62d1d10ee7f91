package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/overlayd/overlayd/conn"
	"github.com/overlayd/overlayd/encap"
	"github.com/overlayd/overlayd/internal/testbed"
)

// What Linux 6.17 added for GSO over UDP tunnels through TUN/TAP, from
// include/uapi/linux/if_tun.h and include/uapi/linux/virtio_net.h (the
// installed headers are older).
const (
	tunFCsum               = 0x01  // TUN_F_CSUM
	tunFTSO4               = 0x02  // TUN_F_TSO4
	tunFUDPTunnelGSO       = 0x080 // TUN_F_UDP_TUNNEL_GSO
	tunFUDPTunnelGSOCsum   = 0x100 // TUN_F_UDP_TUNNEL_GSO_CSUM
	vnetFlagNeedsCsum      = 1     // VIRTIO_NET_HDR_F_NEEDS_CSUM
	vnetGSOTCPv4           = 1     // VIRTIO_NET_HDR_GSO_TCPV4
	vnetGSOUDPTunnelIPv4   = 0x20  // VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4
	vnetTunnelHdrLen       = 24    // sizeof(struct virtio_net_hdr_v1_hash_tunnel)
	vnetFlags              = 0     // the fields of that header, little-endian
	vnetGSOType            = 1
	vnetHdrLen             = 2
	vnetGSOSize            = 4
	vnetCsumStart          = 6
	vnetCsumOffset         = 8
	vnetOuterTHOffset      = 20
	vnetInnerNHOffset      = 22
	tcpChecksumFieldOffset = 16
	// tunnelOuterL3Min is the check in virtio_net_hdr_tnl_to_skb
	// (include/linux/virtio_net.h) that an IFF_TUN device cannot meet
	// with a plain outer IPv4 header: outer_th_offset >= ETH_HLEN +
	// sizeof(struct iphdr), whatever the device's link layer.
	tunnelOuterL3Min = header.EthernetMinimumSize + header.IPv4MinimumSize
)

// The bed's addresses and the super-packet's shape. innerMSS fills a
// 1500-byte underlay (outer IPv4, UDP, VXLAN, inner Ethernet, inner IPv4
// and TCP in front); tgsoSegments segments of it are the most one UDP GSO
// send of conn carries (65507 bytes of UDP payload), so that both methods
// move one super-packet per system call.
const (
	tgsoVXLANPort = 4789
	innerMSS      = testbed.DefaultMTU - encap.VXLANOverhead - header.IPv4MinimumSize - header.TCPMinimumSize
	tgsoSegments  = 44
	tgsoPayload   = tgsoSegments * innerMSS
	tgsoVNI       = 4096
	tgsoRunTime   = 2 * time.Second
	tgsoRepeats   = 3
)

var (
	tgsoNodeA   = netip.MustParseAddr("198.18.1.10")
	tgsoNodeC   = netip.MustParseAddr("198.18.2.10")
	tgsoInnerSr = [4]byte{192, 168, 0, 5}
	tgsoInnerDs = [4]byte{192, 168, 1, 7}
	tgsoMAC     = [6]byte{0x66, 0x0c, 0, 0, 0, 1}
)

// TestMeasureTunnelGSO asks whether Linux 6.17's GSO over UDP tunnels for
// TUN/TAP (TUN_F_UDP_TUNNEL_GSO, virtio_net_hdr_v1_hash_tunnel) lets one
// VXLAN-encapsulated TCP super-packet cross the kernel as one skb, and
// measures it against what overlayd does today: split the super-packet in
// userspace into MSS-sized segments, each with its inner headers fixed
// and checksummed and a VXLAN and inner Ethernet header in front, and send
// the train with one UDP GSO send (encap.Encapsulator and conn.UDPConn).
// Node C receives both with the same UDP socket, bound to 4789 with
// UDP_GRO as overlayd's is, which checks every byte of the probes.
//
// It writes the super-packet into an IFF_TUN device (refused: see
// tunnelOuterL3Min), into the same with outer IPv4 options that move the
// outer UDP header past that check, and into an IFF_TAP device with an
// Ethernet header; finds which sysctls node A needs; and measures the
// methods that work twice: with the veths' offloads, where no one cuts
// the super-packet anywhere, and with node A's eth0 made to segment in
// software, as a NIC without the offload would need. It logs a table per
// case and the findings. A measurement for people, not a check:
//
//	OVERLAYD_MEASURE=1 go test -count=1 -v -run TestMeasureTunnelGSO ./cmd/overlayd/
func TestMeasureTunnelGSO(t *testing.T) {
	if os.Getenv(measureEnv) != "1" {
		t.Skipf("a measurement, not a check: set %s=1 to run it", measureEnv)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: it builds network namespaces and TUN/TAP devices")
	}
	uname, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	t.Logf("kernel %s", strings.TrimSpace(string(uname)))
	bed := testbed.NewStandard(t, testbed.Options{})
	a, c, router := bed.Host("node-a"), bed.Host("node-c"), bed.Host("router")

	rx, err := newTGSOReceiver(c, netip.AddrPortFrom(tgsoNodeC, tgsoVXLANPort))
	if err != nil {
		t.Fatal(err)
	}
	defer rx.close()

	// 1. An IFF_TUN device with a plain outer IPv4 header; the same with
	// 16 bytes of NOP options, which move the outer UDP header to where
	// the kernel's check wants it; and an IFF_TAP device.
	var working []*tgsoDevice
	var findings []string
	for _, v := range []struct {
		name     string
		tap      bool
		outerIHL int
	}{
		{"tun", false, header.IPv4MinimumSize},
		{"tun+ipopts", false, tunnelOuterL3Min + 2},
		{"tap", true, header.IPv4MinimumSize},
	} {
		dev, err := openTGSODevice(a, "ugso-"+strings.ReplaceAll(v.name, "+ipopts", "o"), v.tap, v.outerIHL)
		if errors.Is(err, errTunnelGSORefused) {
			t.Skipf("the kernel refuses GSO over UDP tunnels on TUN: %v", err)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer dev.close()
		if err := acceptLocalFrom(a, dev.name); err != nil {
			t.Fatal(err)
		}
		p := probe(t, rx, router, func(seq uint32) error { return dev.send(seq, true) })
		t.Logf("probe %-11s outer_th_offset %2d: write: %v; device %s; router to-node-a rx +%d, to-node-c tx +%d; node C: %s",
			v.name, dev.outerTH, errText(p.writeErr), devStats(t, a, dev.name), p.routerRx, p.routerTx, p.summary())
		if p.writeErr == nil && p.ok {
			working = append(working, dev)
			findings = append(findings, fmt.Sprintf("%s (outer UDP header at %d): the write works; the super-packet crosses node A and the router as one skb (router veths +%d/+%d packets) and node C's UDP_GRO socket gets %s",
				v.name, dev.outerTH, p.routerRx, p.routerTx, p.summary()))
		} else {
			findings = append(findings, fmt.Sprintf("%s (outer UDP header at %d): write %s, %s; virtio_net_hdr_tnl_to_skb wants outer_th_offset >= ETH_HLEN + sizeof(struct iphdr) = %d even on an IFF_TUN device, whose frames have no Ethernet header",
				v.name, dev.outerTH, errText(p.writeErr), devStats(t, a, dev.name), tunnelOuterL3Min))
		}
	}
	// The UDP GSO train, overlayd's way, through the same probe.
	var uc *conn.UDPConn
	if err := a.Do(func() error {
		var err error
		uc, err = conn.ListenUDP(netip.AddrPortFrom(tgsoNodeA, tgsoVXLANPort))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	split, err := newTGSOSplitter(uc)
	if err != nil {
		t.Fatal(err)
	}
	p := probe(t, rx, router, func(seq uint32) error { return split.send(seq, true) })
	t.Logf("probe %-11s UDP GSO send: write: %v; router to-node-a rx +%d, to-node-c tx +%d; node C: %s",
		"split", errText(p.writeErr), p.routerRx, p.routerTx, p.summary())

	// 2. Which sysctls the kernel path needs, on the first device that
	// works: each row is one super-packet written with those settings.
	for _, d := range working {
		if d.tap {
			findings = append(findings, "sysctls in node A for the TAP's packets (source: node A's own address): "+sysctlProbe(t, a, rx, router, d))
		}
	}

	// 3. The measurement: each method for tgsoRunTime, tgsoRepeats times,
	// interleaved so that the machine's other load falls on both.
	type method struct {
		name string
		send func(seq uint32, fill bool) error
	}
	methods := []method{{"split + UDP GSO (today)", split.send}}
	for _, d := range working {
		methods = append(methods, method{"tunnel GSO via " + d.kind(), d.send})
	}
	// The veths take GSO skbs of both kinds whole, so nothing is cut
	// anywhere in the bed. A gso_max_size below the super-packet on node
	// A's eth0 makes gso_features_check (net/core/dev.c) drop the GSO
	// features for it, and the kernel segments in software in node A, as
	// it must for a NIC without UDP-tunnel TSO (or, for today's trains,
	// without USO). gso_max_segs would not do: a GSO skb from TUN/TAP is
	// SKB_GSO_DODGY with gso_segs 0 until segmented, so only today's
	// trains would be cut.
	for _, sc := range []struct{ label, size string }{
		{"veth offloads", "65536"},
		{"node A eth0 gso_max_size 16384 (software GSO in node A)", "16384"},
	} {
		if err := a.IP("link", "set", "eth0", "gso_max_size", sc.size); err != nil {
			t.Fatal(err)
		}
		for _, m := range methods {
			p := probe(t, rx, router, func(seq uint32) error { return m.send(seq, true) })
			t.Logf("%s: probe %-28s write %s; router to-node-a rx +%d, to-node-c tx +%d; node C: %s",
				sc.label, m.name, errText(p.writeErr), p.routerRx, p.routerTx, p.summary())
		}
		results := make([][]tgsoRun, len(methods))
		for range tgsoRepeats {
			for i, m := range methods {
				r := runTGSO(t, rx, c, router, func(seq uint32) error { return m.send(seq, false) })
				results[i] = append(results[i], r)
				t.Logf("%s: run %-28s %s", sc.label, m.name, r)
			}
		}
		t.Logf("%s: medians of %d runs of %v each, inner TCP payload of %d bytes per super-packet (%d x MSS %d):",
			sc.label, tgsoRepeats, tgsoRunTime, tgsoPayload, tgsoSegments, innerMSS)
		t.Logf("%-28s %10s %12s %12s %10s %12s %12s", "method", "Gbit/s rx", "send s/GB", "recv s/GB", "lost %", "dgrams/GB", "router pkt/SP")
		var today tgsoRun
		for i, m := range methods {
			med := medianRun(results[i])
			t.Logf("%-28s %10.2f %12.3f %12.3f %10.2f %12.0f %12.2f", m.name, med.gbps, med.sendCPUPerGB, med.recvCPUPerGB, med.lostPct, med.dgramsPerGB, med.routerPerSP)
			if i == 0 {
				today = med
				continue
			}
			findings = append(findings, fmt.Sprintf("%s: %s: sender %.2fx today's CPU per GB, %.2fx today's Gbit/s at node C",
				sc.label, m.name, med.sendCPUPerGB/today.sendCPUPerGB, med.gbps/today.gbps))
		}
	}
	t.Logf("findings:")
	for _, f := range findings {
		t.Logf("- %s", f)
	}
}

var errTunnelGSORefused = errors.New("TUNSETOFFLOAD or TUNSETVNETHDRSZ refused")

// tgsoDevice is a TUN or TAP device in node A with GSO over UDP tunnels
// on, and the buffer of one write: the virtio-net header, the outer
// headers and the inner super-packet.
type tgsoDevice struct {
	fd, ifindex int
	name        string
	tap         bool
	mac         net.HardwareAddr
	enc         *encap.Encapsulator
	// Offsets into frame, which starts after the virtio-net header.
	outerNH, outerTH, innerNH, innerTH int
	gsoSize                            int    // the inner MSS the kernel cuts at
	buf                                []byte // virtio-net header and frame
}

func (d *tgsoDevice) kind() string {
	if d.tap {
		return "TAP"
	}
	return "TUN+IP options"
}

func openTGSODevice(h *testbed.Host, name string, tap bool, outerIHL int) (*tgsoDevice, error) {
	d := &tgsoDevice{name: name, tap: tap, fd: -1}
	err := h.Do(func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("/dev/net/tun: %w", err)
		}
		d.fd = fd
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		flags := uint16(unix.IFF_TUN)
		if tap {
			flags = unix.IFF_TAP
		}
		ifr.SetUint16(flags | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			return fmt.Errorf("TUNSETIFF %s: %w", name, err)
		}
		if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, vnetTunnelHdrLen); err != nil {
			return fmt.Errorf("%w: TUNSETVNETHDRSZ %d: %w", errTunnelGSORefused, vnetTunnelHdrLen, err)
		}
		if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, tunFCsum|tunFTSO4|tunFUDPTunnelGSO|tunFUDPTunnelGSOCsum); err != nil {
			return fmt.Errorf("%w: TUNSETOFFLOAD: %w", errTunnelGSORefused, err)
		}
		link, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return err
		}
		d.ifindex, d.mac = link.Attrs().Index, link.Attrs().HardwareAddr
		return nil
	})
	if err != nil {
		d.close()
		return nil, err
	}
	if tap {
		d.outerNH = header.EthernetMinimumSize
	}
	d.outerTH = d.outerNH + outerIHL
	// IPv4 options ride in every segment's outer header, so they take
	// from the MSS; otherwise ip_forward's skb_gso_validate_network_len
	// finds the segments too big for the 1500-byte underlay and, DF set,
	// drops the super-packet.
	d.gsoSize = innerMSS - (outerIHL - header.IPv4MinimumSize)
	d.innerNH = d.outerTH + header.UDPMinimumSize + encap.VXLANPayloadLen
	d.innerTH = d.innerNH + header.IPv4MinimumSize
	d.buf = make([]byte, vnetTunnelHdrLen+d.innerTH+header.TCPMinimumSize+tgsoPayload)
	d.enc, err = encap.NewEncapsulator(encap.Config{Local: tgsoNodeA.As4(), VTEPMAC: tgsoMAC, VNI: tgsoVNI})
	if err != nil {
		d.close()
		return nil, err
	}
	putInnerSuperPacket(d.frame()[d.innerNH:], 0, true)
	return d, nil
}

func (d *tgsoDevice) frame() []byte { return d.buf[vnetTunnelHdrLen:] }

func (d *tgsoDevice) close() {
	if d.fd >= 0 {
		unix.Close(d.fd)
		d.fd = -1
	}
}

// send writes the inner super-packet with stream position seq (its
// payload refilled to match if fill) behind the virtio-net header and the
// outer headers, in one write, as a sender would after reading it from
// its workload TUN into the same buffer.
func (d *tgsoDevice) send(seq uint32, fill bool) error {
	f := d.frame()
	inner := f[d.innerNH:]
	putInnerSuperPacket(inner, seq, fill)
	// VXLAN and inner Ethernet, by overlayd's own encapsulator, which
	// wants the packet encap.Headroom bytes into the slice it is given
	// (the virtio-net header and the outer headers make that room).
	if d.enc.VXLANPayload(d.buf[vnetTunnelHdrLen+d.innerNH-encap.Headroom:], len(inner), tgsoMAC) == nil {
		return errors.New("VXLANPayload refused the super-packet")
	}
	if d.tap {
		copy(f[0:6], d.mac)
		copy(f[6:12], tgsoMAC[:])
		binary.BigEndian.PutUint16(f[12:], uint16(header.IPv4ProtocolNumber))
	}
	ip := header.IPv4(f[d.outerNH:d.outerTH])
	ihl := d.outerTH - d.outerNH
	ip[0] = byte(header.IPv4Version<<4 | ihl/4)
	for i := header.IPv4MinimumSize; i < ihl; i++ {
		ip[i] = 1 // NOP option
	}
	ip.SetTOS(0, 0)
	ip.SetTotalLength(uint16(len(f) - d.outerNH))
	ip.SetID(0)
	ip.SetFlagsFragmentOffset(header.IPv4FlagDontFragment, 0)
	ip.SetTTL(encap.OuterTTL)
	ip[9] = uint8(header.UDPProtocolNumber)
	a4, c4 := tgsoNodeA.As4(), tgsoNodeC.As4()
	copy(ip[12:16], a4[:])
	copy(ip[16:20], c4[:])
	ip.SetChecksum(0)
	ip.SetChecksum(^ip.CalculateChecksum())
	udp := header.UDP(f[d.outerTH:])
	udp.SetSourcePort(uint16(49152 + encap.FlowHash(inner)%16384))
	udp.SetDestinationPort(tgsoVXLANPort)
	udp.SetLength(uint16(len(f) - d.outerTH))
	udp.SetChecksum(0) // VXLAN's zero UDP checksum; no outer checksum offload
	v := d.buf[:vnetTunnelHdrLen]
	clear(v)
	v[vnetFlags] = vnetFlagNeedsCsum
	v[vnetGSOType] = vnetGSOTCPv4 | vnetGSOUDPTunnelIPv4
	binary.LittleEndian.PutUint16(v[vnetHdrLen:], uint16(d.innerTH+header.TCPMinimumSize))
	binary.LittleEndian.PutUint16(v[vnetGSOSize:], uint16(d.gsoSize))
	binary.LittleEndian.PutUint16(v[vnetCsumStart:], uint16(d.innerTH))
	binary.LittleEndian.PutUint16(v[vnetCsumOffset:], tcpChecksumFieldOffset)
	binary.LittleEndian.PutUint16(v[vnetOuterTHOffset:], uint16(d.outerTH))
	binary.LittleEndian.PutUint16(v[vnetInnerNHOffset:], uint16(d.innerNH))
	_, err := unix.Write(d.fd, d.buf)
	return err
}

// putInnerSuperPacket writes, at p, an inner IPv4/TCP super-packet of
// tgsoPayload bytes at stream position seq, as a TUN read with a
// virtio-net GSO header gives it: total length over the whole, and the
// TCP checksum field holding the pseudo-header sum for the device to
// finish. With fill the payload is the stream's bytes
// (streamByte, the pattern the e2e transfers check).
func putInnerSuperPacket(p []byte, seq uint32, fill bool) {
	ip := header.IPv4(p)
	ip[0] = byte(header.IPv4Version<<4 | header.IPv4MinimumSize/4)
	ip.SetTOS(0, 0)
	ip.SetTotalLength(uint16(header.IPv4MinimumSize + header.TCPMinimumSize + tgsoPayload))
	ip.SetID(uint16(seq / tgsoPayload))
	ip.SetFlagsFragmentOffset(header.IPv4FlagDontFragment, 0)
	ip.SetTTL(64)
	ip[9] = uint8(header.TCPProtocolNumber)
	copy(ip[12:16], tgsoInnerSr[:])
	copy(ip[16:20], tgsoInnerDs[:])
	ip.SetChecksum(0)
	ip.SetChecksum(^ip.CalculateChecksum())
	tcp := header.TCP(p[header.IPv4MinimumSize:])
	tcp.SetSourcePort(40000)
	tcp.SetDestinationPort(5201)
	tcp.SetSequenceNumber(seq)
	tcp.SetAckNumber(1)
	tcp.SetDataOffset(header.TCPMinimumSize)
	tcp.SetFlags(uint8(header.TCPFlagAck | header.TCPFlagPsh))
	tcp.SetWindowSize(0xffff)
	tcp.SetUrgentPointer(0)
	if fill {
		payload := p[header.IPv4MinimumSize+header.TCPMinimumSize:][:tgsoPayload]
		for i := range payload {
			payload[i] = streamByte(int64(seq + uint32(i)))
		}
	}
	tcp.SetChecksum(pseudoHeaderSum(tgsoInnerSr, tgsoInnerDs, header.TCPMinimumSize+tgsoPayload))
}

// pseudoHeaderSum is the one's-complement sum of the TCP pseudo-header.
func pseudoHeaderSum(src, dst [4]byte, length int) uint16 {
	var ph [12]byte
	copy(ph[0:4], src[:])
	copy(ph[4:8], dst[:])
	ph[9] = uint8(header.TCPProtocolNumber)
	binary.BigEndian.PutUint16(ph[10:], uint16(length))
	return checksum.Checksum(ph[:], 0)
}

// tgsoSplitter is today's sender: the super-packet split in userspace
// the way wireguard-go's tun.Device.Read splits one (headers copied, IPv4
// length, ID and checksum and TCP sequence, flags and checksum fixed per
// segment) into one buffer, a VXLAN and inner Ethernet header in front of
// each segment by overlayd's encapsulator, and the train handed to
// conn.UDPConn.WriteBatch, which sends it as one UDP GSO datagram.
type tgsoSplitter struct {
	uc    *conn.UDPConn
	enc   *encap.Encapsulator
	super []byte // the inner super-packet, as read from the TUN
	train []byte
	msgs  []conn.Message
}

// tgsoSegLen is one segment's UDP payload: VXLAN, inner Ethernet, inner
// IPv4 and TCP headers and MSS bytes.
const tgsoSegLen = encap.VXLANPayloadLen + header.IPv4MinimumSize + header.TCPMinimumSize + innerMSS

func newTGSOSplitter(uc *conn.UDPConn) (*tgsoSplitter, error) {
	enc, err := encap.NewEncapsulator(encap.Config{Local: tgsoNodeA.As4(), VTEPMAC: tgsoMAC, VNI: tgsoVNI})
	if err != nil {
		return nil, err
	}
	s := &tgsoSplitter{
		uc:    uc,
		enc:   enc,
		super: make([]byte, header.IPv4MinimumSize+header.TCPMinimumSize+tgsoPayload),
		train: make([]byte, encap.Headroom+tgsoSegments*tgsoSegLen),
		msgs:  make([]conn.Message, tgsoSegments),
	}
	for i := range s.msgs {
		s.msgs[i].Addr, s.msgs[i].Port = tgsoNodeC.As4(), tgsoVXLANPort
	}
	return s, nil
}

func (s *tgsoSplitter) send(seq uint32, fill bool) error {
	putInnerSuperPacket(s.super, seq, fill)
	const hdrs = header.IPv4MinimumSize + header.TCPMinimumSize
	in := header.IPv4(s.super)
	payload := s.super[hdrs:]
	id := in.ID()
	for i := range tgsoSegments {
		off := i * innerMSS
		n := min(innerMSS, len(payload)-off)
		buf := s.train[i*tgsoSegLen:]
		seg := buf[encap.Headroom : encap.Headroom+hdrs+n]
		copy(seg, s.super[:hdrs])
		copy(seg[hdrs:], payload[off:off+n])
		ip := header.IPv4(seg)
		ip.SetTotalLength(uint16(hdrs + n))
		ip.SetID(id + uint16(i))
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
		tcp := header.TCP(seg[header.IPv4MinimumSize:])
		tcp.SetSequenceNumber(seq + uint32(off))
		if i < tgsoSegments-1 {
			tcp.SetFlags(uint8(tcp.Flags() &^ (header.TCPFlagFin | header.TCPFlagPsh)))
		}
		tcp.SetChecksum(0)
		sum := checksum.Checksum(seg[header.IPv4MinimumSize:], pseudoHeaderSum(tgsoInnerSr, tgsoInnerDs, header.TCPMinimumSize+n))
		tcp.SetChecksum(^sum)
		pkt := s.enc.VXLANPayload(buf, len(seg), tgsoMAC)
		if pkt == nil {
			return errors.New("VXLANPayload refused a segment")
		}
		s.msgs[i].Buf = pkt
		s.msgs[i].Flow = encap.FlowHash(seg)
	}
	_, err := s.uc.WriteBatch(s.msgs)
	return err
}

// tgsoReceiver is node C's VXLAN socket, as overlayd opens it (UDP_GRO
// on), read by one locked thread that counts, per datagram, what the
// kernel handed over and, while verifying, checks every inner segment.
type tgsoReceiver struct {
	fd     int
	tid    atomic.Int64
	stop   atomic.Bool
	done   chan struct{}
	verify atomic.Bool

	datagrams, segments, payload atomic.Uint64

	mu   sync.Mutex
	seen []tgsoDatagram // while verifying
}

// tgsoDatagram is what the receiver saw of one datagram.
type tgsoDatagram struct {
	len, groSize, segments, payload int
	problems                        []string
	tcpCsum                         string // "full", "pseudo-header only" or "wrong"
}

func newTGSOReceiver(h *testbed.Host, local netip.AddrPort) (*tgsoReceiver, error) {
	r := &tgsoReceiver{fd: -1, done: make(chan struct{})}
	err := h.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		r.fd = fd
		for _, o := range [][3]int{
			{unix.IPPROTO_UDP, unix.UDP_GRO, 1},
			{unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 7 << 20},
		} {
			if err := unix.SetsockoptInt(fd, o[0], o[1], o[2]); err != nil {
				return fmt.Errorf("setsockopt %d/%d: %w", o[0], o[1], err)
			}
		}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000}); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrInet4{Addr: local.Addr().As4(), Port: int(local.Port())})
	})
	if err != nil {
		if r.fd >= 0 {
			unix.Close(r.fd)
		}
		return nil, err
	}
	go r.loop()
	return r, nil
}

func (r *tgsoReceiver) close() {
	r.stop.Store(true)
	<-r.done
	unix.Close(r.fd)
}

func (r *tgsoReceiver) loop() {
	runtime.LockOSThread()
	defer close(r.done)
	r.tid.Store(int64(unix.Gettid()))
	buf := make([]byte, 1<<16)
	oob := make([]byte, unix.CmsgSpace(4))
	for !r.stop.Load() {
		n, oobn, _, _, err := unix.Recvmsg(r.fd, buf, oob, 0)
		if err != nil {
			continue // the timeout, to look at stop
		}
		gro := 0
		if cms, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, cm := range cms {
				if cm.Header.Level == unix.SOL_UDP && cm.Header.Type == unix.UDP_GRO && len(cm.Data) >= 4 {
					gro = int(binary.NativeEndian.Uint32(cm.Data))
				}
			}
		}
		d := tgsoDatagram{len: n, groSize: gro}
		verify := r.verify.Load()
		step := n
		if gro > 0 {
			step = gro
		}
		for off := 0; off < n; off += step {
			payload, problem, csum := r.segment(buf[off:min(off+step, n)], verify)
			d.segments++
			d.payload += payload
			if problem != "" && len(d.problems) < 3 {
				d.problems = append(d.problems, problem)
			}
			switch {
			case d.tcpCsum == "":
				d.tcpCsum = csum
			case csum != d.tcpCsum:
				d.tcpCsum = "mixed"
			}
		}
		r.datagrams.Add(1)
		r.segments.Add(uint64(d.segments))
		r.payload.Add(uint64(d.payload))
		if verify {
			r.mu.Lock()
			r.seen = append(r.seen, d)
			r.mu.Unlock()
		}
	}
}

// segment parses one VXLAN datagram (or one segment of a GRO datagram)
// and returns its inner TCP payload length; while verifying also what is
// wrong with it and the state of its TCP checksum.
func (r *tgsoReceiver) segment(s []byte, verify bool) (payload int, problem, csum string) {
	if len(s) < encap.VXLANPayloadLen+header.IPv4MinimumSize+header.TCPMinimumSize || !encap.VXLAN(s).HasVNI() {
		return 0, fmt.Sprintf("not a VXLAN packet (%d bytes)", len(s)), ""
	}
	ip := header.IPv4(s[encap.VXLANPayloadLen:])
	ihl := int(ip.HeaderLength())
	tcp := header.TCP(ip[ihl:])
	hdrs := ihl + int(tcp.DataOffset())
	payload = len(ip) - hdrs
	if !verify {
		return payload, "", ""
	}
	if int(ip.TotalLength()) != len(ip) {
		problem = fmt.Sprintf("inner IPv4 total length %d, segment holds %d", ip.TotalLength(), len(ip))
	}
	if ip.CalculateChecksum() != 0xffff {
		problem = "inner IPv4 checksum wrong"
	}
	seq := tcp.SequenceNumber()
	for i, b := range ip[hdrs:] {
		if b != streamByte(int64(seq+uint32(i))) {
			problem = fmt.Sprintf("payload differs at stream byte %d", seq+uint32(i))
			break
		}
	}
	tcpLen := len(ip) - ihl
	ph := pseudoHeaderSum(tgsoInnerSr, tgsoInnerDs, tcpLen)
	switch {
	case checksum.Checksum(ip[ihl:], ph) == 0xffff:
		csum = "full"
	case tcp.Checksum() == ph:
		csum = "pseudo-header only (CHECKSUM_PARTIAL never finished)"
	default:
		csum = "wrong"
	}
	return payload, problem, csum
}

func (r *tgsoReceiver) take() []tgsoDatagram {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.seen
	r.seen = nil
	return s
}

// tgsoProbe is what one verified super-packet did.
type tgsoProbe struct {
	writeErr           error
	routerRx, routerTx uint64
	seen               []tgsoDatagram
	ok                 bool // arrived, byte-exact
}

func (p tgsoProbe) summary() string {
	if len(p.seen) == 0 {
		return "nothing arrived"
	}
	payload, segs := 0, 0
	var problems []string
	sizes := map[string]int{}
	for _, d := range p.seen {
		payload += d.payload
		segs += d.segments
		problems = append(problems, d.problems...)
		sizes[fmt.Sprintf("%d B (UDP_GRO cmsg %d, TCP checksum %s)", d.len, d.groSize, d.tcpCsum)]++
	}
	var kinds []string
	for k, n := range sizes {
		kinds = append(kinds, fmt.Sprintf("%d x %s", n, k))
	}
	slices.Sort(kinds)
	verdict := "byte-exact"
	if len(problems) > 0 {
		verdict = strings.Join(problems, "; ")
	} else if payload != tgsoPayload {
		verdict = fmt.Sprintf("%d of %d payload bytes", payload, tgsoPayload)
	}
	return fmt.Sprintf("%d datagram(s): %s; %d inner segment(s), %d payload bytes, %s",
		len(p.seen), strings.Join(kinds, ", "), segs, payload, verdict)
}

var probeSeq atomic.Uint32

// probe sends one super-packet with a filled payload and reports what
// node C's socket received and what the router's veths counted.
func probe(t *testing.T, rx *tgsoReceiver, router *testbed.Host, send func(seq uint32) error) tgsoProbe {
	t.Helper()
	rx.take()
	rx.verify.Store(true)
	defer rx.verify.Store(false)
	rxBefore, txBefore := routerCounters(t, router)
	seq := probeSeq.Add(tgsoPayload)
	var p tgsoProbe
	p.writeErr = send(seq)
	time.Sleep(300 * time.Millisecond)
	rxAfter, txAfter := routerCounters(t, router)
	p.routerRx, p.routerTx = rxAfter-rxBefore, txAfter-txBefore
	p.seen = rx.take()
	payload := 0
	p.ok = len(p.seen) > 0
	for _, d := range p.seen {
		payload += d.payload
		if len(d.problems) > 0 {
			p.ok = false
		}
	}
	p.ok = p.ok && payload == tgsoPayload
	return p
}

// routerCounters are the packets the router's veth from node A received
// and its veth to node C sent.
func routerCounters(t *testing.T, router *testbed.Host) (rx, tx uint64) {
	t.Helper()
	if err := router.Do(func() error {
		for _, l := range []struct {
			name string
			v    *uint64
			tx   bool
		}{{"to-node-a", &rx, false}, {"to-node-c", &tx, true}} {
			link, err := netlink.LinkByName(l.name)
			if err != nil {
				return err
			}
			st := link.Attrs().Statistics
			*l.v = st.RxPackets
			if l.tx {
				*l.v = st.TxPackets
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return rx, tx
}

// devStats is a device's receive counters: what the kernel took from
// writes and what it refused.
func devStats(t *testing.T, h *testbed.Host, name string) string {
	t.Helper()
	var s string
	if err := h.Do(func() error {
		link, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		st := link.Attrs().Statistics
		s = fmt.Sprintf("rx_packets %d, rx_frame_errors %d, rx_dropped %d", st.RxPackets, st.RxFrameErrors, st.RxDropped)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return s
}

func errText(err error) string {
	if err == nil {
		return "ok"
	}
	var errno unix.Errno
	if errors.As(err, &errno) {
		return fmt.Sprintf("%s (%v)", unix.ErrnoName(errno), err)
	}
	return err.Error()
}

// acceptLocalFrom sets what a device needs for node A to route packets
// written into it whose source is node A's own address: accept_local and
// no reverse-path filter (the bed sets rp_filter 0 on all and default;
// ip_forward is on in every node).
func acceptLocalFrom(h *testbed.Host, dev string) error {
	for _, kv := range [][2]string{
		{"net.ipv4.conf." + dev + ".accept_local", "1"},
		{"net.ipv4.conf." + dev + ".rp_filter", "0"},
	} {
		if err := h.Sysctl(kv[0], kv[1]); err != nil {
			return err
		}
	}
	return nil
}

// sysctlProbe writes one super-packet under each setting of the sysctls
// the path might need, and says whether it arrived. It leaves the
// settings that work.
func sysctlProbe(t *testing.T, a *testbed.Host, rx *tgsoReceiver, router *testbed.Host, d *tgsoDevice) string {
	t.Helper()
	conf := "net.ipv4.conf." + d.name + "."
	var verdicts []string
	for _, row := range []struct {
		label string
		set   [][2]string
	}{
		{"accept_local=0", [][2]string{{conf + "accept_local", "0"}}},
		{"accept_local=1, rp_filter=1 (strict) on the device", [][2]string{{conf + "accept_local", "1"}, {conf + "rp_filter", "1"}}},
		{"accept_local=1, rp_filter=2 (loose) on the device", [][2]string{{conf + "rp_filter", "2"}}},
		{"accept_local=1, rp_filter=0, ip_forward=0", [][2]string{{conf + "rp_filter", "0"}, {"net.ipv4.ip_forward", "0"}}},
		{"accept_local=1, rp_filter=0, ip_forward=1", [][2]string{{"net.ipv4.ip_forward", "1"}}},
	} {
		for _, kv := range row.set {
			if err := a.Sysctl(kv[0], kv[1]); err != nil {
				t.Fatal(err)
			}
		}
		p := probe(t, rx, router, func(seq uint32) error { return d.send(seq, true) })
		verdict := "arrives"
		if !p.ok {
			verdict = "does not arrive"
		}
		t.Logf("sysctls (%s, all.rp_filter=0): write %s, %s", row.label, errText(p.writeErr), verdict)
		verdicts = append(verdicts, row.label+": "+verdict)
	}
	return strings.Join(verdicts, "; ")
}

// tgsoRun is one timed run of one method.
type tgsoRun struct {
	superPackets, writeErrs, rcvbufErrs       uint64
	gbps, sendCPUPerGB, recvCPUPerGB, lostPct float64
	dgramsPerGB, routerPerSP                  float64
	sentGB, rxGB, sendCPU, recvCPU, elapsed   float64
}

func (r tgsoRun) String() string {
	return fmt.Sprintf("%d super-packets (%d refused) in %.2f s: %.2f Gbit/s received, %.2f%% lost (node C UDP RcvbufErrors +%d); sender %.3f CPU s/GB sent, receiver %.3f CPU s/GB received, %.0f datagrams/GB, %.2f router packets per super-packet",
		r.superPackets, r.writeErrs, r.elapsed, r.gbps, r.lostPct, r.rcvbufErrs, r.sendCPUPerGB, r.recvCPUPerGB, r.dgramsPerGB, r.routerPerSP)
}

// runTGSO sends super-packets with send from one locked thread for
// tgsoRunTime and measures what arrives and the CPU time both threads
// spent (schedstat: time on CPU, with the softirq work done in their
// context, as this kernel has no IRQ time accounting).
func runTGSO(t *testing.T, rx *tgsoReceiver, c, router *testbed.Host, send func(seq uint32) error) tgsoRun {
	t.Helper()
	time.Sleep(200 * time.Millisecond) // the last run's packets drained
	dg0, pl0 := rx.datagrams.Load(), rx.payload.Load()
	rcvbuf0 := udpRcvbufErrors(t, c)
	rtr0, _ := routerCounters(t, router)
	recv0 := threadCPU(t, int(rx.tid.Load()))
	var r tgsoRun
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tid := unix.Gettid()
		cpu0 := threadCPU(t, tid)
		start := time.Now()
		deadline := start.Add(tgsoRunTime)
		seq := uint32(0)
		for i := 0; ; i++ {
			if i%16 == 0 && time.Now().After(deadline) {
				break
			}
			if err := send(seq); err != nil {
				r.writeErrs++
			}
			r.superPackets++
			seq += tgsoPayload
		}
		r.elapsed = time.Since(start).Seconds()
		r.sendCPU = threadCPU(t, tid) - cpu0
	}()
	<-done
	time.Sleep(200 * time.Millisecond) // in flight
	r.recvCPU = threadCPU(t, int(rx.tid.Load())) - recv0
	rtr1, _ := routerCounters(t, router)
	r.rcvbufErrs = udpRcvbufErrors(t, c) - rcvbuf0
	dgrams, payload := rx.datagrams.Load()-dg0, rx.payload.Load()-pl0
	r.sentGB = float64((r.superPackets-r.writeErrs)*tgsoPayload) / 1e9
	r.rxGB = float64(payload) / 1e9
	r.gbps = r.rxGB * 8 / r.elapsed
	if r.sentGB > 0 {
		r.sendCPUPerGB = r.sendCPU / r.sentGB
		r.lostPct = 100 * (1 - r.rxGB/r.sentGB)
	}
	if r.rxGB > 0 {
		r.recvCPUPerGB = r.recvCPU / r.rxGB
		r.dgramsPerGB = float64(dgrams) / r.rxGB
	}
	if r.superPackets > 0 {
		r.routerPerSP = float64(rtr1-rtr0) / float64(r.superPackets)
	}
	return r
}

// udpRcvbufErrors is the host's count of UDP datagrams dropped for a full
// socket receive buffer (RcvbufErrors in /proc/net/snmp).
func udpRcvbufErrors(t *testing.T, h *testbed.Host) uint64 {
	t.Helper()
	var n uint64
	if err := h.Do(func() error {
		// /proc/thread-self/net is the namespace of this locked thread.
		b, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		var names []string
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 || f[0] != "Udp:" {
				continue
			}
			if names == nil {
				names = f
				continue
			}
			for i, name := range names {
				if name == "RcvbufErrors" && i < len(f) {
					n, err = strconv.ParseUint(f[i], 10, 64)
					return err
				}
			}
		}
		return errors.New("no Udp RcvbufErrors in /proc/net/snmp")
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// threadCPU is a thread's time on CPU in seconds, from its schedstat.
func threadCPU(t *testing.T, tid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/schedstat", tid))
	if err != nil {
		t.Errorf("schedstat of thread %d: %v", tid, err)
		return 0
	}
	ns, err := strconv.ParseUint(strings.Fields(string(b))[0], 10, 64)
	if err != nil {
		t.Errorf("schedstat of thread %d: %v", tid, err)
	}
	return float64(ns) / 1e9
}

// medianRun is, field by field, the median of runs.
func medianRun(runs []tgsoRun) tgsoRun {
	med := func(f func(tgsoRun) float64) float64 {
		v := make([]float64, len(runs))
		for i, r := range runs {
			v[i] = f(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	return tgsoRun{
		gbps:         med(func(r tgsoRun) float64 { return r.gbps }),
		sendCPUPerGB: med(func(r tgsoRun) float64 { return r.sendCPUPerGB }),
		recvCPUPerGB: med(func(r tgsoRun) float64 { return r.recvCPUPerGB }),
		lostPct:      med(func(r tgsoRun) float64 { return r.lostPct }),
		dgramsPerGB:  med(func(r tgsoRun) float64 { return r.dgramsPerGB }),
		routerPerSP:  med(func(r tgsoRun) float64 { return r.routerPerSP }),
	}
}
