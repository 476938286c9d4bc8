package sample_test

import (
	"bytes"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/audit-platform/audit-log-analysis/internal/event"
	"github.com/audit-platform/audit-log-analysis/internal/sample"
)

// The documented event vocabulary is what the generator sends: every event
// type, severity, result and details key it writes is in event.Vocabulary,
// and everything in event.Vocabulary is written.
func TestTheVocabularyIsWhatTheGeneratorSends(t *testing.T) {
	t.Parallel()
	data, _ := generate(t, sample.Options{Seed: 7, Events: 2 * sample.DefaultEvents})
	seen := map[string]map[string]bool{}
	mark := func(typ, what string) {
		if seen[typ] == nil {
			seen[typ] = map[string]bool{}
		}
		seen[typ][what] = true
	}
	for _, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		var ev struct {
			EventType    string         `json:"event_type"`
			Severity     string         `json:"severity"`
			ActionResult string         `json:"action_result"`
			Details      map[string]any `json:"details"`
		}
		if json.Unmarshal(line, &ev) != nil || ev.EventType == "" {
			continue // the planted malformed lines
		}
		i := slices.IndexFunc(event.Vocabulary, func(v event.EventType) bool { return v.Name == ev.EventType })
		if i < 0 {
			t.Fatalf("event type %q is not in event.Vocabulary", ev.EventType)
		}
		v := event.Vocabulary[i]
		if !slices.Contains(v.Severity, ev.Severity) || !slices.Contains(v.Results, ev.ActionResult) {
			t.Errorf("%s: severity %q or action_result %q is not in event.Vocabulary", ev.EventType, ev.Severity, ev.ActionResult)
		}
		mark(ev.EventType, "severity "+ev.Severity)
		mark(ev.EventType, "result "+ev.ActionResult)
		for k := range ev.Details {
			if !slices.Contains(v.Details, k) {
				t.Errorf("%s: details key %q is not in event.Vocabulary", ev.EventType, k)
			}
			mark(ev.EventType, "details "+k)
		}
	}
	for _, v := range event.Vocabulary {
		var documented []string
		for _, s := range v.Severity {
			documented = append(documented, "severity "+s)
		}
		for _, r := range v.Results {
			documented = append(documented, "result "+r)
		}
		for _, k := range v.Details {
			documented = append(documented, "details "+k)
		}
		for _, what := range documented {
			if !seen[v.Name][what] {
				t.Errorf("%s: %s is in event.Vocabulary but the generator never sends it", v.Name, what)
			}
		}
	}
}

// docs/rules.md documents every event type and details key of the
// vocabulary.
func TestTheRulesGuideDocumentsTheVocabulary(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../../docs/rules.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range event.Vocabulary {
		if !strings.Contains(string(doc), "`"+v.Name+"`") {
			t.Errorf("docs/rules.md does not mention event type `%s`", v.Name)
		}
	}
	for _, p := range event.KnownPaths() {
		if !strings.Contains(string(doc), "`"+p+"`") {
			t.Errorf("docs/rules.md does not mention field `%s`", p)
		}
	}
}
