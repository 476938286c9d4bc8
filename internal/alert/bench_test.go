package alert_test

import (
	"testing"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/alert"
	"github.com/audit-platform/audit-log-analysis/internal/event"
)

// benchInput is the input of a failed-login burst alert as the built-in
// rule raises it from generator-shaped events: five events in a window.
func benchInput(tb testing.TB) alert.Input {
	tb.Helper()
	ev, err := event.Decode([]byte(`{"event_id": "4acee238-e624-4fd7-be44-4feed28113d7", "timestamp": "2026-11-01T00:03:18.485950Z", "source_service": "audit-event-generator", "server_hostname": "prod-bastion-01", "event_type": "user_login", "severity": "WARNING", "user_id": "dave", "action_result": "FAILURE", "details": {"ip_address": "192.168.1.151", "protocol": "ssh", "reason": "Incorrect password"}}`), event.MaxBodyBytes)
	if err != nil {
		tb.Fatal(err)
	}
	start := time.Date(2026, 11, 1, 0, 3, 0, 0, time.UTC)
	return alert.Input{
		Rule: alert.Rule{
			ID: "ANLY-SEC-001", Name: "Repeated failed logins", Description: "5 failed logins within 60 seconds",
			AlertName: "Multiple Failed Login Attempts", AlertType: "BRUTE_FORCE_ATTEMPT", Severity: "HIGH",
			ActionObserved: "MULTIPLE_FAILED_LOGINS", ResourceType: "HOST", Tags: []string{"authentication", "brute-force"},
		},
		Description: "5 failed logins for dave on prod-bastion-01 within 60 seconds",
		Event:       ev,
		Burst: &alert.Burst{
			GroupKey: "0f3a9c", Group: map[string]string{"user_id": "dave", "server_hostname": "prod-bastion-01"},
			Start: start, End: start.Add(18 * time.Second), Window: time.Minute, Count: 5, Threshold: 5,
			FirstEventID: "e0015ed4-d7e7-4708-a6eb-94a00675d157", LastEventID: ev.Key,
			EventIDs: []string{"e0015ed4-d7e7-4708-a6eb-94a00675d157", "de97f146-8284-4fcd-a760-7ea259cb92a7",
				"e2499524-83a2-4e50-a251-7a82ebbc1f10", "a1b2c3d4-0000-4000-8000-000000000001", ev.Key},
		},
		Environment: "production",
		Now:         start.Add(19 * time.Second),
	}
}

// BenchmarkBuild measures assembling one burst alert from its match.
func BenchmarkBuild(b *testing.B) {
	in := benchInput(b)
	b.ReportAllocs()
	for b.Loop() {
		_ = alert.Build(in)
	}
}

// BenchmarkMarshal measures encoding one burst alert for the alert queue.
func BenchmarkMarshal(b *testing.B) {
	a := alert.Build(benchInput(b))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := alert.Marshal(a); err != nil {
			b.Fatal(err)
		}
	}
}
