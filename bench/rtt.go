package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Round trips at several paces: back to back, a router's threads never
// fall asleep; with a gap between round trips, each one pays for waking
// them, which is what an idle workload's request sees.

// pace is how long to wait after each round trip before the next, and how
// many round trips to sample so.
type pace struct {
	gap     time.Duration // 0: back to back
	samples int
}

// Fewer samples at slow paces keep a mode's round trips under 15 s (3 s
// quick); p99 of the slowest is then nearly its maximum.
var (
	fullPaces  = []pace{{0, 1000}, {time.Millisecond, 1000}, {10 * time.Millisecond, 300}, {200 * time.Millisecond, 50}}
	quickPaces = []pace{{0, 100}, {time.Millisecond, 100}, {10 * time.Millisecond, 50}, {200 * time.Millisecond, 10}}
)

// paceRTT is one pace's figures.
type paceRTT struct {
	GapMicros int64   `json:"gapMicros"` // 0: back to back
	Samples   int     `json:"samples"`   // round trips that came back
	P50us     float64 `json:"p50Micros"`
	P99us     float64 `json:"p99Micros"`
}

// gapName says how far apart the round trips were.
func gapName(gapMicros int64) string {
	if gapMicros == 0 {
		return "back to back"
	}
	if gapMicros%1000 == 0 {
		return fmt.Sprintf("%d ms apart", gapMicros/1000)
	}
	return fmt.Sprintf("%d µs apart", gapMicros)
}

// pacesNote says, for the report, how many round trips each pace samples.
func pacesNote(paces []pace) string {
	parts := make([]string, len(paces))
	for i, p := range paces {
		parts[i] = fmt.Sprintf("%d %s", p.samples, gapName(p.gap.Microseconds()))
	}
	return "round trips " + strings.Join(parts, ", ")
}

// latencyWarmup is how many round trips go first, unsampled, to warm ARP,
// conntrack and caches up.
const latencyWarmup = 20

// measureLatency times round trips of a 64-byte UDP datagram from client
// to an echo in the server's namespace (UDP, not ICMP: pasta and
// slirp4netns carry UDP on sockets, as the NAT does, but answer or drop
// ICMP themselves), at each pace in turn, and returns each pace's p50
// and p99.
func measureLatency(ep *endpoints, paces []pace) ([]paceRTT, error) {
	var echo *net.UDPConn
	if err := ep.server.Do(func() (err error) {
		echo, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ep.addr, 7007)))
		return err
	}); err != nil {
		return nil, err
	}
	defer echo.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := echo.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = echo.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	var conn *net.UDPConn
	if err := ep.client.Do(func() (err error) {
		conn, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(ep.addr, 7007)))
		return err
	}); err != nil {
		return nil, err
	}
	defer conn.Close()
	trips := roundTripper{conn: conn, msg: make([]byte, 64), buf: make([]byte, 2048)}
	for range latencyWarmup {
		if _, _, err := trips.once(); err != nil {
			return nil, err
		}
	}
	var out []paceRTT
	for _, p := range paces {
		rtts := make([]time.Duration, 0, p.samples)
		for range p.samples {
			time.Sleep(p.gap)
			rtt, ok, err := trips.once()
			if err != nil {
				return out, err
			}
			if ok {
				rtts = append(rtts, rtt)
			}
		}
		if len(rtts) < p.samples/2 {
			return out, fmt.Errorf("%s: only %d of %d round trips came back", gapName(p.gap.Microseconds()), len(rtts), p.samples)
		}
		slices.Sort(rtts)
		out = append(out, paceRTT{GapMicros: p.gap.Microseconds(), Samples: len(rtts),
			P50us: float64(rtts[len(rtts)/2].Microseconds()), P99us: float64(rtts[len(rtts)*99/100].Microseconds())})
	}
	return out, nil
}

// roundTripper sends numbered datagrams on a connected socket and waits
// for each one's echo.
type roundTripper struct {
	conn     *net.UDPConn
	msg, buf []byte
	seq      uint32
}

// once does one round trip; ok is false if its echo did not come back
// within a second (a lost round trip is not a sample).
func (r *roundTripper) once() (rtt time.Duration, ok bool, err error) {
	// Each datagram carries its number: the echo of one that timed out may
	// arrive during a later round trip, and must not end it early.
	r.seq++
	binary.BigEndian.PutUint32(r.msg, r.seq)
	start := time.Now()
	if _, err := r.conn.Write(r.msg); err != nil {
		return 0, false, err
	}
	if err := r.conn.SetReadDeadline(start.Add(time.Second)); err != nil {
		return 0, false, err
	}
	for {
		n, err := r.conn.Read(r.buf)
		if err != nil {
			return 0, false, nil
		}
		if n >= 4 && binary.BigEndian.Uint32(r.buf) == r.seq {
			return time.Since(start), true, nil
		}
	}
}

// backToBack is the back-to-back pace's figures (zero if not measured).
func backToBack(rtts []paceRTT) paceRTT {
	for _, r := range rtts {
		if r.GapMicros == 0 {
			return r
		}
	}
	return paceRTT{}
}

// rttTable renders each mode's round trips by pace, p50 / p99, with p50's
// ratio to kernel VXLAN's at the same pace.
func rttTable(results []result) string {
	var gaps []int64
	for _, r := range results {
		for _, p := range r.RTTByPace {
			if !slices.Contains(gaps, p.GapMicros) {
				gaps = append(gaps, p.GapMicros)
			}
		}
	}
	if len(gaps) == 0 {
		return ""
	}
	slices.Sort(gaps)
	ref := map[int64]float64{}
	for _, p := range referenceOf(results).RTTByPace {
		ref[p.GapMicros] = p.P50us
	}
	var b strings.Builder
	b.WriteString("\nRound trips, p50 / p99 µs, by the gap between them (UDP echo):\n")
	tw := tabwriter.NewWriter(&b, 2, 0, 2, ' ', 0)
	fmt.Fprint(tw, "MODE")
	for _, g := range gaps {
		fmt.Fprintf(tw, "\t%s", gapName(g))
	}
	fmt.Fprintln(tw)
	for _, r := range results {
		if len(r.RTTByPace) == 0 {
			continue
		}
		fmt.Fprint(tw, r.Mode.Name)
		for _, g := range gaps {
			i := slices.IndexFunc(r.RTTByPace, func(p paceRTT) bool { return p.GapMicros == g })
			if i < 0 {
				fmt.Fprint(tw, "\t-")
				continue
			}
			p := r.RTTByPace[i]
			fmt.Fprintf(tw, "\t%.0f / %.0f%s", p.P50us, p.P99us, ratio(p.P50us, ref[g]))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	return b.String()
}
