package state

import (
	"errors"
	"fmt"
	"time"
)

// Both stores apply an Update to its group (the state of one Key) the same
// way; memory.go and apply.lua are the two implementations:
//
//  0. A group whose newest event is more than idleLimit before the update
//     starts afresh, as an expired key would.
//  1. An event id already recorded or suppressed changes nothing: the
//     answer is the stored alert it triggered, if still remembered, or
//     Duplicate.
//  2. An event closer than Suppress to an alerted burst (strictly) is
//     remembered as suppressed and counted for the next alert.
//  3. Otherwise it is recorded, and events older than the retention
//     behind the newest one are forgotten, then the oldest beyond
//     maxEvents.
//  4. Candidates are the recorded events less than Window from it and
//     outside every suppression zone, in (time, id) order. The first
//     window [c, c+Window) starting at a candidate c no later than the
//     event that holds Count events (or distinct values) fires; the burst
//     is remembered (the newest maxBursts are kept).

// Bounds shared by both stores. They are part of the semantics: changing one
// changes which events are remembered, so both stores read them from here.
const (
	// maxEvents bounds the events a group remembers; the oldest go first.
	maxEvents = 4096
	// maxSuppressed bounds the suppressed ids a group remembers (the
	// oldest go first), so a sustained flood on one group costs bounded
	// memory; an id forgotten and delivered again counts as suppressed
	// again, which only overstates a suppressed count.
	maxSuppressed = 4096
	// maxBursts bounds the alerted bursts a group remembers for
	// suppression and for answering a redelivered trigger event.
	maxBursts = 16
	// minRetention is the least time events are kept behind the newest
	// one, so that late events still find the events they complete.
	minRetention = 5 * time.Minute
	// keyGrace keeps Redis keys this much longer than the windows need,
	// so a quiet group is not forgotten while a late event may still come.
	keyGrace = 10 * time.Minute

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
	case u.Time < 0 || u.Time > maxTime:
		return fmt.Errorf("time %d out of range", u.Time)
	case u.Count < 1:
		return fmt.Errorf("count %d below 1", u.Count)
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

// retention is how far behind the newest event (in µs) a group keeps events:
// the window plus at least five minutes for late arrivals.
func retention(window time.Duration) int64 {
	w := micros(window)
	return w + max(w, micros(minRetention))
}

// idleLimit is how long, in event time, a group may go without an event
// before the next one starts it afresh: its key TTL, in microseconds. Redis
// also expires the keys in wall-clock time; for a live stream the two agree,
// and for recorded events published at once this keeps the service and
// replay alike.
func idleLimit(u Update) int64 { return keyTTL(u).Milliseconds() * 1000 }

// keyTTL is how long Redis keeps a group after its last update.
func keyTTL(u Update) time.Duration {
	return time.Duration(retention(u.Window)+micros(u.Suppress))*time.Microsecond + keyGrace
}
