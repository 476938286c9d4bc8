package rules

import (
	"fmt"
	"net/netip"
	"path"
	"regexp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/audit-platform/audit-log-analysis/internal/event"
)

// checkField reports whether name is a normalised field or a dotted path.
func checkField(name string) error {
	if slices.Contains(event.Fields, name) {
		return nil
	}
	parts := strings.Split(name, ".")
	if len(parts) < 2 || slices.Contains(parts, "") {
		return fmt.Errorf("unknown field %q: use one of %s, or a dotted path such as details.protocol",
			name, strings.Join(event.Fields, ", "))
	}
	return nil
}

// Op is a condition operator.
type Op string

// The operators a condition may use.
const (
	OpEquals   Op = "equals"
	OpIn       Op = "in"
	OpNotIn    Op = "not_in"
	OpPath     Op = "path"
	OpPrefix   Op = "prefix"
	OpSuffix   Op = "suffix"
	OpContains Op = "contains"
	OpRegex    Op = "regex"
	OpCIDR     Op = "cidr"
	OpNotCIDR  Op = "not_cidr"
	OpExists   Op = "exists"
)

// operators lists the operators for messages.
const operators = "equals, in, not_in, path, prefix, suffix, contains, regex, cidr, not_cidr, exists"

// Condition tests one field of an event.
type Condition struct {
	Field  string
	Op     Op
	Values []string
	// IgnoreCase compares text under Unicode simple case folding (equals,
	// in, not_in, prefix, suffix, contains).
	IgnoreCase bool
	// Compiled forms.
	regex    *regexp.Regexp
	prefixes []netip.Prefix
	exists   bool
	folded   []string // Values folded, with IgnoreCase
}

// Matches reports whether the condition holds. An absent field matches
// only `exists: false` and `not_in`.
func (c *Condition) Matches(ev *event.Event) bool {
	v, ok := ev.Field(c.Field)
	values := c.Values
	equal := func(s string) bool { return s == v }
	if c.IgnoreCase {
		// Equality needs no folded copy: EqualFold is simple folding.
		equal = func(s string) bool { return strings.EqualFold(s, v) }
		if c.Op == OpPrefix || c.Op == OpSuffix || c.Op == OpContains {
			v, values = foldCase(v), c.folded
		}
	}
	switch c.Op {
	case OpExists:
		return ok == c.exists
	case OpNotIn:
		return !ok || !slices.ContainsFunc(values, equal)
	}
	if !ok {
		return false
	}
	switch c.Op {
	case OpEquals, OpIn:
		return slices.ContainsFunc(values, equal)
	case OpPath:
		p := event.CanonicalPath(v)
		for _, glob := range c.Values {
			if m, _ := path.Match(glob, p); m {
				return true
			}
		}
		return false
	case OpPrefix:
		return slices.ContainsFunc(values, func(s string) bool { return strings.HasPrefix(v, s) })
	case OpSuffix:
		return slices.ContainsFunc(values, func(s string) bool { return strings.HasSuffix(v, s) })
	case OpContains:
		return slices.ContainsFunc(values, func(s string) bool { return strings.Contains(v, s) })
	case OpRegex:
		return c.regex.MatchString(v)
	case OpCIDR, OpNotCIDR:
		// Only an address is inside or outside a network: a value that is
		// not one matches neither operator.
		addr, err := netip.ParseAddr(strings.TrimSpace(v))
		if err != nil {
			return false
		}
		addr = addr.WithZone("").Unmap()
		inside := slices.ContainsFunc(c.prefixes, func(p netip.Prefix) bool { return p.Contains(addr) })
		return inside == (c.Op == OpCIDR)
	}
	return false
}

// foldCase maps every character to one representative of its Unicode
// simple case folding orbit (the smallest code point in it), so that two
// strings are equal after folding exactly when strings.EqualFold says they
// are, and prefixes, suffixes and substrings carry over. ASCII-only text,
// the common case, costs one pass and no allocation when it has no lower
// case letters.
func foldCase(s string) string {
	ascii, upper := true, true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= utf8.RuneSelf {
			ascii = false
			break
		}
		if 'a' <= c && c <= 'z' {
			upper = false
		}
	}
	if ascii {
		if upper {
			return s
		}
		b := []byte(s)
		for i, c := range b {
			if 'a' <= c && c <= 'z' {
				b[i] = c - 'a' + 'A'
			}
		}
		return string(b)
	}
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range s {
		b.WriteRune(foldRune(r))
	}
	return b.String()
}

// foldRune returns the smallest rune of r's simple folding orbit.
func foldRune(r rune) rune {
	lowest := r
	for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
		lowest = min(lowest, f)
	}
	return lowest
}

// compile checks the condition's values and prepares them for matching.
func (c *Condition) compile() error {
	if err := checkField(c.Field); err != nil {
		return err
	}
	switch c.Op {
	case OpEquals, OpIn, OpNotIn, OpPrefix, OpSuffix, OpContains:
		if len(c.Values) == 0 {
			return fmt.Errorf("field %q: %s needs at least one value", c.Field, c.Op)
		}
		if c.Op == OpEquals && len(c.Values) != 1 {
			return fmt.Errorf("field %q: equals takes one value (in takes a list)", c.Field)
		}
		if c.IgnoreCase {
			c.folded = make([]string, len(c.Values))
			for i, v := range c.Values {
				c.folded[i] = foldCase(v)
			}
		}
	case OpPath:
		if len(c.Values) == 0 {
			return fmt.Errorf("field %q: path needs at least one glob", c.Field)
		}
		for i, glob := range c.Values {
			if !strings.HasPrefix(glob, "/") {
				return fmt.Errorf("field %q: path glob %q is not absolute", c.Field, glob)
			}
			clean := path.Clean(glob)
			if _, err := path.Match(clean, ""); err != nil {
				return fmt.Errorf("field %q: path glob %q: %v", c.Field, glob, err)
			}
			c.Values[i] = clean
		}
	case OpRegex:
		if len(c.Values) != 1 {
			return fmt.Errorf("field %q: regex takes one pattern", c.Field)
		}
		re, err := regexp.Compile(c.Values[0])
		if err != nil {
			return fmt.Errorf("field %q: bad regex %q: %v", c.Field, c.Values[0], err)
		}
		c.regex = re
	case OpCIDR, OpNotCIDR:
		if len(c.Values) == 0 {
			return fmt.Errorf("field %q: %s needs at least one network", c.Field, c.Op)
		}
		for _, s := range c.Values {
			p, err := parsePrefix(s)
			if err != nil {
				return fmt.Errorf("field %q: bad CIDR %q: %v", c.Field, s, err)
			}
			c.prefixes = append(c.prefixes, p)
		}
	case OpExists:
		switch strings.ToLower(strings.Join(c.Values, "")) {
		case "true":
			c.exists = true
		case "false":
			c.exists = false
		default:
			return fmt.Errorf("field %q: exists takes true or false", c.Field)
		}
	default:
		return fmt.Errorf("field %q: unknown operator %q (one of %s)", c.Field, c.Op, operators)
	}
	if c.IgnoreCase && c.folded == nil {
		return fmt.Errorf("field %q: ignore_case applies to equals, in, not_in, prefix, suffix and contains, not %s (a regex can say (?i))", c.Field, c.Op)
	}
	return nil
}

// parsePrefix reads a CIDR, or a single address as a /32 or /128.
func parsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "/") {
		addr, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		addr = addr.Unmap()
		return netip.PrefixFrom(addr, addr.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}
