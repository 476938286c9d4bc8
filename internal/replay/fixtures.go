package replay

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/audit-platform/audit-log-analysis/internal/alert"
	"github.com/audit-platform/audit-log-analysis/internal/event"
	"github.com/audit-platform/audit-log-analysis/internal/rules"
	rulefiles "github.com/audit-platform/audit-log-analysis/rules"
)

// Fixture is one detection test case: events in, alerts expected out. It is
// a YAML file:
//
//	name: four failures within a minute alert once
//	rules: ../../default.yaml   # relative to this file; default: the built-in rules
//	events:                     # inline objects, one per event ...
//	  - {event_id: e1, timestamp: "2026-11-01T10:00:00Z", event_type: user_login, ...}
//	events_file: burst.jsonl    # ... and/or a JSON Lines file next to it
//	expect:                     # every alert, in order; [] for none
//	  - rule: ANLY-SEC-001
//	    group: {user_id: bob, server_hostname: web-01}
//	    count: 3
//	    suppressed: 0
//	    resource: /etc/shadow
//	    correlation_id: ...
//	    trigger: e3               # the event_id of the event that raised it
//	    event_ids: [e1, e2, e3]   # the alert's event_ids, as event_id values
//	    steps: [4, 1]             # a sequence's events per step
//	    new_value: {client_ip: 203.0.113.9}
//	    known_values: 3
type Fixture struct {
	Name       string           `yaml:"name"`
	Rules      string           `yaml:"rules"`
	Events     []map[string]any `yaml:"events"`
	EventsFile string           `yaml:"events_file"`
	Expect     []Expectation    `yaml:"expect"`
	// ids maps the idempotency key of each event replayed to the event_id
	// it was written with (see eventIDs).
	ids map[string]string
}

// Expectation describes one expected alert; fields left out are not checked.
type Expectation struct {
	Rule          string            `yaml:"rule"`
	Group         map[string]string `yaml:"group"`
	Count         *int              `yaml:"count"`
	Suppressed    *int              `yaml:"suppressed"`
	Resource      *string           `yaml:"resource"`
	CorrelationID *string           `yaml:"correlation_id"`
	// Trigger and EventIDs name events by their event_id.
	Trigger     *string           `yaml:"trigger"`
	EventIDs    []string          `yaml:"event_ids"`
	Steps       []int             `yaml:"steps"`
	NewValue    map[string]string `yaml:"new_value"`
	KnownValues *int              `yaml:"known_values"`
}

// RunFixtures runs every *.yaml fixture under dir and reports to w. It
// returns an error when any case fails or cannot be read.
func RunFixtures(ctx context.Context, dir string, w io.Writer) error {
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("rules test: %w", err)
	}
	if len(files) == 0 {
		return fmt.Errorf("rules test: no *.yaml fixtures under %s", dir)
	}
	failed := 0
	for _, f := range files {
		name, problems := runFixture(ctx, f)
		if len(problems) == 0 {
			fmt.Fprintf(w, "ok   %s: %s\n", f, name)
			continue
		}
		failed++
		fmt.Fprintf(w, "FAIL %s: %s\n", f, name)
		for _, p := range problems {
			fmt.Fprintf(w, "     %s\n", p)
		}
	}
	fmt.Fprintf(w, "%d passed, %d failed\n", len(files)-failed, failed)
	if failed > 0 {
		return fmt.Errorf("rules test: %d of %d fixtures failed", failed, len(files))
	}
	return nil
}

// runFixture returns the case's name and what went wrong, if anything.
func runFixture(ctx context.Context, file string) (string, []string) {
	fx, out, err := replayFixture(ctx, file)
	if err != nil {
		return fx.Name, []string{err.Error()}
	}
	var got []alert.Alert
	for _, line := range bytes.Split(bytes.TrimSpace(out), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var a alert.Alert
		if err := json.Unmarshal(line, &a); err != nil {
			return fx.Name, []string{"read alert: " + err.Error()}
		}
		got = append(got, a)
	}
	problems := compare(fx.Expect, got, fx.ids)
	if len(problems) > 0 {
		problems = append(problems, sideBySide(fx.Expect, got, fx.ids)...)
	}
	return fx.Name, problems
}

// eventIDs maps the idempotency key of every event in input to the
// event_id it was given (or "line N" when it has none), so that fixtures
// can name events as they wrote them.
func eventIDs(input []byte) map[string]string {
	ids := map[string]string{}
	for i, line := range bytes.Split(input, []byte("\n")) {
		ev, err := event.Decode(line, event.MaxBodyBytes)
		if err != nil {
			continue
		}
		if _, dup := ids[ev.Key]; dup {
			continue
		}
		if ids[ev.Key] = ev.ID; ev.ID == "" {
			ids[ev.Key] = fmt.Sprintf("line %d", i+1)
		}
	}
	return ids
}

// eventName is the name eventIDs gives the event with key k.
func eventName(ids map[string]string, k string) string {
	if id, ok := ids[k]; ok {
		return id
	}
	return k
}

// replayFixture reads a fixture and replays its events; out holds the
// alerts, one JSON line each, as the service would publish them.
func replayFixture(ctx context.Context, file string) (fx Fixture, out []byte, err error) {
	fx.Name = file
	data, err := os.ReadFile(file)
	if err != nil {
		return fx, nil, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&fx); err != nil {
		return fx, nil, fmt.Errorf("bad fixture: %w", err)
	}
	if fx.Name == "" {
		fx.Name = filepath.Base(file)
	}
	set, err := fixtureRules(file, fx.Rules)
	if err != nil {
		return fx, nil, err
	}
	var input bytes.Buffer
	for i, ev := range fx.Events {
		b, err := json.Marshal(ev)
		if err != nil {
			return fx, nil, fmt.Errorf("event %d: %w", i+1, err)
		}
		input.Write(b)
		input.WriteByte('\n')
	}
	if fx.EventsFile != "" {
		b, err := os.ReadFile(filepath.Join(filepath.Dir(file), fx.EventsFile))
		if err != nil {
			return fx, nil, err
		}
		input.Write(b)
		input.WriteByte('\n')
	}
	fx.ids = eventIDs(input.Bytes())
	var buf bytes.Buffer
	// The service's default clock skew, so fixtures see what it sees.
	opts := Options{Rules: set, Environment: "TEST", MaxClockSkew: 5 * time.Minute}
	if _, err := Run(ctx, []Input{{Name: file, Reader: &input}}, &buf, opts); err != nil {
		return fx, nil, err
	}
	return fx, buf.Bytes(), nil
}

func fixtureRules(file, rel string) (*rules.Set, error) {
	if rel == "" {
		return rules.Parse(rulefiles.DefaultName, rulefiles.Default)
	}
	return rules.LoadFile(filepath.Join(filepath.Dir(file), rel))
}

func compare(want []Expectation, got []alert.Alert, ids map[string]string) []string {
	var problems []string
	for i := 0; i < max(len(want), len(got)); i++ {
		switch {
		case i >= len(got):
			problems = append(problems, fmt.Sprintf("alert %d: want %s, got no alert", i+1, describe(want[i])))
			continue
		case i >= len(want):
			problems = append(problems, fmt.Sprintf("alert %d: unexpected %s alert", i+1, got[i].AnalysisRule.RuleID))
			continue
		}
		w, g := want[i], got[i]
		var diffs []string
		if w.Rule != g.AnalysisRule.RuleID {
			diffs = append(diffs, fmt.Sprintf("rule %s, want %s", g.AnalysisRule.RuleID, w.Rule))
		}
		if w.Group != nil && !maps.Equal(w.Group, g.Group) {
			diffs = append(diffs, fmt.Sprintf("group %s, want %s", formatGroup(g.Group), formatGroup(w.Group)))
		}
		if w.Count != nil && (g.Window == nil || g.Window.Count != *w.Count) {
			diffs = append(diffs, fmt.Sprintf("count %s, want %d", windowCount(g), *w.Count))
		}
		if w.Suppressed != nil && (g.SuppressedSince == nil || *g.SuppressedSince != *w.Suppressed) {
			got := "none"
			if g.SuppressedSince != nil {
				got = fmt.Sprint(*g.SuppressedSince)
			}
			diffs = append(diffs, fmt.Sprintf("suppressed %s, want %d", got, *w.Suppressed))
		}
		if w.Resource != nil && g.ImpactedResource.ResourceID != *w.Resource {
			diffs = append(diffs, fmt.Sprintf("resource %q, want %q", g.ImpactedResource.ResourceID, *w.Resource))
		}
		if w.CorrelationID != nil && g.CorrelationID != *w.CorrelationID {
			diffs = append(diffs, fmt.Sprintf("correlation_id %s, want %s", g.CorrelationID, *w.CorrelationID))
		}
		if trigger := eventName(ids, g.CorrelationID); w.Trigger != nil && trigger != *w.Trigger {
			diffs = append(diffs, fmt.Sprintf("trigger %s, want %s", trigger, *w.Trigger))
		}
		if gotIDs := eventNames(ids, g.EventIDs); w.EventIDs != nil && !slices.Equal(gotIDs, w.EventIDs) {
			diffs = append(diffs, fmt.Sprintf("event_ids %v, want %v", gotIDs, w.EventIDs))
		}
		if counts := stepCounts(g); w.Steps != nil && !slices.Equal(counts, w.Steps) {
			diffs = append(diffs, fmt.Sprintf("steps %v, want %v", counts, w.Steps))
		}
		if w.NewValue != nil && (g.NewValue == nil || !maps.Equal(g.NewValue.Values, w.NewValue)) {
			got := "none"
			if g.NewValue != nil {
				got = formatGroup(g.NewValue.Values)
			}
			diffs = append(diffs, fmt.Sprintf("new_value %s, want %s", got, formatGroup(w.NewValue)))
		}
		if w.KnownValues != nil && (g.NewValue == nil || g.NewValue.Known != *w.KnownValues) {
			known := "none"
			if g.NewValue != nil {
				known = fmt.Sprint(g.NewValue.Known)
			}
			diffs = append(diffs, fmt.Sprintf("known_values %s, want %d", known, *w.KnownValues))
		}
		if len(diffs) > 0 {
			problems = append(problems, fmt.Sprintf("alert %d: %s", i+1, strings.Join(diffs, "; ")))
		}
	}
	return problems
}

func describe(e Expectation) string {
	s := e.Rule
	if e.Group != nil {
		keys := slices.Sorted(maps.Keys(e.Group))
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = k + "=" + e.Group[k]
		}
		s += " {" + strings.Join(parts, ", ") + "}"
	}
	return s
}

func eventNames(ids map[string]string, keys []string) []string {
	var out []string
	for _, k := range keys {
		out = append(out, eventName(ids, k))
	}
	return out
}

func stepCounts(a alert.Alert) []int {
	var counts []int
	for _, st := range a.Steps {
		counts = append(counts, st.Count)
	}
	return counts
}

func windowCount(a alert.Alert) string {
	if a.Window == nil {
		return "none"
	}
	return fmt.Sprint(a.Window.Count)
}
