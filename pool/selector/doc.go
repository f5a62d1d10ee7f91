// Package selector parses and evaluates Calico's label selector language, the
// language of an IPPool's nodeSelector.
//
// The grammar and its evaluation follow Calico's libcalico-go selector
// package: all(), has(k), k == 'v', k != 'v', k in {...}, k not in {...}
// (also notin), k contains 'v', k starts with 'v', k ends with 'v', !, &&, ||
// and parentheses, with the precedence || < && < !. Strings take single or
// double quotes and have no escapes. != and not in match a label set that
// lacks the label; every other comparison needs the label to be present.
// An empty selector selects everything, like all().
package selector
