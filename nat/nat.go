package nat

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/overlayd/overlayd/encap"
)

// Config is what a NAT needs.
type Config struct {
	// Outside is the node's address: flows leave from it.
	Outside netip.Addr
	// Out writes one IPv4 packet toward a workload (into the TUN). It may be
	// called from several goroutines at once and must not keep pkt.
	Out func(pkt []byte) error
	// MaxFlows and MaxFlowsPerSource limit the table (0: 65536 and 1024).
	MaxFlows, MaxFlowsPerSource int
	Timeouts                    Timeouts
	// MTU of the path to the workloads, for the netstack's NIC.
	MTU    int
	Logger *slog.Logger
}

// Stats are the NAT's counters.
type Stats struct {
	Flows   map[string]int    `json:"flows"` // by "proto/state"
	Created uint64            `json:"created"`
	Expired uint64            `json:"expired"`
	Refused map[string]uint64 `json:"refused"` // by reason
	Dropped uint64            `json:"dropped"` // packets the queue had no room for
}

// NAT terminates workloads' outgoing flows and re-originates them.
type NAT struct {
	cfg    Config
	log    *slog.Logger
	stack  *stack.Stack
	link   *channel.Endpoint
	table  *table
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	queue  chan []byte // packets from the router for the netstack
	drops  atomic.Uint64
}

const nicID = 1

// New starts a NAT.
func New(cfg Config) (*NAT, error) {
	if !cfg.Outside.Is4() || cfg.Out == nil {
		return nil, errors.New("nat: an IPv4 outside address and an Out function are required")
	}
	if cfg.MaxFlows == 0 {
		cfg.MaxFlows = 65536
	}
	if cfg.MaxFlowsPerSource == 0 {
		cfg.MaxFlowsPerSource = 1024
	}
	if cfg.MTU == 0 {
		cfg.MTU = 1500
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	link := channel.New(1024, uint32(cfg.MTU), "")
	if err := s.CreateNIC(nicID, link); err != nil {
		return nil, fmt.Errorf("nat: netstack NIC: %v", err)
	}
	// Accept packets for any address and answer from it: the netstack
	// stands in for every destination outside the pools.
	s.SetPromiscuousMode(nicID, true)
	s.SetSpoofing(nicID, true)
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: nicID}})
	// A large receive window so one flow is not held back by the relay.
	sack := tcpip.TCPSACKEnabled(true)
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack)

	ctx, cancel := context.WithCancel(context.Background())
	n := &NAT{cfg: cfg, log: log, stack: s, link: link, ctx: ctx, cancel: cancel,
		table: newTable(cfg.MaxFlows, cfg.MaxFlowsPerSource, cfg.Timeouts), queue: make(chan []byte, 4096)}
	tcpFwd := tcp.NewForwarder(s, 0, 4096, n.handleTCP)
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, tcpFwd.HandlePacket)
	udpFwd := udp.NewForwarder(s, n.handleUDP)
	s.SetTransportProtocolHandler(udp.ProtocolNumber, udpFwd.HandlePacket)
	n.wg.Go(n.inbound)
	n.wg.Go(n.outbound)
	return n, nil
}

// Deliver takes a workload's packet for the outside. It copies what it
// keeps and never blocks: when the queue is full the packet is dropped and
// counted, as a full NIC queue would.
func (n *NAT) Deliver(pkt []byte) {
	if len(pkt) < header.IPv4MinimumSize || header.IPv4(pkt).HeaderLength() < header.IPv4MinimumSize {
		return
	}
	select {
	case n.queue <- append([]byte(nil), pkt...):
	default:
		n.drops.Add(1)
	}
}

// inbound feeds the netstack, answering ICMP echo and refusing new UDP
// flows over a limit on the way.
func (n *NAT) inbound() {
	for {
		select {
		case <-n.ctx.Done():
			return
		case pkt := <-n.queue:
			ip := header.IPv4(pkt)
			switch ip.TransportProtocol() {
			case header.ICMPv4ProtocolNumber:
				n.echo(pkt)
				continue
			case header.UDPProtocolNumber:
				if !n.admitUDP(pkt) {
					continue
				}
			}
			n.link.InjectInbound(ipv4.ProtocolNumber, stack.NewPacketBuffer(stack.PacketBufferOptions{
				Payload: buffer.MakeWithData(pkt),
			}))
		}
	}
}

// outbound hands what the netstack sends (replies for the workloads) to Out.
func (n *NAT) outbound() {
	for {
		pkt := n.link.ReadContext(n.ctx)
		if pkt == nil {
			return
		}
		view := pkt.ToView()
		if err := n.cfg.Out(view.AsSlice()); err != nil {
			n.log.Debug("nat: writing toward a workload", "err", err)
		}
		view.Release()
		pkt.DecRef()
	}
}

// reply sends an ICMP error about orig back toward its workload.
func (n *NAT) reply(build func(dst, orig []byte, from [4]byte) []byte, orig []byte) {
	buf := make([]byte, encap.MaxFragNeededLen)
	if msg := build(buf, orig, [4]byte(orig[16:20])); msg != nil {
		_ = n.cfg.Out(msg)
	}
}

func addrPort(a tcpip.Address, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4(a.As4()), port)
}

func (n *NAT) handleTCP(r *tcp.ForwarderRequest) {
	id := r.ID()
	key := flowKey{proto: "tcp", inside: addrPort(id.RemoteAddress, id.RemotePort), dest: addrPort(id.LocalAddress, id.LocalPort)}
	e, refused := n.table.add(key, "SYN_SENT")
	if refused != "" {
		r.Complete(true)
		return
	}
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: n.cfg.Outside.AsSlice()}}
	out, err := d.DialContext(n.ctx, "tcp4", key.dest.String())
	if err != nil {
		// Refused or unreachable outside: the workload gets a reset.
		n.table.refuse(RefusedDial)
		n.table.remove(e, false)
		r.Complete(true)
		return
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		out.Close()
		n.table.remove(e, false)
		r.Complete(true)
		return
	}
	r.Complete(false)
	local := out.LocalAddr().(*net.TCPAddr).AddrPort()
	e.outside.Store(&local)
	e.setState("ESTABLISHED")
	in := gonet.NewTCPConn(&wq, ep)
	n.relayTCP(e, in, out.(*net.TCPConn))
}

// relayTCP copies both ways, carrying each half-close across, until both
// directions are done.
func (n *NAT) relayTCP(e *entry, in *gonet.TCPConn, out *net.TCPConn) {
	defer n.table.remove(e, false)
	defer in.Close()
	defer out.Close()
	stop := context.AfterFunc(n.ctx, func() { in.Close(); out.Close() })
	defer stop()
	var wg sync.WaitGroup
	var closing atomic.Bool
	copyDir := func(dst io.Writer, src io.Reader, count func(int), closeWrite func() error) {
		buf := make([]byte, 64<<10)
		for {
			k, err := src.Read(buf)
			if k > 0 {
				count(k)
				if _, werr := dst.Write(buf[:k]); werr != nil {
					in.Close()
					out.Close()
					return
				}
			}
			if err != nil {
				if errors.Is(err, io.EOF) {
					if !closing.Swap(true) {
						e.setState("FIN_WAIT")
					}
					_ = closeWrite()
				} else {
					// A reset on one side is carried as a reset to the other.
					in.Close()
					out.Close()
				}
				return
			}
		}
	}
	wg.Go(func() { copyDir(out, in, e.countOut, out.CloseWrite) })
	wg.Go(func() { copyDir(in, out, e.countIn, in.CloseWrite) })
	wg.Wait()
	e.setState("CLOSED")
}

// admitUDP checks a UDP packet against the table: a new flow over a limit
// is answered ICMP administratively prohibited and not injected.
func (n *NAT) admitUDP(pkt []byte) bool {
	ip := header.IPv4(pkt)
	if int(ip.HeaderLength())+header.UDPMinimumSize > len(pkt) {
		return false
	}
	u := header.UDP(pkt[ip.HeaderLength():])
	key := flowKey{proto: "udp",
		inside: netip.AddrPortFrom(netip.AddrFrom4([4]byte(pkt[12:16])), u.SourcePort()),
		dest:   netip.AddrPortFrom(netip.AddrFrom4([4]byte(pkt[16:20])), u.DestinationPort())}
	if n.table.lookup(key) != nil {
		return true
	}
	if _, refused := n.table.add(key, "UNREPLIED"); refused != "" {
		n.reply(encap.Prohibited, pkt)
		return false
	}
	return true
}

func (n *NAT) handleUDP(r *udp.ForwarderRequest) {
	id := r.ID()
	key := flowKey{proto: "udp", inside: addrPort(id.RemoteAddress, id.RemotePort), dest: addrPort(id.LocalAddress, id.LocalPort)}
	e := n.table.lookup(key)
	if e == nil {
		return // refused in admitUDP
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		n.table.remove(e, false)
		return
	}
	in := gonet.NewUDPConn(&wq, ep)
	// The forwarder calls this inline: dialling and relaying go on in
	// their own goroutine.
	n.wg.Go(func() { n.relayUDP(e, in) })
}

func (n *NAT) relayUDP(e *entry, in *gonet.UDPConn) {
	defer n.table.remove(e, true)
	defer in.Close()
	out, err := net.DialUDP("udp4", &net.UDPAddr{IP: n.cfg.Outside.AsSlice()}, net.UDPAddrFromAddrPort(e.key.dest))
	if err != nil {
		n.table.refuse(RefusedDial)
		return
	}
	defer out.Close()
	local := out.LocalAddr().(*net.UDPAddr).AddrPort()
	e.outside.Store(&local)
	stop := context.AfterFunc(n.ctx, func() { in.Close(); out.Close() })
	defer stop()
	var wg sync.WaitGroup
	idle := func(c interface{ SetReadDeadline(time.Time) error }) bool {
		// Expired when nothing moved either way for the state's timeout.
		last := time.Unix(0, e.lastSeen.Load())
		if time.Since(last) >= n.table.timeout(e) {
			return true
		}
		_ = c.SetReadDeadline(last.Add(n.table.timeout(e)))
		return false
	}
	wg.Go(func() {
		buf := make([]byte, 65536)
		for {
			if idle(in) {
				out.Close()
				return
			}
			k, err := in.Read(buf)
			if err != nil {
				if isTimeout(err) {
					continue
				}
				out.Close()
				return
			}
			e.countOut(k)
			_, _ = out.Write(buf[:k])
		}
	})
	wg.Go(func() {
		buf := make([]byte, 65536)
		for {
			if idle(out) {
				in.Close()
				return
			}
			k, err := out.Read(buf)
			if err != nil {
				if isTimeout(err) {
					continue
				}
				in.Close()
				return
			}
			e.countIn(k)
			e.setState("ASSURED")
			_, _ = in.Write(buf[:k])
		}
	})
	wg.Wait()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Flows returns a snapshot of the NAT table.
func (n *NAT) Flows() []Flow { return n.table.snapshot() }

// Stats returns the NAT's counters.
func (n *NAT) Stats() Stats {
	s := Stats{Flows: map[string]int{}, Refused: map[string]uint64{},
		Created: n.table.created.Load(), Expired: n.table.expired.Load(), Dropped: n.drops.Load()}
	for _, f := range n.table.snapshot() {
		s.Flows[f.Proto+"/"+f.State]++
	}
	n.table.refused.Range(func(k, v any) bool {
		s.Refused[k.(string)] = v.(*atomic.Uint64).Load()
		return true
	})
	return s
}

// Close ends every flow and stops the NAT.
func (n *NAT) Close() error {
	n.cancel()
	n.link.Close()
	n.wg.Wait()
	n.stack.Close()
	return nil
}
