package rules

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/audit-platform/audit-log-analysis/internal/state"
)

// MaxWindow bounds a threshold or sequence window or suppression period:
// state is kept for about two windows, so a window of days would keep a
// lot.
const MaxWindow = 7 * 24 * time.Hour

// Bounds of a new-value rule's history and learning time: values are kept
// for the history, which must be longer than events arrive late.
const (
	MinHistory = time.Hour
	MaxHistory = 365 * 24 * time.Hour
)

// MaxSteps bounds a sequence's steps; MaxSequenceEvents the sum of their
// counts (a sequence alert lists every event).
const (
	MaxSteps          = state.MaxSteps
	MaxSequenceEvents = state.MaxSequenceEvents
)

// LoadFile reads and validates a rules file.
func LoadFile(name string) (*Set, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("read rules file: %w", err)
	}
	return Parse(name, data)
}

// Parse validates a rules file's bytes. Every problem is reported, each as
// "FILE:LINE: rule "ID": what is wrong".
func Parse(source string, data []byte) (*Set, error) {
	sum := sha256.Sum256(data)
	set := &Set{Source: source, Hash: hex.EncodeToString(sum[:])}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	p := &parser{source: source}
	if len(doc.Content) == 0 {
		return nil, fmt.Errorf("%s: empty rules file: want a top-level \"rules:\" list", source)
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s:%d: want a mapping with a \"rules:\" list", source, root.Line)
	}
	var list *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Value == "rules" {
			list = v
			continue
		}
		p.errorf(k, "", "unknown top-level key %q (only \"rules\")", k.Value)
	}
	if list == nil || list.Kind != yaml.SequenceNode {
		line := root.Line
		if list != nil {
			line = list.Line
		}
		p.errs = append(p.errs, fmt.Errorf("%s:%d: want a \"rules:\" list", source, line))
		return nil, errors.Join(p.errs...)
	}
	seen := map[string]int{}
	for i, node := range list.Content {
		r := p.rule(node, i+1)
		if r == nil {
			continue
		}
		if first, dup := seen[r.Alert.ID]; dup {
			p.errorf(node, r.Alert.ID, "duplicate rule id (first defined at line %d)", first)
			continue
		}
		seen[r.Alert.ID] = r.Line
		set.Rules = append(set.Rules, r)
	}
	if len(p.errs) > 0 {
		return nil, errors.Join(p.errs...)
	}
	return set, nil
}

type parser struct {
	source string
	errs   []error
	// cur is the rule being parsed: errors about a missing key point at it.
	cur *yaml.Node
}

func (p *parser) errorf(n *yaml.Node, rule, format string, args ...any) {
	if n == nil {
		n = p.cur
	}
	msg := fmt.Sprintf(format, args...)
	if rule != "" {
		msg = fmt.Sprintf("rule %q: %s", rule, msg)
	}
	p.errs = append(p.errs, fmt.Errorf("%s:%d: %s", p.source, n.Line, msg))
}

// rule parses one list item; it returns nil when the item has errors.
func (p *parser) rule(n *yaml.Node, index int) *Rule {
	before := len(p.errs)
	p.cur = n
	if n.Kind != yaml.MappingNode {
		p.errorf(n, "", "rule #%d: want a mapping", index)
		return nil
	}
	fields := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		fields[n.Content[i].Value] = n.Content[i+1]
	}
	label := fmt.Sprintf("#%d", index)
	r := &Rule{Line: n.Line, Enabled: true, Mode: Live}
	if v, ok := fields["id"]; ok && v.Kind == yaml.ScalarNode && strings.TrimSpace(v.Value) != "" {
		r.Alert.ID = strings.TrimSpace(v.Value)
		label = r.Alert.ID
	} else {
		p.errorf(n, label, "missing id")
	}
	str := func(key string, dst *string) {
		v, ok := fields[key]
		if !ok {
			return
		}
		if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
			p.errorf(v, label, "%s: want a string", key)
			return
		}
		*dst = v.Value
	}
	var description, alertDescription, suppress string
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch k.Value {
		case "id":
		case "name":
			str("name", &r.Alert.Name)
		case "description":
			str("description", &description)
		case "alert_name":
			str("alert_name", &r.Alert.AlertName)
		case "alert_description":
			str("alert_description", &alertDescription)
		case "alert_type":
			str("alert_type", &r.Alert.AlertType)
		case "severity":
			str("severity", &r.Alert.Severity)
		case "action_observed":
			str("action_observed", &r.Alert.ActionObserved)
		case "resource_type":
			str("resource_type", &r.Alert.ResourceType)
		case "actor_type":
			str("actor_type", &r.Alert.ActorType)
		case "category":
			str("category", &r.Category)
		case "remediation_guidance":
			str("remediation_guidance", &r.Alert.Remediation)
		case "playbook_url":
			str("playbook_url", &r.Alert.PlaybookURL)
		case "tags":
			r.Alert.Tags = p.strings(v, label, "tags")
		case "enabled":
			b, err := strconv.ParseBool(v.Value)
			if v.Kind != yaml.ScalarNode || err != nil {
				p.errorf(v, label, "enabled: want true or false")
			}
			r.Enabled = b
		case "mode":
			switch Mode(v.Value) {
			case Live, Shadow:
				r.Mode = Mode(v.Value)
			default:
				p.errorf(v, label, "mode: want live or shadow, not %q", v.Value)
			}
		case "match":
			r.Match = p.match(v, label, "match")
		case "threshold":
			r.Threshold = p.threshold(v, label)
		case "sequence":
			r.Sequence = p.sequence(v, label)
		case "new_value":
			r.NewValue = p.newValue(v, label)
		case "suppress":
			str("suppress", &suppress)
		default:
			p.errorf(k, label, "unknown key %q", k.Value)
		}
	}
	kinds := 0
	for _, k := range []string{"threshold", "sequence", "new_value"} {
		if fields[k] != nil {
			kinds++
		}
	}
	if kinds > 1 {
		p.errorf(n, label, "a rule has at most one of threshold, sequence and new_value")
	}
	if len(r.Match) == 0 && fields["match"] == nil && fields["sequence"] == nil {
		p.errorf(n, label, "missing match: a rule needs at least one condition (a sequence's steps have their own)")
	}
	if r.Alert.Name == "" {
		r.Alert.Name = r.Alert.ID
	}
	if r.Alert.AlertName == "" {
		r.Alert.AlertName = r.Alert.Name
	}
	if r.Alert.AlertType == "" {
		r.Alert.AlertType = "SECURITY"
	}
	if r.Alert.Severity == "" {
		p.errorf(n, label, "missing severity")
	}
	if r.Alert.ActionObserved == "" {
		r.Alert.ActionObserved = "RULE_MATCH"
	}
	switch r.Alert.ResourceType {
	case "":
		r.Alert.ResourceType = "SERVER"
	case "SERVER", "FILE":
	default:
		p.errorf(fields["resource_type"], label, "resource_type: want SERVER or FILE, not %q", r.Alert.ResourceType)
	}
	if r.Category == "" {
		r.Category = r.Alert.ID
	}
	for _, lim := range []struct {
		key, value string
		max        int
	}{
		{"id", r.Alert.ID, 255}, {"name", r.Alert.Name, 255}, {"alert_name", r.Alert.AlertName, 255},
		{"alert_type", r.Alert.AlertType, 50}, {"severity", r.Alert.Severity, 50}, {"actor_type", r.Alert.ActorType, 50},
		{"action_observed", r.Alert.ActionObserved, 255}, {"category", r.Category, 64},
	} {
		if len([]rune(lim.value)) > lim.max {
			p.errorf(n, label, "%s is longer than %d characters", lim.key, lim.max)
		}
	}
	var err error
	if r.description, err = parseTemplate(description); err != nil {
		p.errorf(fields["description"], label, "description: %v", err)
	}
	if alertDescription == "" {
		alertDescription = defaultAlertDescription(r)
	}
	if r.alertDescription, err = parseTemplate(alertDescription); err != nil {
		p.errorf(fields["alert_description"], label, "alert_description: %v", err)
	}
	window := time.Duration(0)
	switch {
	case r.Threshold != nil:
		window = r.Threshold.Window
	case r.Sequence != nil:
		window = r.Sequence.Window
	}
	if suppress != "" {
		d, err := parseDuration(suppress)
		switch {
		case err != nil:
			p.errorf(fields["suppress"], label, "suppress: %v", err)
		case r.Threshold == nil && r.Sequence == nil:
			p.errorf(fields["suppress"], label, "suppress needs a threshold or a sequence (a threshold with count: 1 alerts once per group)")
		default:
			r.Suppress = d
		}
	} else {
		r.Suppress = window
	}
	switch {
	case r.Threshold != nil:
		r.Threshold.computeShape(r.Alert.ID)
	case r.Sequence != nil:
		r.Sequence.computeShape(r.Alert.ID)
	case r.NewValue != nil:
		r.NewValue.computeShape(r.Alert.ID)
	}
	if len(p.errs) > before {
		return nil
	}
	return r
}

func defaultAlertDescription(r *Rule) string {
	switch {
	case r.Threshold != nil:
		return "{{count}} matching events within {{window_seconds}} seconds (threshold {{threshold}}) for " + r.Alert.Name + "."
	case r.Sequence != nil:
		return r.Alert.Name + ": every step in order within {{window_seconds}} seconds ({{count}} events) for user '{{user_id}}' on '{{server_hostname}}'."
	case r.NewValue != nil:
		return r.Alert.Name + ": new value {{new_value}} ({{known_values}} known) for user '{{user_id}}' on '{{server_hostname}}'."
	}
	return r.Alert.Name + " matched for user '{{user_id}}' on '{{server_hostname}}'."
}

// strings reads a scalar or a list of scalars.
func (p *parser) strings(n *yaml.Node, label, key string) []string {
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			p.errorf(n, label, "%s: want a value or a list", key)
			return nil
		}
		return []string{n.Value}
	case yaml.SequenceNode:
		out := make([]string, 0, len(n.Content))
		for _, item := range n.Content {
			if item.Kind != yaml.ScalarNode || item.Tag == "!!null" {
				p.errorf(item, label, "%s: list items must be plain values", key)
				continue
			}
			out = append(out, item.Value)
		}
		return out
	}
	p.errorf(n, label, "%s: want a value or a list", key)
	return nil
}

func (p *parser) match(n *yaml.Node, label, where string) []Condition {
	if n.Kind != yaml.MappingNode || len(n.Content) == 0 {
		p.errorf(n, label, "%s: want a mapping of field: condition", where)
		return nil
	}
	var conds []Condition
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		c := Condition{Field: k.Value}
		switch v.Kind {
		case yaml.ScalarNode:
			c.Op = OpEquals
			c.Values = p.strings(v, label, where+"."+k.Value)
		case yaml.SequenceNode:
			c.Op = OpIn
			c.Values = p.strings(v, label, where+"."+k.Value)
		case yaml.MappingNode:
			var opKey, opValue *yaml.Node
			bad := false
			for j := 0; j+1 < len(v.Content); j += 2 {
				ok, ov := v.Content[j], v.Content[j+1]
				if ok.Value == "ignore_case" {
					b, err := strconv.ParseBool(ov.Value)
					if ov.Kind != yaml.ScalarNode || err != nil {
						p.errorf(ov, label, "%s.%s.ignore_case: want true or false", where, k.Value)
						bad = true
					}
					c.IgnoreCase = b
					continue
				}
				if opKey != nil {
					p.errorf(ok, label, "%s.%s: want exactly one operator (and optionally ignore_case), not %s and %s", where, k.Value, opKey.Value, ok.Value)
					bad = true
					continue
				}
				opKey, opValue = ok, ov
			}
			if opKey == nil {
				p.errorf(v, label, "%s.%s: want an operator (%s)", where, k.Value, operators)
				continue
			}
			if bad {
				continue
			}
			c.Op = Op(opKey.Value)
			c.Values = p.strings(opValue, label, where+"."+k.Value+"."+opKey.Value)
			if c.Op == OpRegex && len(c.Values) != 1 {
				p.errorf(opValue, label, "%s.%s.regex: want one pattern", where, k.Value)
				continue
			}
			if err := c.compile(); err != nil {
				p.errorf(opKey, label, "%s: %v", where, err)
				continue
			}
			conds = append(conds, c)
			continue
		default:
			p.errorf(v, label, "%s.%s: want a value, a list or an operator", where, k.Value)
			continue
		}
		if err := c.compile(); err != nil {
			p.errorf(k, label, "%s: %v", where, err)
			continue
		}
		conds = append(conds, c)
	}
	return conds
}

func (p *parser) threshold(n *yaml.Node, label string) *Threshold {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, label, "threshold: want a mapping with count and window")
		return nil
	}
	t := &Threshold{}
	var haveCount, haveWindow bool
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch k.Value {
		case "count":
			haveCount = true
			c, err := strconv.Atoi(v.Value)
			if v.Kind != yaml.ScalarNode || err != nil || c < 1 || c > 100000 {
				p.errorf(v, label, "threshold.count: want a whole number from 1 to 100000")
				continue
			}
			t.Count = c
		case "window":
			haveWindow = true
			t.Window = p.window(v, label, "threshold.window")
		case "group_by":
			t.GroupBy = p.fields(v, label, "threshold.group_by")
		case "distinct":
			if v.Kind != yaml.ScalarNode {
				p.errorf(v, label, "threshold.distinct: want a field name")
				continue
			}
			if err := checkField(v.Value); err != nil {
				p.errorf(v, label, "threshold.distinct: %v", err)
				continue
			}
			t.Distinct = v.Value
		default:
			p.errorf(k, label, "threshold: unknown key %q (count, window, group_by, distinct)", k.Value)
		}
	}
	if !haveCount {
		p.errorf(n, label, "threshold: missing count")
	}
	if !haveWindow {
		p.errorf(n, label, "threshold: missing window")
	}
	return t
}

func (p *parser) sequence(n *yaml.Node, label string) *Sequence {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, label, "sequence: want a mapping with window and steps")
		return nil
	}
	sq := &Sequence{}
	var haveWindow, haveSteps bool
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch k.Value {
		case "window":
			haveWindow = true
			sq.Window = p.window(v, label, "sequence.window")
		case "group_by":
			sq.GroupBy = p.fields(v, label, "sequence.group_by")
		case "steps":
			haveSteps = true
			if v.Kind != yaml.SequenceNode || len(v.Content) < 2 || len(v.Content) > MaxSteps {
				p.errorf(v, label, "sequence.steps: want a list of 2 to %d steps", MaxSteps)
				continue
			}
			total := 0
			for j, item := range v.Content {
				st := p.step(item, label, j+1)
				total += st.Count
				sq.Steps = append(sq.Steps, st)
			}
			if total > MaxSequenceEvents {
				p.errorf(v, label, "sequence.steps: the counts add up to %d, more than %d", total, MaxSequenceEvents)
			}
		default:
			p.errorf(k, label, "sequence: unknown key %q (window, group_by, steps)", k.Value)
		}
	}
	if !haveWindow {
		p.errorf(n, label, "sequence: missing window")
	}
	if !haveSteps {
		p.errorf(n, label, "sequence: missing steps")
	}
	return sq
}

func (p *parser) step(n *yaml.Node, label string, index int) Step {
	where := fmt.Sprintf("sequence.steps[%d]", index)
	st := Step{Count: 1}
	if n.Kind != yaml.MappingNode {
		p.errorf(n, label, "%s: want a mapping with match and optionally count and distinct", where)
		return st
	}
	haveMatch := false
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch k.Value {
		case "match":
			haveMatch = true
			st.Match = p.match(v, label, where+".match")
		case "count":
			c, err := strconv.Atoi(v.Value)
			if v.Kind != yaml.ScalarNode || err != nil || c < 1 || c > MaxSequenceEvents {
				p.errorf(v, label, "%s.count: want a whole number from 1 to %d", where, MaxSequenceEvents)
				continue
			}
			st.Count = c
		case "distinct":
			if f := p.fields(v, label, where+".distinct"); len(f) == 1 {
				st.Distinct = f[0]
			} else if len(f) > 1 {
				p.errorf(v, label, "%s.distinct: want one field", where)
			}
		default:
			p.errorf(k, label, "%s: unknown key %q (match, count, distinct)", where, k.Value)
		}
	}
	if !haveMatch {
		p.errorf(n, label, "%s: missing match", where)
	}
	return st
}

func (p *parser) newValue(n *yaml.Node, label string) *NewValue {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, label, "new_value: want a mapping with field (or fields) and history")
		return nil
	}
	nv := &NewValue{MaxValues: state.DefaultMaxValues}
	var haveHistory bool
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch k.Value {
		case "field", "fields":
			if nv.Fields != nil {
				p.errorf(k, label, "new_value: field and fields are one setting: give one of them")
				continue
			}
			nv.Fields = p.fields(v, label, "new_value."+k.Value)
			if k.Value == "field" && len(nv.Fields) > 1 {
				p.errorf(v, label, "new_value.field: want one field (fields takes a list)")
			}
		case "group_by":
			nv.GroupBy = p.fields(v, label, "new_value.group_by")
		case "history":
			haveHistory = true
			d, err := parseLongDuration(v.Value)
			if v.Kind != yaml.ScalarNode || err != nil || d < MinHistory || d > MaxHistory {
				if err == nil {
					err = fmt.Errorf("want %s to %s", MinHistory, "365d")
				}
				p.errorf(v, label, "new_value.history: %v", err)
				continue
			}
			nv.History = d
		case "learn":
			d, err := parseLongDuration(v.Value)
			if v.Kind != yaml.ScalarNode || err != nil || d > MaxHistory {
				if err == nil {
					err = fmt.Errorf("longer than %s", "365d")
				}
				p.errorf(v, label, "new_value.learn: %v", err)
				continue
			}
			nv.Learn = d
		case "max_values":
			c, err := strconv.Atoi(v.Value)
			if v.Kind != yaml.ScalarNode || err != nil || c < 1 || c > state.MaxValues {
				p.errorf(v, label, "new_value.max_values: want a whole number from 1 to %d", state.MaxValues)
				continue
			}
			nv.MaxValues = c
		default:
			p.errorf(k, label, "new_value: unknown key %q (field, fields, group_by, history, learn, max_values)", k.Value)
		}
	}
	if len(nv.Fields) == 0 {
		p.errorf(n, label, "new_value: missing field (or fields)")
	}
	if !haveHistory {
		p.errorf(n, label, "new_value: missing history (how long a value stays known, e.g. 30d)")
	}
	return nv
}

// fields reads a field name or a list of them, each checked.
func (p *parser) fields(n *yaml.Node, label, key string) []string {
	var out []string
	for _, f := range p.strings(n, label, key) {
		if err := checkField(f); err != nil {
			p.errorf(n, label, "%s: %v", key, err)
			continue
		}
		out = append(out, f)
	}
	return out
}

// window reads a positive window of at most MaxWindow.
func (p *parser) window(v *yaml.Node, label, key string) time.Duration {
	d, err := parseDuration(v.Value)
	if v.Kind != yaml.ScalarNode || err != nil || d <= 0 {
		if err == nil {
			err = errors.New("must be positive")
		}
		p.errorf(v, label, "%s: %v", key, err)
		return 0
	}
	return d
}

// parseDuration reads a duration of at most MaxWindow (see
// parseLongDuration).
func parseDuration(s string) (time.Duration, error) {
	d, err := parseLongDuration(s)
	if err != nil {
		return 0, err
	}
	if d > MaxWindow {
		return 0, fmt.Errorf("duration %q is longer than %s", strings.TrimSpace(s), "7d")
	}
	return d, nil
}

// parseLongDuration reads a Go duration ("60s", "10m", "1h30m"), whole
// seconds ("60") or days, alone or before the rest ("30d", "1d12h").
func parseLongDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	bad := fmt.Errorf("bad duration %q (want e.g. 60s, 10m, 12h, 30d)", s)
	if n, err := strconv.Atoi(s); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("bad duration %q: negative", s)
		}
		return time.Duration(n) * time.Second, nil
	}
	var d time.Duration
	if days, rest, ok := strings.Cut(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 0 || n > 100*365 || strings.HasPrefix(days, "+") {
			return 0, bad
		}
		d, s = time.Duration(n)*24*time.Hour, rest
		if s == "" {
			return d, nil
		}
	}
	rest, err := time.ParseDuration(s)
	if err != nil || strings.HasPrefix(s, "-") || strings.HasPrefix(s, "+") {
		if err == nil && strings.HasPrefix(s, "-") {
			return 0, fmt.Errorf("bad duration %q: negative", s)
		}
		return 0, bad
	}
	return d + rest, nil
}
