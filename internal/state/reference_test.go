package state

import (
	"slices"
	"sort"
)

// reference restates the semantics of update.go as plainly as possible, for
// tests to compare the stores with: it keeps every event, recomputes the
// alerting triggers from scratch on every update by processing the events
// in (time, id) order, and reports the difference. It does not forget
// events by count (maxEvents) or triggers (maxBursts), so tests keep below
// those, and it assumes events arrive at most the lateness late, where the
// stores' windows are whole.
type reference struct {
	groups map[string]*refGroup
	values map[string]*refValues
}

type refEvent struct {
	time   int64
	id     string
	mask   uint64
	values []string
}

type refGroup struct {
	events []refEvent // every recorded event, in (time, id) order
	bursts []mark
	alerts []sent
	seq    int
	sup    int
}

func newReference() *reference {
	return &reference{groups: map[string]*refGroup{}, values: map[string]*refValues{}}
}

func (ref *reference) apply(u Update) Result {
	if u.Kind == NewValue {
		return ref.newValue(u)
	}
	var r shape
	newShape(&u, &r)
	k := r.k()
	g := ref.groups[u.Key]
	if g != nil {
		newest := g.events[len(g.events)-1].time
		for _, e := range g.events {
			newest = max(newest, e.time)
		}
		if u.Time-newest > idleLimit(u, len(g.bursts) > 0) {
			g = nil
		}
	}
	if g == nil {
		g = &refGroup{}
		ref.groups[u.Key] = g
	}
	// Events older than the retention behind the newest are forgotten.
	var newestBefore int64
	for _, e := range g.events {
		newestBefore = max(newestBefore, e.time)
	}
	for _, e := range g.events {
		if e.id == u.EventID && e.time >= newestBefore-retention(u.Window) {
			for i := len(g.alerts) - 1; i >= 0; i-- {
				if g.alerts[i].emitter == u.EventID {
					return clone(g.alerts[i].result)
				}
			}
			return Result{Outcome: Duplicate}
		}
	}
	newest := u.Time
	for _, e := range g.events {
		newest = max(newest, e.time)
	}
	if u.Time < newest-retention(u.Window) {
		return Result{Outcome: Below}
	}
	// The stores remember the alerting triggers from the newest before
	// the retention on, at most maxBursts: an event before the oldest of a
	// full list is too late.
	kept := g.bursts
	if n := len(kept); n > 0 {
		i := 0
		for i < n && kept[i].time < newestBefore-retention(u.Window) {
			i++
		}
		kept = kept[max(i-1, 0, n-maxBursts):]
	}
	if len(kept) >= maxBursts && !less(kept[0], mark{u.Time, u.EventID}) {
		return Result{Outcome: Below}
	}
	e := refEvent{time: u.Time, id: u.EventID, mask: r.mask, values: make([]string, k)}
	for i := range k {
		e.values[i] = r.value(i)
	}
	g.events = append(g.events, e)
	sort.Slice(g.events, func(i, j int) bool {
		return less(mark{g.events[i].time, g.events[i].id}, mark{g.events[j].time, g.events[j].id})
	})

	old := g.bursts
	g.bursts = ref.alerting(g, &r)
	var added []mark
	for _, b := range g.bursts {
		if !slices.Contains(old, b) {
			added = append(added, b)
		}
	}
	p := mark{u.Time, u.EventID}
	if d := len(g.bursts) - len(old); d > 0 {
		// Report the newest triggers that did not alert before, then the
		// newest of the rest.
		wasAlerted := map[string]bool{}
		for _, a := range g.alerts {
			for _, b := range a.result.Bursts {
				wasAlerted[b.LastEventID] = true
			}
		}
		var report []mark
		for _, pass := range []bool{false, true} {
			for i := len(added) - 1; i >= 0 && len(report) < d; i-- {
				if wasAlerted[added[i].id] == pass && !slices.Contains(report, added[i]) {
					report = append(report, added[i])
				}
			}
		}
		slices.SortFunc(report, func(a, b mark) int {
			if less(a, b) {
				return -1
			}
			return 1
		})
		res := Result{Outcome: Fired}
		for _, x := range report {
			res.Bursts = append(res.Bursts, ref.report(g, &r, x))
		}
		res.Bursts[0].Suppressed = g.sup
		g.sup = 0
		g.seq++
		g.alerts = append(g.alerts, sent{seq: g.seq, emitter: u.EventID, result: res})
		if len(g.alerts) > maxAlerts {
			g.alerts = g.alerts[1:]
		}
		return clone(res)
	}
	if r.mask&(1<<(k-1)) != 0 {
		zoned := false
		for _, b := range g.bursts {
			if less(b, p) && p.time < b.time+r.s {
				zoned = true
			}
		}
		covered := false
		for _, b := range g.bursts {
			if !less(b, p) {
				covered = p.time > b.time-r.w
				break
			}
		}
		if zoned || covered || slices.Contains(added, p) {
			g.sup++
			return Result{Outcome: Suppressed}
		}
	}
	return Result{Outcome: Below}
}

// alerting processes the events in order: a trigger that completes alerts
// unless it lies within the suppression zone of the previous alert.
func (ref *reference) alerting(g *refGroup, r *shape) []mark {
	k := r.k()
	var out []mark
	for i, x := range g.events {
		if x.mask&(1<<(k-1)) == 0 {
			continue
		}
		if n := len(out); n > 0 && x.time < out[n-1].time+r.s {
			continue
		}
		if _, ok := ref.assign(g.events[:i+1], r); ok {
			out = append(out, mark{x.time, x.id})
		}
	}
	return out
}

// assign chooses the events of each step for the trigger that ends events:
// the earliest that satisfy each step but the last, whose events are the
// newest, ending with the trigger.
func (ref *reference) assign(events []refEvent, r *shape) ([][]refEvent, bool) {
	k := r.k()
	x := events[len(events)-1]
	after := x.time - r.w
	var steps [][]refEvent
	for s := 0; s < k; s++ {
		var matching []refEvent
		for _, e := range events {
			if e.mask&(1<<s) != 0 && e.time > after && (s == k-1 || e.time < x.time) {
				matching = append(matching, e)
			}
		}
		if s == k-1 {
			slices.Reverse(matching) // the newest first
		}
		var chosen []refEvent
		seen := map[string]bool{}
		for _, e := range matching {
			if len(chosen) == r.step(s).Count {
				break
			}
			if r.step(s).Distinct {
				if seen[e.values[s]] {
					continue
				}
				seen[e.values[s]] = true
			}
			chosen = append(chosen, e)
		}
		if len(chosen) < r.step(s).Count {
			return nil, false
		}
		if s == k-1 {
			slices.Reverse(chosen)
		} else {
			after = chosen[len(chosen)-1].time
		}
		steps = append(steps, chosen)
	}
	return steps, true
}

func (ref *reference) report(g *refGroup, r *shape, x mark) Burst {
	i := slices.IndexFunc(g.events, func(e refEvent) bool { return e.id == x.id })
	if !r.sequence {
		var window []refEvent
		values := map[string]bool{}
		for _, e := range g.events[:i+1] {
			if e.time > x.time-r.w {
				window = append(window, e)
				values[e.values[0]] = true
			}
		}
		b := Burst{Start: window[0].time, End: x.time, Count: len(window), FirstEventID: window[0].id, LastEventID: x.id}
		if r.step(0).Distinct {
			b.Count = len(values)
		}
		for _, e := range window[:min(len(window), MaxEventIDs)] {
			b.EventIDs = append(b.EventIDs, e.id)
		}
		return b
	}
	steps, _ := ref.assign(g.events[:i+1], r)
	b := Burst{End: x.time, LastEventID: x.id}
	for _, chosen := range steps {
		b.Steps = append(b.Steps, StepReport{Count: len(chosen), First: chosen[0].time, Last: chosen[len(chosen)-1].time})
		for _, e := range chosen {
			b.EventIDs = append(b.EventIDs, e.id)
		}
	}
	b.Start, b.Count, b.FirstEventID = b.Steps[0].First, len(b.EventIDs), b.EventIDs[0]
	return b
}

// refValues is a new-value group: every time each value was seen.
type refValues struct {
	seen   map[string][]int64
	first  int64
	newest int64
	alerts []sent
}

func (ref *reference) newValue(u Update) Result {
	g := ref.values[u.Key]
	if g != nil && u.Time-g.newest > newValueLimit(u) {
		g = nil
	}
	if g == nil {
		g = &refValues{seen: map[string][]int64{}, first: u.Time, newest: u.Time}
		ref.values[u.Key] = g
	}
	for i := len(g.alerts) - 1; i >= 0; i-- {
		if g.alerts[i].emitter == u.EventID {
			return clone(g.alerts[i].result)
		}
	}
	g.first, g.newest = min(g.first, u.Time), max(g.newest, u.Time)
	times := g.seen[u.Value]
	isNew := true
	for _, t := range times {
		if t > u.Time || u.Time-t < micros(u.History) {
			isNew = false
		}
	}
	g.seen[u.Value] = append(times, u.Time)
	known := 0
	for v, times := range g.seen {
		if slices.Max(times) < g.newest-micros(u.History)-micros(minLateness) {
			delete(g.seen, v)
			continue
		}
		known++
	}
	res := Result{Outcome: Below, Known: known}
	if !isNew || u.Time-g.first < micros(u.Learn) {
		return res
	}
	res.Outcome = Fired
	res.Bursts = []Burst{{Start: u.Time, End: u.Time, Count: 1, FirstEventID: u.EventID, LastEventID: u.EventID, EventIDs: []string{u.EventID}}}
	g.alerts = append(g.alerts, sent{emitter: u.EventID, result: res})
	if len(g.alerts) > maxAlerts {
		g.alerts = g.alerts[1:]
	}
	return clone(res)
}
