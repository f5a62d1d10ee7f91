package selector

import (
	"errors"
	"testing"
)

// FuzzParse checks that Parse never panics, that every failure is a
// *SyntaxError pointing inside the selector, and that every success has a
// canonical form that parses back to an equivalent selector.
func FuzzParse(f *testing.F) {
	for _, tt := range matchTests {
		f.Add(tt.expr)
	}
	for _, tt := range syntaxErrorTests {
		f.Add(tt.expr)
	}
	f.Add(`q in {'say "hi"', "it's"}`)
	f.Fuzz(func(t *testing.T, expr string) {
		_, err := Parse(expr)
		if err != nil {
			var syntaxErr *SyntaxError
			if !errors.As(err, &syntaxErr) {
				t.Fatalf("Parse(%q) returned %T %v, want a *SyntaxError", expr, err, err)
			}
			if syntaxErr.Expr != expr || syntaxErr.Pos < 0 || syntaxErr.Pos > len(expr) {
				t.Fatalf("Parse(%q): error %+v does not point inside the selector", expr, syntaxErr)
			}
			_ = err.Error()
			return
		}
		assertRoundTrip(t, expr)
	})
}
