package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"github.com/overlayd/overlayd/pool"
)

// LoadIPPools reads a file of Calico IPPool manifests (calicoctl or kubectl
// style: one or more documents, each an IPPool or an IPPoolList) and
// validates the pools as a set.
func LoadIPPools(path string) ([]*pool.IPPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading IPPool manifest: %w", err)
	}
	return ParseIPPools(path, data)
}

// ParseIPPools is LoadIPPools on data already read; file names it in errors.
func ParseIPPools(file string, data []byte) ([]*pool.IPPool, error) {
	var docs []yamlPool
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, yamlSyntaxError(file, data, err)
		}
		found, err := poolsOfDocument(file, &doc)
		if err != nil {
			return nil, err
		}
		docs = append(docs, found...)
	}
	if len(docs) == 0 {
		return nil, &Error{File: file, Line: lastLine(data), Msg: "no IPPool found (expected documents with kind: IPPool or IPPoolList)"}
	}
	pools := make([]*pool.IPPool, 0, len(docs))
	for _, d := range docs {
		p, err := pool.New(d.spec)
		if err != nil {
			return nil, d.errorFor(file, err)
		}
		pools = append(pools, p)
	}
	if err := pool.ValidateSet(pools); err != nil {
		var fe *pool.FieldError
		if errors.As(err, &fe) {
			for i := len(docs) - 1; i >= 0; i-- {
				if docs[i].spec.Name == fe.Pool {
					return nil, docs[i].errorFor(file, err)
				}
			}
		}
		return nil, &Error{File: file, Line: docs[len(docs)-1].line, Msg: err.Error(), Err: err}
	}
	return pools, nil
}

// yamlPool is one IPPool manifest and the line of each field, so that
// validation errors point at the line that holds the value.
type yamlPool struct {
	spec   pool.Spec
	line   int            // the line of the manifest's start
	lines  map[string]int // Calico field name -> line
	mapped map[string]string
}

func (d *yamlPool) errorFor(file string, err error) error {
	var fe *pool.FieldError
	line, key := d.line, fmt.Sprintf("IPPool %q", d.spec.Name)
	if errors.As(err, &fe) {
		field := fe.Field
		if src, ok := d.mapped[field]; ok {
			field = src
		}
		if l, ok := d.lines[field]; ok {
			line = l
		}
		if field == "name" {
			key += " metadata.name"
		} else {
			key += " spec." + field
		}
		return &Error{File: file, Line: line, Key: key, Msg: fe.Msg, Err: err}
	}
	return &Error{File: file, Line: line, Key: key, Msg: err.Error(), Err: err}
}

func yamlSyntaxError(file string, data []byte, err error) error {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "yaml: ")
	line := 0
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if i := strings.IndexByte(rest, ':'); i > 0 {
			if n, convErr := strconv.Atoi(rest[:i]); convErr == nil {
				line, msg = n, strings.TrimSpace(rest[i+1:])
			}
		}
	}
	if line <= 0 {
		// The YAML reader reports bad encoding without a position.
		line = badByteLine(data)
	}
	return &Error{File: file, Line: line, Msg: "YAML: " + msg, Err: err}
}

// badByteLine is the line of the first byte YAML does not allow (invalid
// UTF-8, or a control character other than tab and line breaks), or the
// last line when there is none.
func badByteLine(data []byte) int {
	line := 1
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		if r == utf8.RuneError && size <= 1 || r < 0x20 && r != '\t' && r != '\n' && r != '\r' || r == 0x7f {
			return line
		}
		if r == '\n' {
			line++
		}
		i += size
	}
	return lastLine(data)
}

// lastLine is the number of the file's last line, at least 1: where
// something missing from the file would go.
func lastLine(data []byte) int {
	n := bytes.Count(data, []byte("\n"))
	if len(data) > 0 && data[len(data)-1] != '\n' {
		n++
	}
	return max(n, 1)
}

func poolsOfDocument(file string, doc *yaml.Node) ([]yamlPool, error) {
	if doc.Kind == 0 || (doc.Kind == yaml.DocumentNode && len(doc.Content) == 0) {
		return nil, nil
	}
	root := doc
	if root.Kind == yaml.DocumentNode {
		root = root.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null" {
		// An empty document, as a trailing "---" makes: kubectl and
		// calicoctl skip it.
		return nil, nil
	}
	if root.Kind != yaml.MappingNode {
		return nil, &Error{File: file, Line: root.Line, Msg: "expected a Calico resource (a mapping with apiVersion, kind, metadata and spec)"}
	}
	fields := mappingFields(root)
	kind := fields["kind"]
	if kind == nil {
		return nil, &Error{File: file, Line: root.Line, Key: "kind", Msg: "missing: expected kind: IPPool"}
	}
	switch kind.Value {
	case "IPPool":
		p, err := parseYAMLPool(file, root)
		if err != nil {
			return nil, err
		}
		return []yamlPool{p}, nil
	case "IPPoolList", "List":
		items := fields["items"]
		if items == nil || items.Kind != yaml.SequenceNode {
			return nil, &Error{File: file, Line: kind.Line, Key: "items", Msg: "a " + kind.Value + " needs an items list"}
		}
		var out []yamlPool
		for _, it := range items.Content {
			p, err := parseYAMLPool(file, it)
			if err != nil {
				return nil, err
			}
			out = append(out, p)
		}
		return out, nil
	}
	return nil, &Error{File: file, Line: kind.Line, Key: "kind", Msg: fmt.Sprintf("%q is not an IPPool: only kind IPPool (or IPPoolList) is read here", kind.Value)}
}

func mappingFields(m *yaml.Node) map[string]*yaml.Node {
	out := map[string]*yaml.Node{}
	if m.Kind != yaml.MappingNode {
		return out
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		out[m.Content[i].Value] = m.Content[i+1]
	}
	return out
}

// Calico IPPool spec fields overlayd has no use for but which are harmless
// to ignore: it has no BGP to export to.
var ignoredSpecFields = map[string]bool{"disableBGPExport": true}

var specFields = []string{"cidr", "ipipMode", "vxlanMode", "natOutgoing", "disabled", "nodeSelector", "blockSize"}

func parseYAMLPool(file string, n *yaml.Node) (yamlPool, error) {
	d := yamlPool{line: n.Line, lines: map[string]int{}, mapped: map[string]string{}}
	fail := func(at *yaml.Node, key, format string, args ...any) error {
		return &Error{File: file, Line: at.Line, Key: key, Msg: fmt.Sprintf(format, args...)}
	}
	if n.Kind != yaml.MappingNode {
		return d, fail(n, "", "expected an IPPool mapping")
	}
	fields := mappingFields(n)
	if av := fields["apiVersion"]; av != nil {
		switch av.Value {
		case "projectcalico.org/v3", "crd.projectcalico.org/v1":
		default:
			return d, fail(av, "apiVersion", "%q is not supported: use projectcalico.org/v3 (calicoctl) or crd.projectcalico.org/v1 (the CRD)", av.Value)
		}
	}
	if md := fields["metadata"]; md != nil {
		if name := mappingFields(md)["name"]; name != nil {
			d.spec.Name, d.lines["name"] = name.Value, name.Line
		}
	}
	spec := fields["spec"]
	if spec == nil || spec.Kind != yaml.MappingNode {
		return d, fail(n, "spec", "missing: an IPPool needs a spec with at least cidr")
	}
	key := func(k string) string { return fmt.Sprintf("IPPool %q spec.%s", d.spec.Name, k) }
	for i := 0; i+1 < len(spec.Content); i += 2 {
		k, v := spec.Content[i], spec.Content[i+1]
		d.lines[k.Value] = k.Line
		var err error
		switch k.Value {
		case "cidr":
			d.spec.CIDR, err = scalarString(v)
		case "ipipMode":
			d.spec.IPIPMode, err = scalarString(v)
		case "vxlanMode":
			d.spec.VXLANMode, err = scalarString(v)
		case "nodeSelector":
			d.spec.NodeSelector, err = scalarString(v)
		case "natOutgoing":
			d.spec.NATOutgoing, err = scalarBool(v)
		case "nat-outgoing": // the v1 name, still read by Calico's conversion
			if !hasKey(spec, "natOutgoing") {
				d.spec.NATOutgoing, err = scalarBool(v)
				d.mapped["natOutgoing"] = "nat-outgoing"
			}
		case "disabled":
			d.spec.Disabled, err = scalarBool(v)
		case "blockSize":
			d.spec.BlockSize, err = scalarInt(v)
		case "ipip":
			// The v1 form ipip: {enabled, mode}; ipipMode wins when both are
			// present, as in Calico's conversion.
			if !hasKey(spec, "ipipMode") {
				d.spec.IPIPMode, err = legacyIPIP(v)
				d.mapped["ipipMode"] = "ipip"
			}
		case "allowedUses", "assignmentMode", "namespaceSelector":
			err = calicoDefaultOnly(k.Value, v)
		default:
			if ignoredSpecFields[k.Value] {
				continue
			}
			return d, fail(k, key(k.Value), "unknown or unsupported IPPool field %q; overlayd reads: %s (and the legacy ipip, nat-outgoing; allowedUses, assignmentMode and namespaceSelector at their defaults)", k.Value, strings.Join(specFields, ", "))
		}
		if err != nil {
			return d, fail(v, key(k.Value), "%v", err)
		}
	}
	return d, nil
}

// calicoDefaultOnly accepts the IPPool members calicoctl writes out with
// their defaults (`calicoctl get ippool -o yaml` has them) and refuses any
// other value: every overlayd pool gives blocks to workloads and tunnel
// addresses, automatically, whatever the namespace, and a pool that says
// otherwise would be given a meaning Calico does not give it.
func calicoDefaultOnly(field string, v *yaml.Node) error {
	switch field {
	case "allowedUses":
		var uses []string
		if v.Kind != yaml.SequenceNode || v.Decode(&uses) != nil {
			return errors.New("expected a list of uses, e.g. [Workload, Tunnel]")
		}
		slices.Sort(uses)
		if len(uses) > 0 && !slices.Equal(uses, []string{"Tunnel", "Workload"}) {
			return fmt.Errorf("%v is not supported: overlayd pools serve workloads and tunnel addresses both, as the default [Workload, Tunnel] says; remove allowedUses or write the default", uses)
		}
	case "assignmentMode":
		if s, err := scalarString(v); err != nil || s != "" && s != "Automatic" {
			return fmt.Errorf("%q is not supported: overlayd assigns blocks from every enabled pool automatically (\"Automatic\", the default)", v.Value)
		}
	case "namespaceSelector":
		if s, err := scalarString(v); err != nil || strings.TrimSpace(s) != "" && strings.TrimSpace(s) != pool.DefaultNodeSelector {
			return fmt.Errorf("%q is not supported: overlayd pools serve every namespace (all(), the default)", v.Value)
		}
	}
	return nil
}

func hasKey(m *yaml.Node, key string) bool {
	_, ok := mappingFields(m)[key]
	return ok
}

func scalarString(v *yaml.Node) (string, error) {
	if v.Kind != yaml.ScalarNode {
		return "", errors.New("expected a string")
	}
	return v.Value, nil
}

func scalarBool(v *yaml.Node) (bool, error) {
	var b bool
	if v.Kind != yaml.ScalarNode || v.Decode(&b) != nil {
		return false, fmt.Errorf("expected true or false, not %q", v.Value)
	}
	return b, nil
}

func scalarInt(v *yaml.Node) (int, error) {
	var n int
	if v.Kind != yaml.ScalarNode || v.Decode(&n) != nil {
		return 0, fmt.Errorf("expected a whole number, not %q", v.Value)
	}
	return n, nil
}

func legacyIPIP(v *yaml.Node) (string, error) {
	if v.Kind != yaml.MappingNode {
		return "", errors.New("expected the legacy form ipip: {enabled: true, mode: always|cross-subnet}")
	}
	f := mappingFields(v)
	enabled := true
	if e := f["enabled"]; e != nil {
		var err error
		if enabled, err = scalarBool(e); err != nil {
			return "", fmt.Errorf("ipip.enabled: %w", err)
		}
	}
	if !enabled {
		return string(pool.ModeNever), nil
	}
	mode := ""
	if m := f["mode"]; m != nil {
		mode = m.Value
	}
	switch mode {
	case "", "always":
		return string(pool.ModeAlways), nil
	case "cross-subnet":
		return string(pool.ModeCrossSubnet), nil
	}
	return "", fmt.Errorf("ipip.mode %q: the legacy modes are \"always\" and \"cross-subnet\"", mode)
}

// yamlPools reads the pools of a cluster file's `pools = "file.yaml"`.
func (p *parser) yamlPools(name string) ([]*pool.IPPool, error) {
	path := p.resolve(name)
	pools, err := LoadIPPools(path)
	if err != nil {
		var ce *Error
		if errors.As(err, &ce) {
			return nil, err
		}
		return nil, p.errAt("", 0, "", "pools", "%v", err)
	}
	return pools, nil
}

// FormatPoolsTOML renders pools as the [[pools]] tables of a cluster file,
// every field written out so the result says exactly what will run.
func FormatPoolsTOML(pools []*pool.IPPool) string {
	var b strings.Builder
	for i, p := range pools {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "[[pools]]\n")
		fmt.Fprintf(&b, "name = %q\n", p.Name)
		fmt.Fprintf(&b, "cidr = %q\n", p.CIDR)
		fmt.Fprintf(&b, "ipipMode = %q\n", p.IPIPMode)
		fmt.Fprintf(&b, "vxlanMode = %q\n", p.VXLANMode)
		fmt.Fprintf(&b, "natOutgoing = %t\n", p.NATOutgoing)
		fmt.Fprintf(&b, "disabled = %t\n", p.Disabled)
		fmt.Fprintf(&b, "nodeSelector = %q\n", p.NodeSelector.String())
		fmt.Fprintf(&b, "blockSize = %d\n", p.BlockSize)
	}
	return b.String()
}
