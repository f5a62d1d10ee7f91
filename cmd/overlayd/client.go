package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/daemon"
	"github.com/overlayd/overlayd/nat"
)

// The command-line clients of the running daemon's admin API.

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

// apiError is the daemon's answer when it is not 200 OK.
type apiError struct {
	method, path string
	status       int
	statusText   string
	body         string
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%s %s: %s: %s", e.method, e.path, e.statusText, e.body)
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
		return &apiError{method: method, path: path, status: resp.StatusCode, statusText: resp.Status, body: strings.TrimSpace(string(body))}
	}
	return json.Unmarshal(body, v)
}

// query is one read-only client command: it asks path and prints the reply
// as JSON with --json, else with format.
func query[R any](env *cliEnv, args []string, name, about, path string, format func(io.Writer, *R)) error {
	fs := newFlagSet(env, name, "[--admin ADDR | --config FILE] [--json]", about)
	var af adminFlags
	af.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return badInput(fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	var reply R
	if err := af.call(http.MethodGet, path, &reply); err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(env.stdout).Encode(reply)
	}
	format(env.stdout, &reply)
	return nil
}

func runNAT(env *cliEnv, args []string) error {
	return query(env, args, "nat", `
Asks the running overlayd for its NAT table, one flow per line like
conntrack -L: the workload's side, the outside side, packets and bytes each
way, state and time left before the flow expires.`, daemon.APINAT,
		func(w io.Writer, r *daemon.NATReply) { nat.FormatConntrack(w, r.Flows) })
}

func runRoutes(env *cliEnv, args []string) error {
	return query(env, args, "routes", `
Asks the running overlayd for its routes: each remote block with its node and
encapsulation, and the kernel routes it owns (proto 211).`, daemon.APIRoutes,
		func(w io.Writer, r *daemon.RoutesReply) {
			tw := tabwriter.NewWriter(w, 2, 0, 2, ' ', 0)
			fmt.Fprintf(tw, "BLOCK\tNODE\tVIA\tENCAP\tWHY\n")
			for _, rt := range r.Plan {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", rt.Block, rt.Node, rt.NodeAddr, rt.Encap, rt.Reason())
			}
			tw.Flush()
			fmt.Fprintf(w, "\nkernel routes owned by overlayd:\n")
			for _, k := range r.Kernel {
				fmt.Fprintf(w, "  %s\n", k)
			}
		})
}

func runStatus(env *cliEnv, args []string) error {
	return query(env, args, "status", `
Asks the running overlayd how it is doing: node, uptime, reloads, packets by
encapsulation and drops by reason.`, daemon.APIStatus, printStatus)
}

func printStatus(w io.Writer, s *daemon.StatusReply) {
	fmt.Fprintf(w, "node %s, running since %s (%s), config %s\n", s.Node, s.Started.Format(time.RFC3339),
		time.Since(s.Started).Round(time.Second), s.Config)
	fmt.Fprintf(w, "reloads %d applied, %d refused", s.Reloads, s.FailedLoads)
	if s.LastError != "" {
		fmt.Fprintf(w, " (last: %s)", s.LastError)
	}
	fmt.Fprintln(w)
	if ds := s.Datastore; ds.Type != "" {
		state := "up"
		if !ds.Up {
			state = "DOWN: running on the last plan"
		}
		fmt.Fprintf(w, "datastore %s %s since %s (%s)", ds.Type, state, ds.Since.Format(time.RFC3339), time.Since(ds.Since).Round(time.Second))
		if ds.Revision != 0 {
			fmt.Fprintf(w, ", revision %d", ds.Revision)
		}
		if ds.Skipped != 0 {
			fmt.Fprintf(w, ", %d malformed entries skipped", ds.Skipped)
		}
		if ds.LastError != "" {
			fmt.Fprintf(w, " (last error: %s)", ds.LastError)
		}
		fmt.Fprintln(w)
	}
	tw := tabwriter.NewWriter(w, 2, 0, 2, ' ', 0)
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
	fmt.Fprintf(w, "drops: %s\n", strings.Join(drops, ", "))
}

func runReload(env *cliEnv, args []string) error {
	fs := newFlagSet(env, "reload", "[--admin ADDR | --config FILE]", `
Asks the running overlayd to re-read its cluster file (as SIGHUP does) and
says whether the new file was applied, with what it changed in the kernel,
or refused, and why.`)
	var af adminFlags
	af.register(fs)
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return badInput(fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	var reply daemon.ReloadReply
	if err := af.call(http.MethodPost, daemon.APIReload, &reply); err != nil {
		// The daemon refuses a file it cannot apply as unprocessable: the
		// file is what is wrong.
		if ae := (*apiError)(nil); errors.As(err, &ae) && ae.status == http.StatusUnprocessableEntity {
			return badInput(err)
		}
		return err
	}
	fmt.Fprintln(env.stdout, reply.Result)
	for _, c := range reply.Changes {
		fmt.Fprintf(env.stdout, "  %s\n", c)
	}
	return nil
}
