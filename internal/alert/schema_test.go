package alert_test

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/audit-platform/audit-log-analysis/internal/alert"
	"github.com/audit-platform/audit-log-analysis/internal/rules"
	rulefiles "github.com/audit-platform/audit-log-analysis/rules"
)

// alertSchema compiles schemas/alert.schema.json, asserting formats (uuid,
// date-time, ipv4, ipv6) rather than only noting them.
func alertSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	s, err := c.Compile("../../schemas/alert.schema.json")
	if err != nil {
		t.Fatalf("compile the alert schema: %v", err)
	}
	return s
}

func validate(s *jsonschema.Schema, body []byte) error {
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return err
	}
	return s.Validate(v)
}

// Every alert of the contract test, built from hostile events or replayed
// by the engine, is valid against the published schema.
func TestContractAlertsMatchTheAlertSchema(t *testing.T) {
	t.Parallel()
	schema := alertSchema(t)
	set, err := rules.Parse(rulefiles.DefaultName, rulefiles.Default)
	if err != nil {
		t.Fatal(err)
	}
	examplesSrc, err := os.ReadFile("../../rules/examples.yaml")
	if err != nil {
		t.Fatal(err)
	}
	examples, err := rules.Parse("examples.yaml", examplesSrc)
	if err != nil {
		t.Fatal(err)
	}
	cases := builtFromHostileEvents(t, set)
	cases = append(cases, replayed(t, "hostile events", set, hostileReplayLines())...)
	if lines := sampleFileLines(t); lines != nil {
		cases = append(cases, replayed(t, "sample events", set, lines)...)
		cases = append(cases, replayed(t, "sample events, example rules", examples, lines)...)
	}
	cases = append(cases, replayed(t, "generated events", set, generatedEventLines(t))...)
	for _, tc := range cases {
		body, err := alert.Marshal(tc.alert)
		if err != nil {
			t.Fatal(err)
		}
		if err := validate(schema, body); err != nil {
			t.Errorf("%s: the alert does not match the schema: %v\nalert: %.600s", tc.name, err, body)
		}
	}
	t.Logf("%d alerts validated", len(cases))
}

// The schema refuses what the notification service cannot store.
func TestTheAlertSchemaRefusesWhatCannotBeStored(t *testing.T) {
	t.Parallel()
	schema := alertSchema(t)
	set, err := rules.Parse(rulefiles.DefaultName, rulefiles.Default)
	if err != nil {
		t.Fatal(err)
	}
	good := replayed(t, "one burst", set, hostileReplayLines())[0].alert
	body, err := alert.Marshal(good)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate(schema, body); err != nil {
		t.Fatalf("the starting alert is invalid: %v", err)
	}
	for name, edit := range map[string]func(m map[string]any){
		"no alert_id":                 func(m map[string]any) { delete(m, "alert_id") },
		"an alert_id that is no UUID": func(m map[string]any) { m["alert_id"] = "alert-1" },
		"a 256-character alert_name":  func(m map[string]any) { m["alert_name"] = strings.Repeat("a", 256) },
		"a 51-character severity":     func(m map[string]any) { m["severity"] = strings.Repeat("é", 51) },
		"NUL in a description":        func(m map[string]any) { m["description"] = "a\x00b" },
		"a client_ip that is no address": func(m map[string]any) {
			m["triggered_by"].(map[string]any)["client_ip"] = "N/A"
		},
		"raw_event_data that is no object":   func(m map[string]any) { m["raw_event_data"] = "[]" },
		"a field the contract does not know": func(m map[string]any) { m["extra"] = 1 },
		"a timestamp with an offset":         func(m map[string]any) { m["timestamp"] = "2026-11-01T10:00:00+00:00Z" },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var m map[string]any
			if err := json.Unmarshal(body, &m); err != nil {
				t.Fatal(err)
			}
			edit(m)
			bad, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			if err := validate(schema, bad); err == nil {
				t.Errorf("the schema accepts an alert with %s", name)
			}
		})
	}
}
