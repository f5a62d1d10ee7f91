package selector

import (
	"errors"
	"strings"
	"sync"
	"testing"
)

type labels = map[string]string

// labelSets is every label set the match tables use, so the round-trip test
// can compare two selectors on all of them.
var labelSets = []labels{
	nil,
	{},
	{"zone": "a"},
	{"zone": "b"},
	{"zone": ""},
	{"zone": "a", "gpu": "true"},
	{"zone": "b", "gpu": "true"},
	{"gpu": "true"},
	{"region": "eu-west-1"},
	{"region": "us-east-1", "zone": "a"},
	{"example.com/rack": "r1"},
	{"quote": `say "hi"`},
	{"quote": "it's"},
	{"in": "x", "not": "y"},
}

var matchTests = []struct {
	name    string
	expr    string
	matches []labels
	rejects []labels
}{
	{
		name:    "empty selector selects all",
		expr:    "",
		matches: []labels{nil, {}, {"zone": "a"}},
	},
	{
		name:    "whitespace-only selector selects all",
		expr:    " \t ",
		matches: []labels{nil, {"zone": "a"}},
	},
	{
		name:    "all() selects nodes with and without labels",
		expr:    "all()",
		matches: []labels{nil, {}, {"zone": "a"}},
	},
	{
		name:    "all() with spaces inside",
		expr:    "all( \t)",
		matches: []labels{{}},
	},
	{
		name:    "has needs the label, whatever its value",
		expr:    "has(zone)",
		matches: []labels{{"zone": "a"}, {"zone": ""}},
		rejects: []labels{nil, {}, {"gpu": "true"}},
	},
	{
		name:    "has with spaces inside the parentheses",
		expr:    "has( zone\t)",
		matches: []labels{{"zone": "a"}},
		rejects: []labels{{}},
	},
	{
		name:    "not has selects nodes without the label",
		expr:    "!has(zone)",
		matches: []labels{nil, {}, {"gpu": "true"}},
		rejects: []labels{{"zone": "a"}, {"zone": ""}},
	},
	{
		name:    "equality with single quotes",
		expr:    "zone == 'a'",
		matches: []labels{{"zone": "a"}, {"zone": "a", "gpu": "true"}},
		rejects: []labels{{"zone": "b"}, {}, nil},
	},
	{
		name:    "equality with double quotes",
		expr:    `zone == "a"`,
		matches: []labels{{"zone": "a"}},
		rejects: []labels{{"zone": "b"}, {}},
	},
	{
		name:    "equality with an empty value needs the label present",
		expr:    "zone == ''",
		matches: []labels{{"zone": ""}},
		rejects: []labels{{}, {"zone": "a"}},
	},
	{
		name:    "inequality matches a node without the label",
		expr:    "zone != 'a'",
		matches: []labels{{"zone": "b"}, {}, nil, {"gpu": "true"}},
		rejects: []labels{{"zone": "a"}},
	},
	{
		name:    "in needs the label with one of the values",
		expr:    "zone in {'a', \"b\"}",
		matches: []labels{{"zone": "a"}, {"zone": "b"}},
		rejects: []labels{{"zone": "c"}, {}, nil},
	},
	{
		name:    "in with an empty set matches nothing",
		expr:    "zone in {}",
		rejects: []labels{{"zone": "a"}, {}},
	},
	{
		name:    "in with a trailing comma",
		expr:    "zone in {'a',}",
		matches: []labels{{"zone": "a"}},
		rejects: []labels{{"zone": "b"}},
	},
	{
		name:    "in without spaces",
		expr:    "zone in{'a','b'}",
		matches: []labels{{"zone": "b"}},
		rejects: []labels{{"zone": "c"}},
	},
	{
		name:    "not in matches a node without the label",
		expr:    "zone not in {'a', 'b'}",
		matches: []labels{{"zone": "c"}, {}, nil},
		rejects: []labels{{"zone": "a"}, {"zone": "b"}},
	},
	{
		name:    "notin is not in",
		expr:    "zone notin {'a'}",
		matches: []labels{{"zone": "b"}, {}},
		rejects: []labels{{"zone": "a"}},
	},
	{
		name:    "not in with a tab between the words",
		expr:    "zone not\tin {'a'}",
		matches: []labels{{"zone": "b"}},
		rejects: []labels{{"zone": "a"}},
	},
	{
		name:    "not in with an empty set matches everything",
		expr:    "zone not in {}",
		matches: []labels{{"zone": "a"}, {}},
	},
	{
		name:    "contains needs the label",
		expr:    "region contains 'west'",
		matches: []labels{{"region": "eu-west-1"}},
		rejects: []labels{{"region": "us-east-1"}, {}},
	},
	{
		name:    "contains the empty string matches any present value",
		expr:    "region contains ''",
		matches: []labels{{"region": ""}, {"region": "x"}},
		rejects: []labels{{}},
	},
	{
		name:    "starts with",
		expr:    "region starts with 'eu-'",
		matches: []labels{{"region": "eu-west-1"}},
		rejects: []labels{{"region": "us-east-1"}, {}},
	},
	{
		name:    "ends with, several spaces between the words",
		expr:    "region ends   with \"-1\"",
		matches: []labels{{"region": "eu-west-1"}},
		rejects: []labels{{"region": "eu-west-2"}, {}},
	},
	{
		name:    "negated equality selects nodes without the label",
		expr:    "!zone == 'a'",
		matches: []labels{{"zone": "b"}, {}},
		rejects: []labels{{"zone": "a"}},
	},
	{
		name:    "double negation cancels",
		expr:    "!!has(zone)",
		matches: []labels{{"zone": "a"}},
		rejects: []labels{{}},
	},
	{
		name:    "and",
		expr:    "zone == 'a' && has(gpu)",
		matches: []labels{{"zone": "a", "gpu": "true"}},
		rejects: []labels{{"zone": "a"}, {"gpu": "true"}, {"zone": "b", "gpu": "true"}},
	},
	{
		name:    "or",
		expr:    "zone == 'a' || has(gpu)",
		matches: []labels{{"zone": "a"}, {"gpu": "true"}, {"zone": "b", "gpu": "true"}},
		rejects: []labels{{"zone": "b"}, {}},
	},
	{
		name:    "and binds tighter than or on the right",
		expr:    "zone == 'a' || zone == 'b' && has(gpu)",
		matches: []labels{{"zone": "a"}, {"zone": "b", "gpu": "true"}},
		rejects: []labels{{"zone": "b"}, {"gpu": "true"}},
	},
	{
		name:    "and binds tighter than or on the left",
		expr:    "has(gpu) && zone == 'b' || zone == 'a'",
		matches: []labels{{"zone": "a"}, {"zone": "b", "gpu": "true"}},
		rejects: []labels{{"zone": "b"}, {"gpu": "true"}},
	},
	{
		name:    "parentheses override precedence",
		expr:    "(zone == 'a' || zone == 'b') && has(gpu)",
		matches: []labels{{"zone": "a", "gpu": "true"}, {"zone": "b", "gpu": "true"}},
		rejects: []labels{{"zone": "a"}, {"zone": "b"}, {"gpu": "true"}},
	},
	{
		name:    "not binds tighter than and",
		expr:    "!has(gpu) && has(zone)",
		matches: []labels{{"zone": "a"}},
		rejects: []labels{{"zone": "a", "gpu": "true"}, {}},
	},
	{
		name:    "not applies to a parenthesised group",
		expr:    "!(has(gpu) && has(zone))",
		matches: []labels{{"zone": "a"}, {"gpu": "true"}, {}},
		rejects: []labels{{"zone": "a", "gpu": "true"}},
	},
	{
		name:    "nested parentheses",
		expr:    "((zone == 'a'))",
		matches: []labels{{"zone": "a"}},
		rejects: []labels{{"zone": "b"}},
	},
	{
		name:    "tabs and no spaces around operators",
		expr:    "\tzone=='a'&&\tgpu!='false'||has(region)\t",
		matches: []labels{{"zone": "a"}, {"zone": "a", "gpu": "true"}, {"region": "x"}},
		rejects: []labels{{"zone": "a", "gpu": "false"}, {}},
	},
	{
		name:    "DNS-prefixed key",
		expr:    "example.com/rack == 'r1'",
		matches: []labels{{"example.com/rack": "r1"}},
		rejects: []labels{{"rack": "r1"}},
	},
	{
		name:    "keywords are keys where no operator is expected",
		expr:    "in == 'x' && not == 'y' && has(has)",
		matches: []labels{{"in": "x", "not": "y", "has": ""}},
		rejects: []labels{{"in": "x", "not": "y"}},
	},
	{
		name:    "a double quote inside single quotes",
		expr:    `quote == 'say "hi"'`,
		matches: []labels{{"quote": `say "hi"`}},
		rejects: []labels{{"quote": "say hi"}},
	},
	{
		name:    "a single quote inside double quotes",
		expr:    `quote == "it's"`,
		matches: []labels{{"quote": "it's"}},
		rejects: []labels{{"quote": "its"}},
	},
	{
		name:    "values may hold operators and spaces",
		expr:    "zone == 'a && b || (c)'",
		matches: []labels{{"zone": "a && b || (c)"}},
		rejects: []labels{{"zone": "a"}},
	},
	{
		name:    "global() evaluates like all()",
		expr:    "global()",
		matches: []labels{nil, {"zone": "a"}},
	},
}

func TestMatches(t *testing.T) {
	for _, tt := range matchTests {
		t.Run(tt.name, func(t *testing.T) {
			sel, err := Parse(tt.expr)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.expr, err)
			}
			for _, l := range tt.matches {
				if !sel.Matches(l) {
					t.Errorf("%q should select %v", tt.expr, l)
				}
			}
			for _, l := range tt.rejects {
				if sel.Matches(l) {
					t.Errorf("%q should not select %v", tt.expr, l)
				}
			}
		})
	}
}

func TestString(t *testing.T) {
	tests := []struct {
		name string
		expr string
		want string
	}{
		{"empty is all()", "  ", "all()"},
		{"single quotes become double", "zone == 'a'", `zone == "a"`},
		{"a value with a double quote keeps single quotes", `q != 'say "hi"'`, `q != 'say "hi"'`},
		{"and and or are parenthesised", "a == 'x' && b == 'y' || has(c)", `((a == "x" && b == "y") || has(c))`},
		{"grouping from parentheses is kept", "(a == 'x' && b == 'y') && has(c)", `((a == "x" && b == "y") && has(c))`},
		{"redundant parentheses go", "((has(a)))", "has(a)"},
		{"sets are sorted and deduplicated", "k in {'b', 'a', 'b',}", `k in {"a", "b"}`},
		{"notin is written not in", "k notin {}", "k not in {}"},
		{"double negation folds", "!!!has(a)", "!has(a)"},
		{"negated group", "!(has(a) || has(b))", "!(has(a) || has(b))"},
		{"word operators", "a contains 'x' && b starts  with 'y' && c ends with 'z'", `(a contains "x" && b starts with "y" && c ends with "z")`},
		{"global", "global( )", "global()"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sel, err := Parse(tt.expr)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.expr, err)
			}
			if got := sel.String(); got != tt.want {
				t.Errorf("Parse(%q).String() = %q, want %q", tt.expr, got, tt.want)
			}
		})
	}
}

// TestRoundTrip checks that the canonical form parses back to a selector that
// selects the same label sets and prints the same.
func TestRoundTrip(t *testing.T) {
	for _, tt := range matchTests {
		t.Run(tt.name, func(t *testing.T) {
			assertRoundTrip(t, tt.expr)
		})
	}
}

func assertRoundTrip(t *testing.T, expr string) {
	t.Helper()
	sel, err := Parse(expr)
	if err != nil {
		t.Fatalf("Parse(%q): %v", expr, err)
	}
	again, err := Parse(sel.String())
	if err != nil {
		t.Fatalf("canonical form %q of %q does not parse: %v", sel.String(), expr, err)
	}
	if again.String() != sel.String() {
		t.Errorf("canonical form is not stable: %q prints as %q", sel.String(), again.String())
	}
	if again.UsesGlobal() != sel.UsesGlobal() {
		t.Errorf("UsesGlobal changed from %v to %v across %q", sel.UsesGlobal(), again.UsesGlobal(), sel.String())
	}
	for _, l := range labelSets {
		if sel.Matches(l) != again.Matches(l) {
			t.Errorf("%q and its canonical form %q disagree on %v", expr, sel.String(), l)
		}
	}
}

func TestUsesGlobal(t *testing.T) {
	tests := []struct {
		expr string
		want bool
	}{
		{"global()", true},
		{"has(a) && !global()", true},
		{"(has(a) || (global()))", true},
		{"all()", false},
		{"", false},
		{"global == 'x'", false},
		{"has(global)", false},
	}
	for _, tt := range tests {
		t.Run(tt.expr, func(t *testing.T) {
			sel, err := Parse(tt.expr)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.expr, err)
			}
			if got := sel.UsesGlobal(); got != tt.want {
				t.Errorf("Parse(%q).UsesGlobal() = %v, want %v", tt.expr, got, tt.want)
			}
		})
	}
}

func TestKeyLength(t *testing.T) {
	longest := strings.Repeat("k", MaxKeyLen)
	tooLong := longest + "k"
	tests := []struct {
		name    string
		expr    string
		wantErr bool
	}{
		{"512-character key", longest + " == 'v'", false},
		{"512-character key in has", "has(" + longest + ")", false},
		{"513-character key", tooLong + " == 'v'", true},
		{"513-character key in has", "has(" + tooLong + ")", true},
		{"513-character key in the second term", "has(a) && " + tooLong + " == 'v'", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sel, err := Parse(tt.expr)
			if tt.wantErr {
				var syntaxErr *SyntaxError
				if !errors.As(err, &syntaxErr) {
					t.Fatalf("Parse: got %v, want a *SyntaxError", err)
				}
				if !strings.Contains(syntaxErr.Msg, "513 characters") {
					t.Errorf("message %q does not give the key's length", syntaxErr.Msg)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !sel.Matches(labels{longest: "v"}) {
				t.Errorf("%q should select a node with the long key", tt.name)
			}
		})
	}
}

func TestNilSelectorSelectsAll(t *testing.T) {
	var sel *Selector
	if !sel.Matches(labels{"zone": "a"}) || sel.String() != "all()" || sel.UsesGlobal() {
		t.Errorf("nil selector: Matches=%v String=%q UsesGlobal=%v, want true, all(), false",
			sel.Matches(labels{"zone": "a"}), sel.String(), sel.UsesGlobal())
	}
}

func TestMatchesDoesNotAllocate(t *testing.T) {
	sel, err := Parse("(zone in {'a', 'b', 'c'} || region starts with 'eu-') && !has(gpu) && rack != 'r9'")
	if err != nil {
		t.Fatal(err)
	}
	node := labels{"zone": "b", "region": "us-east-1", "rack": "r1"}
	var matched bool
	allocs := testing.AllocsPerRun(100, func() { matched = sel.Matches(node) })
	if allocs != 0 {
		t.Errorf("Matches allocated %v times per call, want 0", allocs)
	}
	if !matched {
		t.Error("the selector should select the node")
	}
}

// TestConcurrentUse lets the race detector check that a parsed selector is
// only read.
func TestConcurrentUse(t *testing.T) {
	sel, err := Parse("zone in {'a', 'b'} && !has(gpu)")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for _, l := range labelSets {
				_ = sel.Matches(l)
				_ = sel.String()
				_ = sel.UsesGlobal()
			}
		})
	}
	wg.Wait()
}

func BenchmarkMatches(b *testing.B) {
	sel, err := Parse("(zone in {'a', 'b', 'c'} || region starts with 'eu-') && !has(gpu) && rack != 'r9'")
	if err != nil {
		b.Fatal(err)
	}
	node := labels{"zone": "b", "region": "us-east-1", "rack": "r1", "kubernetes.io/hostname": "node-1"}
	b.ReportAllocs()
	for b.Loop() {
		if !sel.Matches(node) {
			b.Fatal("the selector should select the node")
		}
	}
}
