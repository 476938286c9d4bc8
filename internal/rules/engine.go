package rules

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/alert"
	"github.com/audit-platform/audit-log-analysis/internal/event"
	"github.com/audit-platform/audit-log-analysis/internal/state"
)

// Store keeps the windowed state of threshold rules. Apply handles a batch
// of updates in order, in one round trip where the store is remote; an
// error means none of the answers can be trusted and the batch is retried.
type Store interface {
	Apply(ctx context.Context, updates []state.Update) ([]state.Result, error)
}

// Options configures an Engine.
type Options struct {
	// Environment goes into every alert's metadata.
	Environment string
	// MaxClockSkew: an event time further than this ahead of arrival time
	// is clamped to arrival time. Zero disables clamping.
	MaxClockSkew time.Duration
	// EventClock makes arrival time the newest event time seen so far
	// instead of the wall clock, so a replay is deterministic.
	EventClock bool
}

// Engine turns events into alerts. Process and Flush are called by one
// goroutine at a time; SetRules may be called from any goroutine.
type Engine struct {
	store Store
	opts  Options
	rules atomic.Pointer[Set]

	newest time.Time // EventClock only
	// held is the last event of the previous batch, EventClock only: it
	// is processed with the next batch, once the event after it is known.
	held *event.Event
}

// NewEngine returns an engine running set against store.
func NewEngine(store Store, set *Set, opts Options) *Engine {
	e := &Engine{store: store, opts: opts}
	e.rules.Store(set)
	return e
}

// SetRules swaps the rule set; the next batch uses it. State of threshold
// rules whose id, group-by, window and distinct field are unchanged is
// kept, because their store keys are.
func (e *Engine) SetRules(set *Set) { e.rules.Store(set) }

// Rules returns the rule set in use.
func (e *Engine) Rules() *Set { return e.rules.Load() }

// Fired is an alert with the rule that raised it.
type Fired struct {
	Alert alert.Alert
	Rule  *Rule
}

// Output is what one batch produced.
type Output struct {
	// Alerts in event order, then rule order.
	Alerts []Fired
	// Clamped counts events whose time was too far in the future.
	Clamped int
	// InvalidTimestamps counts events whose timestamp could not be read.
	InvalidTimestamps int
	// Suppressed counts suppressed matches by rule id.
	Suppressed map[string]int
	// Duplicates counts matches the store had already seen.
	Duplicates int
}

// Add adds o2's counts and alerts to o.
func (o *Output) Add(o2 Output) {
	o.Alerts = append(o.Alerts, o2.Alerts...)
	o.Clamped += o2.Clamped
	o.InvalidTimestamps += o2.InvalidTimestamps
	o.Duplicates += o2.Duplicates
	for id, n := range o2.Suppressed {
		if o.Suppressed == nil {
			o.Suppressed = map[string]int{}
		}
		o.Suppressed[id] += n
	}
}

// pending is one alert waiting for the store's answer (stateful) or ready
// (stateless: result is nil).
type pending struct {
	rule   *Rule
	ev     *event.Event
	update int      // index into updates, -1 when stateless
	values []string // group-by values, in the rule's group_by order
	key    string
	now    time.Time
}

// Process runs the rules over a batch of events. now is the arrival time of
// the batch (ignored with EventClock). On error nothing of the batch may be
// acknowledged; running the same batch again is safe: the store is
// idempotent and alert ids are deterministic.
//
// With EventClock each event is processed once the event after it is known
// (see eventTime): the last event of a batch waits for the next batch, or
// for Flush.
func (e *Engine) Process(ctx context.Context, events []*event.Event, now time.Time) (Output, error) {
	if !e.opts.EventClock {
		return e.process(ctx, events, nil, now)
	}
	all := events
	if e.held != nil {
		all = append([]*event.Event{e.held}, events...)
	}
	if len(all) == 0 {
		return Output{}, nil
	}
	last := all[len(all)-1]
	out, err := e.process(ctx, all[:len(all)-1], last, now)
	if err != nil {
		return Output{}, err
	}
	e.held = last
	return out, nil
}

// Flush processes the event Process holds back with EventClock, as the last
// of its input.
func (e *Engine) Flush(ctx context.Context) (Output, error) {
	if e.held == nil {
		return Output{}, nil
	}
	out, err := e.process(ctx, []*event.Event{e.held}, nil, time.Time{})
	if err != nil {
		return Output{}, err
	}
	e.held = nil
	return out, nil
}

// process runs the rules over events; after, if not nil, is the event that
// follows the last of them.
func (e *Engine) process(ctx context.Context, events []*event.Event, after *event.Event, now time.Time) (Output, error) {
	set := e.rules.Load()
	var out Output
	var updates []state.Update
	var todo []pending
	for i, ev := range events {
		if ev.TimestampInvalid {
			out.InvalidTimestamps++
		}
		next := after
		if i+1 < len(events) {
			next = events[i+1]
		}
		t, arrival, clamped := e.eventTime(ev, next, now)
		if clamped {
			out.Clamped++
		}
		for _, r := range set.Rules {
			if !r.Enabled || !r.Matches(ev) {
				continue
			}
			p := pending{rule: r, ev: ev, update: -1, now: arrival}
			if th := r.Threshold; th != nil {
				p.values = make([]string, len(th.GroupBy))
				for i, f := range th.GroupBy {
					p.values[i] = groupValue(ev, f)
				}
				p.key = th.groupKey(p.values)
				u := state.Update{
					Key:      p.key,
					EventID:  ev.Key,
					Time:     t.UnixMicro(),
					Count:    th.Count,
					Window:   th.Window,
					Suppress: r.Suppress,
				}
				if th.Distinct != "" {
					u.Distinct = true
					u.Value = groupValue(ev, th.Distinct)
				}
				p.update = len(updates)
				updates = append(updates, u)
			}
			todo = append(todo, p)
		}
	}
	var results []state.Result
	if len(updates) > 0 {
		var err error
		if results, err = e.store.Apply(ctx, updates); err != nil {
			return Output{}, fmt.Errorf("apply %d updates to the state store: %w", len(updates), err)
		}
		if len(results) != len(updates) {
			return Output{}, fmt.Errorf("state store answered %d of %d updates", len(results), len(updates))
		}
	}
	for _, p := range todo {
		in := alert.Input{Rule: p.rule.Alert, Event: p.ev, Environment: e.opts.Environment, Now: p.now}
		vals := templateValues{ruleID: p.rule.Alert.ID}
		if p.update >= 0 {
			res := results[p.update]
			switch res.Outcome {
			case state.Suppressed:
				if out.Suppressed == nil {
					out.Suppressed = map[string]int{}
				}
				out.Suppressed[p.rule.Alert.ID]++
				continue
			case state.Duplicate:
				out.Duplicates++
				continue
			case state.Below:
				continue
			}
			th := p.rule.Threshold
			b := res.Burst
			group := make(map[string]string, len(th.GroupBy))
			for i, f := range th.GroupBy {
				group[f] = p.values[i]
			}
			in.Burst = &alert.Burst{
				GroupKey:     p.key,
				Group:        group,
				Start:        time.UnixMicro(b.Start).UTC(),
				End:          time.UnixMicro(b.End).UTC(),
				Window:       th.Window,
				Count:        b.Count,
				Threshold:    th.Count,
				FirstEventID: b.FirstEventID,
				EventIDs:     b.EventIDs,
				Suppressed:   b.Suppressed,
			}
			vals.threshold, vals.window, vals.count = th.Count, th.Window, b.Count
		}
		in.Rule.Description = p.rule.description.render(p.ev, vals)
		in.Description = p.rule.alertDescription.render(p.ev, vals)
		out.Alerts = append(out.Alerts, Fired{Alert: alert.Build(in), Rule: p.rule})
	}
	return out, nil
}

// groupValue is a field's value as a group key or distinct value. Paths
// and addresses are canonical, so "/etc//shadow" and "/etc/shadow", or
// "::ffff:10.0.0.1" and "10.0.0.1", are one group: spelling a value another
// way must not split a count an attacker wants to stay under.
func groupValue(ev *event.Event, field string) string {
	v, _ := ev.Field(field)
	switch field {
	case "resource":
		return event.CanonicalPath(v)
	case "client_ip":
		if addr, err := netip.ParseAddr(strings.TrimSpace(v)); err == nil {
			return addr.WithZone("").Unmap().String()
		}
	}
	return v
}

// Event times the state stores can hold: from the Unix epoch to 2^52 µs
// (September 2112), where a Redis score still holds a time exactly.
var (
	minEventTime = time.Unix(0, 0).UTC()
	maxEventTime = time.UnixMicro(1 << 52).UTC()
)

func inRange(t time.Time) bool { return !t.Before(minEventTime) && !t.After(maxEventTime) }

// eventTime returns the time an event counts at, its arrival time, and
// whether its own time was clamped for being too far ahead or outside the
// range the stores hold. A time the stores cannot hold must never fail a
// batch: the batch would be retried forever.
//
// With EventClock, arrival is the newest event time seen so far, and an
// event far ahead of it is either a host with a wrong clock (clamped) or
// the first event after a quiet spell in the input (not clamped: the
// clock moves on). next, the event after it, tells them apart: after a
// quiet spell it is close to this one too; after a wrong clock's outlier it
// is back near the clock. The last event of the input is taken as it is.
func (e *Engine) eventTime(ev, next *event.Event, now time.Time) (t, arrival time.Time, clamped bool) {
	if e.opts.EventClock {
		arrival = e.newest
		if arrival.IsZero() {
			arrival = minEventTime
		}
	} else {
		arrival = now
	}
	skew := e.opts.MaxClockSkew
	t = ev.Timestamp
	switch {
	case t.IsZero():
		t = arrival
	case !inRange(t):
		t, clamped = arrival, true
	case skew > 0 && t.Sub(arrival) > skew:
		if !e.opts.EventClock {
			t, clamped = arrival, true
			break
		}
		quietSpell := e.newest.IsZero() || next == nil ||
			(!next.Timestamp.IsZero() && next.Timestamp.Sub(t).Abs() <= skew)
		if !quietSpell {
			t, clamped = arrival, true
		}
	}
	if !inRange(t) {
		// Only a wall clock outside 1970..2112 gets here.
		t = minEventTime
	}
	if e.opts.EventClock {
		if t.After(e.newest) {
			e.newest = t
		}
		arrival = e.newest
	}
	return t, arrival, clamped
}
