package rules

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/event"
	"github.com/audit-platform/audit-log-analysis/internal/state"
	rulefiles "github.com/audit-platform/audit-log-analysis/rules"
)

var t0 = time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)

func builtIn(t *testing.T) *Set {
	t.Helper()
	set, err := Parse(rulefiles.DefaultName, rulefiles.Default)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// failure is a failed login at t0+sec.
func failure(t *testing.T, id string, sec float64, user, host string) *event.Event {
	t.Helper()
	ts := t0.Add(time.Duration(sec * float64(time.Second))).Format(time.RFC3339Nano)
	return decode(t, fmt.Sprintf(`{"event_id":%q,"timestamp":%q,"event_type":"user_login","action_result":"FAILURE","user_id":%q,"server_hostname":%q}`, id, ts, user, host))
}

// process runs a batch.
func process(t *testing.T, e *Engine, now time.Time, evs ...*event.Event) Output {
	t.Helper()
	out, err := e.Process(context.Background(), evs, now)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// replayClock is the clock replay uses.
func replayClock() Options { return Options{Clock: NewReplayClock(5 * time.Minute)} }

func TestEngineAlertsOncePerBurst(t *testing.T) {
	t.Parallel()
	e := NewEngine(state.NewMemory(), builtIn(t), Options{Environment: "TEST", Clock: ArrivalClock{MaxSkew: 5 * time.Minute}})
	now := t0.Add(time.Hour)
	var alerts []Fired
	for i, sec := range []float64{0, 10, 20, 30} {
		alerts = append(alerts, process(t, e, now, failure(t, fmt.Sprint("e", i), sec, "bob", "web-01")).Alerts...)
	}
	if len(alerts) != 1 {
		t.Fatalf("4 failures in 60s gave %d alerts, want 1", len(alerts))
	}
	a := alerts[0].Alert
	if a.Window == nil || a.Window.Count != 3 || a.Window.Threshold != 3 || a.Window.Seconds != 60 {
		t.Errorf("window = %+v", a.Window)
	}
	if a.Group["user_id"] != "bob" || a.Group["server_hostname"] != "web-01" || len(a.EventIDs) != 3 {
		t.Errorf("group = %v, event_ids = %v", a.Group, a.EventIDs)
	}
	if a.Window.Start != "2026-11-01T10:00:00Z" || a.Window.End != "2026-11-01T10:00:20Z" {
		t.Errorf("window %s..%s, want 10:00:00..10:00:20", a.Window.Start, a.Window.End)
	}
	if a.Timestamp != now.Format(time.RFC3339) {
		t.Errorf("timestamp = %s, want the arrival time %s", a.Timestamp, now.Format(time.RFC3339))
	}
	// A burst well after the suppression period alerts again and says how
	// much was suppressed in between.
	var later []Fired
	for i, sec := range []float64{300, 301, 302} {
		later = append(later, process(t, e, now, failure(t, fmt.Sprint("l", i), sec, "bob", "web-01")).Alerts...)
	}
	if len(later) != 1 || *later[0].Alert.SuppressedSince != 1 {
		t.Fatalf("second burst gave %d alerts (suppressed %v), want 1 with 1 suppressed", len(later), later)
	}
	if later[0].Alert.AlertID == a.AlertID {
		t.Error("two bursts share an alert id")
	}
}

func TestEngineAlertIDsAreDeterministicAndRedeliverySafe(t *testing.T) {
	t.Parallel()
	run := func() []string {
		e := NewEngine(state.NewMemory(), builtIn(t), replayClock())
		var ids []string
		for i, sec := range []float64{0, 10, 20} {
			for _, f := range process(t, e, time.Time{}, failure(t, fmt.Sprint("e", i), sec, "bob", "web-01")).Alerts {
				ids = append(ids, f.Alert.AlertID)
			}
		}
		// The trigger redelivered: the same alert again, same id.
		for _, f := range process(t, e, time.Time{}, failure(t, "e2", 20, "bob", "web-01")).Alerts {
			ids = append(ids, f.Alert.AlertID)
		}
		// Another event redelivered: nothing.
		for _, f := range process(t, e, time.Time{}, failure(t, "e0", 0, "bob", "web-01")).Alerts {
			ids = append(ids, f.Alert.AlertID)
		}
		return ids
	}
	a, b := run(), run()
	if len(a) != 2 || a[0] != a[1] {
		t.Fatalf("ids = %v, want the same alert twice (first and redelivered trigger)", a)
	}
	if strings.Join(a, ",") != strings.Join(b, ",") {
		t.Errorf("two runs gave %v and %v", a, b)
	}
}

func TestEngineGroupsDoNotCollide(t *testing.T) {
	t.Parallel()
	e := NewEngine(state.NewMemory(), builtIn(t), replayClock())
	// User "a:b" on host "c" and user "a" on host "b:c" share the Python
	// service's key failed_logins_zset:a:b:c.
	out := process(t, e, time.Time{},
		failure(t, "1", 0, "a:b", "c"), failure(t, "2", 1, "a", "b:c"),
		failure(t, "3", 2, "a:b", "c"), failure(t, "4", 3, "a", "b:c"))
	if len(out.Alerts) != 0 {
		t.Fatalf("got %d alerts, want none: two failures each", len(out.Alerts))
	}
}

func TestEngineClampsFutureTimestamps(t *testing.T) {
	t.Parallel()
	e := NewEngine(state.NewMemory(), builtIn(t), Options{Clock: ArrivalClock{MaxSkew: 5 * time.Minute}})
	now := t0
	// A host whose clock is a day ahead must not hide its burst: clamped
	// to arrival time, its events fall in one window.
	out := process(t, e, now,
		failure(t, "1", 86400, "bob", "web-01"),
		failure(t, "2", 86400*2, "bob", "web-01"),
		failure(t, "3", 86400*3, "bob", "web-01"))
	if out.Clamped != 3 || len(out.Alerts) != 1 {
		t.Fatalf("clamped %d, alerts %d; want 3 and 1", out.Clamped, len(out.Alerts))
	}
	// Within the allowed skew nothing is clamped.
	out = process(t, e, now, failure(t, "4", 60, "carol", "web-01"))
	if out.Clamped != 0 {
		t.Errorf("an event 1 minute ahead was clamped")
	}
}

func TestEngineEventClockCountsMissingTimestampsAtTheNewestTimeSeen(t *testing.T) {
	t.Parallel()
	e := NewEngine(state.NewMemory(), builtIn(t), replayClock())
	noTime := decode(t, `{"event_id":"x","event_type":"user_login","action_result":"FAILURE","user_id":"bob","server_hostname":"web-01"}`)
	out := process(t, e, time.Time{}, failure(t, "1", 0, "bob", "web-01"), failure(t, "2", 30, "bob", "web-01"), noTime)
	if len(out.Alerts) != 1 || out.Alerts[0].Alert.Window.End != "2026-11-01T10:00:30Z" {
		t.Fatalf("alerts = %+v, want one ending at the newest event time", out.Alerts)
	}
}

func TestEngineReloadKeepsStateOfUnchangedRules(t *testing.T) {
	t.Parallel()
	set := builtIn(t)
	e := NewEngine(state.NewMemory(), set, replayClock())
	process(t, e, time.Time{}, failure(t, "1", 0, "bob", "web-01"), failure(t, "2", 1, "bob", "web-01"))

	// Same id, group-by and window (only the count changes): the two
	// failures already seen still count.
	recount, _ := set.WithOverrides(Overrides{FailedLoginThreshold: 3})
	e.SetRules(recount)
	if out := process(t, e, time.Time{}, failure(t, "3", 2, "bob", "web-01")); len(out.Alerts) != 1 {
		t.Fatalf("after a reload with the same shape: %d alerts, want 1", len(out.Alerts))
	}
	// A new window is a new rule shape: its state starts empty.
	rewindow, _ := set.WithOverrides(Overrides{FailedLoginWindow: 2 * time.Minute})
	e.SetRules(rewindow)
	if out := process(t, e, time.Time{}, failure(t, "4", 3, "carol", "web-01"), failure(t, "5", 4, "carol", "web-01")); len(out.Alerts) != 0 {
		t.Fatalf("got %d alerts from two failures", len(out.Alerts))
	}
}

type failingStore struct{}

func (failingStore) Apply(context.Context, []state.Update) ([]state.Result, error) {
	return nil, errors.New("connection refused")
}

func TestEngineReportsStoreFailuresAndProducesNothing(t *testing.T) {
	t.Parallel()
	e := NewEngine(failingStore{}, builtIn(t), Options{})
	file := decode(t, `{"event_type":"file_modified","action_result":"MODIFIED","resource":"/etc/shadow"}`)
	out, err := e.Process(context.Background(), []*event.Event{file, failure(t, "1", 0, "bob", "h")}, t0)
	if err == nil || len(out.Alerts) != 0 {
		t.Fatalf("Process = %d alerts, %v; want an error and no alerts (the batch is retried whole)", len(out.Alerts), err)
	}
}

func TestEngineEventClockTellsAQuietSpellFromAWrongClock(t *testing.T) {
	t.Parallel()
	e := NewEngine(state.NewMemory(), builtIn(t), replayClock())
	// A burst, ten quiet minutes, another burst: the second is not a wrong
	// clock, it alerts, with its own times.
	var evs []*event.Event
	for i, sec := range []float64{0, 10, 20, 30, 620, 630, 640} {
		evs = append(evs, failure(t, fmt.Sprint("q", i), sec, "bob", "web-01"))
	}
	out := process(t, e, time.Time{}, evs...)
	if len(out.Alerts) != 2 || out.Clamped != 0 {
		t.Fatalf("alerts %d, clamped %d; want 2 alerts and nothing clamped", len(out.Alerts), out.Clamped)
	}
	if w := out.Alerts[1].Alert.Window; w.Start != "2026-11-01T10:10:20Z" || *out.Alerts[1].Alert.SuppressedSince != 1 {
		t.Errorf("second burst window %+v, suppressed %d", w, *out.Alerts[1].Alert.SuppressedSince)
	}

	// One host a day ahead among others on time: its events are clamped to
	// the replay clock, so its burst is still one burst.
	e = NewEngine(state.NewMemory(), builtIn(t), replayClock())
	evs = evs[:0]
	for i := range 3 {
		evs = append(evs,
			failure(t, fmt.Sprint("ok", i), float64(i*10), fmt.Sprint("carol", i), "web-02"),
			failure(t, fmt.Sprint("skew", i), float64(86400*(i+1)), "mallory", "web-03"))
	}
	evs = append(evs, failure(t, "ok-last", 30, "dave", "web-02"))
	out = process(t, e, time.Time{}, evs...)
	if out.Clamped != 3 || len(out.Alerts) != 1 || out.Alerts[0].Alert.TriggeredBy.ActorID != "mallory" {
		t.Fatalf("clamped %d, alerts %+v; want the skewed host's three events clamped into one burst", out.Clamped, out.Alerts)
	}
}

func TestEngineDistinctCountsValues(t *testing.T) {
	t.Parallel()
	set := mustParse(t, `
rules:
  - id: SPRAY
    severity: HIGH
    match: {event_type: user_login, action_result: FAILURE}
    threshold: {count: 3, window: 10m, group_by: [client_ip], distinct: user_id}
`)
	e := NewEngine(state.NewMemory(), set, replayClock())
	mk := func(id, user string, sec int) *event.Event {
		return decode(t, fmt.Sprintf(`{"event_id":%q,"timestamp":%q,"event_type":"user_login","action_result":"FAILURE","user_id":%q,"client_ip":"203.0.113.9"}`,
			id, t0.Add(time.Duration(sec)*time.Second).Format(time.RFC3339), user))
	}
	out := process(t, e, time.Time{}, mk("1", "a", 0), mk("2", "a", 1), mk("3", "b", 2), mk("4", "b", 3), mk("5", "a", 4))
	if len(out.Alerts) != 0 {
		t.Fatalf("two distinct users alerted")
	}
	out = process(t, e, time.Time{}, mk("6", "c", 5))
	if len(out.Alerts) != 1 || out.Alerts[0].Alert.Group["client_ip"] != "203.0.113.9" {
		t.Fatalf("third distinct user: %+v", out.Alerts)
	}
}
