// Package sample generates audit events in the shape the platform's event
// generator publishes, deterministically from a seed, with detection
// scenarios planted at known places. It owns the sample file in testdata,
// the traffic of the load tool, and the Plan that says which alerts the
// built-in rules must raise for a generated stream.
package sample

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/audit-platform/audit-log-analysis/internal/event"
)

// The built-in rules a Plan predicts alerts for.
const (
	RuleFailedLogins  = "ANLY-SEC-001"
	RuleSensitiveFile = "ANLY-SEC-002"
)

// DefaultEvents is the number of lines Generate writes when Options.Events
// is zero; it is also the length of one round of planted scenarios.
const DefaultEvents = 5000

const (
	// sourceService is what the platform's generator calls itself.
	sourceService = "audit-event-generator"
	// meanGap is the mean time between background events.
	meanGap = 2 * time.Second
	// failureSpacing keeps background failed logins of one user and host,
	// and of one client address, this far apart, so that no window of the
	// built-in or example rules ever holds two of them.
	failureSpacing = 15 * time.Minute
	// lateFraction of background events carry a time a few seconds older
	// than the events before them, as clocks and buffers produce.
	lateFraction = 0.01
)

// Options configures Generate.
type Options struct {
	// Seed selects the stream: the same options always give the same bytes.
	Seed uint64
	// Events is the number of lines to write, planted and malformed ones
	// included (0: DefaultEvents). The planted scenarios repeat once per
	// DefaultEvents lines, so a long stream keeps raising alerts.
	Events int
	// Start is the time of the first event (zero: 2026-11-01T00:00:00Z).
	// The service keeps rule state by event time, so streams meant for the
	// same service should not overlap in time.
	Start time.Time
}

// DefaultStart is the time of the first event when Options.Start is zero.
func DefaultStart() time.Time { return time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC) }

// Kind names a planted scenario.
type Kind string

// The planted scenarios.
const (
	// FailedLoginBurst: 3 to 6 failed logins of one user on one host within
	// 60 s; ANLY-SEC-001 alerts once and suppresses the rest.
	FailedLoginBurst Kind = "failed_login_burst"
	// FailedLoginNearMiss: failed logins that stay below ANLY-SEC-001.
	FailedLoginNearMiss Kind = "failed_login_near_miss"
	// SensitiveFileEdit: a modification of a built-in sensitive file, most
	// under a path spelled differently; ANLY-SEC-002 alerts.
	SensitiveFileEdit Kind = "sensitive_file_edit"
	// SensitiveFileDecoy: looks like a sensitive file edit and is not one.
	SensitiveFileDecoy Kind = "sensitive_file_decoy"
	// PasswordSpray: one failed login each for 12 users from one address
	// within 5 minutes, for the password-spray rule of rules/examples.yaml.
	PasswordSpray Kind = "password_spray"
	// ExampleFileEdit: a modification of a file that only the globs of
	// rules/examples.yaml treat as sensitive.
	ExampleFileEdit Kind = "example_file_edit"
)

// Plan says what Generate wrote and what the built-in rules make of it.
type Plan struct {
	// Lines were written; Events of them decode as events.
	Lines, Events int
	// Rounds is how many times the scenarios were planted.
	Rounds int
	// Start and End are the earliest and latest event times.
	Start, End time.Time
	// Scenarios are the planted scenarios in file order.
	Scenarios []Scenario
	// Alerts are the alerts the built-in rules raise, in the order a
	// replay writes them.
	Alerts []Alert
	// Suppressed counts by rule id the matches the built-in rules suppress.
	Suppressed map[string]int
	// Rejected are the lines that are not events.
	Rejected []Rejected
}

// Scenario is one planted scenario. Fields that do not apply are empty.
type Scenario struct {
	Kind  Kind
	Round int
	// Note says what makes the scenario interesting, for people.
	Note     string
	UserID   string
	Host     string
	ClientIP string
	Resource string
	// Events are the scenario's events in file order.
	Events []Planted
}

// Planted is one planted event.
type Planted struct {
	ID   string
	Line int
	Time time.Time
}

// Alert is an alert the built-in rules raise.
type Alert struct {
	RuleID string
	UserID string
	Host   string
	// Resource is the path as written (ANLY-SEC-002).
	Resource string
	// Count and Suppressed are the window's count and the matches
	// suppressed since the group's previous alert (ANLY-SEC-001).
	Count      int
	Suppressed int
	// EventID and Line name the event that raises the alert: the alert's
	// correlation_id.
	EventID string
	Line    int
}

// Rejected is a planted line that event.Decode refuses.
type Rejected struct {
	Line   int
	Reason event.Reason
}

// AlertCounts counts the planned alerts by rule id.
func (p Plan) AlertCounts() map[string]int {
	n := map[string]int{}
	for _, a := range p.Alerts {
		n[a.RuleID]++
	}
	return n
}

// WriteSummary describes the plan for people.
func (p Plan) WriteSummary(w io.Writer) {
	fmt.Fprintf(w, "sample: %d lines, %d events, %d malformed, %s to %s\n",
		p.Lines, p.Events, len(p.Rejected), p.Start.Format(time.RFC3339), p.End.Format(time.RFC3339))
	counts := p.AlertCounts()
	for _, id := range []string{RuleFailedLogins, RuleSensitiveFile} {
		fmt.Fprintf(w, "  built-in %s: %d alerts, %d matches suppressed\n", id, counts[id], p.Suppressed[id])
	}
	if p.Rounds > 1 {
		fmt.Fprintf(w, "  the scenarios repeat %d times; the first round:\n", p.Rounds)
	}
	type row struct {
		line int
		text string
	}
	var rows []row
	for _, s := range p.Scenarios {
		if s.Round == 0 {
			rows = append(rows, row{s.Events[0].Line, fmt.Sprintf("%-22s %s", s.Kind, s.Note)})
		}
	}
	for _, r := range p.Rejected {
		rows = append(rows, row{r.Line, fmt.Sprintf("%-22s %s", "malformed", r.Reason)})
	}
	slices.SortFunc(rows, func(a, b row) int { return cmp.Compare(a.line, b.line) })
	for _, r := range rows {
		fmt.Fprintf(w, "  line %5d  %s\n", r.line, r.text)
	}
}

// Generate writes opts.Events lines of JSON to w and returns what it
// planted.
func Generate(w io.Writer, opts Options) (Plan, error) {
	if opts.Events < 0 {
		return Plan{}, fmt.Errorf("events %d is negative", opts.Events)
	}
	if opts.Events == 0 {
		opts.Events = DefaultEvents
	}
	if opts.Start.IsZero() {
		opts.Start = DefaultStart()
	}
	rounds := max(1, opts.Events/DefaultEvents)
	background := opts.Events - rounds*plantedPerRound - len(malformedReasons)
	if background < 0 {
		return Plan{}, fmt.Errorf("events %d is too few: the planted scenarios alone take %d lines",
			opts.Events, plantedPerRound+len(malformedReasons))
	}
	g := &generator{
		r:           rand.New(rand.NewPCG(opts.Seed, 0x5a3c_9e1d_44b2_07f6)),
		start:       opts.Start.UTC().Truncate(time.Microsecond),
		lastFailure: map[string]time.Time{},
	}
	span := g.background(background)
	for r := range rounds {
		// Each round has its own stretch of the timeline; rounds only exist
		// for streams of 2*DefaultEvents lines or more, so a stretch is
		// hours long and no window reaches from one round into the next.
		from := g.start.Add(span * time.Duration(r) / time.Duration(rounds))
		g.plant(r, from, span/time.Duration(rounds))
	}
	g.malformed(span)

	slices.SortStableFunc(g.items, func(a, b item) int { return a.pos.Compare(b.pos) })
	bw := bufio.NewWriterSize(w, 64<<10)
	plan := Plan{Lines: len(g.items), Rounds: rounds, Suppressed: map[string]int{}}
	for i, it := range g.items {
		line := i + 1
		bw.Write(it.line)
		if err := bw.WriteByte('\n'); err != nil { // a bufio.Writer keeps its first error
			return Plan{}, fmt.Errorf("write sample: %w", err)
		}
		if it.reject != "" {
			plan.Rejected = append(plan.Rejected, Rejected{Line: line, Reason: it.reject})
			continue
		}
		plan.Events++
		if plan.Start.IsZero() || it.ts.Before(plan.Start) {
			plan.Start = it.ts
		}
		if it.ts.After(plan.End) {
			plan.End = it.ts
		}
		if it.scenario >= 0 {
			s := &g.scenarios[it.scenario]
			s.Events = append(s.Events, Planted{ID: it.id, Line: line, Time: it.ts})
		}
	}
	if err := bw.Flush(); err != nil {
		return Plan{}, fmt.Errorf("write sample: %w", err)
	}
	plan.Scenarios = g.scenarios
	slices.SortStableFunc(plan.Scenarios, func(a, b Scenario) int { return cmp.Compare(a.Events[0].Line, b.Events[0].Line) })
	plan.predict()
	return plan, nil
}

// predict lists the alerts the built-in rules raise for the planted
// scenarios; background traffic never raises one.
func (p *Plan) predict() {
	// Suppressed matches are reported with a group's next alert, unless
	// the group was quiet for longer than its state lives: for ANLY-SEC-001
	// (60s window, 60s suppression) 60s + 5m + 60s + 10m of event time.
	const idle = 17 * time.Minute
	carry := map[[2]string]int{}
	last := map[[2]string]time.Time{}
	for _, s := range p.Scenarios {
		switch s.Kind {
		case FailedLoginBurst:
			// Every event of a burst lies within one window, so the third
			// to arrive fires whatever the order, and the rest are
			// suppressed.
			g := [2]string{s.UserID, s.Host}
			first, newest := s.Events[0].Time, s.Events[0].Time
			for _, e := range s.Events {
				if e.Time.Before(first) {
					first = e.Time
				}
				if e.Time.After(newest) {
					newest = e.Time
				}
			}
			if prev, ok := last[g]; ok && first.Sub(prev) > idle {
				carry[g] = 0
			}
			last[g] = newest
			trigger := s.Events[2]
			p.Alerts = append(p.Alerts, Alert{
				RuleID: RuleFailedLogins, UserID: s.UserID, Host: s.Host,
				Count: 3, Suppressed: carry[g], EventID: trigger.ID, Line: trigger.Line,
			})
			carry[g] = len(s.Events) - 3
			p.Suppressed[RuleFailedLogins] += len(s.Events) - 3
		case SensitiveFileEdit:
			e := s.Events[0]
			p.Alerts = append(p.Alerts, Alert{
				RuleID: RuleSensitiveFile, UserID: s.UserID, Host: s.Host,
				Resource: s.Resource, EventID: e.ID, Line: e.Line,
			})
		}
	}
	slices.SortStableFunc(p.Alerts, func(a, b Alert) int { return cmp.Compare(a.Line, b.Line) })
}

// item is one line to write, placed at pos in the stream.
type item struct {
	pos  time.Time
	ts   time.Time
	id   string
	line []byte
	// scenario indexes generator.scenarios, -1 for background lines.
	scenario int
	// reject is set for planted malformed lines.
	reject event.Reason
}

type generator struct {
	r         *rand.Rand
	start     time.Time
	items     []item
	scenarios []Scenario
	// lastFailure holds the time of the latest background failed login
	// per "user\x00host" and per "ip:address".
	lastFailure map[string]time.Time
}

// record is one event; its JSON keeps the generator's field order.
type record struct {
	id       string
	ts       time.Time
	host     string
	typ      string
	severity string
	user     any // a string, except in a malformed line
	result   string
	details  object
}

func (g *generator) newRecord(ts time.Time, host, typ, severity, user, result string, details object) record {
	return record{id: g.uuid(), ts: ts, host: host, typ: typ, severity: severity, user: user, result: result, details: details}
}

func (rec record) json() []byte {
	return object{
		{"event_id", rec.id},
		{"timestamp", timestamp(rec.ts)},
		{"source_service", sourceService},
		{"server_hostname", rec.host},
		{"event_type", rec.typ},
		{"severity", rec.severity},
		{"user_id", rec.user},
		{"action_result", rec.result},
		{"details", rec.details},
	}.appendJSON(make([]byte, 0, 512))
}

// timestamp writes what the generator's datetime.utcnow().isoformat()+"Z"
// gives: microseconds and a Z.
func timestamp(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.000000") + "Z"
}

// uuid returns a version 4 UUID drawn from the seeded source.
func (g *generator) uuid() string {
	var u uuid.UUID
	for i := 0; i < 16; i += 8 {
		v := g.r.Uint64()
		for j := range 8 {
			u[i+j] = byte(v >> (8 * j))
		}
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u.String()
}

func (g *generator) add(rec record, pos time.Time, scenario int) {
	g.items = append(g.items, item{pos: pos, ts: rec.ts, id: rec.id, line: rec.json(), scenario: scenario})
}

func (g *generator) pick(s []string) string { return s[g.r.IntN(len(s))] }

// between returns a duration in [lo, hi), to the microsecond.
func (g *generator) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(g.r.Int64N(int64(hi-lo))).Truncate(time.Microsecond)
}

// object is a JSON object that keeps its key order. Values are strings,
// ints or objects; it is written with the separators of Python's
// json.dumps, as the generator writes.
type object []field

type field struct {
	key   string
	value any
}

func (o object) appendJSON(b []byte) []byte {
	b = append(b, '{')
	for i, f := range o {
		if i > 0 {
			b = append(b, ", "...)
		}
		b = appendString(b, f.key)
		b = append(b, ": "...)
		switch v := f.value.(type) {
		case object:
			b = v.appendJSON(b)
		case int:
			b = strconv.AppendInt(b, int64(v), 10)
		case string:
			b = appendString(b, v)
		default:
			panic(fmt.Sprintf("sample: %T is not a JSON value the generator writes", v))
		}
	}
	return append(b, '}')
}

// appendString writes s as a JSON string. The generator's strings are
// plain ASCII and are copied as they are; anything else goes through
// encoding/json.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, err := json.Marshal(s)
			if err != nil {
				panic(err) // a Go string always encodes
			}
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
