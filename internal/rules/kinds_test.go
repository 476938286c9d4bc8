package rules

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/event"
	"github.com/audit-platform/audit-log-analysis/internal/state"
)

// The rules exactly as the detection issue writes them.
const issueSequence = `rules:
  - id: EX-AUTH-010
    name: Brute Force Then Success
    severity: CRITICAL
    action_observed: LOGIN_SUCCESS
    resource_type: SERVER
    sequence:
      group_by: [user_id, server_hostname]
      window: 10m                 # from the first event of the first step to the last step's event
      steps:
        - match: {event_type: user_login, action_result: FAILURE}
          count: 4                # default 1; distinct: FIELD also allowed, as in threshold
        - match: {event_type: user_login, action_result: SUCCESS}
    suppress: 10m                 # default: the window
`

const issueNewValue = `rules:
  - id: EX-AUTH-020
    severity: HIGH
    match: {event_type: user_login, action_result: SUCCESS}
    new_value:
      field: client_ip            # or fields: [a, b] for a combination
      group_by: [user_id]
      history: 30d                # a value not seen for this long is new again
      learn: 7d                   # no alert until the group's first event is this old (event time)
`

func TestTheIssuesRulesLoadAsWritten(t *testing.T) {
	t.Parallel()
	seq := mustParse(t, issueSequence).Rules[0]
	if sq := seq.Sequence; sq == nil || sq.Window != 10*time.Minute || len(sq.Steps) != 2 || sq.Steps[0].Count != 4 ||
		sq.Steps[1].Count != 1 || !slices.Equal(sq.GroupBy, []string{"user_id", "server_hostname"}) || seq.Suppress != 10*time.Minute {
		t.Errorf("sequence = %+v, suppress %v", seq.Sequence, seq.Suppress)
	}
	nv := mustParse(t, issueNewValue).Rules[0]
	if n := nv.NewValue; n == nil || !slices.Equal(n.Fields, []string{"client_ip"}) || n.History != 30*24*time.Hour ||
		n.Learn != 7*24*time.Hour || n.MaxValues != 1024 || !slices.Equal(n.GroupBy, []string{"user_id"}) {
		t.Errorf("new_value = %+v", nv.NewValue)
	}
	cond := mustParse(t, "rules:\n  - id: C\n    severity: LOW\n    match:\n      action_result: {in: [failure], ignore_case: true}\n    mode: shadow\n").Rules[0]
	if !cond.Matches(decode(t, `{"action_result":"Failure"}`)) || cond.Mode != Shadow {
		t.Errorf("ignore_case condition or shadow mode not applied: %+v", cond)
	}
}

func TestSequenceAndNewValueRuleErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, src string
		want      []string
	}{
		{"one step", `
rules:
  - id: S1
    severity: HIGH
    sequence: {window: 1m, steps: [{match: {event_type: x}}]}
`, []string{`rule "S1": sequence.steps: want a list of 2 to 8 steps`}},
		{"a step without match", `
rules:
  - id: S2
    severity: HIGH
    sequence: {window: 1m, steps: [{match: {event_type: x}}, {count: 2}]}
`, []string{`rule "S2": sequence.steps[2]: missing match`}},
		{"counts too large", `
rules:
  - id: S3
    severity: HIGH
    sequence: {window: 1m, steps: [{match: {event_type: x}, count: 600}, {match: {event_type: y}, count: 600}]}
`, []string{`rule "S3": sequence.steps: the counts add up to 1200, more than 1000`}},
		{"threshold and sequence", `
rules:
  - id: S4
    severity: HIGH
    match: {event_type: x}
    threshold: {count: 2, window: 1m}
    sequence: {window: 1m, steps: [{match: {event_type: x}}, {match: {event_type: y}}]}
`, []string{`rule "S4": a rule has at most one of threshold, sequence and new_value`}},
		{"sequence without window", `
rules:
  - id: S5
    severity: HIGH
    sequence: {steps: [{match: {event_type: x}}, {match: {event_type: y}, distinct: nope}]}
`, []string{`rule "S5": sequence: missing window`, `sequence.steps[2].distinct: unknown field "nope"`}},
		{"new value without history", `
rules:
  - id: N1
    severity: HIGH
    match: {event_type: x}
    new_value: {field: client_ip}
`, []string{`rule "N1": new_value: missing history`}},
		{"new value history too short", `
rules:
  - id: N2
    severity: HIGH
    match: {event_type: x}
    new_value: {field: client_ip, history: 10m, max_values: 0}
`, []string{`new_value.history: want 1h0m0s to 365d`, `new_value.max_values: want a whole number from 1 to 65536`}},
		{"new value with suppress", `
rules:
  - id: N3
    severity: HIGH
    match: {event_type: x}
    new_value: {fields: [client_ip, user_id], history: 2d, learn: 1d12h}
    suppress: 1m
`, []string{`rule "N3": suppress needs a threshold or a sequence`}},
		{"bad mode", `
rules:
  - id: M1
    severity: HIGH
    match: {event_type: x}
    mode: quiet
`, []string{`rule "M1": mode: want live or shadow, not "quiet"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse("test.yaml", []byte(tc.src))
			if err == nil {
				t.Fatal("Parse succeeded, want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestParseDurationTakesDays(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]time.Duration{
		"30d": 30 * 24 * time.Hour, "1d12h": 36 * time.Hour, "90": 90 * time.Second, "10m": 10 * time.Minute, "0d": 0,
	} {
		if got, err := parseLongDuration(in); err != nil || got != want {
			t.Errorf("parseLongDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"d", "-1d", "1d-2h", "x1d", "1.5d", "+1d", "1w", ""} {
		if got, err := parseLongDuration(bad); err == nil {
			t.Errorf("parseLongDuration(%q) = %v, want an error", bad, got)
		}
	}
}

// login is a user_login event at t0+sec.
func login(t *testing.T, id string, sec float64, result, user, host, ip string) *event.Event {
	t.Helper()
	ts := t0.Add(time.Duration(sec * float64(time.Second))).Format(time.RFC3339Nano)
	return decode(t, fmt.Sprintf(`{"event_id":%q,"timestamp":%q,"event_type":"user_login","action_result":%q,"user_id":%q,"server_hostname":%q,"client_ip":%q}`,
		id, ts, result, user, host, ip))
}

func keyOf(t *testing.T, evs ...*event.Event) []string {
	t.Helper()
	var out []string
	for _, ev := range evs {
		out = append(out, ev.Key)
	}
	return out
}

func TestEngineSequenceAlertListsEveryEventOfEveryStep(t *testing.T) {
	t.Parallel()
	set := mustParse(t, issueSequence)
	evs := []*event.Event{
		login(t, "f1", 0, "FAILURE", "bob", "web-01", "203.0.113.9"),
		login(t, "f2", 30, "FAILURE", "bob", "web-01", "203.0.113.9"),
		login(t, "s0", 40, "SUCCESS", "bob", "web-01", "203.0.113.9"), // too early: one failure short
		login(t, "f3", 60, "FAILURE", "bob", "web-01", "203.0.113.9"),
		login(t, "x1", 70, "FAILURE", "alice", "web-01", "203.0.113.9"), // another group
		login(t, "f4", 90, "FAILURE", "bob", "web-01", "203.0.113.9"),
		login(t, "s1", 120, "SUCCESS", "bob", "web-01", "198.51.100.7"),
		login(t, "s2", 130, "SUCCESS", "bob", "web-01", "198.51.100.7"), // suppressed
	}
	for name, order := range map[string][]int{"in order": {0, 1, 2, 3, 4, 5, 6, 7}, "out of order": {6, 7, 3, 0, 2, 5, 4, 1}} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := NewEngine(state.NewMemory(), set, replayClock())
			var all Output
			for _, i := range order {
				all.Add(process(t, e, time.Time{}, evs[i]))
			}
			if len(all.Alerts) != 1 {
				t.Fatalf("%d alerts, want 1", len(all.Alerts))
			}
			a := all.Alerts[0].Alert
			if want := keyOf(t, evs[0], evs[1], evs[3], evs[5], evs[6]); !slices.Equal(a.EventIDs, want) {
				t.Errorf("event_ids %v, want the four failures and the success in order %v", a.EventIDs, want)
			}
			if a.Window.Start != "2026-11-01T10:00:00Z" || a.Window.End != "2026-11-01T10:02:00Z" || a.Window.Count != 5 || a.Window.Seconds != 600 {
				t.Errorf("window %+v", a.Window)
			}
			wantSteps := `[{"step":1,"count":4,"first":"2026-11-01T10:00:00Z","last":"2026-11-01T10:01:30Z"},{"step":2,"count":1,"first":"2026-11-01T10:02:00Z","last":"2026-11-01T10:02:00Z"}]`
			if got, _ := json.Marshal(a.Steps); string(got) != wantSteps {
				t.Errorf("steps %s, want %s", got, wantSteps)
			}
			if a.Group["user_id"] != "bob" || a.Group["server_hostname"] != "web-01" {
				t.Errorf("group %v", a.Group)
			}
			// In order or not, the last step's event raises it.
			if a.CorrelationID != evs[6].Key || *a.TriggeredBy.ClientIP != "198.51.100.7" {
				t.Errorf("trigger %s from %v, want the success %s", a.CorrelationID, *a.TriggeredBy.ClientIP, evs[6].Key)
			}
			if name == "in order" && all.Suppressed["EX-AUTH-010"] != 1 {
				t.Errorf("suppressed %v, want the second success", all.Suppressed)
			}
		})
	}
}

func TestEngineNewValueAlertsOnFirstSeenValues(t *testing.T) {
	t.Parallel()
	set := mustParse(t, `
rules:
  - id: NEW-IP
    name: New Address For A Privileged Account
    severity: HIGH
    match: {event_type: user_login, action_result: SUCCESS, user_id: {in: [root, admin]}}
    new_value: {field: client_ip, group_by: [user_id], history: 30d, learn: 1h}
`)
	e := NewEngine(state.NewMemory(), set, replayClock())
	var all []Fired
	for _, ev := range []*event.Event{
		login(t, "a", 0, "SUCCESS", "root", "web-01", "10.0.0.1"),
		login(t, "b", 1800, "SUCCESS", "root", "web-01", "10.0.0.2"),              // learning
		login(t, "c", 3600, "SUCCESS", "root", "web-02", "::ffff:10.0.0.1"),       // known, mapped
		login(t, "d", 3700, "SUCCESS", "root", "web-02", "203.0.113.5"),           // new
		login(t, "e", 3800, "SUCCESS", "admin", "web-02", "203.0.113.5"),          // another group, learning
		login(t, "f", 3900, "SUCCESS", "root", "web-01", "::FFFF:203.0.113.5"),    // known
		login(t, "g", 4000, "SUCCESS", "root", "web-01", ""),                      // no address: not judged
		login(t, "h", 4100, "FAILURE", "root", "web-01", "198.51.100.1"),          // no match
		login(t, "i", 4200, "SUCCESS", "root", "web-01", "2001:db8::1%eth0"),      // new
		login(t, "j", 4300, "SUCCESS", "root", "web-01", "2001:0db8:0:0::1"),      // known
		login(t, "k", 4400, "SUCCESS", "root", "web-01", " 2001:db8::1"),          // known
		login(t, "l", 40*86400, "SUCCESS", "root", "web-01", "203.0.113.5"),       // idle past the history: learns afresh
		login(t, "m", 40*86400+7200, "SUCCESS", "root", "web-01", "198.51.100.9"), // learnt an hour: new
		login(t, "n", 40*86400+7300, "SUCCESS", "root", "web-01", "203.0.113.5"),  // known
	} {
		all = append(all, process(t, e, time.Time{}, ev).Alerts...)
	}
	var got []string
	for _, f := range all {
		a := f.Alert
		got = append(got, fmt.Sprintf("%s %v %d", a.TriggeredBy.ActorID, a.NewValue.Values, a.NewValue.Known))
		if a.Window != nil || a.SuppressedSince != nil || a.Group["user_id"] != a.TriggeredBy.ActorID || len(a.EventIDs) != 1 {
			t.Errorf("alert %+v: want a group, one event id and no window", a)
		}
	}
	want := []string{
		"root map[client_ip:203.0.113.5] 3",
		"root map[client_ip:2001:db8::1] 4",
		"root map[client_ip:198.51.100.9] 2",
	}
	if !slices.Equal(got, want) {
		t.Errorf("alerts\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestShufflingArrivalChangesNoAlertCount is the randomised
// order-independence test: the same events, with planted bursts and
// sequences among noise, delivered in time order and shuffled within the
// lateness, give the same number of alerts per rule and group, whichever
// clock counts them.
func TestShufflingArrivalChangesNoAlertCount(t *testing.T) {
	t.Parallel()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("TEST_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (TEST_SEED repeats it)", seed)
	rng := rand.New(rand.NewPCG(seed, 0x5ca1e))
	set := mustParse(t, `
rules:
  - id: BURST
    severity: HIGH
    match: {event_type: user_login, action_result: FAILURE}
    threshold: {count: 3, window: 60s, group_by: [user_id]}
  - id: SPRAY
    severity: HIGH
    match: {event_type: user_login, action_result: FAILURE}
    threshold: {count: 3, window: 2m, group_by: [client_ip], distinct: user_id}
    suppress: 90s
  - id: THEN
    severity: HIGH
    sequence:
      group_by: [user_id]
      window: 3m
      steps:
        - match: {event_type: user_login, action_result: FAILURE}
          count: 2
        - match: {event_type: user_login, action_result: SUCCESS}
    suppress: 1m
`)
	users := []string{"alice", "bob", "carol", "dave"}
	ips := []string{"203.0.113.1", "203.0.113.2"}
	total := 0
	for round := range 60 {
		var evs []*event.Event
		clock := 0.0
		for i := range 60 + rng.IntN(100) {
			clock += rng.ExpFloat64() * 15
			result := "FAILURE"
			if rng.IntN(3) == 0 {
				result = "SUCCESS"
			}
			evs = append(evs, login(t, fmt.Sprintf("r%d-%d", round, i), clock, result,
				users[rng.IntN(len(users))], "web-01", ips[rng.IntN(len(ips))]))
		}
		count := func(order []*event.Event, clock Clock) map[string]int {
			e := NewEngine(state.NewMemory(), set, Options{Clock: clock})
			got := map[string]int{}
			for len(order) > 0 {
				n := min(len(order), 1+rng.IntN(8))
				for _, f := range process(t, e, t0.Add(48*time.Hour), order[:n]...).Alerts {
					got[f.Rule.ID()+" "+fmt.Sprint(f.Alert.Group)]++
					total++
				}
				order = order[n:]
			}
			return got
		}
		want := count(evs, ArrivalClock{})
		for try := range 3 {
			// Each event arrives up to five minutes (the lateness) after
			// its own time.
			type arrival struct {
				ev *event.Event
				at time.Time
			}
			var as []arrival
			for _, ev := range evs {
				as = append(as, arrival{ev, ev.Timestamp.Add(time.Duration(rng.Int64N(int64(5 * time.Minute))))})
			}
			slices.SortStableFunc(as, func(a, b arrival) int { return a.at.Compare(b.at) })
			shuffled := make([]*event.Event, len(as))
			for i, a := range as {
				shuffled[i] = a.ev
			}
			var clock Clock = ArrivalClock{}
			if try == 2 {
				clock = NewReplayClock(5 * time.Minute)
			}
			if got := count(shuffled, clock); !reflect.DeepEqual(got, want) {
				t.Fatalf("round %d (seed %d): alerts per rule and group\nin time order %v\nshuffled      %v", round, seed, want, got)
			}
		}
	}
	if total < 500 {
		t.Errorf("only %d alerts: the generator misses the interesting cases", total)
	}
}

var _ = context.Background
