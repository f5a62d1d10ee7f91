// Command overlayd is a pure-userspace overlay router with Calico's IPPool
// semantics: IP-in-IP and VXLAN without kernel modules. See README.md.
// This package is wiring only: flags, subcommands and the admin API's
// clients; `overlayd run` is package daemon.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/overlayd/overlayd/cni"
)

// version is set at link time (-ldflags "-X main.version=...").
var version = "dev"

// Exit statuses: 2 for bad input (flags, files), 1 for failures at run time.
const (
	exitFailure  = 1
	exitBadInput = 2
)

// usageError is bad input on the command line or in a file: exit status 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func badInput(err error) error { return usageError{err} }

// command is one subcommand.
type command struct {
	summary string
	usage   string // argument synopsis after the command name
	run     func(env *cliEnv, args []string) error
}

// cliEnv carries what commands write to, so tests can run them in-process.
type cliEnv struct {
	stdout, stderr io.Writer
}

func commands() map[string]command {
	return map[string]command{
		"run":     {"run the router on this node", "--config FILE --node NAME [flags]", runRun},
		"check":   {"validate the cluster file and print this node's plan", "--config FILE --node NAME [--underlay-mtu N] [--json]", runCheck},
		"explain": {"say what this node does with one packet", "--config FILE --node NAME SRC DST", runExplain},
		"import":  {"print Calico IPPool YAML manifests as cluster-file TOML", "FILE.yaml", runImport},
		"routes":  {"show the running daemon's routes", adminUsage + " [--json]", runRoutes},
		"status":  {"show the running daemon's counters and reloads", adminUsage + " [--json]", runStatus},
		"nat":     {"show the running daemon's NAT table, like conntrack -L", adminUsage + " [--json]", runNAT},
		"reload":  {"make the running daemon re-read its cluster file", adminUsage, runReload},
		"version": {"print the version", "", runVersion},
		"apply":   {"create or update IPPools in etcd from a Calico manifest", "-f FILE.yaml --config FILE", runApply},
		"get":     {"list the IPPools, nodes or blocks in etcd", "ippools|nodes|blocks --config FILE [-o wide|json]", runGet},
		"delete":  {"delete an IPPool, or a node with its blocks, from etcd", "ippool|node NAME --config FILE", runDelete},
		"ipam":    {"show or mend the workloads' address use, like calicoctl ipam", "show|release|gc --config FILE [--node NAME] [flags]", runIPAM},
		"cni":     {"install the CNI plugins (overlayd-cni, overlayd-ipam) and their conflist", "install --bin-dir DIR --conf-dir DIR --config FILE --node NAME", runCNI},
	}
}

func main() {
	// One binary: linked as overlayd-cni or overlayd-ipam, it is that CNI
	// plugin, driven by the CNI environment (`overlayd cni install` makes
	// the links).
	switch name := filepath.Base(os.Args[0]); name {
	case cni.PluginName, cni.IPAMName:
		os.Exit(cni.Main(name, fmt.Sprintf("CNI plugin %s %s (overlayd)", name, version)))
	}
	env := &cliEnv{stdout: os.Stdout, stderr: os.Stderr}
	os.Exit(mainWithArgs(env, os.Args[1:]))
}

func mainWithArgs(env *cliEnv, args []string) int {
	cmds := commands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		if len(args) == 2 {
			if c, ok := cmds[args[1]]; ok {
				fmt.Fprintf(env.stdout, "usage: overlayd %s %s\n", args[1], c.usage)
				return 0
			}
		}
		printUsage(env.stdout, cmds)
		if len(args) == 0 {
			return exitBadInput
		}
		return 0
	}
	c, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(env.stderr, "overlayd: unknown command %q\n\n", args[0])
		printUsage(env.stderr, cmds)
		return exitBadInput
	}
	err := c.run(env, args[1:])
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	}
	fmt.Fprintf(env.stderr, "overlayd %s: %v\n", args[0], err)
	var ue usageError
	if errors.As(err, &ue) {
		return exitBadInput
	}
	return exitFailure
}

func printUsage(w io.Writer, cmds map[string]command) {
	fmt.Fprintf(w, `overlayd: a pure-userspace overlay router with Calico's IPPool semantics
(IP-in-IP and VXLAN in userspace over a TUN device: no kernel modules needed).

usage: overlayd COMMAND [flags]

commands:
`)
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-8s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintf(w, "\n'overlayd COMMAND --help' shows a command's flags.\n")
}

// newFlagSet makes a FlagSet whose errors come back instead of exiting and
// whose --help prints the command's synopsis and flags.
func newFlagSet(env *cliEnv, name, synopsis, about string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	fs.Usage = func() {
		out := fs.Output()
		fmt.Fprintf(out, "usage: overlayd %s %s\n\n%s\n", name, synopsis, strings.TrimSpace(about))
		var hasFlags bool
		fs.VisitAll(func(*flag.Flag) { hasFlags = true })
		if hasFlags {
			fmt.Fprintf(out, "\nflags:\n")
			fs.PrintDefaults()
		}
	}
	return fs
}

// parseFlags parses args, turning flag errors into bad-input errors; --help
// prints to stdout and returns flag.ErrHelp.
func parseFlags(env *cliEnv, fs *flag.FlagSet, args []string) error {
	for _, a := range args {
		if a == "-h" || a == "--help" || a == "-help" {
			fs.SetOutput(env.stdout)
			fs.Usage()
			return flag.ErrHelp
		}
	}
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		return badInput(fmt.Errorf("%w (see 'overlayd %s --help')", err, fs.Name()))
	}
	return nil
}

func runVersion(env *cliEnv, args []string) error {
	fs := newFlagSet(env, "version", "", "Prints overlayd's version.")
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "overlayd %s\n", version)
	return nil
}
