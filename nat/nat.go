package nat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/overlayd/overlayd/encap"
)

// Config is what a NAT needs.
type Config struct {
	// Outside is the node's underlay address: flows leave from it.
	Outside netip.Addr
	// Out writes IPv4 packets toward the workloads (to the TUN): each
	// bufs[i] holds one at bufs[i][encap.Headroom:], and the bytes in
	// front of it are the writer's to use (a TUN with offloads puts its
	// virtio header there), so the packet goes out without a copy. It is
	// called from the NAT's goroutines, possibly concurrently, and must
	// be done with bufs and their contents when it returns; it may change
	// bufs' elements (the slices themselves), which the NAT resets.
	Out func(bufs [][]byte) error
	// MaxFlows and MaxFlowsPerSource limit the live flows in all and per
	// workload address; 0 means 65536 and 1024.
	MaxFlows, MaxFlowsPerSource int
	// Timeouts are the idle timeouts; zero fields take conntrack's.
	Timeouts Timeouts
	// Net opens the host sockets; nil means ProcessNet, the process's own
	// network namespace.
	Net HostNet
	// MTU of the path to the workloads (the TUN's), which sizes the
	// netstack's segments toward them; 0 means 1500.
	MTU    int
	Logger *slog.Logger
}

// Defaults of Config.
const (
	DefaultMaxFlows          = 65536
	DefaultMaxFlowsPerSource = 1024
	defaultMTU               = 1500
	// queueLen is how many workload packets may wait for the inbound
	// loop: a burst of 16,384 new flows, each opening a socket there,
	// is served rather than dropped. It holds pointers and times (256
	// KiB); the packets take memory only while they wait.
	queueLen = 16384
	// maxQueueDelay is how long a datagram of a flow that has its socket
	// may wait in that queue. Under a flood the queue stays full, and a
	// datagram sent that late may reach a peer that has moved on: an
	// iperf3 server takes the first datagram to its port for its client's
	// hello, so the previous test's, still arriving a tenth of a second
	// after it ended, would take the new client's place. A kernel NAT
	// queues for microseconds. A new flow's first datagram is never late:
	// a burst of them is served however long it takes.
	maxQueueDelay = 20 * time.Millisecond
	// linkQueueLen is how many packets from the netstack toward the
	// workloads may wait for the outbound loop.
	linkQueueLen = 4096
	// datagramBufSize holds the largest IPv4 packet behind the headroom
	// Config.Out wants, so a datagram may be read where its reply goes.
	datagramBufSize = encap.Headroom + 1<<16
)

// NAT terminates workloads' outgoing flows in a netstack and re-originates
// them from host sockets. Its methods are safe for concurrent use.
type NAT struct {
	cfg   Config
	net   HostNet
	log   *slog.Logger
	stack *stack.Stack
	link  *channel.Endpoint
	// gro joins the TCP segments of a flow that come in one batch before
	// the netstack sees them (gVisor's GRO, as its fdbased links use it):
	// the netstack's TCP then handles one segment per flow and batch,
	// which was most of the NAT's CPU in a bulk upload. Only the inbound
	// loop uses it.
	gro   gro.GRO
	table *table

	ctx    context.Context
	cancel context.CancelFunc
	// queue holds Deliver's packet copies, in gVisor's pooled views,
	// which the netstack takes over without another copy, with when they
	// came (since epoch, monotonic).
	queue chan queued
	epoch time.Time
	// relayBufs holds the TCP relays' buffers, datagramBufs buffers for
	// the largest datagram (echo flows').
	relayBufs, datagramBufs sync.Pool
	// poller reads every UDP flow's host socket; udpTx is the inbound
	// loop's state for sending on them.
	poller *udpPoller
	udpTx  udpWriter

	// wg counts the NAT's goroutines; track refuses new ones once Close
	// has begun, so wg.Wait cannot race with a late Add.
	wgMu    sync.Mutex
	closing bool
	wg      sync.WaitGroup

	drops   dropCounters
	ignored atomic.Uint64
	// echoIdent hands out echo identifiers for raw ICMP sockets, which
	// unlike ping sockets do not get one from the kernel.
	echoIdent atomic.Uint32
}

const nicID = 1

// New starts a NAT: its netstack and its goroutines.
func New(cfg Config) (*NAT, error) {
	if !cfg.Outside.Is4() {
		return nil, fmt.Errorf("nat: outside address %v: want IPv4", cfg.Outside)
	}
	if cfg.Out == nil {
		return nil, errors.New("nat: no Out function to send packets toward the workloads")
	}
	if cfg.MaxFlows < 0 || cfg.MaxFlowsPerSource < 0 || cfg.MTU < 0 {
		return nil, fmt.Errorf("nat: negative limit or MTU (maxFlows %d, maxFlowsPerSource %d, MTU %d)", cfg.MaxFlows, cfg.MaxFlowsPerSource, cfg.MTU)
	}
	if cfg.MaxFlows == 0 {
		cfg.MaxFlows = DefaultMaxFlows
	}
	if cfg.MaxFlowsPerSource == 0 {
		cfg.MaxFlowsPerSource = DefaultMaxFlowsPerSource
	}
	if cfg.MTU == 0 {
		cfg.MTU = defaultMTU
	}
	n := &NAT{cfg: cfg, net: cfg.Net, log: cfg.Logger, queue: make(chan queued, queueLen), epoch: time.Now()}
	if n.net == nil {
		n.net = ProcessNet{}
	}
	if n.log == nil {
		n.log = slog.New(slog.DiscardHandler)
	}
	n.relayBufs.New = func() any { b := make([]byte, relayBufSize); return &b }
	n.datagramBufs.New = func() any { b := make([]byte, datagramBufSize); return &b }
	n.udpTx.write = n.udpTx.writeFD
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.table = newTable(n.ctx, cfg.MaxFlows, cfg.MaxFlowsPerSource, cfg.Timeouts, time.Now)
	var err error
	if n.poller, err = newUDPPoller(n); err != nil {
		n.cancel()
		return nil, err
	}
	if err := n.newStack(); err != nil {
		n.cancel()
		n.poller.close()
		return nil, err
	}
	n.wg.Add(4)
	go n.inbound()
	go n.outbound()
	go n.sweep()
	go n.poller.run()
	return n, nil
}

// newStack makes the netstack that stands in for every outside destination.
func (n *NAT) newStack() error {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	n.link = channel.New(linkQueueLen, uint32(n.cfg.MTU), "")
	// The NIC takes its packets' checksums as checked, for GRO's sake: a
	// joined segment carries the first one's IPv4 and TCP checksums, which
	// the netstack would otherwise find wrong. GRO checks the TCP segments
	// it may join before it joins them; the IPv4 header's checksum was
	// checked by the node's kernel, which routed the packet to the TUN. The
	// rest (TCP that GRO passes by: with IP options, fragments) is taken as
	// the node's kernel forwarding it would take it, unchecked.
	n.link.LinkEPCapabilities |= stack.CapabilityRXChecksumOffload
	n.gro.Init(true)
	if err := s.CreateNIC(nicID, groLink{n.link, &n.gro}); err != nil {
		s.Destroy()
		return fmt.Errorf("nat: netstack NIC: %s", err)
	}
	// Accept packets for any address and answer from it: the netstack
	// plays every destination outside the pools.
	if err := s.SetPromiscuousMode(nicID, true); err != nil {
		s.Destroy()
		return fmt.Errorf("nat: promiscuous NIC: %s", err)
	}
	if err := s.SetSpoofing(nicID, true); err != nil {
		s.Destroy()
		return fmt.Errorf("nat: spoofing NIC: %s", err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: nicID}})
	// Windows large enough that the netstack leg does not hold back a bulk
	// flow; the buffers grow only as a flow needs them.
	sack, moderate := tcpip.TCPSACKEnabled(true), tcpip.TCPModerateReceiveBufferOption(true)
	opts := []tcpip.SettableTransportProtocolOption{
		&sack, &moderate,
		&tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: 256 << 10, Max: 8 << 20},
		&tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: 256 << 10, Max: 8 << 20},
	}
	for _, o := range opts {
		if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, o); err != nil {
			s.Destroy()
			return fmt.Errorf("nat: netstack TCP option %T: %s", o, err)
		}
	}
	// The forwarder drops, uncounted but for a netstack statistic, the
	// SYNs beyond maxInFlight handshakes at once. Every SYN it sees was
	// admitted against the table's limits (or is reset at once), so those
	// limits, which count and answer a refusal, are the only ones.
	tcpFwd := tcp.NewForwarder(s, 0, math.MaxInt32, n.handleTCP)
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, tcpFwd.HandlePacket)
	// Only UDP datagrams reassembled from fragments reach the netstack.
	s.SetTransportProtocolHandler(udp.ProtocolNumber, n.handleUDPPacket)
	n.stack = s
	return nil
}

// track counts a new goroutine in wg, or refuses once Close has begun.
func (n *NAT) track() bool {
	n.wgMu.Lock()
	defer n.wgMu.Unlock()
	if n.closing {
		return false
	}
	n.wg.Add(1)
	return true
}

// goTracked runs fn in a goroutine Close waits for, unless Close has begun.
func (n *NAT) goTracked(fn func()) bool {
	if !n.track() {
		return false
	}
	go func() {
		defer n.wg.Done()
		fn()
	}()
	return true
}

// Deliver takes a workload's IPv4 packet for the outside. It copies the
// packet and returns at once: when the queue is full the packet is dropped
// and counted, as a full NIC queue would.
func (n *NAT) Deliver(pkt []byte) {
	if len(pkt) < header.IPv4MinimumSize || pkt[0]>>4 != 4 {
		n.ignored.Add(1)
		return
	}
	v := buffer.NewViewWithData(pkt) // pooled; the only copy
	select {
	case n.queue <- queued{v, time.Since(n.epoch)}:
	default:
		n.drops.add(dropQueueFull)
		v.Release()
	}
}

// inbound takes the workload packets off the queue: it accounts them to
// their flows, admits new flows, answers echo requests itself and feeds the
// rest to the netstack.
func (n *NAT) inbound() {
	defer n.wg.Done()
	for {
		select {
		case <-n.ctx.Done():
			return
		case q := <-n.queue:
			v := q.v
			if n.admit(v.AsSlice(), time.Since(n.epoch)-q.at > maxQueueDelay) {
				// The packet buffer takes the view over: no copy. GRO
				// holds a reference to what it keeps for the batch.
				pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithView(v)})
				pkt.NetworkProtocolNumber = ipv4.ProtocolNumber
				n.gro.Enqueue(pkt)
				pkt.DecRef()
			} else {
				v.Release()
			}
			// The batch ends when the queue is empty: what GRO holds goes
			// up before the loop waits.
			if len(n.queue) == 0 {
				n.gro.Flush()
			}
		}
	}
}

// groLink is the netstack's link endpoint, which hands the NIC it is
// attached to to GRO as the place its packets go.
type groLink struct {
	*channel.Endpoint
	gro *gro.GRO
}

// Attach implements stack.LinkEndpoint. Set once, as the NIC is made,
// before the inbound loop starts; the NIC's removal (nil) is not passed
// on, so the loop never finds GRO without a dispatcher: a removed NIC
// drops what it is handed.
func (l groLink) Attach(d stack.NetworkDispatcher) {
	if d != nil {
		l.gro.Dispatcher = d
	}
	l.Endpoint.Attach(d)
}

// queued is a packet waiting for the inbound loop.
type queued struct {
	v  *buffer.View
	at time.Duration // since NAT.epoch
}

// admit looks at one workload packet and says whether the netstack should
// have it; late says it waited longer than maxQueueDelay. New UDP flows and TCP SYNs get their entry here, where the whole
// packet is at hand for an ICMP error (UDP over a limit) or the quote of
// later ones (TCP). A refused SYN still goes to the netstack, whose TCP
// forwarder answers it with a reset.
func (n *NAT) admit(pkt []byte, late bool) bool {
	ip := header.IPv4(pkt)
	if !ip.IsValid(len(pkt)) {
		n.ignored.Add(1)
		return false
	}
	pkt = pkt[:ip.TotalLength()]
	hl := int(ip.HeaderLength())
	p := proto(ip.Protocol())
	if ip.FragmentOffset() != 0 {
		// Later fragments carry no ports: the netstack reassembles them
		// with the first, which was accounted.
		if p == protoICMP {
			n.ignored.Add(1)
			return false
		}
		return true
	}
	if ip.TTL() == 0 {
		// Only a packet that skipped the node's kernel (which drops at 1
		// and answers itself) can come with no hop left: the node answers
		// as the router it is.
		n.ignored.Add(1)
		n.sendICMPError(header.ICMPv4TimeExceeded, header.ICMPv4TTLExceeded, 0, n.cfg.Outside, pkt)
		return false
	}
	tos, _ := ip.TOS()
	marks := marksOf(ip.TTL(), tos)
	src, dst := netip.AddrFrom4(ip.SourceAddress().As4()), netip.AddrFrom4(ip.DestinationAddress().As4())
	now := n.table.now()
	switch p {
	case protoICMP:
		if ip.More() || len(pkt) < hl+header.ICMPv4MinimumSize || header.ICMPv4(pkt[hl:]).Type() != header.ICMPv4Echo {
			// ICMP from a workload other than an echo (its errors about
			// our replies, say) has no flow to follow.
			n.ignored.Add(1)
			return false
		}
		n.echoRequest(pkt, hl, src, dst, marks, now)
		return false
	case protoUDP:
		if len(pkt) < hl+header.UDPMinimumSize {
			n.ignored.Add(1)
			return false
		}
		u := header.UDP(pkt[hl:])
		whole := !ip.More()
		if whole && (int(u.Length()) < header.UDPMinimumSize || int(u.Length()) > len(u) || !udpChecksumValid(ip, u[:u.Length()])) {
			n.ignored.Add(1)
			return false
		}
		k := flowKey{protoUDP, netip.AddrPortFrom(src, u.SourcePort()), netip.AddrPortFrom(dst, u.DestinationPort())}
		// A flow's later datagrams need only the read lock.
		e := n.table.lookup(k)
		if e == nil || e.getState() == stateClosed {
			var refused string
			e, _, refused = n.table.addWith(k, stateUnreplied, func(e *entry) { e.marks = marks })
			if refused != "" {
				n.refuseWithICMP(pkt)
				return false
			}
		}
		if late && e.udp != nil {
			n.drops.add(dropQueueLate)
			return false
		}
		e.countOut(len(pkt), now)
		if !whole {
			return true // the netstack reassembles it for handleUDPPacket
		}
		n.udpOut(e, u[header.UDPMinimumSize:u.Length()])
		return false
	case protoTCP:
		if len(pkt) < hl+header.TCPMinimumSize {
			return true // the netstack drops it
		}
		t := header.TCP(pkt[hl:])
		k := flowKey{protoTCP, netip.AddrPortFrom(src, t.SourcePort()), netip.AddrPortFrom(dst, t.DestinationPort())}
		e := n.table.lookup(k)
		if e == nil || e.getState() == stateClosed {
			if t.Flags()&(header.TCPFlagSyn|header.TCPFlagAck) != header.TCPFlagSyn {
				return true // no flow: the netstack resets it
			}
			var refused string
			e, _, refused = n.table.addWith(k, stateSynSent, func(e *entry) {
				e.synQuote = append([]byte(nil), pkt[:hl+quotedPayload]...)
				e.marks = marks
			})
			if refused != "" {
				return true // the forwarder finds no entry and resets
			}
		}
		e.countOut(len(pkt), now)
		e.noteWorkloadSeq(t, len(pkt)-hl)
		return true
	}
	n.ignored.Add(1)
	return false
}

// refuseWithICMP answers a packet whose new flow a limit refused with ICMP
// "communication administratively prohibited" from its destination.
func (n *NAT) refuseWithICMP(pkt []byte) {
	dst := netip.AddrFrom4(header.IPv4(pkt).DestinationAddress().As4())
	n.sendICMPError(header.ICMPv4DstUnreachable, header.ICMPv4AdminProhibited, 0, dst, pkt)
}

// sendICMPError builds an ICMP error about quote from `from` and writes it
// toward the workload.
func (n *NAT) sendICMPError(typ header.ICMPv4Type, code header.ICMPv4Code, info uint16, from netip.Addr, quote []byte) {
	msg := icmpError(typ, code, info, from, quote)
	if msg == nil {
		return
	}
	n.out([][]byte{msg})
}

// out writes packets toward the workloads with Config.Out, counting those
// it refuses.
func (n *NAT) out(bufs [][]byte) {
	if err := n.cfg.Out(bufs); err != nil {
		n.drops.addN(dropOutFailed, uint64(len(bufs)))
		n.log.Debug("nat: writing toward a workload", "err", err)
	}
}

// outbound hands what the netstack sends (the outside's side of every
// flow) to Out, accounting it to its flow. It is the only user of its
// buffer, in which each packet is copied once, at encap.Headroom.
func (n *NAT) outbound() {
	defer n.wg.Done()
	buf, bufs := make([]byte, encap.Headroom+1<<16), make([][]byte, 1)
	for {
		pkt := n.link.ReadContext(n.ctx)
		if pkt == nil {
			return
		}
		n.reply(pkt, buf, bufs)
		pkt.DecRef()
	}
}

// reply copies a netstack packet into buf at encap.Headroom, accounts it to
// its flow and writes it with Out through bufs, a one-element slice the
// caller keeps; it allocates nothing.
func (n *NAT) reply(pkt *stack.PacketBuffer, buf []byte, bufs [][]byte) {
	size := copyPacket(buf[encap.Headroom:], pkt)
	n.countReply(buf[encap.Headroom : encap.Headroom+size])
	bufs[0] = buf[:encap.Headroom+size]
	n.out(bufs)
}

// copyPacket copies the packet (from its first header) into b and returns
// its length, walking the packet's views rather than AsSlices, which
// allocates.
func copyPacket(b []byte, pkt *stack.PacketBuffer) int {
	views, skip := pkt.AsViewList()
	size := 0
	for v := views.Front(); v != nil; v = v.Next() {
		s := v.AsSlice()
		if skip >= len(s) {
			skip -= len(s)
			continue
		}
		size += copy(b[size:], s[skip:])
		skip = 0
	}
	return size
}

// countReply accounts a packet from the netstack to the workload to its
// flow; the first one of a UDP flow makes it ASSURED.
func (n *NAT) countReply(pkt []byte) {
	ip := header.IPv4(pkt)
	if len(pkt) < header.IPv4MinimumSize || ip.FragmentOffset() != 0 {
		return
	}
	hl := int(ip.HeaderLength())
	if len(pkt) < hl+4 {
		return
	}
	p := proto(ip.Protocol())
	if p != protoTCP && p != protoUDP {
		return
	}
	// Both TCP and UDP start with the two ports.
	ports := header.UDP(pkt[hl:])
	k := flowKey{p,
		netip.AddrPortFrom(netip.AddrFrom4(ip.DestinationAddress().As4()), ports.DestinationPort()),
		netip.AddrPortFrom(netip.AddrFrom4(ip.SourceAddress().As4()), ports.SourcePort())}
	e := n.table.lookup(k)
	if e == nil {
		return
	}
	e.countIn(len(pkt), n.table.now())
	if p == protoUDP && e.getState() == stateUnreplied {
		n.table.setState(e, stateAssured)
	}
}

// sweep expires idle flows, often enough for the shortest timeout.
func (n *NAT) sweep() {
	defer n.wg.Done()
	interval := func() time.Duration {
		return min(max(n.table.getTimeouts().shortest()/4, 50*time.Millisecond), time.Second)
	}
	every := interval()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case now := <-tick.C:
			if k := n.table.expire(now); k > 0 {
				n.log.Debug("nat: flows expired", "count", k)
				n.poller.reap()
			}
			// SetLimits may have shortened a timeout.
			if next := interval(); next != every {
				every = next
				tick.Reset(every)
			}
		}
	}
}

// SetLimits replaces the NAT's limits and idle timeouts while it runs, for
// a configuration reload; the arguments mean what Config's fields of the
// same names do (0 takes the default, a zero Timeouts field conntrack's).
// Flows already in the table are kept even over a lowered limit: new flows
// are refused (and counted) until enough have ended. New timeouts apply to
// every flow, counted from its last packet, from the next sweep (within a
// second); a lowered one may thus expire flows idle longer than it at once.
// The data path is not slowed: the limits are read where a new flow takes
// the table's lock anyway, the timeouts through an atomic pointer.
func (n *NAT) SetLimits(maxFlows, maxFlowsPerSource int, timeouts Timeouts) error {
	if maxFlows < 0 || maxFlowsPerSource < 0 {
		return fmt.Errorf("nat: negative limit (maxFlows %d, maxFlowsPerSource %d)", maxFlows, maxFlowsPerSource)
	}
	if maxFlows == 0 {
		maxFlows = DefaultMaxFlows
	}
	if maxFlowsPerSource == 0 {
		maxFlowsPerSource = DefaultMaxFlowsPerSource
	}
	n.table.setLimits(maxFlows, maxFlowsPerSource, timeouts)
	return nil
}

// Flows returns a snapshot of the NAT table, oldest flow first.
func (n *NAT) Flows() []Flow { return n.table.snapshot() }

// Stats returns the NAT's counters.
func (n *NAT) Stats() Stats {
	s := n.table.stats()
	s.Drops = n.drops.snapshot()
	s.Ignored = n.ignored.Load()
	return s
}

// Close ends every flow (TCP ones with a reset both ways), closes every host
// socket and waits for the NAT's goroutines. Deliver may still be called
// afterwards; it does nothing useful.
func (n *NAT) Close() error {
	n.wgMu.Lock()
	if n.closing {
		n.wgMu.Unlock()
		return nil
	}
	n.closing = true
	n.wgMu.Unlock()
	n.cancel()
	n.table.stopAll()
	n.poller.close()
	// Closing the stack aborts its endpoints, handshakes in progress
	// included, so no forwarder goroutine stays blocked in one.
	n.stack.Close()
	n.link.Close()
	n.wg.Wait()
	n.stack.Wait()
	return nil
}
