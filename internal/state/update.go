package state

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Both stores apply an Update the same way; memory.go and newvalue.go are
// one implementation, correlate.lua and newvalue.lua the other, and
// reference_test.go a plain restatement both are checked against.
//
// Threshold and sequence groups ("correlation" groups) are defined by what
// processing their events in (time, id) order would alert on:
//
//   - A trigger is an event that matches the last step (a threshold has one
//     step, which every event matches).
//   - A trigger x completes when the events up to x (in order) with times
//     after x's time minus Window satisfy every step: step 1 by its Count
//     events (or distinct values), each later step by events whose times
//     are strictly later than those that satisfied the step before it
//     (chosen greedily, earliest first), the last step including events up
//     to x.
//   - A completed trigger alerts unless it lies within Suppress after the
//     trigger of the group's previous alert (its time before that
//     trigger's time plus Suppress): then it is suppressed. Suppressed
//     events still count towards later windows.
//
// Events arrive in any order, so a store keeps the list of triggers that
// alert in that order ("bursts") for the events it has, and recomputes it
// from each new event onwards. An event can only make triggers complete
// earlier or more often, never fewer, so the list only grows or moves
// earlier; when it grows by d, the update reports the last d bursts that
// are new. Shuffling arrival within the lateness (max(Window, 5m)) thus
// changes no alert count. Alerts already published keep the window they
// were published with.
//
// Per update:
//
//  0. A group whose newest event is more than idleLimit before the update
//     starts afresh, as an expired key would.
//  1. An event id already recorded changes nothing: the answer is the
//     alert its first delivery raised, if still remembered, or Duplicate.
//  2. An event older than the retention behind the group's newest event is
//     not recorded (Below).
//  3. Otherwise it is recorded; events older than the retention are
//     forgotten, then the oldest of a step beyond maxEvents.
//  4. The bursts are recomputed from the event on, until the computation
//     agrees with the previous one again; new bursts are reported (Fired).
//     Otherwise a trigger within a suppression zone, or one that only
//     moves an alerted burst earlier, is Suppressed, and any other event
//     Below.
//
// New-value groups: see newvalue.go.

// Bounds shared by both stores. They are part of the semantics: changing one
// changes which events are remembered, so both stores read them from here.
const (
	// maxEvents bounds the events a group remembers per step; the oldest
	// go first.
	maxEvents = 4096
	// maxBursts bounds the alerting triggers a group remembers. When it
	// holds that many, events no later than the oldest are too late.
	maxBursts = 64
	// maxAlerts bounds the alerts a group remembers to answer a
	// redelivered event with.
	maxAlerts = 16
	// minLateness is the least time an event may arrive late and still
	// count with the events it belongs with.
	minLateness = 5 * time.Minute
	// alertedGrace keeps a group that alerted this much longer, so that
	// the next alert after a quiet spell still reports how many matches
	// were suppressed since the last.
	alertedGrace = 10 * time.Minute
	// MaxSteps bounds the steps of a sequence.
	MaxSteps = 8
	// MaxSequenceEvents bounds the sum of a sequence's step counts: its
	// alerts list every event.
	MaxSequenceEvents = 1000
	// DefaultMaxValues is a new-value group's default capacity; MaxValues
	// bounds what a rule may ask for.
	DefaultMaxValues = 1024
	MaxValues        = 1 << 16

	// maxSpan and maxTime keep every sum of a time and spans below 2^53,
	// where a Redis score and a Lua number still hold it exactly.
	maxSpan = 366 * 24 * time.Hour
	maxTime = 1 << 52
)

// ErrInvalidUpdate reports an Update no store can apply: retrying the batch
// cannot help, so callers should treat it as permanent.
var ErrInvalidUpdate = errors.New("invalid state update")

// validate checks a whole batch before any of it is applied, so an invalid
// update leaves the store unchanged.
func validate(updates []Update) error {
	for i, u := range updates {
		if err := check(u); err != nil {
			return fmt.Errorf("%w: update %d (key %q, event %q): %s", ErrInvalidUpdate, i, u.Key, u.EventID, err)
		}
	}
	return nil
}

func check(u Update) error {
	switch {
	case !isHex(u.Key):
		// Redis key names embed Key inside a {hash tag}; only the
		// caller's hex digest keeps users from choosing the slot.
		return errors.New("key must be non-empty lowercase hex")
	case u.EventID == "":
		return errors.New("event id is empty")
	case strings.IndexByte(u.EventID, 0) >= 0:
		return errors.New("event id contains NUL")
	case u.Time < 0 || u.Time > maxTime:
		return fmt.Errorf("time %d out of range", u.Time)
	}
	switch u.Kind {
	case Threshold:
		if u.Count < 1 {
			return fmt.Errorf("count %d below 1", u.Count)
		}
	case Sequence:
		if len(u.Steps) < 1 || len(u.Steps) > MaxSteps {
			return fmt.Errorf("%d steps, want 1 to %d", len(u.Steps), MaxSteps)
		}
		total := 0
		for _, s := range u.Steps {
			if s.Count < 1 {
				return fmt.Errorf("step count %d below 1", s.Count)
			}
			total += s.Count
		}
		if total > MaxSequenceEvents {
			return fmt.Errorf("step counts add up to %d, more than %d", total, MaxSequenceEvents)
		}
		if u.Mask == 0 || u.Mask>>len(u.Steps) != 0 {
			return fmt.Errorf("step mask %b does not name a step of %d", u.Mask, len(u.Steps))
		}
		if len(u.Values) != 0 && len(u.Values) != len(u.Steps) {
			return fmt.Errorf("%d values for %d steps", len(u.Values), len(u.Steps))
		}
	case NewValue:
		switch {
		case micros(u.History) < 1 || u.History > maxSpan:
			return fmt.Errorf("history %v out of range", u.History)
		case u.Learn < 0 || u.Learn > maxSpan:
			return fmt.Errorf("learn %v out of range", u.Learn)
		case u.MaxValues < 1 || u.MaxValues > MaxValues:
			return fmt.Errorf("max values %d out of range", u.MaxValues)
		case u.Value == "":
			return errors.New("value is empty")
		}
		return nil
	default:
		return fmt.Errorf("unknown kind %d", u.Kind)
	}
	switch {
	case micros(u.Window) < 1 || u.Window > maxSpan:
		return fmt.Errorf("window %v out of range", u.Window)
	case u.Suppress < 0 || u.Suppress > maxSpan:
		return fmt.Errorf("suppress %v out of range", u.Suppress)
	}
	return nil
}

func isHex(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func micros(d time.Duration) int64 { return d.Microseconds() }

// lateness is how late (µs, behind the group's newest event) an event may
// arrive and still be sure to count with every event it shares a window
// with: the window, and at least five minutes.
func lateness(window time.Duration) int64 { return max(micros(window), micros(minLateness)) }

// retention is how far behind the newest event (µs) a correlation group
// keeps events: a late event's window reaches that far back.
func retention(window time.Duration) int64 { return micros(window) + lateness(window) }

// idleLimit is how long (µs), in event time, a correlation group may go
// without an event before the next one starts it afresh; Redis keeps its
// keys as long in wall-clock time. Until it alerts that is the retention:
// no event older can count any more. After an alert its suppression zone
// must be remembered too, and a while longer its suppressed count. For a
// live stream event and wall-clock time agree; for recorded events
// published at once, event time keeps the service and replay alike.
func idleLimit(u Update, alerted bool) int64 {
	if alerted {
		return max(micros(u.Window), micros(u.Suppress)) + lateness(u.Window) + micros(alertedGrace)
	}
	return retention(u.Window)
}

// newValueLimit is the same for a new-value group: its values matter for
// History, its first event for Learn.
func newValueLimit(u Update) int64 {
	return max(micros(u.History), micros(u.Learn)) + micros(minLateness)
}
