// Package state owns what stateful rules keep between events: the windows
// of threshold and sequence rules and the values first-seen rules have
// seen. An in-memory store serves replay and tests, a Redis store every
// replica of the service. Both implement the same semantics, checked by
// one behavioural test suite and by a reference implementation.
package state

import "time"

// Kind says what an Update is for.
type Kind uint8

const (
	// Threshold: Count events (or distinct Values) within one Window.
	Threshold Kind = iota
	// Sequence: the Steps in event-time order within one Window.
	Sequence
	// NewValue: a value the group has not seen within History.
	NewValue
)

func (k Kind) String() string {
	switch k {
	case Threshold:
		return "threshold"
	case Sequence:
		return "sequence"
	case NewValue:
		return "new_value"
	}
	return "unknown"
}

// Update asks a store to record one matching event for one rule group and
// to say whether the group now alerts.
type Update struct {
	Kind Kind
	// Key identifies the group: rule id, rule shape and the group's
	// values, already hashed by the caller into a short string of
	// [0-9a-f]. Stores never see user-controlled text in keys.
	Key string
	// EventID is the event's idempotency id: recording the same id twice
	// for the same Key changes nothing.
	EventID string
	// Time is the event time in Unix microseconds.
	Time int64

	// Threshold: Count events, or Count distinct Values when Distinct is
	// set, must lie within one Window.
	Count    int
	Distinct bool
	Value    string

	// Sequence: the rule's steps in order. The event matches the steps
	// whose bits are set in Mask (bit i for Steps[i]); Values[i] is its
	// value for a distinct step i.
	Steps  []Step
	Mask   uint64
	Values []string

	// Threshold and Sequence: the window length, and how long after an
	// alerted window's last event further matches are suppressed (0 turns
	// suppression off).
	Window   time.Duration
	Suppress time.Duration

	// NewValue: Value is the canonical value (or a digest of it). It is
	// new when the group has not seen it within History, and alerts once
	// the group's first event is at least Learn old. The group remembers
	// at most MaxValues values, the least recently seen evicted first.
	History   time.Duration
	Learn     time.Duration
	MaxValues int
}

// Step is one step of a sequence rule: Count events, or Count distinct
// values when Distinct is set.
type Step struct {
	Count    int
	Distinct bool
}

// Outcome is what a store decided for one Update.
type Outcome int

const (
	// Below: recorded; no new alert.
	Below Outcome = iota
	// Fired: the update completes one or more windows that alert.
	Fired
	// Suppressed: the update would complete a window, but lies within
	// Suppress of one that already alerted (or belongs to one).
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

// MaxEventIDs bounds the ids a threshold Burst lists; a sequence Burst
// lists every event of its steps.
const MaxEventIDs = 10

// Burst describes a window that alerts.
type Burst struct {
	// Start and End are the times (Unix microseconds) of the window's
	// first and last event.
	Start, End int64
	// Count is the number of events in the window, or of distinct values
	// for a distinct threshold; for a sequence, the events its steps
	// list.
	Count int
	// FirstEventID and LastEventID are the window's first and last event
	// in (time, id) order; the last is the one that completes it.
	FirstEventID string
	LastEventID  string
	// EventIDs lists the window's events in time order: up to MaxEventIDs
	// for a threshold, every event of every step for a sequence.
	EventIDs []string
	// Suppressed counts the matches suppressed for this group since its
	// previous alert.
	Suppressed int
	// Steps describes each step of a sequence.
	Steps []StepReport
}

// StepReport is one step of a sequence that alerted: how many events
// satisfied it and the times (Unix microseconds) of the first and last.
type StepReport struct {
	Count       int
	First, Last int64
}

// Result answers one Update.
type Result struct {
	Outcome Outcome
	// Bursts are set when Outcome is Fired: usually one; a late event can
	// complete more than one window at once.
	Bursts []Burst
	// Known is, for NewValue updates, how many values the group knows
	// after this one; Evicted how many it forgot to stay within
	// MaxValues.
	Known   int
	Evicted int
}
