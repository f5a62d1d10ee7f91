package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/dataplane"
	"github.com/overlayd/overlayd/kernel"
	"github.com/overlayd/overlayd/nat"
	"github.com/overlayd/overlayd/plan"
)

// The admin API: JSON over HTTP beside /metrics, on the same (loopback by
// default) listener. The read-only commands (routes, status) and reload use it.
const (
	apiPlan   = "/api/v1/plan"
	apiRoutes = "/api/v1/routes"
	apiStatus = "/api/v1/status"
	apiReload = "/api/v1/reload"
	apiNAT    = "/api/v1/nat"
)

// statusReply is what /api/v1/status returns.
type statusReply struct {
	Node        string          `json:"node"`
	Config      string          `json:"config"`
	Started     time.Time       `json:"started"`
	Reloads     uint64          `json:"reloads"`
	FailedLoads uint64          `json:"failedReloads"`
	LastError   string          `json:"lastReloadError,omitempty"`
	Stats       dataplane.Stats `json:"stats"`
	Kernel      []string        `json:"kernelRoutes"`
	Encaps      map[string]int  `json:"routesByEncap"`
	Transports  map[string]bool `json:"transports"`
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
	mux.HandleFunc("GET "+apiPlan, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, d.router.Plan())
	})
	mux.HandleFunc("GET "+apiRoutes, func(w http.ResponseWriter, _ *http.Request) {
		owned, err := d.routes.List()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, routesReply{Plan: d.router.Plan().Routes, Kernel: routeStrings(owned)})
	})
	mux.HandleFunc("GET "+apiStatus, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, d.status())
	})
	mux.HandleFunc("GET "+apiNAT, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, natReply{Flows: d.nat.Flows(), Stats: d.nat.Stats()})
	})
	mux.HandleFunc("POST "+apiReload, func(w http.ResponseWriter, _ *http.Request) {
		if err := d.reload(); err != nil {
			http.Error(w, err.Error(), http.StatusUnprocessableEntity)
			return
		}
		writeJSON(w, map[string]string{"result": "reload applied"})
	})
}

type natReply struct {
	Flows []nat.Flow `json:"flows"`
	Stats nat.Stats  `json:"stats"`
}

func runNAT(env *cliEnv, args []string) error {
	fs := newFlagSet(env, "nat", "[--admin ADDR | --config FILE] [--json]", `
Asks the running overlayd for its NAT table, one flow per line like
conntrack -L: the workload's side, the outside side, packets and bytes each
way, state and time left before the flow expires.`)
	var af adminFlags
	af.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	var reply natReply
	if err := af.call(http.MethodGet, apiNAT, &reply); err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(env.stdout).Encode(reply)
	}
	nat.FormatConntrack(env.stdout, reply.Flows)
	return nil
}

type routesReply struct {
	Plan   []plan.Route `json:"plan"`
	Kernel []string     `json:"kernel"`
}

func routeStrings(rs []kernel.Route) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.String()
	}
	sort.Strings(out)
	return out
}

// adminFlags find the daemon's admin API: --admin, or the cluster file's
// [metrics] listen, or the default.
type adminFlags struct {
	addr   string
	config string
}

func (f *adminFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.addr, "admin", "", "the daemon's admin address (default: [metrics] listen of --config, else "+config.DefaultMetricsListen+")")
	fs.StringVar(&f.config, "config", "", "the cluster file, to find [metrics] listen")
}

func (f *adminFlags) base() (string, error) {
	addr := f.addr
	if addr == "" && f.config != "" {
		c, err := config.Load(f.config)
		if err != nil {
			return "", badInput(err)
		}
		addr = c.Metrics.Listen
	}
	if addr == "" {
		addr = config.DefaultMetricsListen
	}
	return "http://" + addr, nil
}

// call asks the daemon's admin API and decodes its JSON answer into v.
func (f *adminFlags) call(method, path string, v any) error {
	base, err := f.base()
	if err != nil {
		return err
	}
	req, err := http.NewRequest(method, base+path, nil)
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("asking overlayd at %s: %w (is `overlayd run` running, with [metrics] listen there?)", base, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading the answer from %s: %w", base, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(body)))
	}
	return json.Unmarshal(body, v)
}

func runRoutes(env *cliEnv, args []string) error {
	fs := newFlagSet(env, "routes", "[--admin ADDR | --config FILE] [--json]", `
Asks the running overlayd for its routes: each remote block with its node and
encapsulation, and the kernel routes it owns (proto 211).`)
	var af adminFlags
	af.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	var reply routesReply
	if err := af.call(http.MethodGet, apiRoutes, &reply); err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(env.stdout).Encode(reply)
	}
	tw := tabwriter.NewWriter(env.stdout, 2, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "BLOCK\tNODE\tVIA\tENCAP\tWHY\n")
	for _, r := range reply.Plan {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Block, r.Node, r.NodeAddr, r.Encap, r.Reason)
	}
	tw.Flush()
	fmt.Fprintf(env.stdout, "\nkernel routes owned by overlayd:\n")
	for _, r := range reply.Kernel {
		fmt.Fprintf(env.stdout, "  %s\n", r)
	}
	return nil
}

func runStatus(env *cliEnv, args []string) error {
	fs := newFlagSet(env, "status", "[--admin ADDR | --config FILE] [--json]", `
Asks the running overlayd how it is doing: node, uptime, reloads, packets by
encapsulation and drops by reason.`)
	var af adminFlags
	af.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	var s statusReply
	if err := af.call(http.MethodGet, apiStatus, &s); err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(env.stdout).Encode(s)
	}
	fmt.Fprintf(env.stdout, "node %s, running since %s (%s), config %s\n", s.Node, s.Started.Format(time.RFC3339),
		time.Since(s.Started).Round(time.Second), s.Config)
	fmt.Fprintf(env.stdout, "reloads %d applied, %d refused", s.Reloads, s.FailedLoads)
	if s.LastError != "" {
		fmt.Fprintf(env.stdout, " (last: %s)", s.LastError)
	}
	fmt.Fprintln(env.stdout)
	tw := tabwriter.NewWriter(env.stdout, 2, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "ENCAP\tROUTES\tTX PACKETS\tTX BYTES\tRX PACKETS\tRX BYTES\n")
	for _, e := range []string{"none", "ipip", "vxlan"} {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\n", e, s.Encaps[e], s.Stats.TxPackets[e], s.Stats.TxBytes[e], s.Stats.RxPackets[e], s.Stats.RxBytes[e])
	}
	tw.Flush()
	var drops []string
	for reason, n := range s.Stats.Drops {
		if n > 0 {
			drops = append(drops, fmt.Sprintf("%s %d", reason, n))
		}
	}
	sort.Strings(drops)
	if len(drops) == 0 {
		drops = []string{"none"}
	}
	fmt.Fprintf(env.stdout, "drops: %s\n", strings.Join(drops, ", "))
	return nil
}

func runReload(env *cliEnv, args []string) error {
	fs := newFlagSet(env, "reload", "[--admin ADDR | --config FILE]", `
Asks the running overlayd to re-read its cluster file (as SIGHUP does) and
says whether the new file was applied or refused, and why.`)
	var af adminFlags
	af.register(fs)
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	var reply map[string]string
	if err := af.call(http.MethodPost, apiReload, &reply); err != nil {
		if strings.Contains(err.Error(), "422") {
			return badInput(err)
		}
		return err
	}
	fmt.Fprintln(env.stdout, reply["result"])
	return nil
}
