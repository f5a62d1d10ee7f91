package selector

import (
	"fmt"
	"strconv"
	"strings"
)

// SyntaxError reports a selector that does not parse.
type SyntaxError struct {
	// Expr is the whole selector as given to Parse.
	Expr string
	// Pos is the 0-based byte offset in Expr where the problem was found;
	// len(Expr) when the selector ended too early.
	Pos int
	// Msg says what was expected and what was found instead.
	Msg string
}

// excerptRadius bounds how much of a long selector an error quotes on each
// side of the error position, so that a huge selector does not flood a log.
const excerptRadius = 40

// Error returns the message with the selector (or the part of it around the
// error) quoted, e.g.
// `selector "zone == 'a' &&": expected an expression after "&&", found end of selector at position 14`.
func (e *SyntaxError) Error() string {
	return fmt.Sprintf("selector %s: %s at position %d", excerpt(e.Expr, e.Pos), e.Msg, e.Pos)
}

// excerpt quotes expr, or the window of it around pos when it is long.
func excerpt(expr string, pos int) string {
	start, end := 0, len(expr)
	prefix, suffix := "", ""
	if len(expr) > 2*excerptRadius {
		start = max(0, pos-excerptRadius)
		end = min(len(expr), pos+excerptRadius)
		if start > 0 {
			prefix = "..."
		}
		if end < len(expr) {
			suffix = "..."
		}
	}
	return prefix + quoteExpr(expr[start:end]) + suffix
}

// quoteExpr quotes s for a message. Selectors often use double-quoted
// strings, which strconv.Quote would escape; backquotes keep them readable.
func quoteExpr(s string) string {
	if strings.Contains(s, `"`) && strconv.CanBackquote(s) {
		return "`" + s + "`"
	}
	return strconv.Quote(s)
}
