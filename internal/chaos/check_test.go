//go:build chaos

package chaos

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// figures are what a scenario measured, printed after it and in the
// suite's summary.
type figures struct {
	name      string
	published int // messages: events and hostile ones
	events    int
	hostile   int
	// Alerts: expected from replay; received distinct ids; copies beyond
	// the first of an id; missing and unexpected ids; ids whose body
	// differs from replay's.
	expected, received, duplicates, missing, unexpected, differ int
	// Dead letters received, and copies beyond the first of a message.
	deadLetters, deadLetterCopies int
	// recovery is how long the service took to work again after the
	// fault ended (scenario-specific; see notes).
	recovery time.Duration
	notes    []string
	elapsed  time.Duration
}

func (f *figures) note(format string, args ...any) {
	f.notes = append(f.notes, fmt.Sprintf(format, args...))
}

func (f *figures) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (%s)\n", f.name, f.elapsed.Round(100*time.Millisecond))
	fmt.Fprintf(&b, "  published %d messages: %d events, %d hostile\n", f.published, f.events, f.hostile)
	fmt.Fprintf(&b, "  alerts: %d expected, %d received, %d duplicate copies, %d missing, %d unexpected, %d differ from replay\n",
		f.expected, f.received, f.duplicates, f.missing, f.unexpected, f.differ)
	fmt.Fprintf(&b, "  dead letters: %d (%d duplicate copies)\n", f.deadLetters, f.deadLetterCopies)
	if f.recovery > 0 {
		fmt.Fprintf(&b, "  recovery: %s\n", f.recovery.Round(time.Millisecond))
	}
	for _, n := range f.notes {
		fmt.Fprintf(&b, "  %s\n", n)
	}
	return b.String()
}

// alertCheck says what a scenario tolerates in the alerts.
type alertCheck struct {
	// mayMiss are alert ids the scenario may lose (state lost under a
	// burst in progress); they are reported, not failed.
	mayMiss map[string]bool
	// mayAdd reports whether an alert replay did not raise is acceptable.
	mayAdd func(alert map[string]any) bool
	// sameAsReplay requires every alert body to be replay's, but for
	// timestamp (the service stamps an alert with the time it raises it,
	// replay with the event's time) and the fields in ignore. Without it,
	// differences are counted and the first is shown.
	sameAsReplay bool
	// ignore are fields left out of the comparison with replay.
	ignore []string
	// mayDiffer are fields that may differ from replay's: such alerts are
	// counted in differ, not failed.
	mayDiffer []string
	// logged is when the service logged each alert as published, for
	// failure messages.
	logged map[string]time.Time
}

// checkAlerts checks what came out of the alert queue against replay:
// every expected id at least once, copies of an id identical but for the
// time they were raised, nothing replay did not raise.
func checkAlerts(t *testing.T, in *input, bodies [][]byte, c alertCheck, f *figures) {
	t.Helper()
	f.expected = len(in.expected)
	byID := map[string][][]byte{}
	var order []string
	for _, b := range bodies {
		var a map[string]any
		if err := json.Unmarshal(b, &a); err != nil {
			t.Errorf("alert is not JSON: %v: %.200q", err, b)
			continue
		}
		id, _ := a["alert_id"].(string)
		if id == "" {
			t.Errorf("alert without alert_id: %.200q", b)
			continue
		}
		if _, ok := byID[id]; !ok {
			order = append(order, id)
			if _, want := in.expected[id]; !want {
				f.unexpected++
				if c.mayAdd == nil || !c.mayAdd(a) {
					t.Errorf("alert %s was not raised by replay: %s", id, summary(a, in))
				}
			}
		}
		byID[id] = append(byID[id], b)
	}
	f.received = len(byID)
	restamped := 0
	for _, id := range order {
		copies := byID[id]
		f.duplicates += len(copies) - 1
		first := without(t, copies[0], "timestamp")
		for _, c := range copies[1:] {
			switch {
			case bytes.Equal(c, copies[0]):
			case bytes.Equal(without(t, c, "timestamp"), first):
				restamped++
			default:
				t.Errorf("alert %s arrived twice with different bodies: %s", id, jsonDiff(c, copies[0]))
			}
		}
		ignore := append([]string{"timestamp"}, c.ignore...)
		want, ok := in.expected[id]
		if !ok || bytes.Equal(without(t, copies[0], ignore...), without(t, want, ignore...)) {
			continue
		}
		f.differ++
		tolerated := append(ignore, c.mayDiffer...)
		switch {
		case c.sameAsReplay && !bytes.Equal(without(t, copies[0], tolerated...), without(t, want, tolerated...)):
			t.Errorf("alert %s differs from replay's: %s", id, jsonDiff(copies[0], want))
		case f.differ == 1:
			f.note("the first alert that differs from replay's, %s: %s", id, jsonDiff(copies[0], want))
		}
	}
	if restamped > 0 {
		f.note("%d duplicate copies differ from the first only in timestamp (the time the service raised them)", restamped)
	}
	var missing []string
	for id := range in.expected {
		if _, ok := byID[id]; ok {
			continue
		}
		f.missing++
		if !c.mayMiss[id] {
			missing = append(missing, id)
		}
	}
	slices.Sort(missing)
	for i, id := range missing {
		if i == 10 {
			t.Errorf("... and %d more alerts missing", len(missing)-10)
			break
		}
		confirmed := "the service never logged it as published"
		if at, ok := c.logged[id]; ok {
			confirmed = "the service logged it as published at " + at.Format(time.RFC3339Nano)
		}
		t.Errorf("alert %s never arrived (%s; its events are messages %v): replay raised %.300s",
			id, confirmed, in.alertEvents[id], in.expected[id])
	}
}

// checkDeadLetters checks the dead-letter queue: exactly the hostile
// messages planted, each with its reason and the queue it came from;
// copies of one message only where the scenario redelivered it.
func checkDeadLetters(t *testing.T, in *input, dls []amqp.Delivery, queue string, f *figures) {
	t.Helper()
	seen := map[[32]byte]int{}
	for _, d := range dls {
		sum := sha256.Sum256(d.Body)
		want, ok := in.hostile[sum]
		if !ok {
			t.Errorf("dead letter that is not a planted hostile message (reason %v): %.200q", d.Headers["x-rejection-reason"], d.Body)
			continue
		}
		seen[sum]++
		if got, _ := d.Headers["x-rejection-reason"].(string); got != string(want) {
			t.Errorf("dead letter %.60q has reason %q, want %q", d.Body, got, want)
		}
		if got, _ := d.Headers["x-original-queue"].(string); got != queue {
			t.Errorf("dead letter %.60q says it came from %q, not %q", d.Body, got, queue)
		}
	}
	f.deadLetters = len(dls)
	for sum, reason := range in.hostile {
		switch n := seen[sum]; {
		case n == 0:
			t.Errorf("hostile message (%s) was never dead-lettered", reason)
		case n > 1:
			f.deadLetterCopies += n - 1
		}
	}
}

// counts are the service's own figures for a scenario.
type counts struct {
	consumed, processed, rejected, deadLettered float64
}

func countsOf(m metrics) counts {
	return counts{m[mConsumed], m[mProcessed], m[mRejected], m[mDeadLettered]}
}

// checkCounts checks the service's counters over a lifetime that ended
// cleanly. Each delivery is counted once in consumed_total when its
// settlement is sent, each event once in processed_total and each hostile
// message once in rejected_messages_total and dead_lettered_total when its
// batch is through. Where the broker cut the service's connections (cuts
// times), deliveries handled and settled in the instant of the cut can
// come back, the settlement lost with the connection, and be counted
// again: at most one prefetch window each time. Without cuts the counts
// are exact.
func checkCounts(t *testing.T, got counts, deliveries, events, hostile, cuts int, f *figures) {
	t.Helper()
	f.note("metrics: consumed_total %.0f (deliveries %d), processed_total %.0f (events %d), rejected %.0f and dead-lettered %.0f (hostile %d)",
		got.consumed, deliveries, got.processed, events, got.rejected, got.deadLettered, hostile)
	slack := cuts * prefetch
	within := func(name string, v float64, want int) {
		switch {
		case int(v) < want || int(v) > want+slack:
			t.Errorf("%s is %.0f, want %d (up to %d more after %d cuts)", name, v, want, slack, cuts)
		case int(v) > want:
			f.note("%s counted %.0f deliveries twice that came back after a cut", name, v-float64(want))
		}
	}
	within("consumed_total", got.consumed, deliveries)
	within("processed_total", got.processed, events)
	within("rejected_messages_total", got.rejected, hostile)
	within("dead_lettered_total", got.deadLettered, hostile)
}

// waitFor polls cond every 50ms until it holds, and fails the test after
// timeout with what describe says.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	var state string
	for time.Since(start) < timeout {
		var ok bool
		if ok, state = cond(); ok {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s (%s)", what, timeout, state)
	return 0
}

// jsonDiff names the top-level fields in which two JSON objects differ,
// with both values.
func jsonDiff(got, want []byte) string {
	var g, w map[string]any
	if json.Unmarshal(got, &g) != nil || json.Unmarshal(want, &w) != nil {
		return fmt.Sprintf("got %.300s, want %.300s", got, want)
	}
	var diffs []string
	for k := range w {
		if _, ok := g[k]; !ok {
			diffs = append(diffs, k+": missing")
		}
	}
	for k, gv := range g {
		wv, ok := w[k]
		if !ok {
			diffs = append(diffs, k+": not in replay's")
			continue
		}
		gb, _ := json.Marshal(gv)
		wb, _ := json.Marshal(wv)
		if !bytes.Equal(gb, wb) {
			diffs = append(diffs, fmt.Sprintf("%s: %.200s, replay %.200s", k, gb, wb))
		}
	}
	slices.Sort(diffs)
	if len(diffs) == 0 {
		return "same fields, different bytes"
	}
	return strings.Join(diffs, "; ")
}

// without returns an alert's JSON without the named fields, with its
// other fields in a fixed order.
func without(t *testing.T, alert []byte, fields ...string) []byte {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(alert, &m); err != nil {
		t.Fatalf("alert is not a JSON object: %v", err)
	}
	for _, f := range fields {
		delete(m, f)
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// summary describes an alert by its rule, group, window and events (with
// their places in the input), for failure messages.
func summary(a map[string]any, in *input) string {
	rule, _ := a["analysis_rule"].(map[string]any)
	ids, _ := a["event_ids"].([]any)
	var events []string
	for _, id := range ids {
		s, _ := id.(string)
		if line, ok := in.eventLine[s]; ok {
			events = append(events, fmt.Sprintf("%s (message %d)", s, line))
		} else {
			events = append(events, s)
		}
	}
	return fmt.Sprintf("rule %v, group %v, window %v, suppressed %v, events %s",
		rule["rule_id"], a["group"], a["window"], a["suppressed_count"], strings.Join(events, ", "))
}
