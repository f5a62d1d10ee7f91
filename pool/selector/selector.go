package selector

import (
	"slices"
	"strings"
)

// Selector is a parsed selector. It is immutable after Parse and safe for
// concurrent use. A nil *Selector selects everything, like all().
type Selector struct {
	root       *node
	canonical  string
	usesGlobal bool
}

// Parse parses a Calico selector expression. A selector that is empty or
// only spaces and tabs selects everything. A syntax error is a *SyntaxError.
func Parse(expr string) (*Selector, error) {
	tokens, err := lex(expr)
	if err != nil {
		return nil, err
	}
	p := &parser{expr: expr, tokens: tokens}
	root, err := p.parseSelector()
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	root.writeTo(&b)
	return &Selector{root: root, canonical: b.String(), usesGlobal: p.usesGlobal}, nil
}

// Matches reports whether a set of labels satisfies the selector. It does not
// allocate.
func (s *Selector) Matches(labels map[string]string) bool {
	if s == nil {
		return true
	}
	return s.root.matches(labels)
}

// String returns the canonical form, in Calico's style: double quotes (single
// when the value holds a double quote), every && and || group parenthesised,
// sets sorted without duplicates, e.g. `(zone == "a" && has(gpu))`. It parses
// back to an equivalent selector.
func (s *Selector) String() string {
	if s == nil {
		return "all()"
	}
	return s.canonical
}

// UsesGlobal reports whether the selector contains global() anywhere. Calico
// accepts global() in its grammar but not in an IPPool's nodeSelector, so the
// caller needs to know.
func (s *Selector) UsesGlobal() bool {
	return s != nil && s.usesGlobal
}

type op int

const (
	opAll op = iota
	opGlobal
	opHas
	opEq
	opNe
	opContains
	opStartsWith
	opEndsWith
	opIn
	opNotIn
	opNot
	opAnd
	opOr
)

// node is one operation of the parsed tree. One struct for all operations
// keeps evaluation a plain switch with no interface calls or allocation.
type node struct {
	op    op
	key   string
	value string
	// set holds the values of in and not in, sorted and without duplicates.
	set []string
	// operands holds the one operand of ! or the two or more of && and ||.
	operands []*node
}

func (n *node) matches(labels map[string]string) bool {
	switch n.op {
	case opAll, opGlobal:
		// Calico evaluates global() as all(); it only differs in where it is allowed.
		return true
	case opHas:
		_, ok := labels[n.key]
		return ok
	case opNot:
		return !n.operands[0].matches(labels)
	case opAnd:
		for _, operand := range n.operands {
			if !operand.matches(labels) {
				return false
			}
		}
		return true
	case opOr:
		for _, operand := range n.operands {
			if operand.matches(labels) {
				return true
			}
		}
		return false
	}

	value, ok := labels[n.key]
	switch n.op {
	case opEq:
		return ok && value == n.value
	case opNe:
		return !ok || value != n.value
	case opContains:
		return ok && strings.Contains(value, n.value)
	case opStartsWith:
		return ok && strings.HasPrefix(value, n.value)
	case opEndsWith:
		return ok && strings.HasSuffix(value, n.value)
	case opIn:
		_, found := slices.BinarySearch(n.set, value)
		return ok && found
	case opNotIn:
		_, found := slices.BinarySearch(n.set, value)
		return !ok || !found
	}
	panic("selector: unknown operation") // unreachable: Parse builds only the operations above
}

// infix returns how an operator is written between its operands.
func (o op) infix() string {
	switch o {
	case opEq:
		return " == "
	case opNe:
		return " != "
	case opContains:
		return " contains "
	case opStartsWith:
		return " starts with "
	case opEndsWith:
		return " ends with "
	case opIn:
		return " in "
	case opNotIn:
		return " not in "
	case opAnd:
		return " && "
	case opOr:
		return " || "
	}
	panic("selector: operation without infix form") // unreachable: writeTo asks only for the above
}

// writeTo writes the canonical form of the node.
func (n *node) writeTo(b *strings.Builder) {
	switch n.op {
	case opAll:
		b.WriteString("all()")
	case opGlobal:
		b.WriteString("global()")
	case opHas:
		b.WriteString("has(")
		b.WriteString(n.key)
		b.WriteString(")")
	case opNot:
		b.WriteString("!")
		n.operands[0].writeTo(b)
	case opAnd, opOr:
		b.WriteString("(")
		for i, operand := range n.operands {
			if i > 0 {
				b.WriteString(n.op.infix())
			}
			operand.writeTo(b)
		}
		b.WriteString(")")
	case opIn, opNotIn:
		b.WriteString(n.key)
		b.WriteString(n.op.infix())
		b.WriteString("{")
		for i, value := range n.set {
			if i > 0 {
				b.WriteString(", ")
			}
			writeQuoted(b, value)
		}
		b.WriteString("}")
	default:
		b.WriteString(n.key)
		b.WriteString(n.op.infix())
		writeQuoted(b, n.value)
	}
}

// writeQuoted quotes a value without escapes, as the grammar has none: a
// value holding a double quote cannot hold a single one, so it gets those.
func writeQuoted(b *strings.Builder, value string) {
	quote := `"`
	if strings.Contains(value, `"`) {
		quote = `'`
	}
	b.WriteString(quote)
	b.WriteString(value)
	b.WriteString(quote)
}
