package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/signal"
	"syscall"

	"github.com/overlayd/overlayd/daemon"
)

func runRun(env *cliEnv, args []string) error {
	fs := newFlagSet(env, "run", "--config FILE --node NAME [flags]", `
Runs the router: creates the TUN device, programs the kernel's routes, opens
the VXLAN and IP-in-IP sockets the pools need and carries the node's overlay
traffic until SIGTERM or SIGINT, then removes its routes. SIGHUP re-reads the
cluster file. The admin API (overlayd status, routes, nat, reload) is served
on a unix socket only this user can use; the TCP listener serves /metrics.

Unprivileged: --tun-fd N --no-kernel-routes uses a TUN opened by the runtime
and leaves its set-up to it ('overlayd check --print-routes' lists it); with
VXLAN pools that needs no capability. --tunnel-mode netstack needs no TUN at
all: the node's workload side is a netstack reached through [netstack] socks5
and [[forward]] port forwards.`)
	var o daemon.Options
	fs.StringVar(&o.ConfigPath, "config", "", "the cluster file (TOML)")
	fs.StringVar(&o.Node, "node", "", "this node's name, as in the cluster file's [[nodes]]")
	fs.IntVar(&o.UnderlayMTU, "underlay-mtu", 0, "MTU of the underlay interface (0: read from the interface)")
	fs.StringVar(&o.Device, "device", "", "TUN device name (default: [tunnel] device)")
	fs.StringVar(&o.MetricsListen, "metrics-listen", "", "TCP address for Prometheus's /metrics, which serves nothing else (default: [metrics] listen)")
	fs.BoolVar(&o.NoMetrics, "no-metrics", false, "serve no /metrics (the admin socket stays)")
	fs.StringVar(&o.AdminSocket, "admin-socket", "", "the admin API's unix socket, usable only by this user (default: [admin] socket, else /run/overlayd/NODE.sock, or $XDG_RUNTIME_DIR/overlayd/NODE.sock when not root)")
	fs.BoolVar(&o.PProf, "pprof", false, "serve /debug/pprof on the admin socket (default: [admin] pprof)")
	fs.StringVar(&o.TunnelMode, "tunnel-mode", "", "\"tun\" (a kernel TUN device) or \"netstack\" (no device: SOCKS5 and port forwards) (default: [tunnel] mode)")
	fs.IntVar(&o.TunFD, "tun-fd", -1, "a TUN file descriptor (3 or more) handed over by the runtime, used instead of creating a device; -1: [tunnel] fd if set")
	fs.BoolVar(&o.NoKernelRoutes, "no-kernel-routes", false, "leave the TUN's link, addresses, routes, rules and sysctls to whoever set up the namespace (see overlayd check --print-routes)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return badInput(fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	if o.NoMetrics && o.MetricsListen != "" {
		return badInput(errors.New("--no-metrics and --metrics-listen: choose one"))
	}
	var err error
	if o.Logger, err = newLogger(env.stderr, *logLevel, *logFormat); err != nil {
		return badInput(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	err = daemon.Run(ctx, o)
	if ie := (*daemon.InputError)(nil); errors.As(err, &ie) {
		return badInput(ie.Err)
	}
	return err
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
