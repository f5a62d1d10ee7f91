package config

import (
	"bufio"
	"bytes"
	"strings"
)

// keyLocator finds the line of a key in a TOML file. BurntSushi/toml keeps
// key positions private, and validation happens after decoding, so errors
// about values are pointed at their lines by reading the file's structure
// again: table headers and `key =` lines. It covers what cluster files hold
// (tables, arrays of tables, inline tables, dotted keys); for anything it
// cannot place exactly it falls back to the nearest line that holds the
// table, and at last to the end of the file: every error names a line.
type keyLocator struct {
	lines []string
}

func newKeyLocator(src []byte) *keyLocator {
	var l keyLocator
	sc := bufio.NewScanner(bytes.NewReader(src))
	sc.Buffer(make([]byte, 0, 64*1024), len(src)+1)
	for sc.Scan() {
		l.lines = append(l.lines, sc.Text())
	}
	return &l
}

// header returns the table name of a `[name]` or `[[name]]` line.
func header(line string) (name string, array bool, ok bool) {
	s := strings.TrimSpace(line)
	if strings.HasPrefix(s, "[[") {
		if end := strings.Index(s, "]]"); end > 0 {
			return unquoteKey(s[2:end]), true, true
		}
		return "", false, false
	}
	if strings.HasPrefix(s, "[") {
		if end := strings.Index(s, "]"); end > 0 {
			return unquoteKey(s[1:end]), false, true
		}
	}
	return "", false, false
}

// unquoteKey trims the spaces and quotes a key may be written with:
// `"tunnel"`, ` tunnel `.
func unquoteKey(k string) string {
	return strings.Trim(strings.TrimSpace(k), `"'`)
}

// keyOf returns the key of a `key = value` line.
func keyOf(line string) (string, bool) {
	s := strings.TrimSpace(line)
	eq := strings.IndexByte(s, '=')
	if eq <= 0 || strings.HasPrefix(s, "#") {
		return "", false
	}
	k := unquoteKey(s[:eq])
	return k, k != ""
}

// line returns the 1-based line of key in the index-th element of the table
// (index is ignored for plain tables; table "" is the top level). With an
// empty key it returns the table's header line. A table written inline
// (`tunnel = { mtu = 1 }`, `nodes = [{...}]`) or as dotted keys
// (`tunnel.mtu = 1`) is placed at its first line; what cannot be placed at
// all, at the end of the file.
func (l *keyLocator) line(table string, index int, key string) int {
	if n := l.find(table, index, key); n > 0 {
		return n
	}
	return l.end()
}

// find is line without the last resort: 0 when the file does not hold the
// key or its table anywhere, so that a caller can try another.
func (l *keyLocator) find(table string, index int, key string) int {
	if n := l.exact(table, index, key); n > 0 {
		return n
	}
	return l.dotted(table, key)
}

// end is the last line, where something missing from the file would go.
func (l *keyLocator) end() int {
	return max(len(l.lines), 1)
}

// dotted finds key written as `table.key = ...` or, failing that, the
// first line that assigns the table itself or one of its keys inline.
func (l *keyLocator) dotted(table, key string) int {
	if table == "" {
		return 0
	}
	first := 0
	for i, raw := range l.lines {
		k, ok := keyOf(raw)
		if !ok {
			continue
		}
		if key != "" && k == table+"."+key {
			return i + 1
		}
		if first == 0 && (k == table || strings.HasPrefix(k, table+".")) {
			first = i + 1
		}
	}
	return first
}

// exact finds key under the table's own header; 0 when it cannot.
func (l *keyLocator) exact(table string, index int, key string) int {
	curTable, curIndex := "", 0
	counts := map[string]int{}
	headerLine := 0
	inTarget := table == "" && index == 0
	for i, raw := range l.lines {
		if name, array, ok := header(raw); ok {
			curTable = name
			if array {
				curIndex = counts[name]
				counts[name]++
			} else {
				curIndex = 0
			}
			inTarget = curTable == table && curIndex == index
			if inTarget {
				headerLine = i + 1
				if key == "" {
					return headerLine
				}
			}
			continue
		}
		if !inTarget {
			continue
		}
		if k, ok := keyOf(raw); ok && k == key {
			return i + 1
		}
	}
	return headerLine
}
