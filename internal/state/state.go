// Package state owns the windowed counters that threshold rules keep between
// events: an in-memory store for replay and tests, and a Redis store shared by
// every replica of the service. Both implement the same semantics, checked by
// one behavioural test suite.
package state

import "time"

// Update asks a store to record one matching event for one threshold rule
// group and to say whether that group now fires.
type Update struct {
	// Key identifies the group: rule id, rule shape (group-by, window,
	// distinct) and the group's values, already hashed by the caller into
	// a short string of [0-9a-f]. Stores never see user-controlled text in
	// keys.
	Key string
	// EventID is the event's idempotency id: recording the same id twice
	// for the same Key changes nothing.
	EventID string
	// Time is the event time in Unix microseconds.
	Time int64
	// Value is the value counted distinctly when Distinct is set.
	Value    string
	Distinct bool
	// Count is the threshold: the number of events (or distinct values)
	// that must lie within one window.
	Count int
	// Window is the window length; events lie within one window when the
	// newest is less than Window after the oldest.
	Window time.Duration
	// Suppress is how close (before its start or after its end) to an
	// already alerted window an event must lie to be suppressed; 0 turns
	// suppression off.
	Suppress time.Duration
}

// Outcome is what a store decided for one Update.
type Outcome int

const (
	// Below: recorded, no window reaches the threshold yet.
	Below Outcome = iota
	// Fired: a window containing this event reaches the threshold.
	Fired
	// Suppressed: the event lies within Suppress of an alerted window.
	Suppressed
	// Duplicate: the event id was already recorded for this key.
	Duplicate
)

func (o Outcome) String() string {
	switch o {
	case Below:
		return "below"
	case Fired:
		return "fired"
	case Suppressed:
		return "suppressed"
	case Duplicate:
		return "duplicate"
	}
	return "unknown"
}

// MaxEventIDs bounds the ids a Burst lists.
const MaxEventIDs = 10

// Burst describes the window that fired.
type Burst struct {
	// Start and End are the times (Unix microseconds) of the oldest and
	// newest event in the window.
	Start, End int64
	// Count is the number of events in the window, or of distinct values
	// for a distinct rule.
	Count int
	// FirstEventID is the oldest event of the window (ties broken by id);
	// TriggerEventID is the event whose update fired.
	FirstEventID   string
	TriggerEventID string
	// EventIDs lists up to MaxEventIDs ids of the window in time order.
	EventIDs []string
	// Suppressed counts the events suppressed for this key since the
	// previous alert (0 for the first alert).
	Suppressed int
}

// Result answers one Update. Burst is set only when Outcome is Fired.
type Result struct {
	Outcome Outcome
	Burst   Burst
}
