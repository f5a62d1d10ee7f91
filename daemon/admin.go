package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
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

// The admin API: JSON over HTTP beside /metrics, on the same (loopback by
// default) listener. `overlayd routes`, `status`, `nat` and `reload` are
// its clients.
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

// serveAdmin serves /metrics, the admin API and pprof on listen.
func (d *daemon) serveAdmin(listen string) (*http.Server, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(newRouterCollector(d.router), d.reloadCollector(), d.natCollector(), d.datastoreCollector())
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	d.adminHandlers(mux)
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("metrics listener on %s: %w (--no-metrics serves none)", listen, err)
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

func (d *daemon) adminHandlers(mux *http.ServeMux) {
	// Profiles of the running router, on the same local listener as the
	// metrics: what `make bench --profile` and an operator chasing a hot
	// spot fetch with `go tool pprof`.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	writeJSON := func(w http.ResponseWriter, v any) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(v); err != nil {
			d.log.Debug("admin API reply", "err", err)
		}
	}
	mux.HandleFunc("GET "+APIPlan, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, d.router.Plan())
	})
	mux.HandleFunc("GET "+APIRoutes, func(w http.ResponseWriter, _ *http.Request) {
		owned, err := d.kernel.Routes()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, RoutesReply{Plan: d.router.Plan().Routes, Kernel: routeStrings(owned)})
	})
	mux.HandleFunc("GET "+APIStatus, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, d.status())
	})
	mux.HandleFunc("GET "+APINAT, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, NATReply{Flows: d.nat.Flows(), Stats: d.nat.Stats()})
	})
	mux.HandleFunc("POST "+APIReload, func(w http.ResponseWriter, _ *http.Request) {
		ch, err := d.reload()
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnprocessableEntity)
			return
		}
		writeJSON(w, ReloadReply{Result: "reload applied", Changes: ch})
	})
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
