package replay

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"github.com/audit-platform/audit-log-analysis/internal/alert"
)

// expectationKeys are the keys of an expected alert, in the order a
// fixture writes them.
var expectationKeys = []string{"rule", "group", "count", "suppressed", "resource", "correlation_id",
	"trigger", "event_ids", "steps", "new_value", "known_values"}

// sideBySide renders the expected and the received alerts of a failed
// fixture as YAML in two columns, key by key, marking with "≠" the rows
// that differ. A received alert shows the keys its expectation checks (all
// of them when nothing was expected at its place).
func sideBySide(want []Expectation, got []alert.Alert, ids map[string]string) []string {
	const gap = 2
	type row struct {
		left, right []string
		differ      bool
	}
	var rows []row
	for i := range max(len(want), len(got)) {
		var w, g map[string]any
		if i < len(want) {
			w = expectationFields(want[i])
		}
		if i < len(got) {
			g = alertFields(got[i], ids)
		}
		first := true
		for _, key := range expectationKeys {
			wv, inW := w[key]
			gv, inG := g[key]
			if w != nil && !inW {
				if key != "rule" {
					continue
				}
			}
			if !inW && !inG {
				continue
			}
			r := row{differ: !inW || !inG || fmt.Sprint(wv) != fmt.Sprint(gv)}
			if inW {
				r.left = yamlLines(key, wv, first)
			}
			if inG {
				r.right = yamlLines(key, gv, first)
			}
			first = false
			rows = append(rows, r)
		}
	}
	width := utf8.RuneCountInString("expected")
	for _, r := range rows {
		for _, l := range r.left {
			width = max(width, utf8.RuneCountInString(l))
		}
	}
	pad := func(s string) string { return s + strings.Repeat(" ", width+gap-utf8.RuneCountInString(s)) }
	out := []string{pad("expected") + "  received"}
	if len(want) == 0 {
		out = append(out, "[]")
	}
	for _, r := range rows {
		for j := range max(len(r.left), len(r.right)) {
			var l, rt string
			if j < len(r.left) {
				l = r.left[j]
			}
			if j < len(r.right) {
				rt = r.right[j]
			}
			// A line differs when its two sides do, or the key as a
			// whole does and the line is one side's alone.
			mark := "| "
			if l != rt && (r.differ || l == "" || rt == "") {
				mark = "≠ "
			}
			out = append(out, strings.TrimRight(pad(l)+mark+rt, " "))
		}
	}
	if len(got) == 0 {
		out = append(out, pad("")+"| []")
	}
	return out
}

// yamlLines renders key: value as YAML lines of a list item; first starts
// the item with "- ".
func yamlLines(key string, v any, first bool) []string {
	var b strings.Builder
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(map[string]any{key: v}); err != nil {
		b.Reset()
		b.WriteString(key + ": " + fmt.Sprint(v))
	}
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	for i := range lines {
		prefix := "  "
		if i == 0 && first {
			prefix = "- "
		}
		lines[i] = prefix + lines[i]
	}
	return lines
}

func expectationFields(e Expectation) map[string]any {
	m := map[string]any{"rule": e.Rule}
	if e.Group != nil {
		m["group"] = e.Group
	}
	if e.Count != nil {
		m["count"] = *e.Count
	}
	if e.Suppressed != nil {
		m["suppressed"] = *e.Suppressed
	}
	if e.Resource != nil {
		m["resource"] = *e.Resource
	}
	if e.CorrelationID != nil {
		m["correlation_id"] = *e.CorrelationID
	}
	if e.Trigger != nil {
		m["trigger"] = *e.Trigger
	}
	if e.EventIDs != nil {
		m["event_ids"] = e.EventIDs
	}
	if e.Steps != nil {
		m["steps"] = e.Steps
	}
	if e.NewValue != nil {
		m["new_value"] = e.NewValue
	}
	if e.KnownValues != nil {
		m["known_values"] = *e.KnownValues
	}
	return m
}

func alertFields(a alert.Alert, ids map[string]string) map[string]any {
	m := map[string]any{"rule": a.AnalysisRule.RuleID, "resource": a.ImpactedResource.ResourceID, "correlation_id": a.CorrelationID}
	if ids != nil {
		// Events named as the fixture wrote them.
		m["trigger"] = eventName(ids, a.CorrelationID)
		m["event_ids"] = eventNames(ids, a.EventIDs)
	}
	if a.Steps != nil {
		m["steps"] = stepCounts(a)
	}
	if a.NewValue != nil {
		m["new_value"] = a.NewValue.Values
		m["known_values"] = a.NewValue.Known
	}
	if a.Group != nil {
		m["group"] = a.Group
	}
	if a.Window != nil {
		m["count"] = a.Window.Count
	}
	if a.SuppressedSince != nil {
		m["suppressed"] = *a.SuppressedSince
	}
	return m
}

// formatGroup writes a group as YAML flow: {server_hostname: web-01, user_id: bob}.
func formatGroup(g map[string]string) string {
	if g == nil {
		return "none"
	}
	parts := make([]string, 0, len(g))
	for _, k := range slices.Sorted(maps.Keys(g)) {
		parts = append(parts, k+": "+strconv.Quote(g[k]))
	}
	return "{" + strings.Join(parts, ", ") + "}"
}
