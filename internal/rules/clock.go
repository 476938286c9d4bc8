package rules

import (
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/event"
)

// A Clock decides when each event of a batch happened as far as the rules
// are concerned. The service and replay differ only in their clocks: the
// engine is the same.
type Clock interface {
	// Stamp fills stamps[i] for events[i]. now is the wall-clock time the
	// batch arrived.
	Stamp(events []*event.Event, now time.Time, stamps []Stamp)
}

// Stamp is when one event counts.
type Stamp struct {
	// At is the time the event counts at in windows: its own time, or
	// its arrival time when it has none, an unreadable one, or one too
	// far ahead.
	At time.Time
	// Arrival is when it arrived: the timestamp of the alerts it raises.
	Arrival time.Time
	// Clamped reports that the event's own time was replaced for being
	// too far ahead of arrival or outside the range the stores hold.
	Clamped bool
}

// Event times the state stores can hold: from the Unix epoch to 2^52 µs
// (September 2112), where a Redis score still holds a time exactly.
var (
	minEventTime = time.Unix(0, 0).UTC()
	maxEventTime = time.UnixMicro(1 << 52).UTC()
)

func inRange(t time.Time) bool { return !t.Before(minEventTime) && !t.After(maxEventTime) }

// readable reports whether an event's own time can count.
func readable(ev *event.Event) bool { return !ev.Timestamp.IsZero() && inRange(ev.Timestamp) }

// ArrivalClock is the service's clock: an event arrives when its batch
// does, on the wall clock. An event with no readable time counts at
// arrival; so does one dated more than MaxSkew ahead (a host with a wrong
// clock cannot scatter a burst over days).
type ArrivalClock struct {
	// MaxSkew is how far ahead of arrival an event time may be; zero
	// allows any.
	MaxSkew time.Duration
}

// Stamp implements Clock.
func (c ArrivalClock) Stamp(events []*event.Event, now time.Time, stamps []Stamp) {
	if !inRange(now) {
		now = minEventTime // only a wall clock outside 1970..2112 gets here
	}
	for i, ev := range events {
		s := Stamp{At: ev.Timestamp, Arrival: now}
		switch {
		case ev.Timestamp.IsZero():
			s.At = now
		case !inRange(ev.Timestamp):
			s.At, s.Clamped = now, true
		case c.MaxSkew > 0 && ev.Timestamp.Sub(now) > c.MaxSkew:
			s.At, s.Clamped = now, true
		}
		stamps[i] = s
	}
}

// ReplayClock is replay's clock: recorded events have no arrival time, so
// arrival is the newest event time seen so far, which makes a replay give
// the same alerts on every run.
//
// An event dated more than MaxSkew ahead of that is either from a host with
// a wrong clock (it counts at arrival) or the first after a quiet spell in
// the input (the clock moves on). The events after it tell them apart: a
// wrong clock's outlier is followed, within the next lookahead events, by
// one back near the clock; after a quiet spell, or in sparse input (a
// login a day), none is. Events before the first readable time take that
// time.
//
// So an event's stamp depends on the events after it. Ready says how many
// pending events the clock can stamp; replay holds the rest back, and
// tells the clock with Follow what follows each batch it stamps.
type ReplayClock struct {
	MaxSkew time.Duration
	newest  time.Time
	// lead is the first readable time of the input, once Ready has seen
	// it and while the clock has not reached it.
	lead time.Time
	// following are the events after the next batch (see Follow).
	following []*event.Event
}

// lookahead is how many of the events that follow an event far ahead of
// the clock are looked at for one back near it.
const lookahead = 8

// NewReplayClock returns a replay clock with the given skew allowance.
func NewReplayClock(maxSkew time.Duration) *ReplayClock { return &ReplayClock{MaxSkew: maxSkew} }

// Ready returns how many of the pending events, in input order, the clock
// can stamp without knowing more of the input: all but the last lookahead
// once a readable time is known, none while no event has had one.
func (c *ReplayClock) Ready(pending []*event.Event) int {
	if c.newest.IsZero() && c.lead.IsZero() {
		for _, ev := range pending {
			if readable(ev) {
				c.lead = ev.Timestamp
				break
			}
		}
		if c.lead.IsZero() {
			return 0
		}
	}
	return max(0, len(pending)-lookahead)
}

// Follow tells the clock which events follow the next batch it stamps (at
// least lookahead of them, or all that remain of the input). Without it the
// input is taken to end with the batch.
func (c *ReplayClock) Follow(events []*event.Event) { c.following = events }

// Stamp implements Clock. When no event of the input has a readable time,
// events count at now, the time the replay started.
func (c *ReplayClock) Stamp(events []*event.Event, now time.Time, stamps []Stamp) {
	following := c.following
	c.following = nil
	lead := -1 // index of the first readable event, while the clock has no time
	for i, ev := range events {
		if c.newest.IsZero() && !readable(ev) {
			// Before the first readable time: take it.
			if lead < i {
				lead = i + 1
				for lead < len(events) && !readable(events[lead]) {
					lead++
				}
			}
			t := c.lead
			if t.IsZero() && lead < len(events) {
				t = events[lead].Timestamp
			}
			if t.IsZero() {
				t = now
			}
			stamps[i] = Stamp{At: t, Arrival: t, Clamped: !ev.Timestamp.IsZero()}
			continue
		}
		stamps[i] = c.stamp(ev, events[i+1:], following)
	}
}

// stamp stamps ev; after it come the events in next, then those in then.
func (c *ReplayClock) stamp(ev *event.Event, next, then []*event.Event) Stamp {
	s := Stamp{At: ev.Timestamp, Arrival: c.newest}
	switch t := ev.Timestamp; {
	case t.IsZero():
		s.At = c.newest
	case !inRange(t):
		s.At, s.Clamped = c.newest, true
	case c.newest.IsZero():
		// The first readable time starts the clock.
	case c.MaxSkew > 0 && t.Sub(c.newest) > c.MaxSkew:
		for j := range lookahead {
			var n *event.Event
			switch {
			case j < len(next):
				n = next[j]
			case j-len(next) < len(then):
				n = then[j-len(next)]
			}
			if n == nil {
				break
			}
			if readable(n) && n.Timestamp.Sub(c.newest) <= c.MaxSkew {
				// Something after it is back near the clock: a wrong
				// clock.
				s.At, s.Clamped = c.newest, true
				break
			}
		}
	}
	if s.At.After(c.newest) {
		c.newest = s.At
	}
	s.Arrival = c.newest
	return s
}
