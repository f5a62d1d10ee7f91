package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/conn"
	"github.com/overlayd/overlayd/dataplane"
	"github.com/overlayd/overlayd/kernel"
	"github.com/overlayd/overlayd/nat"
	"github.com/overlayd/overlayd/plan"
)

func runRun(env *cliEnv, args []string) error {
	fs := newFlagSet(env, "run", "--config FILE --node NAME [flags]", `
Runs the router: creates the TUN device, programs the kernel's routes, opens
the VXLAN and IP-in-IP sockets the pools need and carries the node's overlay
traffic until SIGTERM or SIGINT, then removes its routes. SIGHUP re-reads the
cluster file.

Unprivileged: --tun-fd N --no-kernel-routes uses a TUN opened by the runtime
and leaves its set-up to it ('overlayd check --print-routes' lists it); with
VXLAN pools that needs no capability. --tunnel-mode netstack needs no TUN at
all: the node's workload side is a netstack reached through [netstack] socks5
and [[forward]] port forwards.`)
	var pf planFlags
	pf.register(fs)
	device := fs.String("device", "", "TUN device name (default: [tunnel] device)")
	metricsListen := fs.String("metrics-listen", "", "address for /metrics (default: [metrics] listen; \"off\" disables it)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")
	tunnelMode := fs.String("tunnel-mode", "", "\"tun\" (a kernel TUN device) or \"netstack\" (no device: SOCKS5 and port forwards) (default: [tunnel] mode)")
	tunFD := fs.Int("tun-fd", -1, "a TUN file descriptor (3 or more) handed over by the runtime, used instead of creating a device; -1: [tunnel] fd if set")
	noKernel := fs.Bool("no-kernel-routes", false, "leave the TUN's link, addresses, routes, rules and sysctls to whoever set up the namespace (see overlayd check --print-routes)")
	// The underlay MTU is read from the interface unless given.
	fs.Lookup("underlay-mtu").DefValue = "0"
	pf.underlayMTU = 0
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return badInput(fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	log, err := newLogger(env.stderr, *logLevel, *logFormat)
	if err != nil {
		return badInput(err)
	}
	if pf.config == "" || pf.node == "" {
		return badInput(errors.New("--config and --node are required"))
	}
	c, err := config.Load(pf.config)
	if err != nil {
		return badInput(err)
	}
	me := c.Node(pf.node)
	if me == nil {
		return badInput(fmt.Errorf("node %q is not in %s (its nodes: %v)", pf.node, pf.config, c.NodeNames()))
	}
	if *device == "" {
		*device = c.Tunnel.Device
	}
	if *metricsListen == "" {
		*metricsListen = c.Metrics.Listen
	}

	dev, err := resolveDeviceSettings(c, *tunnelMode, *tunFD, *noKernel)
	if err != nil {
		return badInput(err)
	}

	d := &daemon{log: log, configPath: pf.config, node: pf.node, device: *device, dev: dev, underlayMTU: pf.underlayMTU, started: time.Now()}
	return d.run(c, *metricsListen)
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// daemon is one `overlayd run`: the router and what it set up in the kernel.
type daemon struct {
	log         *slog.Logger
	configPath  string
	node        string
	device      string
	dev         deviceSettings
	side        workloadSide
	underlayMTU int // 0: read from the underlay interface
	routes      *kernel.Routes
	router      *dataplane.Router
	nat         *nat.NAT
	started     time.Time

	// reloadMu serialises reloads: SIGHUP and the admin API may ask at once.
	reloadMu      sync.Mutex
	reloads       atomic.Uint64
	failedReloads atomic.Uint64
	lastReloadErr atomic.Pointer[string]
}

func (d *daemon) run(c *config.Cluster, metricsListen string) error {
	var err error
	if d.routes, err = kernel.NewRoutes(); err != nil {
		return err
	}
	defer d.routes.Close()

	me := c.Node(d.node)
	underlayDev, mtu, err := d.routes.InterfaceOf(me.Address.Addr())
	if err != nil {
		return err
	}
	if d.underlayMTU == 0 {
		d.underlayMTU = mtu
	}
	p, err := plan.Build(c, d.node, d.underlayMTU)
	if err != nil {
		return badInput(err)
	}
	for _, w := range p.Warnings {
		d.log.Warn(w)
	}
	d.log.Info("underlay", "device", underlayDev, "mtu", d.underlayMTU)

	if d.side, err = d.openWorkloadSide(p); err != nil {
		return err
	}
	dev := d.side.dev

	vx, ipip, err := d.openTransports(p, nil)
	if err != nil {
		dev.Close()
		return err
	}
	closeAll := func() {
		dev.Close()
		for _, tr := range []dataplane.Transport{vx, ipip} {
			if tr != nil {
				tr.Close()
			}
		}
	}
	if err := d.configureLink(p); err != nil {
		closeAll()
		return err
	}
	// The NAT answers only what the plan's rules steer to it; an idle
	// netstack costs little, and a reload may turn natOutgoing on.
	d.nat, err = nat.New(nat.Config{
		Outside: p.Address.Addr(), MTU: p.TunnelMTU, Logger: d.log,
		MaxFlows: c.NAT.MaxFlows, MaxFlowsPerSource: c.NAT.MaxFlowsPerSource,
		Timeouts: natTimeoutsOf(c),
		Out:      func(bufs [][]byte) error { return d.router.WriteTUN(bufs) },
	})
	if err != nil {
		closeAll()
		return err
	}
	defer d.nat.Close()
	if d.router, err = dataplane.New(dataplane.Config{Plan: p, TUN: dev, VXLAN: vx, IPIP: ipip, NAT: d.nat.Deliver, Logger: d.log}); err != nil {
		closeAll()
		return err
	}
	d.applyRoutes(p)
	defer d.removeRoutes()
	d.applyRules(p)
	defer d.removeRules()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if d.side.stack != nil {
		stopServices, err := d.serveNetstack(ctx, c)
		if err != nil {
			closeAll()
			return err
		}
		defer stopServices()
	}
	if metricsListen != "off" {
		srv, err := d.serveMetrics(metricsListen)
		if err != nil {
			closeAll()
			return err
		}
		defer srv.Close()
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				_ = d.reload() // logged and counted by reload
			}
		}
	}()
	d.log.Info("overlayd running", "node", d.node, "blocks", len(p.LocalBlocks), "remoteBlocks", len(p.Routes), "tunnelAddress", p.TunnelAddr)
	err = d.router.Run(ctx)
	s := d.router.Stats()
	d.log.Info("overlayd stopping", "txPackets", s.TxPackets, "rxPackets", s.RxPackets)
	return err
}

// vxlanSourcePorts is how many source ports VXLAN spreads flows over, for
// the underlay's ECMP and the receivers' RSS (the kernel's VXLAN hashes over
// its whole port range; a socket per port costs a descriptor and buffers).
const vxlanSourcePorts = 8

// openTransports opens the sockets plan p needs that the router does not
// have yet (r nil: at start, it has none). Failures name what is missing.
func (d *daemon) openTransports(p *plan.Plan, r *dataplane.Router) (vx, ipip dataplane.Transport, err error) {
	me := p.Address.Addr()
	if p.UsesVXLAN && (r == nil || !r.HasTransport(plan.EncapVXLAN)) {
		local := netip.AddrPortFrom(me, p.VXLANPort)
		// Assigned only on success: a nil *UDPConn in the interface would
		// not compare equal to nil.
		c, err := conn.ListenUDP(local)
		if err != nil {
			return nil, nil, vxlanSocketError(local, err)
		}
		if err := c.SpreadSourcePorts(vxlanSourcePorts); err != nil {
			c.Close()
			return nil, nil, fmt.Errorf("opening the VXLAN socket: %w", err)
		}
		c.SetUnderlayMTU(p.UnderlayMTU)
		vx = c
		gso, gro := c.Offloads()
		d.log.Info("VXLAN socket open", "local", local, "vni", p.VNI, "gso", gso, "gro", gro, "sourcePorts", c.SourcePorts())
	}
	if p.UsesIPIP && (r == nil || !r.HasTransport(plan.EncapIPIP)) {
		c, err := conn.ListenIPIP(me)
		if err != nil {
			if vx != nil {
				vx.Close()
			}
			return nil, nil, ipipSocketError(err)
		}
		ipip = c
		d.log.Info("IP-in-IP socket open", "local", me)
	}
	return vx, ipip, nil
}

// applyRoutes makes the kernel's routes those of plan p, by difference.
func (d *daemon) applyRoutes(p *plan.Plan) {
	if !d.dev.programsKernel() {
		return
	}
	ch, err := d.routes.Reconcile(dataplane.KernelRoutes(p, d.device))
	for _, r := range ch.Added {
		d.log.Info("route added", "route", r.String())
	}
	for _, r := range ch.Replaced {
		d.log.Info("route replaced", "route", r.String())
	}
	for _, r := range ch.Removed {
		d.log.Info("route removed", "route", r.String())
	}
	if err != nil {
		d.log.Error("some routes could not be programmed", "err", err)
	}
}

// applyRules steers natOutgoing traffic into the TUN by policy routing.
func (d *daemon) applyRules(p *plan.Plan) {
	if !d.dev.programsKernel() {
		return
	}
	added, removed, err := d.routes.ReconcileRules(natRules(p), d.device)
	for _, r := range added {
		d.log.Info("rule added", "rule", r.String())
	}
	for _, r := range removed {
		d.log.Info("rule removed", "rule", r.String())
	}
	if err != nil {
		d.log.Error("some NAT rules could not be programmed", "err", err)
	}
}

func (d *daemon) removeRules() {
	if !d.dev.programsKernel() {
		return
	}
	if _, removed, err := d.routes.ReconcileRules(nil, d.device); err != nil {
		d.log.Error("removing rules", "err", err)
	} else {
		d.log.Info("rules removed", "count", len(removed))
	}
}

func (d *daemon) removeRoutes() {
	if !d.dev.programsKernel() {
		return
	}
	removed, err := d.routes.RemoveAll()
	if err != nil {
		d.log.Error("removing routes", "err", err)
	}
	d.log.Info("routes removed", "count", len(removed))
}

// reload re-reads the cluster file; a file that fails validation leaves the
// running plan in place and the error is returned, logged and counted.
func (d *daemon) reload() error {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	refuse := func(err error) error {
		d.failedReloads.Add(1)
		msg := err.Error()
		d.lastReloadErr.Store(&msg)
		d.log.Error("reload refused: keeping the running configuration", "err", err)
		return err
	}
	c, err := config.Load(d.configPath)
	if err != nil {
		return refuse(err)
	}
	p, err := plan.Build(c, d.node, d.underlayMTU)
	if err != nil {
		return refuse(err)
	}
	// A new encapsulation needs its socket before any packet uses it; the
	// old sockets stay open, so the receive side keeps accepting them.
	vx, ipip, err := d.openTransports(p, d.router)
	if err != nil {
		return refuse(err)
	}
	old := d.router.Plan()
	if err := d.router.Update(p, vx, ipip); err != nil {
		return refuse(err)
	}
	// config.Load already refused what SetLimits would (negative limits):
	// an error here is a bug, said but not a reason to undo the plan.
	if err := d.nat.SetLimits(c.NAT.MaxFlows, c.NAT.MaxFlowsPerSource, natTimeoutsOf(c)); err != nil {
		d.log.Error("applying [nat] limits and timeouts", "err", err)
	}
	logPoolChanges(d.log, old.Pools, p.Pools)
	if err := d.configureLink(p); err != nil {
		d.log.Error("reconfiguring the TUN device", "err", err)
	}
	d.applyRoutes(p)
	d.applyRules(p)
	d.reloads.Add(1)
	d.log.Info("reload applied", "config", d.configPath, "remoteBlocks", len(p.Routes))
	return nil
}

// natTimeoutsOf is the [nat] section's idle timeouts as the NAT takes them.
func natTimeoutsOf(c *config.Cluster) nat.Timeouts {
	return nat.Timeouts{TCPEstablished: c.NAT.TCPTimeout, UDPUnreplied: c.NAT.UDPTimeout,
		UDPAssured: c.NAT.UDPStreamTimeout, ICMP: c.NAT.ICMPTimeout}
}

// logPoolChanges says, one line each, which pools a reload added, removed
// or changed.
func logPoolChanges(log *slog.Logger, before, after []plan.PoolSummary) {
	was := map[string]plan.PoolSummary{}
	for _, p := range before {
		was[p.Name] = p
	}
	for _, p := range after {
		old, ok := was[p.Name]
		switch {
		case !ok:
			log.Info("pool added", "pool", p.Name, "cidr", p.CIDR, "ipipMode", p.IPIPMode, "vxlanMode", p.VXLANMode, "natOutgoing", p.NATOutgoing)
		case old != p:
			log.Info("pool changed", "pool", p.Name, "cidr", p.CIDR, "ipipMode", p.IPIPMode, "vxlanMode", p.VXLANMode, "natOutgoing", p.NATOutgoing, "disabled", p.Disabled)
		}
		delete(was, p.Name)
	}
	for name := range was {
		log.Info("pool removed", "pool", name)
	}
}

func (d *daemon) status() statusReply {
	p := d.router.Plan()
	s := statusReply{
		Node: d.node, Config: d.configPath, Started: d.started,
		Reloads: d.reloads.Load(), FailedLoads: d.failedReloads.Load(),
		Stats:      d.router.Stats(),
		Encaps:     map[string]int{},
		Transports: map[string]bool{"vxlan": p.UsesVXLAN, "ipip": p.UsesIPIP},
	}
	if e := d.lastReloadErr.Load(); e != nil {
		s.LastError = *e
	}
	for _, r := range p.Routes {
		s.Encaps[r.Encap.String()]++
	}
	if owned, err := d.routes.List(); err == nil {
		s.Kernel = routeStrings(owned)
	}
	return s
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

// natCollector exposes the NAT table's counters.
func (d *daemon) natCollector() prometheus.Collector {
	flows := prometheus.NewDesc("overlayd_nat_flows", "Flows in the NAT table, by protocol and state.", []string{"proto", "state"}, nil)
	created := prometheus.NewDesc("overlayd_nat_flows_created_total", "NAT flows created.", nil, nil)
	expired := prometheus.NewDesc("overlayd_nat_flows_expired_total", "NAT flows ended by their idle timeout.", nil, nil)
	refused := prometheus.NewDesc("overlayd_nat_flows_refused_total", "NAT flows refused, by reason (table_full, per_source_limit, dial_failed).", []string{"reason"}, nil)
	dropped := prometheus.NewDesc("overlayd_nat_queue_drops_total", "Packets for the NAT dropped because its queue was full.", nil, nil)
	return collectorFunc{desc: flows, extra: []*prometheus.Desc{created, expired, refused, dropped}, collect: func(ch chan<- prometheus.Metric) {
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
		ch <- prometheus.MustNewConstMetric(dropped, prometheus.CounterValue, float64(s.Dropped))
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

func (d *daemon) serveMetrics(listen string) (*http.Server, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(dataplane.NewCollector(d.router), d.reloadCollector(), d.natCollector())
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	d.adminHandlers(mux)
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("metrics listener on %s: %w", listen, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("metrics server stopped", "err", err)
		}
	}()
	d.log.Info("metrics listening", "address", ln.Addr().String())
	return srv, nil
}

// checkForwarding warns when the namespace does not forward IPv4: workload
// traffic between the TUN and the workloads' interfaces would go nowhere.
func checkForwarding(log *slog.Logger) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err == nil && len(b) > 0 && b[0] == '0' {
		log.Warn("IPv4 forwarding is off in this network namespace (net.ipv4.ip_forward=0): workloads will not be reachable")
	}
}
