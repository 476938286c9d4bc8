package alert_test

import (
	"bytes"
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/audit-platform/audit-log-analysis/internal/alert"
	"github.com/audit-platform/audit-log-analysis/internal/event"
	"github.com/audit-platform/audit-log-analysis/internal/replay"
	"github.com/audit-platform/audit-log-analysis/internal/rules"
	rulefiles "github.com/audit-platform/audit-log-analysis/rules"
)

func decode(t testing.TB, body string) *event.Event {
	t.Helper()
	ev, err := event.Decode([]byte(body), event.MaxBodyBytes)
	if err != nil {
		t.Fatalf("decode %.200s: %v", body, err)
	}
	return ev
}

func TestShortenCutsToTheLimitInCharactersWithAVisibleMarker(t *testing.T) {
	t.Parallel()
	marker := utf8.RuneCountInString(alert.TruncationMarker)
	tests := []struct {
		name  string
		in    string
		limit int
		want  string
	}{
		{"a short value is kept", "web-01", 255, "web-01"},
		{"a value of exactly the limit is kept", strings.Repeat("a", 255), 255, strings.Repeat("a", 255)},
		{"multi-byte characters count as one each", strings.Repeat("ü", 255), 255, strings.Repeat("ü", 255)},
		{"one character over is cut", strings.Repeat("a", 256), 255, strings.Repeat("a", 255-marker) + alert.TruncationMarker},
		{"four-byte characters are cut whole", strings.Repeat("😀", 300), 50, strings.Repeat("😀", 50-marker) + alert.TruncationMarker},
		{"NUL becomes U+FFFD", "bob\x00root", 255, "bob\uFFFDroot"},
		{"NUL is replaced before counting", strings.Repeat("\x00", 51), 50, strings.Repeat("\uFFFD", 50-marker) + alert.TruncationMarker},
		{"an empty value stays empty", "", 50, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := alert.Shorten(tt.in, tt.limit)
			if got != tt.want {
				t.Errorf("Shorten(%.40q, %d) = %.80q, want %.80q", tt.in, tt.limit, got, tt.want)
			}
			if n := utf8.RuneCountInString(got); n > tt.limit {
				t.Errorf("result has %d characters, limit %d", n, tt.limit)
			}
			if !utf8.ValidString(got) {
				t.Error("result is not valid UTF-8")
			}
		})
	}
}

func TestClientIPIsAnAddressOrNil(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want string // "" for nil
	}{
		{"10.0.0.1", "10.0.0.1"},
		{" 10.0.0.1 ", "10.0.0.1"},
		{"2001:DB8::1", "2001:db8::1"},
		{"2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"},
		{"fe80::1%eth0", "fe80::1"},
		{"::ffff:10.0.0.1", "::ffff:10.0.0.1"},
		{"N/A", ""},
		{"", ""},
		{"not-an-ip", ""},
		{"10.0.0.1/24", ""},
		{"10.0.0.1:22", ""},
		{"010.000.000.001", ""},
		{"10.0.0.1\x00", ""},
		{"256.0.0.1", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			got := alert.ClientIP(tt.in)
			switch {
			case tt.want == "" && got != nil:
				t.Errorf("ClientIP(%q) = %q, want nil", tt.in, *got)
			case tt.want != "" && (got == nil || *got != tt.want):
				t.Errorf("ClientIP(%q) = %v, want %q", tt.in, deref(got), tt.want)
			}
		})
	}
}

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}

func TestRawEventDataIsAJSONObjectJSONBAccepts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		want string // compared as JSON values
		same bool   // the bytes must come back unchanged
	}{
		{"a body without escapes is kept byte for byte", ` {"user_id": "bob", "n": 1.50} `, `{"user_id": "bob", "n": 1.50}`, true},
		{"raw multi-byte text is kept", `{"u": "用户ü😀"}`, `{"u": "用户ü😀"}`, true},
		{"NUL in a value becomes U+FFFD", `{"u": "a\u0000b"}`, `{"u": "a\ufffdb"}`, false},
		{"NUL in a key becomes U+FFFD", `{"k\u0000": "v", "d": {"\u0000": ["\u0000"]}}`, `{"k\ufffd": "v", "d": {"\ufffd": ["\ufffd"]}}`, false},
		{"a lone high surrogate becomes U+FFFD", `{"u": "\ud800bob"}`, `{"u": "\ufffdbob"}`, false},
		{"a lone low surrogate becomes U+FFFD", `{"\udc00": "x"}`, `{"\ufffd": "x"}`, false},
		{"a surrogate pair stays the character", `{"u": "\ud83d\ude00"}`, `{"u": "😀"}`, false},
		{"numbers keep their digits when re-encoded", `{"u": "\u0041", "n": 12345678901234567890123, "f": 0.1}`, `{"u": "A", "n": 12345678901234567890123, "f": 0.1}`, false},
		{"an escaped backslash before u is not an escape", `{"p": "C:\\users\\u0000"}`, `{"p": "C:\\users\\u0000"}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := alert.RawEventData([]byte(tt.in))
			if tt.same && string(got) != strings.TrimSpace(tt.in) {
				t.Errorf("RawEventData changed the body: %s", got)
			}
			if problem := refusedEscape(got); problem != "" {
				t.Errorf("RawEventData kept %s: %s", problem, got)
			}
			if !jsonEqual(t, got, []byte(tt.want)) {
				t.Errorf("RawEventData = %s, want %s", got, tt.want)
			}
		})
	}
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var va, vb any
	for _, x := range []struct {
		src []byte
		dst *any
	}{{a, &va}, {b, &vb}} {
		dec := json.NewDecoder(bytes.NewReader(x.src))
		dec.UseNumber()
		if err := dec.Decode(x.dst); err != nil {
			t.Fatalf("not JSON: %s: %v", x.src, err)
		}
	}
	return reflect.DeepEqual(va, vb)
}

func TestIDsAreDeterministicVersion5UUIDs(t *testing.T) {
	t.Parallel()
	ev1 := decode(t, `{"event_id": "e1", "user_id": "bob"}`)
	ev2 := decode(t, `{"event_id": "e2", "user_id": "bob"}`)
	burst := func(groupKey, first string) *alert.Burst {
		return &alert.Burst{GroupKey: groupKey, FirstEventID: first}
	}
	id := alert.ID("ANLY-SEC-002", nil, ev1)
	if u, err := uuid.Parse(id); err != nil || u.Version() != 5 || u.String() != id {
		t.Fatalf("ID = %q, want a canonical version 5 UUID", id)
	}
	tests := []struct {
		name string
		a, b string
		same bool
	}{
		{"the same rule and event give the same id",
			alert.ID("ANLY-SEC-002", nil, ev1), alert.ID("ANLY-SEC-002", nil, decode(t, `{"event_id": "e1", "user_id": "bob"}`)), true},
		{"another event gives another id",
			alert.ID("ANLY-SEC-002", nil, ev1), alert.ID("ANLY-SEC-002", nil, ev2), false},
		{"another rule gives another id",
			alert.ID("ANLY-SEC-002", nil, ev1), alert.ID("EX-FILE-002", nil, ev1), false},
		{"a burst's id does not depend on the event that completed it",
			alert.ID("ANLY-SEC-001", burst("k1", "f1"), ev1), alert.ID("ANLY-SEC-001", burst("k1", "f1"), ev2), true},
		{"another group gives another id",
			alert.ID("ANLY-SEC-001", burst("k1", "f1"), ev1), alert.ID("ANLY-SEC-001", burst("k2", "f1"), ev1), false},
		{"another first event gives another id",
			alert.ID("ANLY-SEC-001", burst("k1", "f1"), ev1), alert.ID("ANLY-SEC-001", burst("k1", "f2"), ev1), false},
		{"fields are separated: rule a with key bc differs from rule ab with key c",
			alert.ID("a", burst("bc", "f"), ev1), alert.ID("ab", burst("c", "f"), ev1), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if (tt.a == tt.b) != tt.same {
				t.Errorf("ids %s and %s: same = %v, want %v", tt.a, tt.b, tt.a == tt.b, tt.same)
			}
		})
	}
}

func TestCorrelationIDIsTheTriggeringEventsUUID(t *testing.T) {
	t.Parallel()
	const id = "5f0c9f5e-1b2a-4c3d-8e9f-0a1b2c3d4e5f"
	build := func(body string) string {
		return alert.Build(alert.Input{Rule: alert.Rule{ID: "R", ResourceType: "SERVER"}, Event: decode(t, body), Now: time.Unix(0, 0)}).CorrelationID
	}
	derived := func(body string) func(t *testing.T, got string) {
		return func(t *testing.T, got string) {
			if u, err := uuid.Parse(got); err != nil || u.Version() != 5 || u.String() != got {
				t.Errorf("correlation_id %q is not a canonical version 5 UUID", got)
			}
			if again := build(body); again != got {
				t.Errorf("the same event gave %s, then %s", got, again)
			}
		}
	}
	tests := []struct {
		name  string
		body  string
		check func(t *testing.T, got string)
	}{
		{"a UUID event_id is used as it is", `{"event_id": "` + id + `"}`, equals(id)},
		{"an uppercase UUID is written in lowercase", `{"event_id": "` + strings.ToUpper(id) + `"}`, equals(id)},
		{"a UUID in braces is not taken as it is", `{"event_id": "{` + id + `}"}`, derived(`{"event_id": "{` + id + `}"}`)},
		{"a URN is not taken as it is", `{"event_id": "urn:uuid:` + id + `"}`, derived(`{"event_id": "urn:uuid:` + id + `"}`)},
		{"a non-UUID event_id gives a derived UUID", `{"event_id": "evt-1"}`, derived(`{"event_id": "evt-1"}`)},
		{"an event without event_id gives a UUID of its body", `{"user_id": "bob"}`, derived(`{"user_id": "bob"}`)},
		{"an event_id with NUL gives a derived UUID", `{"event_id": "e\u0000"}`, derived(`{"event_id": "e\u0000"}`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.check(t, build(tt.body))
		})
	}
	if build(`{"event_id": "evt-1"}`) == build(`{"event_id": "evt-2"}`) {
		t.Error("two event ids gave one correlation_id")
	}
	if build(`{"user_id": "bob"}`) == build(`{"user_id": "alice"}`) {
		t.Error("two bodies without event_id gave one correlation_id")
	}
}

func equals(want string) func(t *testing.T, got string) {
	return func(t *testing.T, got string) {
		if got != want {
			t.Errorf("correlation_id = %q, want %q", got, want)
		}
	}
}

func TestTimestampIsRFC3339InUTCEndingInZ(t *testing.T) {
	t.Parallel()
	ev := decode(t, `{"event_id": "e1"}`)
	tests := []struct {
		name string
		now  time.Time
		want string
	}{
		{"UTC", time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC), "2026-11-01T10:00:00Z"},
		{"another zone is converted", time.Date(2026, 11, 1, 11, 0, 0, 0, time.FixedZone("CET", 3600)), "2026-11-01T10:00:00Z"},
		{"fractions are dropped", time.Date(2026, 11, 1, 10, 0, 0, 999_999_999, time.UTC), "2026-11-01T10:00:00Z"},
		{"a local time is converted", time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC).Local(), "2026-11-01T10:00:00Z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := alert.Build(alert.Input{Rule: alert.Rule{ID: "R"}, Event: ev, Now: tt.now}).Timestamp
			if got != tt.want {
				t.Errorf("Timestamp = %q, want %q", got, tt.want)
			}
			if _, err := time.Parse(time.RFC3339, got); err != nil || !strings.HasSuffix(got, "Z") || strings.HasSuffix(got, "+00:00Z") {
				t.Errorf("Timestamp %q is not RFC 3339 ending in a plain Z", got)
			}
		})
	}
}

// replayBuiltIn runs the built-in rules over JSON Lines, as the replay
// command does, and returns each alert decoded generically, the way the
// notification service reads it.
func replayBuiltIn(t *testing.T, lines ...string) []map[string]any {
	t.Helper()
	set, err := rules.Parse(rulefiles.DefaultName, rulefiles.Default)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	in := strings.NewReader(strings.Join(lines, "\n"))
	if _, err := replay.Run(context.Background(), []replay.Input{{Name: "test", Reader: in}}, &out, replay.Options{Rules: set, Environment: "PRODUCTION"}); err != nil {
		t.Fatal(err)
	}
	var alerts []map[string]any
	dec := json.NewDecoder(&out)
	for dec.More() {
		var a map[string]any
		if err := dec.Decode(&a); err != nil {
			t.Fatal(err)
		}
		alerts = append(alerts, a)
	}
	return alerts
}

// TestBuiltInRulesAlertLikeThePythonService compares the alerts of the two
// built-in rules with the payloads of the Python service (its
// _analyze_failed_login_attempts and _analyze_critical_file_modifications),
// field by field.
func TestBuiltInRulesAlertLikeThePythonService(t *testing.T) {
	t.Parallel()
	const (
		f1 = "0b9c6d4e-5f60-4a1b-8c2d-3e4f5a6b7c01"
		f2 = "0b9c6d4e-5f60-4a1b-8c2d-3e4f5a6b7c02"
		f3 = "0b9c6d4e-5f60-4a1b-8c2d-3e4f5a6b7c03"
		m1 = "0b9c6d4e-5f60-4a1b-8c2d-3e4f5a6b7c04"
	)
	failure := func(id, ts string) string {
		return `{"event_id": "` + id + `", "timestamp": "` + ts + `", "source_service": "auth-service", "server_hostname": "web-01",` +
			` "event_type": "user_login", "severity": "WARNING", "user_id": "bob", "action_result": "FAILURE",` +
			` "client_ip": "203.0.113.7", "details": {"reason": "Incorrect password", "protocol": "ssh", "port": 22}}`
	}
	modified := `{"event_id": "` + m1 + `", "timestamp": "2026-11-01T10:05:00Z", "source_service": "fim", "server_hostname": "db-01",` +
		` "event_type": "file_modified", "user_id": "alice", "action_result": "MODIFIED", "resource": "/etc/shadow",` +
		` "details": {"ip_address": "10.0.0.9"}}`
	anonymous := `{"event_id": "m2", "timestamp": "2026-11-01T10:06:00Z", "event_type": "file_modified", "action_result": "MODIFIED", "resource": "/etc/passwd"}`

	alerts := replayBuiltIn(t, failure(f1, "2026-11-01T10:00:00Z"), failure(f2, "2026-11-01T10:00:20Z"), failure(f3, "2026-11-01T10:00:40Z"), modified, anonymous)
	if len(alerts) != 3 {
		t.Fatalf("got %d alerts, want 3: %v", len(alerts), alerts)
	}
	tests := []struct {
		name  string
		got   map[string]any
		want  map[string]any
		event string
	}{
		{"failed login burst", alerts[0], map[string]any{
			"timestamp":           "2026-11-01T10:00:40Z",
			"alert_name":          "Multiple Failed Login Attempts",
			"alert_type":          "SECURITY",
			"severity":            "CRITICAL",
			"description":         "3 or more failed login attempts for user 'bob' on 'web-01' within 60 seconds.",
			"source_service_name": "auth-service",
			"analysis_rule": map[string]any{
				"rule_id":          "ANLY-SEC-001",
				"rule_name":        "Failed Login Burst Detection",
				"rule_description": "Detects 3 failed logins within 60 seconds.",
			},
			"triggered_by":      map[string]any{"actor_type": "USER", "actor_id": "bob", "client_ip": "203.0.113.7"},
			"impacted_resource": map[string]any{"resource_type": "SERVER", "resource_id": "web-01", "server_hostname": "web-01"},
			"action_observed":   "LOGIN_FAILURE",
			"correlation_id":    f3,
			"metadata": map[string]any{
				"tags":                 []any{"brute-force", "authentication", "critical"},
				"environment":          "PRODUCTION",
				"remediation_guidance": "Investigate user account activity, check for suspicious IP origins, consider temporary lockout.",
				"playbook_url":         "https://example.com/playbooks/failed_login_burst",
			},
		}, failure(f3, "2026-11-01T10:00:40Z")},
		{"sensitive file modified", alerts[1], map[string]any{
			"timestamp":           "2026-11-01T10:05:00Z",
			"alert_name":          "Sensitive File Modification Detected",
			"alert_type":          "SECURITY",
			"severity":            "CRITICAL",
			"description":         "Sensitive file '/etc/shadow' modified by 'alice' on 'db-01'.",
			"source_service_name": "fim",
			"analysis_rule": map[string]any{
				"rule_id":          "ANLY-SEC-002",
				"rule_name":        "Sensitive File Modification Detection",
				"rule_description": "Detects modifications to predefined sensitive system files.",
			},
			"triggered_by":      map[string]any{"actor_type": "USER", "actor_id": "alice", "client_ip": "10.0.0.9"},
			"impacted_resource": map[string]any{"resource_type": "FILE", "resource_id": "/etc/shadow", "server_hostname": "db-01"},
			"action_observed":   "FILE_MODIFIED",
			"correlation_id":    m1,
			"metadata": map[string]any{
				"tags":                 []any{"data-integrity", "compliance", "critical-infrastructure"},
				"environment":          "PRODUCTION",
				"remediation_guidance": "Verify integrity of the file, check for unauthorized access, restore from known good backup if compromised. Review user privileges.",
				"playbook_url":         "https://example.com/playbooks/sensitive_file_modified",
			},
		}, modified},
		// The Python service's defaults for missing fields: 'unknown' for
		// user and host, 'unknown-event-source', and 'N/A' for the address,
		// which the notification service stores as NULL, as it does null.
		{"sensitive file modified by an event with no user, host, source or address", alerts[2], map[string]any{
			"description":         "Sensitive file '/etc/passwd' modified by 'unknown' on 'unknown'.",
			"source_service_name": "unknown-event-source",
			"triggered_by":        map[string]any{"actor_type": "USER", "actor_id": "unknown", "client_ip": nil},
			"impacted_resource":   map[string]any{"resource_type": "FILE", "resource_id": "/etc/passwd", "server_hostname": "unknown"},
		}, anonymous},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			for key, want := range tt.want {
				if got := tt.got[key]; !reflect.DeepEqual(got, want) {
					t.Errorf("%s = %#v, want %#v", key, got, want)
				}
			}
			raw, err := json.Marshal(tt.got["raw_event_data"])
			if err != nil || !jsonEqual(t, raw, []byte(tt.event)) {
				t.Errorf("raw_event_data = %s, want the event %s", raw, tt.event)
			}
			id, _ := tt.got["alert_id"].(string)
			if u, err := uuid.Parse(id); err != nil || u.Version() != 5 || u.String() != id {
				t.Errorf("alert_id %q is not a canonical version 5 UUID", id)
			}
			// Every key of the Python payload is there.
			for _, key := range []string{"alert_id", "timestamp", "alert_name", "alert_type", "severity", "description",
				"source_service_name", "analysis_rule", "triggered_by", "impacted_resource", "action_observed",
				"correlation_id", "raw_event_data", "metadata"} {
				if _, ok := tt.got[key]; !ok {
					t.Errorf("alert lacks %q", key)
				}
			}
		})
	}
	t.Run("threshold facts come with the burst alert only", func(t *testing.T) {
		t.Parallel()
		burst := alerts[0]
		window, _ := burst["window"].(map[string]any)
		wantWindow := map[string]any{"start": "2026-11-01T10:00:00Z", "end": "2026-11-01T10:00:40Z", "seconds": 60.0, "count": 3.0, "threshold": 3.0}
		if !reflect.DeepEqual(window, wantWindow) {
			t.Errorf("window = %v, want %v", window, wantWindow)
		}
		if g := burst["group"]; !reflect.DeepEqual(g, map[string]any{"user_id": "bob", "server_hostname": "web-01"}) {
			t.Errorf("group = %v", g)
		}
		if ids := burst["event_ids"]; !reflect.DeepEqual(ids, []any{f1, f2, f3}) {
			t.Errorf("event_ids = %v, want the three failures in time order", ids)
		}
		if n := burst["suppressed_count"]; n != 0.0 {
			t.Errorf("suppressed_count = %v, want 0", n)
		}
		for _, key := range []string{"window", "group", "event_ids", "suppressed_count"} {
			if _, ok := alerts[1][key]; ok {
				t.Errorf("the file alert has %q", key)
			}
		}
	})
}

func TestABurstsAlertIDDoesNotDependOnArrivalOrder(t *testing.T) {
	t.Parallel()
	failure := func(id, ts string) string {
		return `{"event_id": "` + id + `", "timestamp": "2026-11-01T10:00:` + ts + `Z", "event_type": "user_login", "action_result": "FAILURE", "user_id": "bob", "server_hostname": "web-01"}`
	}
	inOrder := replayBuiltIn(t, failure("f1", "00"), failure("f2", "10"), failure("f3", "20"))
	shuffled := replayBuiltIn(t, failure("f3", "20"), failure("f1", "00"), failure("f2", "10"))
	again := replayBuiltIn(t, failure("f1", "00"), failure("f2", "10"), failure("f3", "20"))
	if len(inOrder) != 1 || len(shuffled) != 1 || len(again) != 1 {
		t.Fatalf("alerts: %d, %d, %d; want one each", len(inOrder), len(shuffled), len(again))
	}
	if inOrder[0]["alert_id"] != again[0]["alert_id"] {
		t.Errorf("replaying the same events gave alert ids %v and %v", inOrder[0]["alert_id"], again[0]["alert_id"])
	}
	if inOrder[0]["alert_id"] != shuffled[0]["alert_id"] {
		t.Errorf("the same burst in another order gave alert ids %v and %v", inOrder[0]["alert_id"], shuffled[0]["alert_id"])
	}
}

func TestBuildFitsEveryFieldToItsColumn(t *testing.T) {
	t.Parallel()
	huge := strings.Repeat("用ü😀\x00", 2500) // 10,000 characters
	body, err := json.Marshal(map[string]any{
		"event_id": huge, "source_service": huge, "server_hostname": huge, "user_id": huge,
		"resource": huge, "client_ip": huge, "details": map[string]any{huge: huge},
	})
	if err != nil {
		t.Fatal(err)
	}
	ev := decode(t, string(body))
	rule := alert.Rule{
		ID: "R\x00", Name: huge, Description: huge, AlertName: huge, AlertType: huge, Severity: huge,
		ActionObserved: huge, ResourceType: "FILE", ActorType: huge,
	}
	a := alert.Build(alert.Input{
		Rule: rule, Description: huge, Event: ev, Environment: "PROD\x00",
		Burst: &alert.Burst{GroupKey: "k", Group: map[string]string{"user_id": huge}, FirstEventID: ev.Key, EventIDs: []string{"a\x00"}},
		Now:   time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC),
	})
	fields := []struct {
		name  string
		value string
		limit int
	}{
		{"alert_name", a.AlertName, alert.LimitText},
		{"alert_type", a.AlertType, alert.LimitShort},
		{"severity", a.Severity, alert.LimitShort},
		{"description", a.Description, alert.LimitDescription},
		{"source_service_name", a.SourceServiceName, alert.LimitText},
		{"rule_name", a.AnalysisRule.RuleName, alert.LimitText},
		{"rule_description", a.AnalysisRule.RuleDescription, alert.LimitDescription},
		{"actor_type", a.TriggeredBy.ActorType, alert.LimitShort},
		{"actor_id", a.TriggeredBy.ActorID, alert.LimitText},
		{"resource_id", a.ImpactedResource.ResourceID, alert.LimitText},
		{"server_hostname", a.ImpactedResource.ServerHostname, alert.LimitText},
		{"action_observed", a.ActionObserved, alert.LimitText},
		{"group.user_id", a.Group["user_id"], alert.LimitText},
	}
	for _, f := range fields {
		if n := utf8.RuneCountInString(f.value); n != f.limit || !strings.HasSuffix(f.value, alert.TruncationMarker) {
			t.Errorf("%s: %d characters ending %q; want %d ending with the marker", f.name, n, lastRunes(f.value, 12), f.limit)
		}
	}
	if a.TriggeredBy.ClientIP != nil {
		t.Errorf("client_ip = %q, want nil", *a.TriggeredBy.ClientIP)
	}
	b, err := alert.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte(`\u0000`)) {
		t.Error("the alert still contains NUL")
	}
	var back struct {
		Raw map[string]any `json:"raw_event_data"`
	}
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	wantFull := strings.ReplaceAll(huge, "\x00", "\uFFFD")
	if back.Raw["user_id"] != wantFull {
		t.Error("raw_event_data does not keep the full user_id")
	}
}

func lastRunes(s string, n int) string {
	r := []rune(s)
	return string(r[max(0, len(r)-n):])
}
