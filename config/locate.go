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
// (tables, arrays of tables, inline tables on one line); for anything it
// cannot place it falls back to the header of the table, or line 0.
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
			return strings.TrimSpace(s[2:end]), true, true
		}
		return "", false, false
	}
	if strings.HasPrefix(s, "[") {
		if end := strings.Index(s, "]"); end > 0 {
			return strings.TrimSpace(s[1:end]), false, true
		}
	}
	return "", false, false
}

// keyOf returns the key of a `key = value` line.
func keyOf(line string) (string, bool) {
	s := strings.TrimSpace(line)
	eq := strings.IndexByte(s, '=')
	if eq <= 0 || strings.HasPrefix(s, "#") {
		return "", false
	}
	k := strings.TrimSpace(s[:eq])
	k = strings.Trim(k, `"'`)
	return k, k != ""
}

// line returns the 1-based line of key in the index-th element of the table
// (index is ignored for plain tables; table "" is the top level). With an
// empty key it returns the table's header line.
func (l *keyLocator) line(table string, index int, key string) int {
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
