// Package daemon is `overlayd run`: the lifecycle of one node. One pipeline
// carries every change, source -> plan -> apply -> swap: the cluster file
// (the source) is read into a config.Cluster, plan.Build makes this node's
// plan, and apply opens the sockets it needs, swaps the data path's table
// and makes the kernel match by difference. Start-up, SIGHUP and the admin
// API's reload all go through apply. The package also holds the workload
// side (TUN, handed-over TUN or netstack), the admin API's server and every
// Prometheus collector, so the data path links neither.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/conn"
	"github.com/overlayd/overlayd/dataplane"
	"github.com/overlayd/overlayd/datastore"
	"github.com/overlayd/overlayd/datastore/etcd"
	"github.com/overlayd/overlayd/kernel"
	"github.com/overlayd/overlayd/nat"
	"github.com/overlayd/overlayd/plan"
)

// Options are what `overlayd run` is given on its command line; each
// setting left zero falls back to the cluster file's.
type Options struct {
	ConfigPath string
	Node       string
	// Device names the TUN device; "": the file's [tunnel] device.
	Device string
	// MetricsListen is the TCP address of /metrics; "": the file's
	// [metrics] listen. NoMetrics serves no /metrics.
	MetricsListen string
	NoMetrics     bool
	// AdminSocket is the admin API's unix socket; "": the file's, see
	// config.(*Cluster).AdminSocket.
	AdminSocket string
	// PProf serves /debug/pprof on the admin socket; false: the file's
	// [admin] pprof.
	PProf bool
	// TunnelMode is config.ModeTUN or config.ModeNetstack; "": the file's.
	TunnelMode string
	// TunFD is a handed-over TUN descriptor (3 or more); -1: the file's
	// [tunnel] fd, if any.
	TunFD int
	// NoKernelRoutes leaves the TUN's link, addresses, routes, rules and
	// sysctls to whoever set up the namespace.
	NoKernelRoutes bool
	// UnderlayMTU is the underlay's MTU; 0: read from its interface.
	UnderlayMTU int
	Logger      *slog.Logger
}

// InputError is bad input, in a file or an option: what the user must fix
// (exit status 2), as opposed to a failure at run time.
type InputError struct{ Err error }

func (e *InputError) Error() string { return e.Err.Error() }
func (e *InputError) Unwrap() error { return e.Err }

func badInput(err error) error { return &InputError{err} }

// daemon is one `overlayd run`: the router and what it set up in the kernel.
type daemon struct {
	opts        Options
	log         *slog.Logger
	dev         deviceSettings
	device      string // the TUN device's name: the option's, the file's or the handed-over device's
	side        workloadSide
	underlayMTU int
	busyPoll    time.Duration // [tunnel] busyPoll, read at start
	source      datastore.Source
	kernel      *kernel.Handle
	router      *dataplane.Router
	nat         *nat.NAT
	started     time.Time
	// admin is the admin API's socket, opened at start-up and served once
	// the router runs; pprof adds /debug/pprof to it.
	admin *adminSocket
	pprof bool

	// applyMu serialises applies: SIGHUP and the admin API may ask at once.
	applyMu       sync.Mutex
	reloads       atomic.Uint64
	failedReloads atomic.Uint64
	lastReloadErr atomic.Pointer[string]
}

// Run runs the node until ctx is done, then removes the routes and rules
// it programmed. A bad file or option is an *InputError.
func Run(ctx context.Context, o Options) error {
	if o.ConfigPath == "" || o.Node == "" {
		return badInput(errors.New("--config and --node are required"))
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c, err := config.Load(o.ConfigPath)
	if err != nil {
		return badInput(err)
	}
	if c.Node(o.Node) == nil {
		return badInput(fmt.Errorf("node %q is not in %s (its nodes: %v)", o.Node, o.ConfigPath, c.NodeNames()))
	}
	d := &daemon{opts: o, log: log, device: o.Device, underlayMTU: o.UnderlayMTU, busyPoll: c.Tunnel.BusyPoll, started: time.Now()}
	if d.device == "" {
		d.device = c.Tunnel.Device
	}
	if d.dev, err = resolveDeviceSettings(c, o.TunnelMode, o.TunFD, o.NoKernelRoutes); err != nil {
		return badInput(err)
	}
	// The admin socket first, before anything touches the kernel: a second
	// overlayd for this node must stop here, not rewrite the first one's
	// routes and remove them when it exits.
	socket := o.AdminSocket
	if socket == "" {
		socket = c.AdminSocket(o.Node)
	}
	if d.admin, err = listenAdmin(socket, log); err != nil {
		return err
	}
	defer d.admin.Close()
	d.pprof = o.PProf || c.Admin.PProf
	if d.source, err = openSource(c, o.Node, log); err != nil {
		return err
	}
	defer d.source.Close()
	if c, err = d.source.Load(ctx); err != nil {
		return err
	}
	return d.run(ctx, c)
}

// openSource is the datastore the cluster file names.
func openSource(c *config.Cluster, node string, log *slog.Logger) (datastore.Source, error) {
	if c.Datastore.Type == config.DatastoreEtcd {
		s, err := etcd.Open(c.Datastore, c, node, log)
		if err != nil {
			return nil, badInput(err)
		}
		return s, nil
	}
	return datastore.NewFile(c.Source), nil
}

// plan is the middle of the pipeline: this node's plan of cluster c, on
// this node's TUN device and underlay MTU.
func (d *daemon) plan(c *config.Cluster) (*plan.Plan, error) {
	c.Tunnel.Device = d.device
	p, err := plan.Build(c, d.opts.Node, d.underlayMTU)
	if err != nil {
		return nil, badInput(err)
	}
	return p, nil
}

func (d *daemon) run(ctx context.Context, c *config.Cluster) error {
	var err error
	if d.kernel, err = kernel.Open(); err != nil {
		return err
	}
	defer d.kernel.Close()
	underlayDev, mtu, err := d.kernel.InterfaceOf(c.Node(d.opts.Node).Address.Addr())
	if err != nil {
		return err
	}
	if d.underlayMTU == 0 {
		d.underlayMTU = mtu
	}
	d.log.Info("underlay", "device", underlayDev, "mtu", d.underlayMTU)
	p, err := d.plan(c)
	if err != nil {
		return err
	}
	if d.side, err = d.openWorkloadSide(p); err != nil {
		return err
	}
	if d.device != p.Kernel.Link.Device {
		// A handed-over TUN has a name of its own.
		if p, err = d.plan(c); err != nil {
			d.side.dev.Close()
			return err
		}
	}
	// The NAT answers only what the plan's rules steer to it; an idle
	// netstack costs little, and a reload may turn natOutgoing on.
	d.nat, err = nat.New(nat.Config{
		Outside: p.Address.Addr(), MTU: p.TunnelMTU, Logger: d.log,
		MaxFlows: p.NAT.MaxFlows, MaxFlowsPerSource: p.NAT.MaxFlowsPerSource, Timeouts: natTimeoutsOf(p.NAT),
		Out: func(bufs [][]byte) error { return d.router.WriteTUN(bufs) },
	})
	if err != nil {
		d.side.dev.Close()
		return err
	}
	defer d.nat.Close()
	if _, err := d.apply(p); err != nil {
		if d.router == nil {
			d.side.dev.Close()
		}
		return err
	}
	defer d.clearKernel()

	// From here on the router owns the devices: Run closes them.
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	serveErr := func(err error) error {
		stop()
		_ = d.router.Run(ctx)
		return err
	}
	if d.side.stack != nil {
		stopServices, err := d.serveNetstack(ctx, c)
		if err != nil {
			return serveErr(err)
		}
		defer stopServices()
	}
	if !d.opts.NoMetrics {
		listen := d.opts.MetricsListen
		if listen == "" {
			listen = c.Metrics.Listen
		}
		srv, err := d.serveMetrics(listen)
		if err != nil {
			return serveErr(err)
		}
		defer srv.Close()
	}
	adminSrv := serveHTTP(d.admin.Listener(), d.adminAPI(d.pprof).handler(), "admin API", d.log)
	defer adminSrv.Close()
	d.log.Info("admin API listening", "socket", d.admin.path, "pprof", d.pprof)
	go func() {
		// The datastore's changes take the same way as a reload.
		if err := d.source.Watch(ctx, d.applyCluster); err != nil {
			d.log.Error("watching the datastore stopped: the node keeps its last plan", "err", err)
		}
	}()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				_, _ = d.reload() // logged and counted by reload
			}
		}
	}()
	d.log.Info("overlayd running", "node", d.opts.Node, "blocks", len(p.LocalBlocks), "remoteBlocks", len(p.Routes), "tunnelAddress", p.TunnelAddr)
	err = d.router.Run(ctx)
	s := d.router.Stats()
	d.log.Info("overlayd stopping", "txPackets", s.TxPackets, "rxPackets", s.RxPackets)
	return err
}

// apply makes plan p what this node does: it opens the sockets p needs,
// starts the data path on p or swaps p's table in, applies the [nat]
// limits, then makes the kernel match p.Kernel by difference. The table is
// swapped before the kernel changes, as a reload always did, so a mode
// switch keeps its connections. Start-up and every reload come here; a plan
// whose sockets cannot be opened changes nothing. Kernel failures are
// logged, not refused: the rest of the plan is in force.
func (d *daemon) apply(p *plan.Plan) (kernel.Changes, error) {
	vx, ipip, err := d.openTransports(p)
	if err != nil {
		return nil, err
	}
	var old *plan.Plan
	if d.router == nil {
		d.router, err = dataplane.New(dataplane.Config{Plan: p, TUN: d.side.dev, VXLAN: vx, IPIP: ipip, NAT: d.nat.Deliver, Logger: d.log, Spin: d.busyPoll})
	} else {
		old = d.router.Plan()
		err = d.router.Update(p, vx, ipip)
	}
	if err != nil {
		for _, tr := range []conn.Transport{vx, ipip} {
			if tr != nil {
				tr.Close()
			}
		}
		return nil, err
	}
	// config.Load already refused what SetLimits would (negative limits):
	// an error here is a bug, said but not a reason to undo the plan.
	if err := d.nat.SetLimits(p.NAT.MaxFlows, p.NAT.MaxFlowsPerSource, natTimeoutsOf(p.NAT)); err != nil {
		d.log.Error("applying [nat] limits and timeouts", "err", err)
	}
	for _, w := range p.Warnings {
		d.log.Warn(w)
	}
	if old != nil {
		logPoolChanges(d.log, old.Pools, p.Pools)
	}
	if !d.dev.programsKernel() {
		return nil, nil
	}
	ch, err := d.kernel.Apply(p.Kernel)
	logChanges(d.log, ch)
	if err != nil {
		d.log.Error("some kernel state could not be programmed", "err", err)
	}
	return ch, nil
}

// clearKernel removes the routes and rules overlayd programmed: what it
// does on exit.
func (d *daemon) clearKernel() {
	if !d.dev.programsKernel() {
		return
	}
	ch, err := d.kernel.Clear()
	if err != nil {
		d.log.Error("removing routes and rules", "err", err)
	}
	d.log.Info("routes and rules removed", "routes", ch.Count(kernel.ObjectRoute, kernel.OpRemoved), "rules", ch.Count(kernel.ObjectRule, kernel.OpRemoved))
}

func logChanges(log *slog.Logger, ch kernel.Changes) {
	for _, c := range ch {
		log.Info(string(c.Object)+" "+string(c.Op), string(c.Object), c.What)
	}
}

// reload re-reads the cluster file and applies it; a file that fails
// validation leaves the running plan in place and the error is returned,
// logged and counted.
func (d *daemon) reload() (kernel.Changes, error) {
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	ch, err := d.reloadLocked()
	if err != nil {
		d.failedReloads.Add(1)
		msg := err.Error()
		d.lastReloadErr.Store(&msg)
		d.log.Error("reload refused: keeping the running configuration", "err", err)
		return nil, err
	}
	d.reloads.Add(1)
	d.log.Info("reload applied", "config", d.opts.ConfigPath, "remoteBlocks", len(d.router.Plan().Routes), "kernelChanges", len(ch))
	return ch, nil
}

func (d *daemon) reloadLocked() (kernel.Changes, error) {
	c, err := d.source.Load(context.Background())
	if err != nil {
		return nil, badInput(err)
	}
	if err := workloadsKeepTheirBlocks(c, d.opts.Node); err != nil {
		return nil, badInput(err)
	}
	p, err := d.plan(c)
	if err != nil {
		return nil, err
	}
	return d.apply(p)
}

// applyCluster applies a cluster the datastore's watch delivered; one that
// cannot be applied leaves the running plan and is logged.
func (d *daemon) applyCluster(c *config.Cluster) {
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	p, err := d.plan(c)
	if err == nil {
		_, err = d.apply(p)
	}
	if err != nil {
		d.log.Error("datastore change not applied: keeping the running plan", "err", err)
		return
	}
	d.log.Info("datastore change applied", "remoteBlocks", len(p.Routes))
}

// vxlanSourcePorts is how many source ports VXLAN spreads flows over, for
// the underlay's ECMP and the receivers' RSS (the kernel's VXLAN hashes over
// its whole port range; a socket per port costs a descriptor and buffers).
const vxlanSourcePorts = 8

// openTransports opens the sockets plan p needs that the router does not
// have yet (at start, it has none). Failures name what is missing.
func (d *daemon) openTransports(p *plan.Plan) (vx, ipip conn.Transport, err error) {
	has := func(e plan.Encap) bool { return d.router != nil && d.router.HasTransport(e) }
	me := p.Address.Addr()
	if p.UsesVXLAN && !has(plan.EncapVXLAN) {
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
	if p.UsesIPIP && !has(plan.EncapIPIP) {
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

// natTimeoutsOf is the [nat] section's idle timeouts as the NAT takes them.
func natTimeoutsOf(c config.NAT) nat.Timeouts {
	return nat.Timeouts{TCPEstablished: c.TCPTimeout, UDPUnreplied: c.UDPTimeout,
		UDPAssured: c.UDPStreamTimeout, ICMP: c.ICMPTimeout}
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

// checkForwarding warns when the namespace does not forward IPv4: workload
// traffic between the TUN and the workloads' interfaces would go nowhere.
func checkForwarding(log *slog.Logger) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err == nil && len(b) > 0 && b[0] == '0' {
		log.Warn("IPv4 forwarding is off in this network namespace (net.ipv4.ip_forward=0): workloads will not be reachable")
	}
}
