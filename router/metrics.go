package router

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Collector exposes the router's counters to Prometheus. It reads them at
// scrape time, so the data path only ever adds to its own counters.
type Collector struct {
	r                              *Router
	txPackets, txBytes             *prometheus.Desc
	rxPackets, rxBytes             *prometheus.Desc
	drops, arpReplies, icmpReplies *prometheus.Desc
}

// NewCollector makes the router's Prometheus collector.
func NewCollector(r *Router) *Collector {
	return &Collector{
		r: r,
		txPackets: prometheus.NewDesc("overlayd_tx_packets_total",
			"Packets sent to other nodes, by encapsulation.", []string{"encap"}, nil),
		txBytes: prometheus.NewDesc("overlayd_tx_bytes_total",
			"Bytes sent to other nodes on the wire (outer headers included), by encapsulation.", []string{"encap"}, nil),
		rxPackets: prometheus.NewDesc("overlayd_rx_packets_total",
			"Packets received from other nodes and delivered, by encapsulation.", []string{"encap"}, nil),
		rxBytes: prometheus.NewDesc("overlayd_rx_bytes_total",
			"Bytes received from other nodes and delivered (as received, encapsulation headers included), by encapsulation.", []string{"encap"}, nil),
		drops: prometheus.NewDesc("overlayd_drops_total",
			"Packets dropped, by reason.", []string{"reason"}, nil),
		arpReplies: prometheus.NewDesc("overlayd_vxlan_arp_replies_total",
			"ARP requests for this node's VTEP address answered inside VXLAN.", nil, nil),
		icmpReplies: prometheus.NewDesc("overlayd_icmp_errors_sent_total",
			"ICMP errors (fragmentation needed, unreachable) sent back to senders.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.txPackets, c.txBytes, c.rxPackets, c.rxBytes, c.drops, c.arpReplies, c.icmpReplies} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.r.Stats()
	for _, e := range []struct {
		desc *prometheus.Desc
		vals map[string]uint64
	}{{c.txPackets, s.TxPackets}, {c.txBytes, s.TxBytes}, {c.rxPackets, s.RxPackets}, {c.rxBytes, s.RxBytes}, {c.drops, s.Drops}} {
		for label, v := range e.vals {
			ch <- prometheus.MustNewConstMetric(e.desc, prometheus.CounterValue, float64(v), label)
		}
	}
	ch <- prometheus.MustNewConstMetric(c.arpReplies, prometheus.CounterValue, float64(s.ARPReplies))
	ch <- prometheus.MustNewConstMetric(c.icmpReplies, prometheus.CounterValue, float64(s.ICMPSent))
}
