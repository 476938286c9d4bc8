package event

import (
	"encoding/json"
	"strings"
)

// member is one key of a JSON object, as its literal with the quotes, and
// its value's raw text, both as offsets into the object's text: small
// enough for an event to hold a body's members inline.
type member struct {
	key, val span
	// escaped: the key literal has an escape, so it must be decoded to
	// be compared.
	escaped bool
}

type span struct{ start, end uint32 }

// object is a JSON object's members in document order. Lookups return the
// last member with a key, as encoding/json and Python's json do for
// duplicate keys.
type object struct {
	text    string
	members []member
}

// key is m's key, decoded.
func (o object) key(m member) string {
	lit := o.text[m.key.start:m.key.end]
	if m.escaped {
		return unquote(lit)
	}
	return lit[1 : len(lit)-1]
}

// value is m's value's raw text.
func (o object) value(m member) string { return o.text[m.val.start:m.val.end] }

func (o object) get(key string) (string, bool) {
	for i := len(o.members) - 1; i >= 0; i-- {
		m := o.members[i]
		lit := o.text[m.key.start:m.key.end]
		if (!m.escaped && lit[1:len(lit)-1] == key) || (m.escaped && unquote(lit) == key) {
			return o.text[m.val.start:m.val.end], true
		}
	}
	return "", false
}

// scanObject appends the members of a JSON object to dst and returns the
// object. data must be valid JSON (checked with valid first), start with
// '{' after white space and be shorter than 4 GiB: the scanner relies on
// that and only finds boundaries, so one validation pass and one scan
// replace encoding/json's repeated passes over nested values. Scanning
// allocates nothing beyond dst's growth.
func scanObject(dst []member, data string) object {
	obj := object{text: data, members: dst}
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return obj
	}
	i++
	for {
		i = skipSpace(data, i)
		if i >= len(data) || data[i] == '}' {
			return obj
		}
		if data[i] == ',' {
			i++
			continue
		}
		end, escaped := scanString(data, i)
		key := span{uint32(i), uint32(end)}
		i = skipSpace(data, end)
		i++ // ':'
		i = skipSpace(data, i)
		vend := skipValue(data, i)
		obj.members = append(obj.members, member{key: key, val: span{uint32(i), uint32(vend)}, escaped: escaped})
		i = vend
	}
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipSpace[T string | []byte](data T, i int) int {
	for i < len(data) && isSpace(data[i]) {
		i++
	}
	return i
}

// skipString returns the index just past the string starting at data[i].
func skipString(data string, i int) int {
	end, _ := scanString(data, i)
	return end
}

// scanString returns the index just past the string starting at data[i]
// and whether it has an escape. Keys and values are short: a loop beats
// searching for the quote and then for a backslash.
func scanString(data string, i int) (end int, escaped bool) {
	i++
	for i < len(data) {
		switch data[i] {
		case '\\':
			escaped = true
			i += 2
		case '"':
			return i + 1, escaped
		default:
			i++
		}
	}
	return i, escaped
}

// skipValue returns the index just past the value starting at data[i].
func skipValue(data string, i int) int {
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
// so they mean exactly what they mean there. Without escapes the result is
// a substring of lit.
func unquote(lit string) string {
	if len(lit) < 2 {
		return ""
	}
	inner := lit[1 : len(lit)-1]
	if strings.IndexByte(inner, '\\') < 0 {
		return inner
	}
	var s string
	_ = json.Unmarshal([]byte(lit), &s)
	return s
}

// maxDepth is encoding/json's nesting limit, which valid keeps too.
const maxDepth = 10000

// valid reports whether data is exactly one JSON value, with the answer
// json.Valid gives (nesting limit included: FuzzValid compares the two),
// in one pass and without allocating below 64 levels of nesting.
// encoding/json's scanner calls a function per byte; this was a quarter
// of decoding an event.
func valid(data []byte) bool {
	var buf [64]byte
	open := buf[:0] // the open containers' '{' or '['
	i := skipSpace(data, 0)
	for {
		// A value starts at i.
		if i >= len(data) {
			return false
		}
		switch c := data[i]; {
		case c == '{' || c == '[':
			if len(open) == maxDepth {
				return false
			}
			open = append(open, c)
			i = skipSpace(data, i+1)
			if i < len(data) && data[i] == c+2 { // '}' or ']'
				open = open[:len(open)-1]
				i++
				break
			}
			if c == '{' {
				if i = validKey(data, i); i < 0 {
					return false
				}
			}
			continue
		case c == '"':
			i = validString(data, i)
		case c == '-' || ('0' <= c && c <= '9'):
			i = validNumber(data, i)
		case c == 't':
			i = validLiteral(data, i, "true")
		case c == 'f':
			i = validLiteral(data, i, "false")
		case c == 'n':
			i = validLiteral(data, i, "null")
		default:
			return false
		}
		if i < 0 {
			return false
		}
		// After a value: close containers until a comma opens the next
		// value, or the text ends.
		for {
			i = skipSpace(data, i)
			if len(open) == 0 {
				return i == len(data)
			}
			if i >= len(data) {
				return false
			}
			c, in := data[i], open[len(open)-1]
			if c == in+2 {
				open = open[:len(open)-1]
				i++
				continue
			}
			if c != ',' {
				return false
			}
			i = skipSpace(data, i+1)
			if in == '{' {
				if i = validKey(data, i); i < 0 {
					return false
				}
			}
			break
		}
	}
}

// validKey checks an object key and its colon at data[i], returning the
// index of the value after it, or -1.
func validKey(data []byte, i int) int {
	if i >= len(data) || data[i] != '"' {
		return -1
	}
	if i = validString(data, i); i < 0 {
		return -1
	}
	i = skipSpace(data, i)
	if i >= len(data) || data[i] != ':' {
		return -1
	}
	return skipSpace(data, i+1)
}

// validString checks the string starting at data[i] and returns the index
// just past it, or -1. Like encoding/json's scanner it refuses control
// characters and unknown escapes but not invalid UTF-8 (Decode checks that
// first).
func validString(data []byte, i int) int {
	for i++; i < len(data); i++ {
		switch c := data[i]; {
		case c == '"':
			return i + 1
		case c < 0x20:
			return -1
		case c == '\\':
			i++
			if i >= len(data) {
				return -1
			}
			switch data[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(data) {
					return -1
				}
				for _, h := range data[i+1 : i+5] {
					if !isHex(h) {
						return -1
					}
				}
				i += 4
			default:
				return -1
			}
		}
	}
	return -1
}

func isHex(c byte) bool {
	return ('0' <= c && c <= '9') || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F')
}

// validNumber checks the number starting at data[i] and returns the index
// just past it, or -1: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func validNumber(data []byte, i int) int {
	if data[i] == '-' {
		i++
	}
	switch {
	case i >= len(data) || !isDigit(data[i]):
		return -1
	case data[i] == '0':
		i++
	default:
		for i < len(data) && isDigit(data[i]) {
			i++
		}
	}
	if i < len(data) && data[i] == '.' {
		i++
		if i >= len(data) || !isDigit(data[i]) {
			return -1
		}
		for i < len(data) && isDigit(data[i]) {
			i++
		}
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		i++
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		if i >= len(data) || !isDigit(data[i]) {
			return -1
		}
		for i < len(data) && isDigit(data[i]) {
			i++
		}
	}
	return i
}

func validLiteral(data []byte, i int, lit string) int {
	if len(data)-i < len(lit) || string(data[i:i+len(lit)]) != lit {
		return -1
	}
	return i + len(lit)
}
