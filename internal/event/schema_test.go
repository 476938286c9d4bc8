package event_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/audit-platform/audit-log-analysis/internal/event"
)

// schemas/event.schema.json describes what Decode accepts: for any JSON
// body, the schema holds exactly when Decode takes it as an event.
func TestTheEventSchemaAcceptsWhatDecodeAccepts(t *testing.T) {
	t.Parallel()
	c := jsonschema.NewCompiler()
	schema, err := c.Compile("../../schemas/event.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	bodies := []string{
		`{}`,
		`{"event_id": null, "timestamp": null, "details": null}`,
		`{"timestamp": 1795900000.5}`,
		`{"timestamp": {"not": "a time"}}`,
		`{"timestamp": true}`,
		`{"user_id": 7}`,
		`{"user_id": ["bob"]}`,
		`{"event_type": {"a": 1}}`,
		`{"details": []}`,
		`{"details": "text"}`,
		`{"details": {"resource": 5}}`,
		`{"resource": "/etc/shadow", "details": {"resource": 5}}`,
		`{"resource": "", "details": {"resource": 5}}`,
		`{"resource": null, "details": {"resource": "/etc/passwd"}}`,
		`{"details": {"ip_address": ["10.0.0.1"]}}`,
		`{"client_ip": "10.0.0.1", "details": {"ip_address": false}}`,
		`{"details": {"anything": {"nested": [1, 2]}}, "extra": 1}`,
		`[1, 2]`,
		`"a string"`,
		`42`,
	}
	f, err := os.Open("../../testdata/sample-events.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		bodies = append(bodies, sc.Text())
	}
	checked := 0
	for _, body := range bodies {
		if !json.Valid([]byte(body)) {
			continue // not JSON: no schema applies
		}
		checked++
		v, err := jsonschema.UnmarshalJSON(bytes.NewReader([]byte(body)))
		if err != nil {
			t.Fatalf("%.100s: %v", body, err)
		}
		schemaErr := schema.Validate(v)
		_, decodeErr := event.Decode([]byte(body), event.MaxBodyBytes)
		if (schemaErr == nil) != (decodeErr == nil) {
			t.Errorf("%.200s: schema says %v, Decode says %v", body, schemaErr, decodeErr)
		}
	}
	if checked < 5000 {
		t.Errorf("only %d bodies checked", checked)
	}
}
