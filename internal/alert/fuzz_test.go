package alert

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/audit-platform/audit-log-analysis/internal/event"
)

// FuzzBuildFitsTheTable builds alerts from arbitrary events and checks what
// the notification service's table needs, whatever the event holds.
func FuzzBuildFitsTheTable(f *testing.F) {
	f.Add([]byte(`{"event_id":"x","user_id":"\u0000bob","client_ip":"fe80::1%eth0","details":{"resource":"/etc/shadow","n":1e400}}`))
	f.Add([]byte(`{"server_hostname":"` + string(bytes.Repeat([]byte("é"), 300)) + `","details":{"a":[[[[[[1]]]]]]}}`))
	f.Add([]byte(`{"user_id":"\ud800","event_id":"5F0C9F5E-1B2A-4C3D-8E9F-0A1B2C3D4E5F"}`))
	rule := Rule{ID: "R", Name: "n", AlertName: "a", AlertType: "SECURITY", Severity: "CRITICAL", ResourceType: "FILE"}
	f.Fuzz(func(t *testing.T, body []byte) {
		ev, err := event.Decode(body, event.MaxBodyBytes)
		if err != nil {
			return
		}
		for _, burst := range []*Burst{nil, {GroupKey: "k", Group: map[string]string{"user_id": ev.UserID}, FirstEventID: ev.Key, EventIDs: []string{ev.Key}}} {
			a := Build(Input{Rule: rule, Description: ev.UserID, Event: ev, Burst: burst, Now: time.Unix(0, 0)})
			for _, id := range []string{a.AlertID, a.CorrelationID} {
				if _, err := uuid.Parse(id); err != nil {
					t.Fatalf("%q is not a UUID", id)
				}
			}
			for _, c := range []struct {
				v     string
				limit int
			}{
				{a.TriggeredBy.ActorID, LimitText}, {a.ImpactedResource.ResourceID, LimitText},
				{a.ImpactedResource.ServerHostname, LimitText}, {a.SourceServiceName, LimitText},
				{a.TriggeredBy.ActorType, LimitShort}, {a.ImpactedResource.ResourceType, LimitShort},
			} {
				if n := utf8.RuneCountInString(c.v); n > c.limit {
					t.Fatalf("%d characters in a column of %d", n, c.limit)
				}
			}
			if ip := a.TriggeredBy.ClientIP; ip != nil && ClientIP(*ip) == nil {
				t.Fatalf("client_ip %q is not an address", *ip)
			}
			out, err := Marshal(a)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(out, []byte(`\u0000`)) {
				t.Fatalf("NUL in the alert: %s", out)
			}
			var back map[string]any
			if err := json.Unmarshal(out, &back); err != nil {
				t.Fatal(err)
			}
			if _, ok := back["raw_event_data"].(map[string]any); !ok {
				t.Fatalf("raw_event_data is not an object: %s", a.RawEventData)
			}
		}
	})
}
