package sample_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/alert"
	"github.com/audit-platform/audit-log-analysis/internal/event"
	"github.com/audit-platform/audit-log-analysis/internal/replay"
	"github.com/audit-platform/audit-log-analysis/internal/rules"
	"github.com/audit-platform/audit-log-analysis/internal/sample"
	rulefiles "github.com/audit-platform/audit-log-analysis/rules"
)

// committedSample is the sample file shipped in testdata, and the options
// it was generated with.
const committedSample = "../../testdata/sample-events.jsonl"

var committedOptions = sample.Options{Seed: 1, Events: 5000}

func generate(t *testing.T, opts sample.Options) ([]byte, sample.Plan) {
	t.Helper()
	var buf bytes.Buffer
	plan, err := sample.Generate(&buf, opts)
	if err != nil {
		t.Fatalf("Generate(%+v): %v", opts, err)
	}
	return buf.Bytes(), plan
}

func lines(b []byte) [][]byte {
	return bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
}

func TestGenerateGivesTheSameBytesForTheSameOptions(t *testing.T) {
	t.Parallel()
	a, planA := generate(t, committedOptions)
	b, planB := generate(t, committedOptions)
	if !bytes.Equal(a, b) {
		t.Fatal("two runs with the same options wrote different bytes")
	}
	if !reflect.DeepEqual(planA, planB) {
		t.Fatal("two runs with the same options returned different plans")
	}
	other, _ := generate(t, sample.Options{Seed: 2, Events: 5000})
	if bytes.Equal(a, other) {
		t.Fatal("seeds 1 and 2 wrote the same bytes")
	}
}

func TestCommittedSampleIsWhatTheGeneratorWrites(t *testing.T) {
	t.Parallel()
	committed, err := os.ReadFile(committedSample)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := generate(t, committedOptions)
	if bytes.Equal(committed, want) {
		return
	}
	got, exp := lines(committed), lines(want)
	for i := range min(len(got), len(exp)) {
		if !bytes.Equal(got[i], exp[i]) {
			t.Fatalf("%s differs from the generator at line %d:\n got %s\nwant %s\nregenerate it with: go run ./cmd/audit-loadgen sample -o testdata/sample-events.jsonl",
				committedSample, i+1, got[i], exp[i])
		}
	}
	t.Fatalf("%s has %d lines, the generator writes %d; regenerate it with: go run ./cmd/audit-loadgen sample -o testdata/sample-events.jsonl",
		committedSample, len(got), len(exp))
}

func TestGenerateWritesTheLinesAskedFor(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		events, want int
		rounds       int
	}{
		{"zero events means the default", 0, sample.DefaultEvents, 1},
		{"the smallest stream holds one round and the malformed lines", 52, 52, 1},
		{"a long stream repeats the scenarios", 12000, 12000, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out, plan := generate(t, sample.Options{Seed: 7, Events: tc.events})
			if n := len(lines(out)); n != tc.want || plan.Lines != tc.want {
				t.Fatalf("wrote %d lines, plan says %d, want %d", n, plan.Lines, tc.want)
			}
			if plan.Events != tc.want-3 || len(plan.Rejected) != 3 {
				t.Fatalf("plan: %d events and %d rejected lines, want %d and 3", plan.Events, len(plan.Rejected), tc.want-3)
			}
			if plan.Rounds != tc.rounds {
				t.Fatalf("plan: %d rounds, want %d", plan.Rounds, tc.rounds)
			}
		})
	}
	for _, n := range []int{-1, 51} {
		if _, err := sample.Generate(&bytes.Buffer{}, sample.Options{Events: n}); err == nil {
			t.Errorf("Generate with %d events: no error", n)
		}
	}
}

func TestEveryLineButThePlantedBadOnesDecodes(t *testing.T) {
	t.Parallel()
	out, plan := generate(t, committedOptions)
	rejected := map[int]event.Reason{}
	for _, r := range plan.Rejected {
		rejected[r.Line] = r.Reason
	}
	if want := []event.Reason{event.ReasonInvalidJSON, event.ReasonNotObject, event.ReasonWrongType}; !slices.Equal(slices.Sorted(maps.Values(rejected)), want) {
		t.Fatalf("rejected reasons %v, want one each of %v", slices.Sorted(maps.Values(rejected)), want)
	}
	start := sample.DefaultStart()
	var newest time.Time
	late := 0
	for i, line := range lines(out) {
		ev, err := event.Decode(line, event.MaxBodyBytes)
		if reason, bad := rejected[i+1]; bad {
			var de *event.DecodeError
			if !errors.As(err, &de) || de.Reason != reason {
				t.Errorf("line %d: error %v, want %s", i+1, err, reason)
			}
			continue
		}
		if err != nil {
			t.Fatalf("line %d: %v\n%s", i+1, err, line)
		}
		if ev.SourceService != "audit-event-generator" || ev.Timestamp.IsZero() || ev.Key != ev.ID {
			t.Fatalf("line %d: not a generator event with a UUID event_id:\n%s", i+1, line)
		}
		if ev.Timestamp.Before(start) || ev.Timestamp.After(plan.End) || ev.Timestamp.Before(plan.Start) {
			t.Fatalf("line %d: time %s outside %s..%s", i+1, ev.Timestamp, plan.Start, plan.End)
		}
		if ev.Timestamp.Before(newest) {
			late++
			if behind := newest.Sub(ev.Timestamp); behind > time.Minute {
				t.Errorf("line %d: %s behind the newest event so far", i+1, behind)
			}
		}
		if ev.Timestamp.After(newest) {
			newest = ev.Timestamp
		}
	}
	// About 1% of background events run late, plus the out-of-order burst.
	if late < plan.Events/500 || late > plan.Events/30 {
		t.Errorf("%d of %d events are out of order, want about 1%%", late, plan.Events)
	}
}

// decodeLines returns the events at the given line numbers.
func decodeLines(t *testing.T, out []byte, planted []sample.Planted) []*event.Event {
	t.Helper()
	all := lines(out)
	evs := make([]*event.Event, len(planted))
	for i, p := range planted {
		ev, err := event.Decode(all[p.Line-1], event.MaxBodyBytes)
		if err != nil || ev.ID != p.ID {
			t.Fatalf("line %d is not planted event %s: %v", p.Line, p.ID, err)
		}
		evs[i] = ev
	}
	return evs
}

func TestPlantedScenariosAreShapedAsDescribed(t *testing.T) {
	t.Parallel()
	out, plan := generate(t, committedOptions)
	kinds := map[sample.Kind]int{}
	for _, s := range plan.Scenarios {
		kinds[s.Kind]++
		evs := decodeLines(t, out, s.Events)
		span := slices.MaxFunc(s.Events, func(a, b sample.Planted) int { return a.Time.Compare(b.Time) }).Time.
			Sub(slices.MinFunc(s.Events, func(a, b sample.Planted) int { return a.Time.Compare(b.Time) }).Time)
		switch s.Kind {
		case sample.FailedLoginBurst:
			if n := len(s.Events); n < 3 || n > 6 || span >= time.Minute {
				t.Errorf("%s: %d failures over %s, want 3 to 6 within 60 s", s.Note, n, span)
			}
		case sample.PasswordSpray:
			users := map[string]bool{}
			for _, ev := range evs {
				users[ev.UserID] = true
				if ev.ClientIP != s.ClientIP || ev.ActionResult != "FAILURE" {
					t.Errorf("spray event %s: from %s with %s", ev.ID, ev.ClientIP, ev.ActionResult)
				}
			}
			if len(users) != 12 || span >= 5*time.Minute {
				t.Errorf("spray: %d users over %s, want 12 within 5 minutes", len(users), span)
			}
		case sample.SensitiveFileEdit, sample.SensitiveFileDecoy, sample.ExampleFileEdit:
			if evs[0].Resource != s.Resource {
				t.Errorf("%s: resource %q", s.Note, evs[0].Resource)
			}
		}
	}
	want := map[sample.Kind]int{
		sample.FailedLoginBurst: 5, sample.FailedLoginNearMiss: 2, sample.SensitiveFileEdit: 4,
		sample.SensitiveFileDecoy: 4, sample.PasswordSpray: 1, sample.ExampleFileEdit: 3,
	}
	if !maps.Equal(kinds, want) {
		t.Errorf("scenarios %v, want %v", kinds, want)
	}
	burst := plan.Scenarios[slices.IndexFunc(plan.Scenarios, func(s sample.Scenario) bool { return s.UserID == "devops_admin" && s.Kind == sample.FailedLoginBurst })]
	if slices.IsSortedFunc(burst.Events, func(a, b sample.Planted) int { return a.Time.Compare(b.Time) }) {
		t.Errorf("the out-of-order burst arrives in time order")
	}
}

// sensitive are the files the built-in rules and rules/examples.yaml watch.
var sensitive = []string{
	"/etc/sudoers", "/root/.ssh/authorized_keys", "/etc/shadow", "/etc/passwd",
	"/etc/sudoers.d/*", "/etc/pam.d/*", "/etc/ssh/sshd_config",
}

func TestBackgroundTrafficStaysBelowEveryRule(t *testing.T) {
	t.Parallel()
	out, plan := generate(t, sample.Options{Seed: 3, Events: 10000})
	planted := map[int]bool{}
	for _, s := range plan.Scenarios {
		for _, e := range s.Events {
			planted[e.Line] = true
		}
	}
	failures := map[string][]time.Time{}
	for i, line := range lines(out) {
		ev, err := event.Decode(line, event.MaxBodyBytes)
		if err != nil || planted[i+1] {
			continue
		}
		if ev.Resource != "" {
			for _, glob := range sensitive {
				if ok, _ := path.Match(glob, event.CanonicalPath(ev.Resource)); ok {
					t.Errorf("line %d: background %s touches %s", i+1, ev.EventType, ev.Resource)
				}
			}
		}
		if ev.EventType == "user_login" && ev.ActionResult == "FAILURE" {
			for _, k := range []string{"pair " + ev.UserID + "@" + ev.ServerHostname, "address " + ev.ClientIP} {
				failures[k] = append(failures[k], ev.Timestamp)
			}
		}
	}
	if len(failures) == 0 {
		t.Fatal("no background failed logins")
	}
	// No user, host or client address fails twice within 10 minutes, the
	// longest window of the rules shipped.
	for k, times := range failures {
		slices.SortFunc(times, time.Time.Compare)
		for i := 1; i < len(times); i++ {
			if gap := times[i].Sub(times[i-1]); gap < 10*time.Minute {
				t.Errorf("%s fails twice %s apart", k, gap)
			}
		}
	}
}

func TestBuiltInRulesRaiseExactlyThePlannedAlerts(t *testing.T) {
	t.Parallel()
	set, err := rules.Parse(rulefiles.DefaultName, rulefiles.Default)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		opts sample.Options
	}{
		{"the committed sample", committedOptions},
		{"a stream so short the scenarios overlap", sample.Options{Seed: 11, Events: 60}},
		{"a stream of three rounds", sample.Options{Seed: 5, Events: 15000}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out, plan := generate(t, tc.opts)
			var alerts bytes.Buffer
			sum, err := replay.Run(context.Background(), []replay.Input{{Name: "sample", Reader: bytes.NewReader(out)}}, &alerts,
				replay.Options{Rules: set, Environment: "TEST"})
			if err != nil {
				t.Fatal(err)
			}
			var got []alert.Alert
			dec := json.NewDecoder(&alerts)
			for dec.More() {
				var a alert.Alert
				if err := dec.Decode(&a); err != nil {
					t.Fatal(err)
				}
				got = append(got, a)
			}
			if len(got) != len(plan.Alerts) {
				t.Errorf("replay raised %d alerts %v, the plan %d %v", len(got), sum.Alerts, len(plan.Alerts), plan.AlertCounts())
			}
			for i := range min(len(got), len(plan.Alerts)) {
				g, w := got[i], plan.Alerts[i]
				if msg := mismatch(g, w); msg != "" {
					t.Errorf("alert %d (line %d): %s", i+1, w.Line, msg)
				}
			}
			if !maps.Equal(sum.Alerts, plan.AlertCounts()) {
				t.Errorf("alerts by rule %v, the plan %v", sum.Alerts, plan.AlertCounts())
			}
			if !maps.Equal(sum.Suppressed, plan.Suppressed) {
				t.Errorf("suppressed by rule %v, the plan %v", sum.Suppressed, plan.Suppressed)
			}
			wantRejected := map[event.Reason]int{}
			for _, r := range plan.Rejected {
				wantRejected[r.Reason]++
			}
			if sum.Events != plan.Events || !maps.Equal(sum.Rejected, wantRejected) {
				t.Errorf("replay read %d events, rejected %v; the plan %d, %v", sum.Events, sum.Rejected, plan.Events, wantRejected)
			}
		})
	}
}

func TestOnlyTheScenariosForTheExampleRulesRaiseTheirAlerts(t *testing.T) {
	t.Parallel()
	set, err := rules.LoadFile("../../rules/examples.yaml")
	if err != nil {
		t.Fatal(err)
	}
	out, plan := generate(t, sample.Options{Seed: 4, Events: 10000})
	var alerts bytes.Buffer
	if _, err := replay.Run(context.Background(), []replay.Input{{Name: "sample", Reader: bytes.NewReader(out)}}, &alerts,
		replay.Options{Rules: set, Environment: "TEST"}); err != nil {
		t.Fatal(err)
	}
	scenarioOf := map[string]int{}
	for i, s := range plan.Scenarios {
		for _, e := range s.Events {
			scenarioOf[e.ID] = i
		}
	}
	raised := map[int]bool{}
	dec := json.NewDecoder(&alerts)
	for dec.More() {
		var a alert.Alert
		if err := dec.Decode(&a); err != nil {
			t.Fatal(err)
		}
		// A sequence alert is explained by a planted event among those
		// it lists: a burst of failed logins the background happened to
		// follow with a successful login, or a sudoers edit followed by a
		// background sudo command of the same user.
		explained := false
		for _, id := range append([]string{a.CorrelationID}, a.EventIDs...) {
			i, ok := scenarioOf[id]
			if !ok {
				continue
			}
			switch k := plan.Scenarios[i].Kind; a.AnalysisRule.RuleID {
			case "EX-AUTH-010":
				explained = explained || (k == sample.FailedLoginBurst && len(plan.Scenarios[i].Events) >= 4)
			case "EX-PRIV-010":
				explained = explained || k == sample.SensitiveFileEdit || k == sample.ExampleFileEdit
			default:
				if exampleScenario(k) && id == a.CorrelationID {
					explained = true
					raised[i] = true
				}
			}
		}
		if !explained {
			t.Errorf("%s raised for event %s, which is no spray, sensitive file edit, or sequence they start", a.AnalysisRule.RuleID, a.CorrelationID)
		}
	}
	for i, s := range plan.Scenarios {
		if exampleScenario(s.Kind) && !raised[i] {
			t.Errorf("round %d: no alert for %s", s.Round, s.Note)
		}
	}
}

// exampleScenario reports whether the example rules alert on a scenario:
// the spray, and edits of every file EX-FILE-001 watches.
func exampleScenario(k sample.Kind) bool {
	return k == sample.PasswordSpray || k == sample.ExampleFileEdit || k == sample.SensitiveFileEdit
}

func TestThePlanForTheCommittedSample(t *testing.T) {
	t.Parallel()
	_, plan := generate(t, committedOptions)
	if got, want := plan.AlertCounts(), map[string]int{sample.RuleFailedLogins: 5, sample.RuleSensitiveFile: 4}; !maps.Equal(got, want) {
		t.Errorf("alerts %v, want %v", got, want)
	}
	if got, want := plan.Suppressed, map[string]int{sample.RuleFailedLogins: 6}; !maps.Equal(got, want) {
		t.Errorf("suppressed %v, want %v", got, want)
	}
	var groups []string
	for _, a := range plan.Alerts {
		if a.RuleID == sample.RuleFailedLogins {
			groups = append(groups, a.UserID+"@"+a.Host)
		}
	}
	want := []string{"attacker_bob@prod-web-01", "attacker_bob@prod-web-01", "alice@prod-db-02", "devops_admin@dev-api-03", "guest_user@test-worker-04"}
	if !slices.Equal(groups, want) {
		t.Errorf("ANLY-SEC-001 groups %v, want %v", groups, want)
	}
}

// mismatch describes how an alert differs from the planned one.
func mismatch(got alert.Alert, want sample.Alert) string {
	var diffs []string
	if got.AnalysisRule.RuleID != want.RuleID {
		diffs = append(diffs, "rule "+got.AnalysisRule.RuleID+", want "+want.RuleID)
	}
	if got.CorrelationID != want.EventID {
		diffs = append(diffs, "correlation_id "+got.CorrelationID+", want "+want.EventID)
	}
	if got.TriggeredBy.ActorID != want.UserID || got.ImpactedResource.ServerHostname != want.Host {
		diffs = append(diffs, "actor "+got.TriggeredBy.ActorID+"@"+got.ImpactedResource.ServerHostname+", want "+want.UserID+"@"+want.Host)
	}
	switch want.RuleID {
	case sample.RuleFailedLogins:
		wantGroup := map[string]string{"user_id": want.UserID, "server_hostname": want.Host}
		if !maps.Equal(got.Group, wantGroup) {
			diffs = append(diffs, "group differs")
		}
		if got.Window == nil || got.Window.Count != want.Count {
			diffs = append(diffs, "window count differs")
		}
		if got.SuppressedSince == nil || *got.SuppressedSince != want.Suppressed {
			diffs = append(diffs, "suppressed_count differs")
		}
	case sample.RuleSensitiveFile:
		if got.ImpactedResource.ResourceID != want.Resource {
			diffs = append(diffs, "resource "+got.ImpactedResource.ResourceID+", want "+want.Resource)
		}
	}
	if len(diffs) == 0 {
		return ""
	}
	return strings.Join(diffs, "; ")
}
