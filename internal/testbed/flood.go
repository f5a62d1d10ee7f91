package testbed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/net/ipv4"
)

// Forged is a stream of forged encapsulated packets one host sends to
// another's underlay address: VXLAN payloads in UDP datagrams to Port, or,
// with Port 0, inner IPv4 packets behind an outer header with IP protocol 4
// (IP-in-IP) that the kernel of From adds.
type Forged struct {
	From *Host
	To   netip.Addr
	Port uint16
	// Packets are sent in turn, over and over.
	Packets [][]byte
}

// floodBatch is how many packets one sendmmsg call offers.
const floodBatch = 64

// Flood sends f's packets as fast as one socket takes them until ctx is
// done, and returns how many the kernel took. A packet the sending host's
// own link refuses (ENOBUFS: its queue toward the next hop was full) is not
// counted: it never left.
func Flood(ctx context.Context, f Forged) (sent uint64, err error) {
	if len(f.Packets) == 0 {
		return 0, errors.New("testbed: flood: no packets")
	}
	var pc *ipv4.PacketConn
	var dst net.Addr
	err = f.From.Do(func() error {
		if f.Port == 0 {
			c, err := net.ListenIP("ip4:4", nil)
			if err != nil {
				return err
			}
			// The socket is also handed every IP-in-IP packet the host
			// receives; it reads none, so it should buffer none.
			_ = c.SetReadBuffer(0)
			pc, dst = ipv4.NewPacketConn(c), &net.IPAddr{IP: f.To.AsSlice()}
			return nil
		}
		c, err := net.ListenUDP("udp4", nil)
		if err != nil {
			return err
		}
		pc, dst = ipv4.NewPacketConn(c), net.UDPAddrFromAddrPort(netip.AddrPortFrom(f.To, f.Port))
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("testbed: flood from %s: %w", f.From.Name, err)
	}
	defer pc.Close()
	msgs := make([]ipv4.Message, floodBatch)
	for i := range msgs {
		msgs[i] = ipv4.Message{Buffers: [][]byte{f.Packets[i%len(f.Packets)]}, Addr: dst}
	}
	for ctx.Err() == nil {
		n, err := pc.WriteBatch(msgs, 0)
		sent += uint64(max(n, 0))
		if err != nil && !errors.Is(err, syscall.ENOBUFS) {
			return sent, fmt.Errorf("testbed: flood from %s: %w", f.From.Name, err)
		}
	}
	return sent, nil
}

// ForgedUDP is an IPv4 packet carrying a UDP datagram from src to dst:port,
// checksums right: what a forged encapsulated packet carries inside.
func ForgedUDP(src, dst netip.Addr, port uint16) ([]byte, error) {
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	udp := &layers.UDP{SrcPort: 40000, DstPort: layers.UDPPort(port)}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		return nil, err
	}
	return serializeForged(ip, udp, gopacket.Payload("forged"))
}

// ForgedVXLAN is a VXLAN payload (header, inner Ethernet to dstMAC, inner
// packet) with the given VNI.
func ForgedVXLAN(vni uint32, dstMAC net.HardwareAddr, inner []byte) ([]byte, error) {
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{0x66, 1, 2, 3, 4, 5}, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}
	return serializeForged(&layers.VXLAN{ValidIDFlag: true, VNI: vni}, eth, gopacket.Payload(inner))
}

func serializeForged(ls ...gopacket.SerializableLayer) ([]byte, error) {
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		return nil, fmt.Errorf("testbed: forging a packet: %w", err)
	}
	return append([]byte(nil), buf.Bytes()...), nil
}

// LinkDrops is the sum of the transmit and receive drops of every link of
// the host (ip -s link): a veth that finds its peer's input backlog full
// counts the packet as a transmit drop.
func (h *Host) LinkDrops(ctx context.Context) (uint64, error) {
	out, err := h.Run(ctx, "ip", "-j", "-s", "link", "show")
	if err != nil {
		return 0, fmt.Errorf("%s: ip -s link: %w", h.Name, err)
	}
	var links []struct {
		Stats struct {
			RX struct{ Dropped uint64 } `json:"rx"`
			TX struct{ Dropped uint64 } `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		return 0, fmt.Errorf("%s: ip -s link: %w", h.Name, err)
	}
	var sum uint64
	for _, l := range links {
		sum += l.Stats.RX.Dropped + l.Stats.TX.Dropped
	}
	return sum, nil
}

// SocketOverflows are the packets the host's kernel delivered to a socket
// whose receive buffer was full: UDP's (RcvbufErrors in /proc/net/snmp)
// and those of the raw sockets of IP protocol 4 (the drops column of
// /proc/net/raw), in the host's namespace.
func (h *Host) SocketOverflows(ctx context.Context) (udp, ipip uint64, err error) {
	snmp, err := h.Run(ctx, "cat", "/proc/net/snmp")
	if err != nil {
		return 0, 0, fmt.Errorf("%s: /proc/net/snmp: %w", h.Name, err)
	}
	if udp, err = snmpField(string(snmp), "Udp:", "RcvbufErrors"); err != nil {
		return 0, 0, fmt.Errorf("%s: %w", h.Name, err)
	}
	raw, err := h.Run(ctx, "cat", "/proc/net/raw")
	if err != nil {
		return 0, 0, fmt.Errorf("%s: /proc/net/raw: %w", h.Name, err)
	}
	for _, line := range strings.Split(string(raw), "\n")[1:] {
		f := strings.Fields(line)
		// local_address is address:protocol, in hex.
		if len(f) < 13 || !strings.HasSuffix(f[1], ":0004") {
			continue
		}
		n, err := strconv.ParseUint(f[len(f)-1], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: /proc/net/raw drops %q: %w", h.Name, f[len(f)-1], err)
		}
		ipip += n
	}
	return udp, ipip, nil
}

// snmpField finds one counter in /proc/net/snmp, where each protocol has a
// line of names followed by a line of values.
func snmpField(snmp, proto, name string) (uint64, error) {
	lines := strings.Split(snmp, "\n")
	for i := 0; i+1 < len(lines); i++ {
		if !strings.HasPrefix(lines[i], proto) || !strings.HasPrefix(lines[i+1], proto) {
			continue
		}
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		for j, n := range names {
			if n == name && j < len(values) {
				return strconv.ParseUint(values[j], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no %s %s in /proc/net/snmp", proto, name)
}
