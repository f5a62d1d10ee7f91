package selector

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxKeyLen is the longest label key Calico accepts.
const MaxKeyLen = 512

type tokenKind int

const (
	tokEOF tokenKind = iota
	tokLabel
	tokString
	tokLBrace
	tokRBrace
	tokComma
	tokEq
	tokNe
	tokIn
	tokNotIn
	tokNot
	tokContains
	tokStartsWith
	tokEndsWith
	tokAll
	tokHas
	tokGlobal
	tokLParen
	tokRParen
	tokAnd
	tokOr
)

// token is one lexeme with where it starts, so the parser can point at it.
type token struct {
	kind tokenKind
	// text is the label key for tokLabel and tokHas, the unquoted value for
	// tokString.
	text string
	// raw is the source text of the token, for error messages.
	raw string
	pos int
}

// describeRawLimit keeps a message about a long string literal short.
const describeRawLimit = 40

// describe names a token for an error message, e.g. `label "zone"`.
func (t token) describe() string {
	switch t.kind {
	case tokEOF:
		return "end of selector"
	case tokLabel:
		return "label " + strconv.Quote(shorten(t.text))
	case tokString:
		return "string " + shorten(t.raw)
	default:
		return strconv.Quote(shorten(t.raw))
	}
}

func shorten(s string) string {
	if len(s) <= describeRawLimit {
		return s
	}
	return s[:describeRawLimit] + "..."
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' }

// isKeyChar reports whether c may appear in a label key. The set covers
// Kubernetes' DNS-prefixed keys such as example.com/zone.
func isKeyChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '_' || c == '.' || c == '/' || c == '-'
}

// operatorHint lists the operators that may follow a label key.
const operatorHint = "an operator (==, !=, in, not in, contains, starts with, ends with)"

// lexer splits a selector into tokens the way Calico's tokenizer does: it
// reads the whole input before parsing starts, and words after a label key
// are read as operators (so "in" is an operator there and a key elsewhere).
type lexer struct {
	expr   string
	pos    int
	tokens []token
}

func lex(expr string) ([]token, error) {
	l := &lexer{expr: expr}
	for {
		l.skipSpace()
		if l.pos == len(l.expr) {
			l.tokens = append(l.tokens, token{kind: tokEOF, pos: l.pos})
			return l.tokens, nil
		}
		if err := l.next(); err != nil {
			return nil, err
		}
	}
}

func (l *lexer) errorf(pos int, format string, args ...any) error {
	return &SyntaxError{Expr: l.expr, Pos: pos, Msg: fmt.Sprintf(format, args...)}
}

func (l *lexer) skipSpace() {
	for l.pos < len(l.expr) && isSpace(l.expr[l.pos]) {
		l.pos++
	}
}

func (l *lexer) emit(kind tokenKind, start int, text string) {
	l.tokens = append(l.tokens, token{kind: kind, text: text, raw: l.expr[start:l.pos], pos: start})
}

func (l *lexer) afterLabel() bool {
	return len(l.tokens) > 0 && l.tokens[len(l.tokens)-1].kind == tokLabel
}

// next reads one token starting at a non-space character.
func (l *lexer) next() error {
	start := l.pos
	rest := l.expr[l.pos:]
	if kind, ok := punctuation(rest[0]); ok {
		l.pos++
		l.emit(kind, start, "")
		return nil
	}
	switch c := rest[0]; c {
	case '"', '\'':
		end := strings.IndexByte(rest[1:], c)
		if end < 0 {
			return l.errorf(start, "unterminated string: the %c opened here is never closed", c)
		}
		l.pos += end + 2
		l.emit(tokString, start, rest[1:end+1])
	case '=':
		if !strings.HasPrefix(rest, "==") {
			return l.errorf(start, `expected "==", found a single "="`)
		}
		l.pos += 2
		l.emit(tokEq, start, "")
	case '!':
		if strings.HasPrefix(rest, "!=") {
			l.pos += 2
			l.emit(tokNe, start, "")
		} else {
			l.pos++
			l.emit(tokNot, start, "")
		}
	case '&':
		if !strings.HasPrefix(rest, "&&") {
			return l.errorf(start, `expected "&&", found a single "&"`)
		}
		l.pos += 2
		l.emit(tokAnd, start, "")
	case '|':
		if !strings.HasPrefix(rest, "||") {
			return l.errorf(start, `expected "||", found a single "|"`)
		}
		l.pos += 2
		l.emit(tokOr, start, "")
	default:
		switch {
		case l.afterLabel():
			return l.operator()
		case strings.HasPrefix(rest, "has("):
			return l.has()
		case strings.HasPrefix(rest, "all("):
			return l.emptyCall("all(", tokAll)
		case strings.HasPrefix(rest, "global("):
			return l.emptyCall("global(", tokGlobal)
		case isKeyChar(c):
			key, err := l.key()
			if err != nil {
				return err
			}
			l.emit(tokLabel, start, key)
		default:
			return l.errorf(start, "unexpected character %s", l.describeAt(start))
		}
	}
	return nil
}

// punctuation maps the one-character tokens.
func punctuation(c byte) (tokenKind, bool) {
	switch c {
	case '(':
		return tokLParen, true
	case ')':
		return tokRParen, true
	case '{':
		return tokLBrace, true
	case '}':
		return tokRBrace, true
	case ',':
		return tokComma, true
	}
	return tokEOF, false
}

// key reads a label key at l.pos; it returns "" when there is none.
func (l *lexer) key() (string, error) {
	start := l.pos
	for l.pos < len(l.expr) && isKeyChar(l.expr[l.pos]) {
		l.pos++
	}
	if n := l.pos - start; n > MaxKeyLen {
		return "", l.errorf(start, "label key is %d characters long, longer than the %d allowed", n, MaxKeyLen)
	}
	return l.expr[start:l.pos], nil
}

// has reads "has(" key ")" with optional spaces inside the parentheses.
func (l *lexer) has() error {
	start := l.pos
	l.pos += len("has(")
	l.skipSpace()
	keyPos := l.pos
	key, err := l.key()
	if err != nil {
		return err
	}
	if key == "" {
		return l.errorf(keyPos, `expected a label key after "has(", found %s`, l.describeAt(keyPos))
	}
	l.skipSpace()
	if l.pos == len(l.expr) || l.expr[l.pos] != ')' {
		return l.errorf(l.pos, `expected ")" to close "has(", found %s`, l.describeAt(l.pos))
	}
	l.pos++
	l.emit(tokHas, start, key)
	return nil
}

// emptyCall reads all() or global(), which take no argument.
func (l *lexer) emptyCall(open string, kind tokenKind) error {
	start := l.pos
	l.pos += len(open)
	l.skipSpace()
	if l.pos == len(l.expr) || l.expr[l.pos] != ')' {
		return l.errorf(l.pos, "expected %q to close %q, found %s", ")", open, l.describeAt(l.pos))
	}
	l.pos++
	l.emit(kind, start, "")
	return nil
}

// operator reads the word operators that follow a label key. Like Calico it
// matches them as prefixes: "in{" is "in" then "{", and "inx" is "in" then a
// key, which the parser then rejects.
func (l *lexer) operator() error {
	start := l.pos
	rest := l.expr[start:]
	twoWord := func(first, second string, kind tokenKind) error {
		l.pos += len(first)
		l.skipSpace()
		if !strings.HasPrefix(l.expr[l.pos:], second) {
			return l.errorf(l.pos, "expected %q after %q, found %s", second, first, l.describeAt(l.pos))
		}
		l.pos += len(second)
		l.emit(kind, start, "")
		return nil
	}
	switch {
	case strings.HasPrefix(rest, "contains"):
		l.pos += len("contains")
		l.emit(tokContains, start, "")
	case strings.HasPrefix(rest, "starts"):
		return twoWord("starts", "with", tokStartsWith)
	case strings.HasPrefix(rest, "ends"):
		return twoWord("ends", "with", tokEndsWith)
	case strings.HasPrefix(rest, "not"):
		return twoWord("not", "in", tokNotIn)
	case strings.HasPrefix(rest, "in"):
		l.pos += len("in")
		l.emit(tokIn, start, "")
	default:
		label := l.tokens[len(l.tokens)-1].text
		return l.errorf(start, "expected %s after label %q, found %s", operatorHint, shorten(label), l.describeAt(start))
	}
	return nil
}

// describeAt names what the input holds at pos, for an error message: the
// word there, or the single character, or the end.
func (l *lexer) describeAt(pos int) string {
	if pos >= len(l.expr) {
		return "end of selector"
	}
	end := pos
	for end < len(l.expr) && isKeyChar(l.expr[end]) {
		end++
	}
	if end > pos {
		return strconv.Quote(shorten(l.expr[pos:end]))
	}
	r, size := utf8.DecodeRuneInString(l.expr[pos:])
	if r == utf8.RuneError && size <= 1 {
		return fmt.Sprintf("byte 0x%02x", l.expr[pos])
	}
	return strconv.Quote(string(r))
}
