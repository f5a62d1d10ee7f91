package daemon

import (
	"fmt"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	"github.com/overlayd/overlayd/dataplane"
	"github.com/overlayd/overlayd/nat"
	"github.com/overlayd/overlayd/plan"
)

// routerCollector exposes the router's counters to Prometheus. It reads
// them at scrape time, so the data path only ever adds to its own counters.
type routerCollector struct {
	r                              *dataplane.Router
	txPackets, txBytes             *prometheus.Desc
	rxPackets, rxBytes             *prometheus.Desc
	drops, arpReplies, icmpReplies *prometheus.Desc
	overhead, routes, ioErrors     *prometheus.Desc
	peerPackets, peerBytes         *prometheus.Desc
	peerPathMTU, pathMTUsLearned   *prometheus.Desc
	socketDrops                    *prometheus.Desc
}

func newRouterCollector(r *dataplane.Router) *routerCollector {
	return &routerCollector{
		r: r,
		txPackets: prometheus.NewDesc("overlayd_tx_packets_total",
			"Packets sent to other nodes, by encapsulation.", []string{"encap"}, nil),
		txBytes: prometheus.NewDesc("overlayd_tx_bytes_total",
			"Bytes sent to other nodes on the wire (outer headers included), by encapsulation.", []string{"encap"}, nil),
		rxPackets: prometheus.NewDesc("overlayd_rx_packets_total",
			"Packets received from other nodes and delivered, by encapsulation.", []string{"encap"}, nil),
		rxBytes: prometheus.NewDesc("overlayd_rx_bytes_total",
			"Bytes received from other nodes and delivered, on the wire (outer headers included), by encapsulation.", []string{"encap"}, nil),
		drops: prometheus.NewDesc("overlayd_drops_total",
			"Packets dropped, by reason.", []string{"reason"}, nil),
		arpReplies: prometheus.NewDesc("overlayd_vxlan_arp_replies_total",
			"ARP requests for this node's VTEP address answered inside VXLAN.", nil, nil),
		icmpReplies: prometheus.NewDesc("overlayd_icmp_errors_sent_total",
			"ICMP errors (fragmentation needed, unreachable) sent back to senders.", nil, nil),
		overhead: prometheus.NewDesc("overlayd_encap_overhead_bytes_total",
			fmt.Sprintf("Bytes of outer headers put on the wire by encapsulation (IP-in-IP %d, VXLAN %d per packet).", plan.EncapIPIP.Overhead(), plan.EncapVXLAN.Overhead()), []string{"encap"}, nil),
		routes: prometheus.NewDesc("overlayd_routes",
			"Remote blocks in the running plan, by how they are reached.", []string{"encap"}, nil),
		ioErrors: prometheus.NewDesc("overlayd_io_errors_total",
			"Failed TUN and underlay socket calls on the data path, by call.", []string{"op"}, nil),
		peerPackets: prometheus.NewDesc("overlayd_peer_packets_total",
			"Encapsulated packets exchanged with each node, by direction.", []string{"peer", "direction"}, nil),
		peerBytes: prometheus.NewDesc("overlayd_peer_bytes_total",
			"Encapsulated bytes on the wire exchanged with each node, by direction.", []string{"peer", "direction"}, nil),
		peerPathMTU: prometheus.NewDesc("overlayd_peer_path_mtu",
			"The underlay path MTU toward each node: the underlay MTU, or less once a router on the way said so.", []string{"peer"}, nil),
		pathMTUsLearned: prometheus.NewDesc("overlayd_path_mtus_learned_total",
			"Times the underlay path toward a node was found smaller than the underlay MTU, or than it was.", nil, nil),
		socketDrops: prometheus.NewDesc("overlayd_socket_drops_total",
			"Packets the kernel dropped at the underlay sockets, by encapsulation: refused by their filter "+
				"(an outer source that is no node, or another VNI) or with no room in the receive buffer; the kernel counts both as one.",
			[]string{"encap"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *routerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.txPackets, c.txBytes, c.rxPackets, c.rxBytes, c.drops, c.arpReplies,
		c.icmpReplies, c.overhead, c.routes, c.ioErrors, c.peerPackets, c.peerBytes, c.peerPathMTU, c.pathMTUsLearned, c.socketDrops} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *routerCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.r.Stats()
	for _, e := range []struct {
		desc *prometheus.Desc
		vals map[string]uint64
	}{{c.txPackets, s.TxPackets}, {c.txBytes, s.TxBytes}, {c.rxPackets, s.RxPackets}, {c.rxBytes, s.RxBytes},
		{c.drops, s.Drops}, {c.ioErrors, s.IOErrors}, {c.socketDrops, s.SocketDrops}} {
		for label, v := range e.vals {
			ch <- prometheus.MustNewConstMetric(e.desc, prometheus.CounterValue, float64(v), label)
		}
	}
	p := c.r.Plan()
	routes := map[string]int{}
	for _, enc := range []plan.Encap{plan.EncapNone, plan.EncapIPIP, plan.EncapVXLAN} {
		routes[enc.String()] = 0
		// Every packet of an encapsulation carries the same outer headers,
		// so the overhead follows from the packet counts.
		ch <- prometheus.MustNewConstMetric(c.overhead, prometheus.CounterValue,
			float64((s.TxPackets[enc.String()]+s.RxPackets[enc.String()])*uint64(enc.Overhead())), enc.String())
	}
	for _, r := range p.Routes {
		routes[r.Encap.String()]++
	}
	for e, n := range routes {
		ch <- prometheus.MustNewConstMetric(c.routes, prometheus.GaugeValue, float64(n), e)
	}
	for name, ps := range s.Peers {
		ch <- prometheus.MustNewConstMetric(c.peerPackets, prometheus.CounterValue, float64(ps.TxPackets), name, "tx")
		ch <- prometheus.MustNewConstMetric(c.peerPackets, prometheus.CounterValue, float64(ps.RxPackets), name, "rx")
		ch <- prometheus.MustNewConstMetric(c.peerBytes, prometheus.CounterValue, float64(ps.TxBytes), name, "tx")
		ch <- prometheus.MustNewConstMetric(c.peerBytes, prometheus.CounterValue, float64(ps.RxBytes), name, "rx")
		if ps.PathMTU != 0 {
			ch <- prometheus.MustNewConstMetric(c.peerPathMTU, prometheus.GaugeValue, float64(ps.PathMTU), name)
		}
	}
	ch <- prometheus.MustNewConstMetric(c.pathMTUsLearned, prometheus.CounterValue, float64(s.PathMTUsLearned))
	ch <- prometheus.MustNewConstMetric(c.arpReplies, prometheus.CounterValue, float64(s.ARPReplies))
	ch <- prometheus.MustNewConstMetric(c.icmpReplies, prometheus.CounterValue, float64(s.ICMPSent))
}

// reloadCollector exposes the reload counters the daemon keeps.
func (d *daemon) reloadCollector() prometheus.Collector {
	desc := prometheus.NewDesc("overlayd_config_reloads_total",
		"Reloads of the cluster file, by result (applied, refused).", []string{"result"}, nil)
	return collectorFunc{desc: desc, collect: func(ch chan<- prometheus.Metric) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(d.reloads.Load()), "applied")
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(d.failedReloads.Load()), "refused")
	}}
}

// datastoreCollector exposes the datastore's health.
func (d *daemon) datastoreCollector() prometheus.Collector {
	up := prometheus.NewDesc("overlayd_datastore_up",
		"1 when the datastore answers, 0 when the node runs on its last plan without it.", []string{"type"}, nil)
	since := prometheus.NewDesc("overlayd_datastore_up_changed_timestamp_seconds",
		"When overlayd_datastore_up last changed, in Unix seconds.", []string{"type"}, nil)
	skipped := prometheus.NewDesc("overlayd_datastore_skipped_entries_total",
		"Datastore entries skipped as malformed.", []string{"type"}, nil)
	return collectorFunc{desc: up, extra: []*prometheus.Desc{since, skipped}, collect: func(ch chan<- prometheus.Metric) {
		s := d.source.Status()
		v := 0.0
		if s.Up {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(up, prometheus.GaugeValue, v, s.Type)
		ch <- prometheus.MustNewConstMetric(since, prometheus.GaugeValue, float64(s.Since.UnixNano())/1e9, s.Type)
		ch <- prometheus.MustNewConstMetric(skipped, prometheus.CounterValue, float64(s.Skipped), s.Type)
	}}
}

// natCollector exposes the NAT table's counters.
func (d *daemon) natCollector() prometheus.Collector {
	flows := prometheus.NewDesc("overlayd_nat_flows", "Flows in the NAT table, by protocol and state.", []string{"proto", "state"}, nil)
	created := prometheus.NewDesc("overlayd_nat_flows_created_total", "NAT flows created.", nil, nil)
	expired := prometheus.NewDesc("overlayd_nat_flows_expired_total", "NAT flows ended by their idle timeout.", nil, nil)
	refused := prometheus.NewDesc("overlayd_nat_flows_refused_total", "NAT flows refused, by reason (table_full, per_source_limit, dial_failed).", []string{"reason"}, nil)
	dropped := prometheus.NewDesc("overlayd_nat_drops_total", "Packets the NAT took and could not pass on, by reason (queue_full, queue_late, send_failed, flow_ended, out_failed).", []string{"reason"}, nil)
	ignored := prometheus.NewDesc("overlayd_nat_ignored_total", "Packets for the NAT it does not translate: malformed (a bad UDP checksum included), ICMP other than echo requests, TTL 0.", nil, nil)
	// A burst of new flows from the workloads is lost, if anywhere, before
	// overlayd reads it: in the kernel's queue of the TUN device (measured
	// by the bench: the lost flows of a 1,000-flow burst were the TUN's
	// tx_dropped), which only the kernel counts.
	tunDrops := prometheus.NewDesc("overlayd_tun_queue_drops_total",
		"Packets the kernel routed to overlayd's TUN device and dropped because the device's queue was full (its tx_dropped).", []string{"device"}, nil)
	return collectorFunc{desc: flows, extra: []*prometheus.Desc{created, expired, refused, dropped, ignored, tunDrops}, collect: func(ch chan<- prometheus.Metric) {
		if l, err := netlink.LinkByName(d.device); err == nil && l.Attrs().Statistics != nil {
			ch <- prometheus.MustNewConstMetric(tunDrops, prometheus.CounterValue, float64(l.Attrs().Statistics.TxDropped), d.device)
		}
		s := d.nat.Stats()
		for k, n := range s.Flows {
			proto, state, _ := strings.Cut(k, "/")
			ch <- prometheus.MustNewConstMetric(flows, prometheus.GaugeValue, float64(n), proto, state)
		}
		ch <- prometheus.MustNewConstMetric(created, prometheus.CounterValue, float64(s.Created))
		ch <- prometheus.MustNewConstMetric(expired, prometheus.CounterValue, float64(s.Expired))
		for _, r := range []string{nat.RefusedTableFull, nat.RefusedPerSource, nat.RefusedDial} {
			ch <- prometheus.MustNewConstMetric(refused, prometheus.CounterValue, float64(s.Refused[r]), r)
		}
		for _, r := range nat.DropReasons() {
			ch <- prometheus.MustNewConstMetric(dropped, prometheus.CounterValue, float64(s.Drops[r]), r)
		}
		ch <- prometheus.MustNewConstMetric(ignored, prometheus.CounterValue, float64(s.Ignored))
	}}
}

// collectorFunc is a prometheus.Collector made of a function.
type collectorFunc struct {
	desc    *prometheus.Desc
	extra   []*prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (c collectorFunc) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.desc
	for _, d := range c.extra {
		ch <- d
	}
}
func (c collectorFunc) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }
