package selector

import (
	"errors"
	"strings"
	"testing"
)

const anOperator = "expected an operator (==, !=, in, not in, contains, starts with, ends with)"

var syntaxErrorTests = []struct {
	name string
	expr string
	pos  int
	msg  string
}{
	// Errors found while splitting the selector into tokens.
	{"unterminated single-quoted string", "zone == 'a", 8, "unterminated string: the ' opened here is never closed"},
	{"unterminated double-quoted string", `zone == "a`, 8, `unterminated string: the " opened here is never closed`},
	{"a quote style does not close the other", `zone == "a'`, 8, `unterminated string: the " opened here is never closed`},
	{"single =", "zone = 'a'", 5, `expected "==", found a single "="`},
	{"single &", "has(a) & has(b)", 7, `expected "&&", found a single "&"`},
	{"single |", "has(a) | has(b)", 7, `expected "||", found a single "|"`},
	{"unknown word operator", "zone is 'a'", 5, anOperator + ` after label "zone", found "is"`},
	{"starts without with", "zone starts 'a'", 12, `expected "with" after "starts", found "'"`},
	{"ends with the wrong word", "zone ends on 'a'", 10, `expected "with" after "ends", found "on"`},
	{"not without in", "zone not 'a'", 9, `expected "in" after "not", found "'"`},
	{"has without a key", "has()", 4, `expected a label key after "has(", found ")"`},
	{"has with a key that is not one", "has('a')", 4, `expected a label key after "has(", found "'"`},
	{"has never closed", "has(a", 5, `expected ")" to close "has(", found end of selector`},
	{"has with two keys", "has(a b)", 6, `expected ")" to close "has(", found "b"`},
	{"all with an argument", "all(x)", 4, `expected ")" to close "all(", found "x"`},
	{"global never closed", "global(", 7, `expected ")" to close "global(", found end of selector`},
	{"character outside the grammar", "zone == 'a' #", 12, `unexpected character "#"`},
	{"newline is not whitespace", "zone == 'a'\n", 11, `unexpected character "\n"`},
	{"non-ASCII outside a string", "zone == é", 8, `unexpected character "é"`},
	{"invalid UTF-8 outside a string", "zone == \xff", 8, "unexpected character byte 0xff"},
	{"key longer than 512", "has(a) || " + strings.Repeat("x", 600) + " == 'v'", 10, "label key is 600 characters long, longer than the 512 allowed"},
	// Errors found while parsing the tokens.
	{"dangling and", "zone == 'a' &&", 14, `expected an expression after "&&", found end of selector`},
	{"dangling or", "zone == 'a' ||  ", 16, `expected an expression after "||", found end of selector`},
	{"or at the start", "|| has(a)", 0, `expected an expression, found "||"`},
	{"two operators in a row", "has(a) && || has(b)", 10, `expected an expression after "&&", found "||"`},
	{"lone not", "!", 1, `expected an expression after "!", found end of selector`},
	{"empty parentheses", "()", 1, `expected an expression after "(", found ")"`},
	{"bare key", "zone", 4, anOperator + ` after label "zone", found end of selector`},
	{"key then a value", "zone 'a'", 5, anOperator + ` after label "zone", found string 'a'`},
	{"key then not", "zone !has(a)", 5, anOperator + ` after label "zone", found "!"`},
	{"space between has and its parenthesis", "has (a)", 4, anOperator + ` after label "has", found "(" (write "has(" without a space)`},
	{"unquoted value", "zone == a", 8, `expected a quoted string after "==", found label "a"`},
	{"missing value", "zone != ", 8, `expected a quoted string after "!=", found end of selector`},
	{"contains a set", "zone contains {'a'}", 14, `expected a quoted string after "contains", found "{"`},
	{"in without braces", "zone in 'a'", 8, `expected "{" after "in", found string 'a'`},
	{"operator glued to a word", "zone inx {'a'}", 7, `expected "{" after "in", found label "x"`},
	{"not in without braces", "zone not in 'a'", 12, `expected "{" after "not in", found string 'a'`},
	{"set values without comma", "zone in {'a' 'b'}", 13, `expected "," or "}" after a value in the set, found string 'b'`},
	{"set with only a comma", "zone in {,}", 9, `expected a quoted string or "}" in the set, found ","`},
	{"set with two commas", "zone in {'a',,}", 13, `expected a quoted string or "}" in the set, found ","`},
	{"set never closed", "zone in {'a'", 12, `expected "," or "}" after a value in the set, found end of selector`},
	{"set with an unquoted value", "zone in {a}", 9, `expected a quoted string or "}" in the set, found label "a"`},
	{"parenthesis never closed", "(has(a)", 7, `expected "&&", "||" or ")" to close the "(" at position 0, found end of selector`},
	{"missing operator inside parentheses", "(has(a) has(b))", 8, `expected "&&", "||" or ")" to close the "(" at position 0, found "has(b)"`},
	{"missing operator between terms", "zone == 'a' zone == 'b'", 12, `expected "&&", "||" or end of selector, found label "zone"`},
	{"stray closing parenthesis", "has(a) )", 7, `expected "&&", "||" or end of selector, found ")"`},
	{"nesting too deep", strings.Repeat("(", maxDepth+1) + "all()" + strings.Repeat(")", maxDepth+1), maxDepth, "parentheses nested deeper than 256"},
}

func TestSyntaxErrors(t *testing.T) {
	for _, tt := range syntaxErrorTests {
		t.Run(tt.name, func(t *testing.T) {
			sel, err := Parse(tt.expr)
			var syntaxErr *SyntaxError
			if !errors.As(err, &syntaxErr) {
				t.Fatalf("Parse(%q) = %v, %v; want a *SyntaxError", tt.expr, sel, err)
			}
			if syntaxErr.Expr != tt.expr {
				t.Errorf("Expr = %q, want %q", syntaxErr.Expr, tt.expr)
			}
			if syntaxErr.Pos != tt.pos {
				t.Errorf("Pos = %d, want %d (message %q)", syntaxErr.Pos, tt.pos, syntaxErr.Msg)
			}
			if syntaxErr.Msg != tt.msg {
				t.Errorf("Msg = %q\nwant  %q", syntaxErr.Msg, tt.msg)
			}
		})
	}
}

func TestNestingAtTheLimitParses(t *testing.T) {
	expr := strings.Repeat("(", maxDepth) + "has(a)" + strings.Repeat(")", maxDepth)
	sel, err := Parse(expr)
	if err != nil {
		t.Fatalf("%d levels of parentheses: %v", maxDepth, err)
	}
	if !sel.Matches(labels{"a": ""}) {
		t.Error("the nested selector should select a node with label a")
	}
}

func TestSyntaxErrorMessage(t *testing.T) {
	long := "has(a) && " + strings.Repeat("b == 'c' && ", 20) + "d = 'e' && " + strings.Repeat("f == 'g' && ", 20) + "all()"
	tests := []struct {
		name string
		expr string
		want string
	}{
		{
			name: "short selector quoted whole",
			expr: "zone == 'a' &&",
			want: `selector "zone == 'a' &&": expected an expression after "&&", found end of selector at position 14`,
		},
		{
			name: "double quotes kept readable with backquotes",
			expr: `zone == "a`,
			want: "selector `zone == \"a`: unterminated string: the \" opened here is never closed at position 8",
		},
		{
			name: "long selector shows the part around the error",
			expr: long,
			// 40 bytes either side of the "=" at 10 + 20*12 + 2.
			want: `selector ..."& b == 'c' && b == 'c' && b == 'c' && d = 'e' && f == 'g' && f == 'g' && f == 'g"...: ` +
				`expected "==", found a single "=" at position 252`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.expr)
			if err == nil {
				t.Fatalf("Parse(%q) succeeded, want an error", tt.expr)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("Error() =\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}
