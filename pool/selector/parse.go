package selector

import (
	"fmt"
	"slices"
)

// maxDepth bounds parenthesis nesting. Calico has no such bound; it is here
// so that a hostile selector cannot make parsing or matching recurse without
// limit. No real selector comes near it.
const maxDepth = 256

// parser is a recursive-descent parser over the tokens of one selector,
// following Calico's grammar:
//
//	selector  = [ or ]
//	or        = and { "||" and }
//	and       = operation { "&&" operation }
//	operation = { "!" } ( "all()" | "global()" | "has(" key ")" | "(" or ")"
//	            | key ( "==" | "!=" | "contains" | "starts with" | "ends with" ) string
//	            | key ( "in" | "not in" ) "{" [ string { "," string } [ "," ] ] "}" )
type parser struct {
	expr       string
	tokens     []token
	next       int
	depth      int
	usesGlobal bool
}

func (p *parser) peek() token { return p.tokens[p.next] }

func (p *parser) take() token {
	t := p.tokens[p.next]
	if t.kind != tokEOF {
		p.next++
	}
	return t
}

func (p *parser) errorf(pos int, format string, args ...any) error {
	return &SyntaxError{Expr: p.expr, Pos: pos, Msg: fmt.Sprintf(format, args...)}
}

func (p *parser) parseSelector() (*node, error) {
	if p.peek().kind == tokEOF {
		return &node{op: opAll}, nil
	}
	root, err := p.parseOr()
	if err != nil {
		return nil, err
	}
	if t := p.peek(); t.kind != tokEOF {
		return nil, p.errorf(t.pos, `expected "&&", "||" or end of selector, found %s`, t.describe())
	}
	return root, nil
}

func (p *parser) parseOr() (*node, error) {
	return p.parseJoined(tokOr, opOr, p.parseAnd)
}

func (p *parser) parseAnd() (*node, error) {
	return p.parseJoined(tokAnd, opAnd, p.parseOperation)
}

// parseJoined parses operands separated by sep. Like Calico it keeps a lone
// operand as it is and gathers two or more into one node.
func (p *parser) parseJoined(sep tokenKind, joined op, operand func() (*node, error)) (*node, error) {
	first, err := operand()
	if err != nil {
		return nil, err
	}
	if p.peek().kind != sep {
		return first, nil
	}
	operands := []*node{first}
	for p.peek().kind == sep {
		p.take()
		next, err := operand()
		if err != nil {
			return nil, err
		}
		operands = append(operands, next)
	}
	return &node{op: joined, operands: operands}, nil
}

// parseOperation parses one possibly negated operation. Like Calico it folds
// a run of "!" into one negation or none.
func (p *parser) parseOperation() (*node, error) {
	negated := false
	for p.peek().kind == tokNot {
		p.take()
		negated = !negated
	}
	operation, err := p.parseOperand()
	if err != nil {
		return nil, err
	}
	if negated {
		return &node{op: opNot, operands: []*node{operation}}, nil
	}
	return operation, nil
}

func (p *parser) parseOperand() (*node, error) {
	at := p.next
	t := p.take()
	switch t.kind {
	case tokAll:
		return &node{op: opAll}, nil
	case tokGlobal:
		p.usesGlobal = true
		return &node{op: opGlobal}, nil
	case tokHas:
		return &node{op: opHas, key: t.text}, nil
	case tokLabel:
		return p.parseComparison(t)
	case tokLParen:
		return p.parseParenthesised(t)
	}
	// Name what came before, so "a == 'b' &&" says the && is dangling.
	after := ""
	if at > 0 {
		after = " after " + p.tokens[at-1].describe()
	}
	return nil, p.errorf(t.pos, "expected an expression%s, found %s", after, t.describe())
}

func (p *parser) parseParenthesised(open token) (*node, error) {
	if p.depth == maxDepth {
		return nil, p.errorf(open.pos, "parentheses nested deeper than %d", maxDepth)
	}
	p.depth++
	inner, err := p.parseOr()
	p.depth--
	if err != nil {
		return nil, err
	}
	if t := p.take(); t.kind != tokRParen {
		return nil, p.errorf(t.pos, `expected "&&", "||" or ")" to close the "(" at position %d, found %s`, open.pos, t.describe())
	}
	return inner, nil
}

// parseComparison parses what follows a label key: an operator and its value
// or set.
func (p *parser) parseComparison(label token) (*node, error) {
	operator := p.take()
	var kind op
	switch operator.kind {
	case tokEq:
		kind = opEq
	case tokNe:
		kind = opNe
	case tokContains:
		kind = opContains
	case tokStartsWith:
		kind = opStartsWith
	case tokEndsWith:
		kind = opEndsWith
	case tokIn:
		return p.parseSet(label, opIn, operator)
	case tokNotIn:
		return p.parseSet(label, opNotIn, operator)
	default:
		hint := ""
		if operator.kind == tokLParen && (label.text == "has" || label.text == "all" || label.text == "global") {
			// Calico reads "has (" as a key named has: the call needs no space.
			hint = fmt.Sprintf(` (write "%s(" without a space)`, label.text)
		}
		return nil, p.errorf(operator.pos, "expected %s after label %q, found %s%s", operatorHint, shorten(label.text), operator.describe(), hint)
	}
	value := p.take()
	if value.kind != tokString {
		return nil, p.errorf(value.pos, "expected a quoted string after %s, found %s", operator.describe(), value.describe())
	}
	return &node{op: kind, key: label.text, value: value.text}, nil
}

// parseSet parses the "{...}" after in or not in. Like Calico it accepts an
// empty set and a trailing comma.
func (p *parser) parseSet(label token, kind op, operator token) (*node, error) {
	if t := p.take(); t.kind != tokLBrace {
		return nil, p.errorf(t.pos, `expected "{" after %s, found %s`, operator.describe(), t.describe())
	}
	var values []string
	for {
		t := p.take()
		if t.kind == tokRBrace {
			break
		}
		if t.kind != tokString {
			return nil, p.errorf(t.pos, `expected a quoted string or "}" in the set, found %s`, t.describe())
		}
		values = append(values, t.text)
		sep := p.take()
		if sep.kind == tokRBrace {
			break
		}
		if sep.kind != tokComma {
			return nil, p.errorf(sep.pos, `expected "," or "}" after a value in the set, found %s`, sep.describe())
		}
	}
	// Calico keeps a set sorted and without duplicates; String relies on it.
	slices.Sort(values)
	return &node{op: kind, key: label.text, set: slices.Compact(values)}, nil
}
