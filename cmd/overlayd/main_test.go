package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// run executes the CLI in-process and returns its exit status and output.
func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := mainWithArgs(&cliEnv{stdout: &stdout, stderr: &stderr}, args)
	return code, stdout.String(), stderr.String()
}

func TestCheckEveryExample(t *testing.T) {
	files, err := filepath.Glob("../../examples/*.toml")
	if err != nil || len(files) < 6 {
		t.Fatalf("examples: %v %v", files, err)
	}
	for _, f := range files {
		for _, node := range []string{"node-a", "node-b", "node-c"} {
			t.Run(filepath.Base(f)+"/"+node, func(t *testing.T) {
				code, out, errOut := run(t, "check", "--config", f, "--node", node)
				if code != 0 {
					t.Fatalf("exit %d: %s", code, errOut)
				}
				if !strings.Contains(out, "remote blocks:") || !strings.Contains(out, "tunnel MTU") {
					t.Errorf("output lacks the plan:\n%s", out)
				}
			})
		}
	}
}

// remoteRows returns "node encap" for each row of the remote blocks table.
func remoteRows(out string) []string {
	var rows []string
	in := false
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, "remote blocks:"):
			in = true
		case in && strings.TrimSpace(line) == "":
			in = false
		case in && !strings.Contains(line, "BLOCK"):
			f := strings.Fields(line)
			rows = append(rows, f[1]+" "+f[3])
		}
	}
	return rows
}

func TestCheckAcceptance(t *testing.T) {
	tests := []struct {
		file string
		want string
	}{
		{"vxlan-cross-subnet.toml", "node-b none,node-c vxlan"},
		{"vxlan-always.toml", "node-b vxlan,node-c vxlan"},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			code, out, errOut := run(t, "check", "--config", "../../examples/"+tc.file, "--node", "node-a")
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			if got := strings.Join(remoteRows(out), ","); got != tc.want {
				t.Errorf("remote blocks %q, want %q\n%s", got, tc.want, out)
			}
			if tc.file == "vxlan-cross-subnet.toml" && !strings.Contains(out, "same subnet") {
				t.Errorf("the same-subnet reason is not shown:\n%s", out)
			}
		})
	}
}

func TestCheckJSON(t *testing.T) {
	code, out, errOut := run(t, "check", "--config", "../../examples/ipip-cross-subnet.toml", "--node", "node-a", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var p struct {
		TunnelMTU int `json:"tunnelMTU"`
		Routes    []struct {
			Node  string `json:"node"`
			Encap string `json:"encap"`
		} `json:"routes"`
	}
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if p.TunnelMTU != 1480 || len(p.Routes) != 2 || p.Routes[1].Encap != "ipip" {
		t.Errorf("plan %+v", p)
	}
}

func TestBadInputExitsTwo(t *testing.T) {
	dir := t.TempDir()
	typo := filepath.Join(dir, "typo.toml")
	mixed := filepath.Join(dir, "mixed.toml")
	nodes := "\n[[nodes]]\nname = \"node-a\"\naddress = \"198.18.1.10/24\"\n"
	must(t, os.WriteFile(typo, []byte("[[pools]]\nname = \"p\"\ncidr = \"192.168.0.0/16\"\nipipMod = \"Always\"\n"+nodes), 0o644))
	must(t, os.WriteFile(mixed, []byte("[[pools]]\nname = \"p\"\ncidr = \"192.168.0.0/16\"\nipipMode = \"Always\"\nvxlanMode = \"Always\"\n"+nodes), 0o644))

	tests := []struct {
		name string
		args []string
		want *regexp.Regexp
	}{
		{"typo'd key names file, line and key", []string{"check", "--config", typo, "--node", "node-a"},
			regexp.MustCompile(`typo\.toml:4: pools\[0\]: unknown key "ipipMod" \(did you mean "ipipMode"\?\)`)},
		{"both encapsulations", []string{"check", "--config", mixed, "--node", "node-a"},
			regexp.MustCompile(`mixed\.toml:5: .*vxlanMode: ipipMode and vxlanMode cannot both be enabled \(encapsulation types cannot be mixed within one pool`)},
		{"missing file", []string{"check", "--config", filepath.Join(dir, "nope.toml"), "--node", "node-a"},
			regexp.MustCompile(`nope\.toml: no such file`)},
		{"unknown node", []string{"check", "--config", "../../examples/ipip-always.toml", "--node", "node-z"},
			regexp.MustCompile(`node "node-z" is not in .* \(its nodes: \[node-a node-b node-c\]\)`)},
		{"no --config", []string{"check", "--node", "node-a"}, regexp.MustCompile(`--config is required`)},
		{"unknown flag", []string{"check", "--confg", "x"}, regexp.MustCompile(`flag provided but not defined: -confg`)},
		{"unknown command", []string{"frobnicate"}, regexp.MustCompile(`unknown command "frobnicate"`)},
		{"explain with a bad address", []string{"explain", "--config", "../../examples/ipip-always.toml", "--node", "node-a", "1.2.3.4", "nope"},
			regexp.MustCompile(`"nope" is not an IPv4 address`)},
		{"import of a missing file", []string{"import", filepath.Join(dir, "nope.yaml")}, regexp.MustCompile(`nope\.yaml`)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := run(t, tc.args...)
			if code != exitBadInput {
				t.Errorf("exit %d, want %d", code, exitBadInput)
			}
			if out != "" && tc.args[0] != "frobnicate" {
				t.Errorf("stdout should be empty on error, got %q", out)
			}
			if !tc.want.MatchString(errOut) {
				t.Errorf("stderr %q does not match %s", errOut, tc.want)
			}
		})
	}
}

func TestExplainOutput(t *testing.T) {
	code, out, errOut := run(t, "explain", "--config", "../../examples/vxlan-cross-subnet.toml", "--node", "node-a", "192.168.0.5", "192.168.0.130")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "encap (vxlan) to node-c") || !strings.Contains(out, "other subnet") {
		t.Errorf("output:\n%s", out)
	}
}

func TestImportPrintsLoadableTOML(t *testing.T) {
	code, out, errOut := run(t, "import", "../../config/testdata/calico-ippools/vxlan-cross-subnet.yaml")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{`name = "ippool-cross-subnet-1"`, `vxlanMode = "CrossSubnet"`, `natOutgoing = true`, `blockSize = 26`} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %s:\n%s", want, out)
		}
	}
	f := filepath.Join(t.TempDir(), "c.toml")
	must(t, os.WriteFile(f, []byte(out+"\n[[nodes]]\nname = \"node-a\"\naddress = \"198.18.1.10/24\"\n"), 0o644))
	if code, _, errOut := run(t, "check", "--config", f, "--node", "node-a"); code != 0 {
		t.Errorf("imported TOML does not check: %s", errOut)
	}
}

func TestHelp(t *testing.T) {
	for _, cmd := range []string{"check", "explain", "import", "version"} {
		t.Run(cmd, func(t *testing.T) {
			code, out, _ := run(t, cmd, "--help")
			if code != 0 || !strings.Contains(out, "usage: overlayd "+cmd) {
				t.Errorf("exit %d, output %q", code, out)
			}
		})
	}
	code, out, _ := run(t, "--help")
	if code != 0 || !strings.Contains(out, "commands:") {
		t.Errorf("top-level help: exit %d, %q", code, out)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
