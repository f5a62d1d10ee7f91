package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/overlayd/overlayd/dataplane"
	"github.com/overlayd/overlayd/datastore"
	"github.com/overlayd/overlayd/kernel"
	"github.com/overlayd/overlayd/nat"
	"github.com/overlayd/overlayd/plan"
)

// The admin API: JSON over HTTP on the admin socket, a unix socket only
// overlayd's user can use (see listenAdmin). `overlayd routes`, `status`,
// `nat` and `reload` are its clients. The TCP metrics listener serves
// /metrics and nothing else: Prometheus scrapes it, often from other
// hosts, and a scraper must not be able to reload, read every NAT flow or
// profile the process.
const (
	APIPlan   = "/api/v1/plan"
	APIRoutes = "/api/v1/routes"
	APIStatus = "/api/v1/status"
	APIReload = "/api/v1/reload"
	APINAT    = "/api/v1/nat"
)

// StatusReply is what APIStatus returns.
type StatusReply struct {
	Node        string           `json:"node"`
	Config      string           `json:"config"`
	Started     time.Time        `json:"started"`
	Reloads     uint64           `json:"reloads"`
	FailedLoads uint64           `json:"failedReloads"`
	LastError   string           `json:"lastReloadError,omitempty"`
	Stats       dataplane.Stats  `json:"stats"`
	Kernel      []string         `json:"kernelRoutes"`
	Encaps      map[string]int   `json:"routesByEncap"`
	Transports  map[string]bool  `json:"transports"`
	Datastore   datastore.Status `json:"datastore"`
}

// RoutesReply is what APIRoutes returns: the plan's remote blocks and the
// kernel routes overlayd owns, as `ip route` arguments.
type RoutesReply struct {
	Plan   []plan.Route `json:"plan"`
	Kernel []string     `json:"kernel"`
}

// NATReply is what APINAT returns.
type NATReply struct {
	Flows []nat.Flow `json:"flows"`
	Stats nat.Stats  `json:"stats"`
}

// ReloadReply is what APIReload returns when the reload was applied; a
// refused one is answered 422 Unprocessable Entity with the reason.
type ReloadReply struct {
	Result  string         `json:"result"`
	Changes kernel.Changes `json:"changes"`
}

// AdminURL is the base of the admin API's URLs for AdminClient; the host
// is a placeholder, since every request goes to the socket.
const AdminURL = "http://overlayd"

// AdminClient returns an HTTP client whose requests all go to the admin
// socket at socket, whatever their URL's host: Get(AdminURL + APIStatus).
func AdminClient(socket string, timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}}
}

// adminAPI is what the admin API reads and asks of the running node; the
// daemon fills it, tests and the fuzzer give fakes.
type adminAPI struct {
	plan   func() *plan.Plan
	routes func() (RoutesReply, error)
	status func() StatusReply
	nat    func() NATReply
	reload func() (kernel.Changes, error)
	// pprof serves /debug/pprof: [admin] pprof or `run --pprof`.
	pprof bool
	log   *slog.Logger
}

// handler is the admin socket's mux. Nothing is decoded from a request but
// its method and path: the API takes no parameters and no body.
func (a *adminAPI) handler() http.Handler {
	mux := http.NewServeMux()
	if a.pprof {
		// Profiles of the running router, for `make bench --profile` and
		// an operator chasing a hot spot with `go tool pprof`. Off by
		// default: a CPU profile costs the data path, and the heap can
		// show addresses of flows.
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	writeJSON := func(w http.ResponseWriter, v any) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(v); err != nil {
			a.log.Debug("admin API reply", "err", err)
		}
	}
	mux.HandleFunc("GET "+APIPlan, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, a.plan())
	})
	mux.HandleFunc("GET "+APIRoutes, func(w http.ResponseWriter, _ *http.Request) {
		r, err := a.routes()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, r)
	})
	mux.HandleFunc("GET "+APIStatus, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, a.status())
	})
	mux.HandleFunc("GET "+APINAT, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, a.nat())
	})
	mux.HandleFunc("POST "+APIReload, func(w http.ResponseWriter, _ *http.Request) {
		ch, err := a.reload()
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnprocessableEntity)
			return
		}
		writeJSON(w, ReloadReply{Result: "reload applied", Changes: ch})
	})
	return mux
}

// adminAPI is the running daemon's.
func (d *daemon) adminAPI(pprof bool) *adminAPI {
	return &adminAPI{
		plan: d.router.Plan,
		routes: func() (RoutesReply, error) {
			owned, err := d.kernel.Routes()
			if err != nil {
				return RoutesReply{}, fmt.Errorf("reading the kernel's routes: %w", err)
			}
			return RoutesReply{Plan: d.router.Plan().Routes, Kernel: routeStrings(owned)}, nil
		},
		status: d.status,
		nat:    func() NATReply { return NATReply{Flows: d.nat.Flows(), Stats: d.nat.Stats()} },
		reload: d.reload,
		pprof:  pprof,
		log:    d.log,
	}
}

// metricsHandler serves /metrics from reg and answers 404 to anything else.
func metricsHandler(reg prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
}

// serveHTTP serves h on ln until the returned server is closed, which
// closes ln too.
func serveHTTP(ln net.Listener, h http.Handler, what string, log *slog.Logger) *http.Server {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error(what+" stopped", "err", err)
		}
	}()
	return srv
}

// serveMetrics serves the daemon's /metrics on the TCP address listen.
func (d *daemon) serveMetrics(listen string) (*http.Server, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(newRouterCollector(d.router), d.reloadCollector(), d.natCollector(), d.datastoreCollector())
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("metrics listener on %s: %w (--no-metrics serves none)", listen, err)
	}
	d.log.Info("metrics listening", "address", ln.Addr().String())
	return serveHTTP(ln, metricsHandler(reg), "metrics server", d.log), nil
}

func (d *daemon) status() StatusReply {
	p := d.router.Plan()
	s := StatusReply{
		Node: d.opts.Node, Config: d.opts.ConfigPath, Started: d.started,
		Reloads: d.reloads.Load(), FailedLoads: d.failedReloads.Load(),
		Stats:      d.router.Stats(),
		Encaps:     map[string]int{},
		Transports: map[string]bool{"vxlan": p.UsesVXLAN, "ipip": p.UsesIPIP},
		Datastore:  d.source.Status(),
	}
	if e := d.lastReloadErr.Load(); e != nil {
		s.LastError = *e
	}
	for _, r := range p.Routes {
		s.Encaps[r.Encap.String()]++
	}
	if owned, err := d.kernel.Routes(); err == nil {
		s.Kernel = routeStrings(owned)
	}
	return s
}

func routeStrings(rs []kernel.Route) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.String()
	}
	sort.Strings(out)
	return out
}
