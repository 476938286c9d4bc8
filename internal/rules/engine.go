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

// Store keeps the state of stateful rules. Apply handles a batch of updates
// in order, in one round trip where the store is remote; an error means
// none of the answers can be trusted and the batch is retried.
type Store interface {
	Apply(ctx context.Context, updates []state.Update) ([]state.Result, error)
}

// Options configures an Engine.
type Options struct {
	// Environment goes into every alert's metadata.
	Environment string
	// Clock decides when events count: ArrivalClock in the service,
	// ReplayClock in replay. Nil means an ArrivalClock with no skew
	// limit.
	Clock Clock
}

// Engine turns events into alerts. Process is called by one goroutine at a
// time; SetRules may be called from any goroutine.
type Engine struct {
	store Store
	opts  Options
	rules atomic.Pointer[Set]
	// Scratch space for Process, reused batch after batch.
	stamps []Stamp
	// lastSteps are recent events that matched the last step of a
	// sequence: a sequence completed out of order is still raised by its
	// last step's event when that is one of them.
	lastSteps recent
}

// recent remembers the newest events put in it, within a count and a size
// in bytes, oldest out first.
type recent struct {
	byKey map[string]*event.Event
	order []string // keys, oldest first
	bytes int
}

const (
	recentEvents = 4096
	recentBytes  = 8 << 20
)

func (c *recent) put(ev *event.Event) {
	if c.byKey == nil {
		c.byKey = map[string]*event.Event{}
	}
	if _, ok := c.byKey[ev.Key]; ok || len(ev.Raw) > recentBytes {
		return
	}
	c.byKey[ev.Key] = ev
	c.order = append(c.order, ev.Key)
	c.bytes += len(ev.Raw)
	for len(c.order) > recentEvents || c.bytes > recentBytes {
		old := c.byKey[c.order[0]]
		delete(c.byKey, c.order[0])
		c.bytes -= len(old.Raw)
		c.order[0] = ""
		c.order = c.order[1:]
	}
}

// NewEngine returns an engine running set against store.
func NewEngine(store Store, set *Set, opts Options) *Engine {
	if opts.Clock == nil {
		opts.Clock = ArrivalClock{}
	}
	e := &Engine{store: store, opts: opts}
	e.rules.Store(set)
	return e
}

// SetRules swaps the rule set; the next batch uses it. The state of
// stateful rules whose shape (id, kind, group-by, window, distinct fields,
// new-value fields) is unchanged is kept, because their store keys are.
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
	// Evicted counts, by rule id, values new-value groups forgot to stay
	// within their capacity.
	Evicted map[string]int
}

// Add adds o2's counts and alerts to o.
func (o *Output) Add(o2 Output) {
	o.Alerts = append(o.Alerts, o2.Alerts...)
	o.Clamped += o2.Clamped
	o.InvalidTimestamps += o2.InvalidTimestamps
	o.Duplicates += o2.Duplicates
	for id, n := range o2.Suppressed {
		o.count(&o.Suppressed, id, n)
	}
	for id, n := range o2.Evicted {
		o.count(&o.Evicted, id, n)
	}
}

func (o *Output) count(m *map[string]int, id string, n int) {
	if n == 0 {
		return
	}
	if *m == nil {
		*m = map[string]int{}
	}
	(*m)[id] += n
}

// pending is one match waiting for the store's answer (stateful) or ready
// to alert (stateless: update is -1).
type pending struct {
	rule   *Rule
	ev     *event.Event
	update int      // index into updates, -1 when stateless
	values []string // group-by values, in the rule's group_by order
	key    string
	now    time.Time
}

// Process runs the rules over a batch of events; now is the wall-clock
// time the batch arrived, for the clock. On error nothing of the batch may
// be acknowledged; running the same batch again is safe: the store is
// idempotent and alert ids are deterministic.
func (e *Engine) Process(ctx context.Context, events []*event.Event, now time.Time) (Output, error) {
	set := e.rules.Load()
	var out Output
	if cap(e.stamps) < len(events) {
		e.stamps = make([]Stamp, len(events))
	}
	stamps := e.stamps[:len(events)]
	e.opts.Clock.Stamp(events, now, stamps)
	var updates []state.Update
	var todo []pending
	for i, ev := range events {
		if ev.TimestampInvalid {
			out.InvalidTimestamps++
		}
		st := stamps[i]
		if st.Clamped {
			out.Clamped++
		}
		for _, r := range set.Rules {
			if !r.Enabled || !r.Matches(ev) {
				continue
			}
			p := pending{rule: r, ev: ev, update: -1, now: st.Arrival}
			u, stateful, ok := r.update(ev, st.At, &p)
			if !ok {
				continue
			}
			if stateful {
				p.update = len(updates)
				updates = append(updates, u)
				if sq := r.Sequence; sq != nil && u.Mask&(1<<(len(sq.Steps)-1)) != 0 {
					e.lastSteps.put(ev)
				}
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
		if p.update < 0 {
			out.Alerts = append(out.Alerts, e.build(p, nil, state.Result{}))
			continue
		}
		res := results[p.update]
		out.count(&out.Evicted, p.rule.ID(), res.Evicted)
		switch res.Outcome {
		case state.Suppressed:
			out.count(&out.Suppressed, p.rule.ID(), 1)
		case state.Duplicate:
			out.Duplicates++
		case state.Fired:
			for i := range res.Bursts {
				out.Alerts = append(out.Alerts, e.build(p, &res.Bursts[i], res))
			}
		}
	}
	return out, nil
}

// update returns the store update for a stateful rule's match (stateful
// is false for a stateless rule), or ok false when the event does not take
// part: it matches no step of a sequence, or lacks a new-value rule's
// fields.
func (r *Rule) update(ev *event.Event, at time.Time, p *pending) (u state.Update, stateful, ok bool) {
	var groupBy []string
	u = state.Update{EventID: ev.Key, Time: at.UnixMicro(), Suppress: r.Suppress}
	switch {
	case r.Threshold != nil:
		th := r.Threshold
		groupBy = th.GroupBy
		u.Kind, u.Count, u.Window = state.Threshold, th.Count, th.Window
		if th.Distinct != "" {
			u.Distinct = true
			u.Value = valueDigest(ev, th.Distinct)
		}
	case r.Sequence != nil:
		sq := r.Sequence
		groupBy = sq.GroupBy
		u.Kind, u.Steps, u.Window = state.Sequence, sq.steps, sq.Window
		for i := range sq.Steps {
			if matchAll(sq.Steps[i].Match, ev) {
				u.Mask |= 1 << i
				if f := sq.Steps[i].Distinct; f != "" {
					if u.Values == nil {
						u.Values = make([]string, len(sq.Steps))
					}
					u.Values[i] = valueDigest(ev, f)
				}
			}
		}
		if u.Mask == 0 {
			return u, false, false
		}
	case r.NewValue != nil:
		nv := r.NewValue
		groupBy = nv.GroupBy
		values := make([]string, len(nv.Fields))
		for i, f := range nv.Fields {
			if values[i] = groupValue(ev, f); values[i] == "" {
				return u, false, false // no value to judge
			}
		}
		u.Kind, u.History, u.Learn, u.MaxValues = state.NewValue, nv.History, nv.Learn, nv.MaxValues
		u.Value = digest(nv.shape, values)
	default:
		return u, false, true
	}
	p.values = make([]string, len(groupBy))
	for i, f := range groupBy {
		p.values[i] = groupValue(ev, f)
	}
	p.key = digest(r.shape(), p.values)
	u.Key = p.key
	return u, true, true
}

// shape returns the rule's state shape.
func (r *Rule) shape() []byte {
	switch {
	case r.Threshold != nil:
		return r.Threshold.shape
	case r.Sequence != nil:
		return r.Sequence.shape
	case r.NewValue != nil:
		return r.NewValue.shape
	}
	return nil
}

func matchAll(conds []Condition, ev *event.Event) bool {
	for i := range conds {
		if !conds[i].Matches(ev) {
			return false
		}
	}
	return true
}

// build makes the alert of one match; b is the store's window for a
// stateful rule.
func (e *Engine) build(p pending, b *state.Burst, res state.Result) Fired {
	r := p.rule
	if r.Sequence != nil && b != nil && b.LastEventID != p.ev.Key {
		// Completed out of order: the last step's event, if remembered,
		// is the alert's trigger.
		if last, ok := e.lastSteps.byKey[b.LastEventID]; ok {
			p.ev = last
		}
	}
	in := alert.Input{Rule: r.Alert, Event: p.ev, Environment: e.opts.Environment, Now: p.now}
	vals := templateValues{ruleID: r.ID()}
	if b != nil {
		group := make(map[string]string, len(p.values))
		var groupBy []string
		ab := &alert.Burst{
			GroupKey:     p.key,
			Group:        group,
			Start:        time.UnixMicro(b.Start).UTC(),
			End:          time.UnixMicro(b.End).UTC(),
			Count:        b.Count,
			FirstEventID: b.FirstEventID,
			LastEventID:  b.LastEventID,
			EventIDs:     b.EventIDs,
			Suppressed:   b.Suppressed,
		}
		switch {
		case r.Threshold != nil:
			th := r.Threshold
			groupBy, ab.Window, ab.Threshold = th.GroupBy, th.Window, th.Count
		case r.Sequence != nil:
			sq := r.Sequence
			groupBy, ab.Window = sq.GroupBy, sq.Window
			for _, st := range sq.Steps {
				ab.Threshold += st.Count
			}
			for _, st := range b.Steps {
				ab.Steps = append(ab.Steps, alert.StepTimes{
					Count: st.Count, First: time.UnixMicro(st.First).UTC(), Last: time.UnixMicro(st.Last).UTC(),
				})
			}
		case r.NewValue != nil:
			nv := r.NewValue
			groupBy = nv.GroupBy
			ab.NewValue = &alert.NewValue{Values: make(map[string]string, len(nv.Fields)), Known: res.Known}
			for _, f := range nv.Fields {
				ab.NewValue.Values[f] = groupValue(p.ev, f)
			}
			vals.known = res.Known
			vals.newValue = strings.Join(newValues(p.ev, nv.Fields), ", ")
		}
		for i, f := range groupBy {
			group[f] = p.values[i]
		}
		in.Burst = ab
		vals.threshold, vals.window, vals.count = ab.Threshold, ab.Window, b.Count
	}
	in.Rule.Description = r.description.render(p.ev, vals)
	in.Description = r.alertDescription.render(p.ev, vals)
	return Fired{Alert: alert.Build(in), Rule: r}
}

func newValues(ev *event.Event, fields []string) []string {
	out := make([]string, len(fields))
	for i, f := range fields {
		out[i] = groupValue(ev, f)
	}
	return out
}

// groupValue is a field's value as a group key, distinct value or new
// value. Paths and addresses are canonical, so "/etc//shadow" and
// "/etc/shadow", or "::ffff:10.0.0.1" and "10.0.0.1", are one value:
// spelling a value another way must not split a count an attacker wants to
// stay under, or make an old value new.
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

// valueDigest is a distinct value as the store keeps it: a digest of
// bounded size, whatever the event sent.
func valueDigest(ev *event.Event, field string) string {
	return digest(nil, []string{groupValue(ev, field)})
}
