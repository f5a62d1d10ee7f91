package calico

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
)

// Extra holds the members of a JSON object that this package does not model,
// by key, exactly as they were read. They are written back after the modelled
// members (in key order), so a read-modify-write loses nothing.
type Extra map[string]json.RawMessage

// decodeObject decodes a JSON object into fields (a pointer to a struct with
// json tags) and returns the members no tag names. JSON null decodes to the
// zero value, as encoding/json does for a nested object.
func decodeObject(data []byte, fields any) (Extra, error) {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(data, &members); err != nil {
		return nil, err
	}
	if members == nil {
		return nil, nil
	}
	if err := json.Unmarshal(data, fields); err != nil {
		return nil, err
	}
	// encoding/json matches names case-insensitively; so does this, so that a
	// member it stored in a field is not kept a second time.
	known := jsonNames(reflect.TypeOf(fields).Elem())
	for k := range members {
		if slices.Contains(known, strings.ToLower(k)) {
			delete(members, k)
		}
	}
	if len(members) == 0 {
		return nil, nil
	}
	return members, nil
}

// encodeObject encodes fields (a struct with json tags) and appends the extra
// members whose names no tag uses, sorted by name.
func encodeObject(fields any, extra Extra) ([]byte, error) {
	out, err := json.Marshal(fields)
	if err != nil || len(extra) == 0 {
		return out, err
	}
	known := jsonNames(reflect.TypeOf(fields))
	buf := bytes.NewBuffer(out[:len(out)-1]) // without the closing brace
	for _, k := range slices.Sorted(maps.Keys(extra)) {
		if slices.Contains(known, strings.ToLower(k)) {
			continue
		}
		if buf.Len() > 1 {
			buf.WriteByte(',')
		}
		name, _ := json.Marshal(k)
		buf.Write(name)
		buf.WriteByte(':')
		if err := json.Compact(buf, extra[k]); err != nil {
			return nil, fmt.Errorf("member %q: %w", k, err)
		}
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

// jsonNames lists the lower-cased member names a struct's json tags use.
func jsonNames(t reflect.Type) []string {
	var names []string
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" || !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if name == "" {
			name = f.Name
		}
		names = append(names, strings.ToLower(name))
	}
	return names
}

// checkObject rejects a top-level value that is not a JSON object: Calico's
// decoder would accept null as an empty object, but no writer stores one.
func checkObject(data []byte) error {
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return errors.New("empty value")
	}
	if data[0] != '{' {
		return errors.New("not a JSON object")
	}
	return nil
}
