package event

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

func decodeTimestamp(raw string) (time.Time, error) {
	if len(raw) > 0 && raw[0] != '"' {
		// A number is taken as Unix seconds (with a fraction), the other
		// common way producers write time.
		f, err := strconv.ParseFloat(raw, 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 || f > 1e11 {
			return time.Time{}, errors.New("want an ISO 8601 string or Unix seconds")
		}
		sec, frac := math.Modf(f)
		return time.Unix(int64(sec), int64(frac*1e9)).UTC(), nil
	}
	s, err := decodeString(raw)
	if err != nil {
		return time.Time{}, err
	}
	return ParseTimestamp(s)
}

// ParseTimestamp reads the ISO 8601 date-times producers write:
//
//	YYYY-MM-DD SEP hh:mm:ss [FRACTION] [ZONE]
//
// SEP is T, t or a space. FRACTION is a dot (or comma) and one or more
// digits; digits past the ninth (nanoseconds) are dropped. ZONE is Z or z,
// or an offset +hh:mm, +hhmm or +hh (or -), optionally after a space;
// without a zone the time is UTC, as Python's naive isoformat() output is
// in practice. The Python service's "+00:00Z" is read as +00:00.
func ParseTimestamp(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	t, ok := parseISO(s)
	if !ok {
		return time.Time{}, fmt.Errorf("timestamp %q is not an ISO 8601 date-time", truncate(s, 64))
	}
	return t, nil
}

// parseISO is ParseTimestamp's scanner: one pass, no allocation.
func parseISO(s string) (time.Time, bool) {
	p := scanner{s: s}
	year, ok1 := p.digits(4)
	ok2 := p.byte('-')
	month, ok3 := p.digits(2)
	ok4 := p.byte('-')
	day, ok5 := p.digits(2)
	if !(ok1 && ok2 && ok3 && ok4 && ok5) || p.done() {
		return time.Time{}, false
	}
	switch p.s[p.i] {
	case 'T', 't', ' ':
		p.i++
	default:
		return time.Time{}, false
	}
	hour, ok1 := p.digits(2)
	ok2 = p.byte(':')
	minute, ok3 := p.digits(2)
	ok4 = p.byte(':')
	sec, ok5 := p.digits(2)
	if !(ok1 && ok2 && ok3 && ok4 && ok5) {
		return time.Time{}, false
	}
	nsec := 0
	if !p.done() && (p.s[p.i] == '.' || p.s[p.i] == ',') {
		p.i++
		n := 0
		for ; !p.done() && isDigit(p.s[p.i]); p.i, n = p.i+1, n+1 {
			if n < 9 {
				nsec = nsec*10 + int(p.s[p.i]-'0')
			}
		}
		if n == 0 {
			return time.Time{}, false
		}
		for ; n < 9; n++ {
			nsec *= 10
		}
	}
	offset, ok := p.zone()
	if !ok || !p.done() {
		return time.Time{}, false
	}
	if month < 1 || month > 12 || day < 1 || day > daysIn(month, year) ||
		hour > 23 || minute > 59 || sec > 59 {
		return time.Time{}, false
	}
	t := time.Date(year, time.Month(month), day, hour, minute, sec, nsec, time.UTC)
	return t.Add(-time.Duration(offset) * time.Second), true
}

// zone reads an optional zone and returns its offset east of UTC in
// seconds.
func (p *scanner) zone() (int, bool) {
	if p.done() {
		return 0, true
	}
	if p.s[p.i] == ' ' && p.i+1 < len(p.s) {
		p.i++
	}
	switch c := p.s[p.i]; c {
	case 'Z', 'z':
		p.i++
		return 0, true
	case '+', '-':
		p.i++
		hh, ok := p.digits(2)
		if !ok || hh > 23 {
			return 0, false
		}
		mm := 0
		if !p.done() {
			colon := p.s[p.i] == ':'
			if colon {
				p.i++
			}
			if mm, ok = p.digits(2); !ok || mm > 59 {
				return 0, false
			}
		}
		off := hh*3600 + mm*60
		if c == '-' {
			off = -off
		}
		if !p.done() && off == 0 && (p.s[p.i] == 'Z' || p.s[p.i] == 'z') {
			p.i++ // the Python service's "+00:00Z"
		}
		return off, true
	}
	return 0, false
}

type scanner struct {
	s string
	i int
}

func (p *scanner) done() bool { return p.i >= len(p.s) }

func (p *scanner) byte(b byte) bool {
	if p.done() || p.s[p.i] != b {
		return false
	}
	p.i++
	return true
}

// digits reads exactly n decimal digits.
func (p *scanner) digits(n int) (int, bool) {
	if p.i+n > len(p.s) {
		return 0, false
	}
	v := 0
	for _, c := range []byte(p.s[p.i : p.i+n]) {
		if !isDigit(c) {
			return 0, false
		}
		v = v*10 + int(c-'0')
	}
	p.i += n
	return v, true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func daysIn(month, year int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}
