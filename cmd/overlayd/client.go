package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/overlayd/overlayd/config"
	"github.com/overlayd/overlayd/daemon"
	"github.com/overlayd/overlayd/nat"
)

// The command-line clients of the running daemon's admin API.

// adminFlags find the daemon's admin socket: --admin-socket, or the
// socket of --node (by default the host's name, as Calico's node name is)
// as --config's [admin] socket or the default places it.
type adminFlags struct {
	socket string
	node   string
	config string
}

// adminUsage is the synopsis of the flags adminFlags registers.
const adminUsage = "[--admin-socket PATH | --node NAME [--config FILE]]"

func (f *adminFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.socket, "admin-socket", "", "the daemon's admin socket (default: that of --node)")
	fs.StringVar(&f.node, "node", "", "the node whose daemon to ask (default: the host name)")
	fs.StringVar(&f.config, "config", "", "the cluster file, for its [admin] socket")
}

// target returns the node asked (empty when --admin-socket names the
// socket) and its socket's path.
func (f *adminFlags) target() (node, socket string, err error) {
	if f.socket != "" {
		return f.node, f.socket, nil
	}
	node = f.node
	if node == "" {
		if node, err = os.Hostname(); err != nil {
			return "", "", fmt.Errorf("which node? give --node NAME or --admin-socket PATH (the host name is unknown: %w)", err)
		}
	}
	var c *config.Cluster // nil: the default places
	if f.config != "" {
		if c, err = config.Load(f.config); err != nil {
			return "", "", badInput(err)
		}
	}
	return node, c.AdminSocket(node), nil
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
	node, socket, err := f.target()
	if err != nil {
		return err
	}
	req, err := http.NewRequest(method, daemon.AdminURL+path, nil)
	if err != nil {
		return err
	}
	resp, err := daemon.AdminClient(socket, 10*time.Second).Do(req)
	if err != nil {
		return dialError(node, socket, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading the answer on %s: %w", socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		return &apiError{method: method, path: path, status: resp.StatusCode, statusText: resp.Status, body: strings.TrimSpace(string(body))}
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("the answer to %s %s on %s: %w", method, path, socket, err)
	}
	return nil
}

// dialError says why the daemon could not be asked, in the user's terms.
func dialError(node, socket string, err error) error {
	forNode := ""
	if node != "" {
		forNode = fmt.Sprintf(" for node %q", node)
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("overlayd is not running%s: there is no admin socket at %s (another node? give --node; another socket? --admin-socket or --config)", forNode, socket)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("overlayd is not running%s: nothing answers on its admin socket %s (left by an overlayd that did not exit cleanly; the next one removes it)", forNode, socket)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("asking overlayd%s on %s: %w: the admin socket is for overlayd's own user (and root)", forNode, socket, err)
	}
	return fmt.Errorf("asking overlayd%s on %s: %w", forNode, socket, err)
}

// query is one read-only client command: it asks path and prints the reply
// as JSON with --json, else with format.
func query[R any](env *cliEnv, args []string, name, about, path string, format func(io.Writer, *R)) error {
	fs := newFlagSet(env, name, adminUsage+" [--json]", about)
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
	fs := newFlagSet(env, "reload", adminUsage, `
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
