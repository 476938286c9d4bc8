package rules

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/event"
)

// template is a text with {{name}} placeholders, parsed once when a rule
// loads. Names are event fields (user_id, details.protocol) or the rule's
// own figures: threshold, window_seconds, count, rule_id, and for
// new-value rules new_value and known_values.
type template struct {
	parts []templatePart
}

type templatePart struct {
	text  string
	field string // set for a placeholder
}

var templateFigures = []string{"threshold", "window_seconds", "count", "rule_id", "new_value", "known_values"}

func parseTemplate(s string) (template, error) {
	var t template
	for s != "" {
		i := strings.Index(s, "{{")
		if i < 0 {
			t.parts = append(t.parts, templatePart{text: s})
			break
		}
		if i > 0 {
			t.parts = append(t.parts, templatePart{text: s[:i]})
		}
		j := strings.Index(s[i:], "}}")
		if j < 0 {
			return template{}, fmt.Errorf("unclosed {{ in %q", s)
		}
		name := strings.TrimSpace(s[i+2 : i+j])
		isFigure := false
		for _, f := range templateFigures {
			isFigure = isFigure || f == name
		}
		if !isFigure {
			if err := checkField(name); err != nil {
				return template{}, fmt.Errorf("placeholder {{%s}}: %v", name, err)
			}
		}
		t.parts = append(t.parts, templatePart{field: name})
		s = s[i+j+2:]
	}
	return t, nil
}

// templateValues are the figures a template can use besides event fields.
type templateValues struct {
	ruleID    string
	threshold int
	window    time.Duration
	count     int
	newValue  string
	known     int
}

func (t template) render(ev *event.Event, v templateValues) string {
	if len(t.parts) == 1 && t.parts[0].field == "" {
		return t.parts[0].text
	}
	var b strings.Builder
	for _, p := range t.parts {
		if p.field == "" {
			b.WriteString(p.text)
			continue
		}
		switch p.field {
		case "threshold":
			b.WriteString(strconv.Itoa(v.threshold))
		case "window_seconds":
			b.WriteString(formatSeconds(v.window))
		case "count":
			b.WriteString(strconv.Itoa(v.count))
		case "rule_id":
			b.WriteString(v.ruleID)
		case "new_value":
			b.WriteString(v.newValue)
		case "known_values":
			b.WriteString(strconv.Itoa(v.known))
		default:
			s, ok := "", false
			if ev != nil {
				s, ok = ev.Field(p.field)
			}
			if !ok || s == "" {
				s = "unknown"
			}
			b.WriteString(s)
		}
	}
	return b.String()
}

func formatSeconds(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64)
}
