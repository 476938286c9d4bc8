package event

import (
	"bytes"
	"encoding/json"
)

// member is one key of a JSON object and its value's raw bytes.
type member struct {
	key string
	raw []byte
}

// object is a JSON object's members in document order. Lookups return the
// last member with a key, as encoding/json and Python's json do for
// duplicate keys.
type object []member

func (o object) get(key string) ([]byte, bool) {
	for i := len(o) - 1; i >= 0; i-- {
		if o[i].key == key {
			return o[i].raw, true
		}
	}
	return nil, false
}

// scanObject splits a JSON object into its members. data must be valid
// JSON (checked with json.Valid first) and start with '{' after white
// space: the scanner relies on that and only finds boundaries, so one
// validation pass and one scan replace encoding/json's repeated passes over
// nested values.
func scanObject(data []byte) object {
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return nil
	}
	i++
	obj := make(object, 0, 12)
	for {
		i = skipSpace(data, i)
		if i >= len(data) || data[i] == '}' {
			return obj
		}
		if data[i] == ',' {
			i++
			continue
		}
		end := skipString(data, i)
		key := unquote(data[i:end])
		i = skipSpace(data, end)
		i++ // ':'
		i = skipSpace(data, i)
		vend := skipValue(data, i)
		obj = append(obj, member{key: key, raw: data[i:vend]})
		i = vend
	}
}

func skipSpace(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// skipString returns the index just past the string starting at data[i].
func skipString(data []byte, i int) int {
	i++
	for i < len(data) {
		switch data[i] {
		case '\\':
			i += 2
		case '"':
			return i + 1
		default:
			i++
		}
	}
	return i
}

// skipValue returns the index just past the value starting at data[i].
func skipValue(data []byte, i int) int {
	if i >= len(data) {
		return i
	}
	switch data[i] {
	case '"':
		return skipString(data, i)
	case '{', '[':
		depth := 0
		for i < len(data) {
			switch data[i] {
			case '"':
				i = skipString(data, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	default:
		for i < len(data) {
			switch data[i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return i
			}
			i++
		}
		return i
	}
}

// unquote decodes a JSON string literal; escapes go through encoding/json
// so they mean exactly what they mean there.
func unquote(lit []byte) string {
	if len(lit) < 2 {
		return ""
	}
	inner := lit[1 : len(lit)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return string(inner)
	}
	var s string
	_ = json.Unmarshal(lit, &s)
	return s
}
