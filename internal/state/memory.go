package state

import (
	"context"
	"hash/maphash"
	"math"
	"slices"
	"sync"
)

// Memory keeps rule state in process memory, for replaying recorded events
// and for tests. It is safe for concurrent use: Apply calls run one at a
// time. A group idle for as long as Redis would keep its keys, counted in
// event time, is forgotten, so replaying a long history keeps only the
// groups still active.
type Memory struct {
	mu     sync.Mutex
	groups map[string]*group
	values map[string]*valueGroup
	// newest is the newest event time applied; applied counts updates
	// between sweeps of idle groups.
	newest  int64
	applied int
	seed    maphash.Seed // hashes event ids for the groups' id sets
	// Scratch space reused under mu, so that replaying millions of
	// events does not allocate per update.
	distinct map[string]struct{}
	marks    []mark
	added    []mark
}

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory {
	return &Memory{
		groups:   make(map[string]*group),
		values:   make(map[string]*valueGroup),
		seed:     maphash.MakeSeed(),
		distinct: make(map[string]struct{}),
	}
}

// event is a recorded event of one step.
type event struct {
	time  int64
	hash  uint64 // of id, for the step's id set
	id    string
	value string // counted by a distinct step; "" otherwise
}

// mark names an event: a trigger that alerts.
type mark struct {
	time int64
	id   string
}

// stepEvents holds the events that match one step, in (time, id) order.
type stepEvents struct {
	events []event
	seen   idSet
}

// group is the state of one threshold or sequence group.
type group struct {
	steps []stepEvents
	// bursts are the triggers that alert, in order (see update.go).
	bursts []mark
	// alerts are the newest maxAlerts alerts raised, oldest first, to
	// answer a redelivered event; seq numbers them.
	alerts []sent
	seq    int
	// sup counts the updates suppressed since the last alert.
	sup    int
	newest int64
	// idle is how long, in event time, the group outlives its newest
	// event (see idleLimit).
	idle int64
}

// sent is an alert raised by the update of event emitter.
type sent struct {
	seq     int
	emitter string
	result  Result
}

// sweepEvery is how many updates pass between sweeps of idle groups.
const sweepEvery = 1 << 14

// sweep reclaims the groups whose newest event is more than twice their
// idle limit behind the newest event of all. Such a group would start
// afresh on any update newer than its limit; only an update that much
// later than the rest of the stream still sees it gone, as it would see
// an expired Redis key.
func (m *Memory) sweep() {
	for k, g := range m.groups {
		if g.newest+2*g.idle < m.newest {
			delete(m.groups, k)
		}
	}
	for k, g := range m.values {
		if g.newest+2*g.idle < m.newest {
			delete(m.values, k)
		}
	}
}

// Apply applies updates in order and returns one Result per update. The
// whole batch is validated first: on error nothing is applied.
func (m *Memory) Apply(_ context.Context, updates []Update) ([]Result, error) {
	if err := validate(updates); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	results := make([]Result, len(updates))
	for i, u := range updates {
		m.newest = max(m.newest, u.Time)
		if m.applied++; m.applied%sweepEvery == 0 {
			m.sweep()
		}
		if u.Kind == NewValue {
			results[i] = m.newValue(u)
		} else {
			results[i] = m.correlate(u)
		}
	}
	return results, nil
}

// shape is an Update's steps in one form for thresholds and sequences: a
// threshold is a sequence of one step that every event matches.
type shape struct {
	steps    []Step // nil for a threshold: then single is the step
	single   Step
	mask     uint64
	w, s     int64
	values   []string
	oneValue string
	sequence bool
}

// k returns the number of steps.
func (r *shape) k() int {
	if r.steps == nil {
		return 1
	}
	return len(r.steps)
}

func (r *shape) step(i int) Step {
	if r.steps == nil {
		return r.single
	}
	return r.steps[i]
}

func (r *shape) value(i int) string {
	if r.steps == nil {
		return r.oneValue
	}
	if r.values == nil {
		return ""
	}
	return r.values[i]
}

func newShape(u *Update, r *shape) {
	r.w, r.s = micros(u.Window), micros(u.Suppress)
	r.sequence = u.Kind == Sequence
	if u.Kind == Threshold {
		r.single = Step{Count: u.Count, Distinct: u.Distinct}
		r.mask, r.oneValue = 1, u.Value
		return
	}
	r.steps, r.mask, r.values = u.Steps, u.Mask, u.Values
}

func (m *Memory) correlate(u Update) Result {
	var r shape
	newShape(&u, &r)
	k := r.k()
	g := m.groups[u.Key]
	if g != nil && (len(g.steps) != k || u.Time-g.newest > idleLimit(u, len(g.bursts) > 0)) {
		g = nil // quiet for longer than its keys live: start afresh
	}
	if g == nil {
		g = &group{steps: make([]stepEvents, k)}
		m.groups[u.Key] = g
	}
	g.idle = idleLimit(u, len(g.bursts) > 0)
	first := firstStep(r.mask)
	h := m.hash(u.EventID)

	if g.steps[first].seen.has(h, u.EventID) {
		// A redelivered event that raised alerts raises them again.
		for i := len(g.alerts) - 1; i >= 0; i-- {
			if g.alerts[i].emitter == u.EventID {
				return clone(g.alerts[i].result)
			}
		}
		return Result{Outcome: Duplicate}
	}
	p := mark{u.Time, u.EventID}
	floor := max(g.newest, u.Time) - retention(u.Window)
	if u.Time < floor || (len(g.bursts) >= maxBursts && !less(g.bursts[0], p)) {
		return Result{Outcome: Below} // too late to be placed among its events
	}
	for i := range k {
		if r.mask&(1<<i) != 0 {
			s := &g.steps[i]
			s.events = insert(s.events, event{time: u.Time, hash: h, id: u.EventID, value: r.value(i)})
			s.seen.add(h, u.EventID)
		}
	}
	g.newest = max(g.newest, u.Time)
	g.prune(floor)
	if ev := g.steps[first].events; len(ev) == 0 || less(p, mark{ev[0].time, ev[0].id}) {
		return Result{Outcome: Below} // dropped at once, the oldest of a full step
	}

	emit, moved, zoned := m.rescan(g, &r, p)
	last := r.mask&(1<<(k-1)) != 0
	switch {
	case len(emit) > 0:
		res := Result{Outcome: Fired, Bursts: make([]Burst, len(emit))}
		for i, x := range emit {
			res.Bursts[i] = m.report(g, &r, x)
		}
		res.Bursts[0].Suppressed = g.sup
		g.sup = 0
		g.seq++
		g.alerts = append(g.alerts, sent{seq: g.seq, emitter: u.EventID, result: res})
		if over := len(g.alerts) - maxAlerts; over > 0 {
			g.alerts = slices.Delete(g.alerts, 0, over)
		}
		g.idle = idleLimit(u, true)
		return clone(res)
	case last && (moved || zoned || g.covers(p, r.w)):
		g.sup++
		return Result{Outcome: Suppressed}
	}
	return Result{Outcome: Below}
}

// covers reports whether p lies in the window of an alerting trigger at or
// after it: a late match of a window that already alerted.
func (g *group) covers(p mark, w int64) bool {
	i := lowerBoundMarks(g.bursts, p)
	return i < len(g.bursts) && p.time > g.bursts[i].time-w
}

// clone returns r without sharing its slices with the stored copy.
func clone(r Result) Result {
	r.Bursts = slices.Clone(r.Bursts)
	for i := range r.Bursts {
		r.Bursts[i].EventIDs = slices.Clone(r.Bursts[i].EventIDs)
		r.Bursts[i].Steps = slices.Clone(r.Bursts[i].Steps)
	}
	return r
}

func firstStep(mask uint64) int {
	for i := 0; i < 64; i++ {
		if mask&(1<<i) != 0 {
			return i
		}
	}
	return 0
}

// hash returns the id's hash for idSet, which reserves 0.
func (m *Memory) hash(id string) uint64 {
	return max(maphash.String(m.seed, id), 1)
}

// prune forgets the events older than floor and the oldest of a step beyond
// maxEvents, and the bursts older than floor but the newest of them (whose
// suppression zone may still reach into the retention).
func (g *group) prune(floor int64) {
	for i := range g.steps {
		s := &g.steps[i]
		if len(s.events) == 0 || (s.events[0].time >= floor && len(s.events) <= maxEvents) {
			continue
		}
		n := max(timeIndex(s.events, floor), len(s.events)-maxEvents)
		if n == 0 {
			continue
		}
		for _, e := range s.events[:n] {
			s.seen.remove(e.hash, e.id)
		}
		clear(s.events[:n]) // release the strings now; the array goes at the next growth
		s.events = s.events[n:]
	}
	n := 0
	for n < len(g.bursts) && g.bursts[n].time < floor {
		n++
	}
	n = max(n-1, len(g.bursts)-maxBursts)
	if n > 0 {
		g.bursts = slices.Delete(g.bursts, 0, n)
	}
}

// noZone stands for "no suppression zone".
const noZone = math.MinInt64

// rescan recomputes the bursts from p on (see update.go) and returns the
// new ones to report, in order. moved reports that p itself became a
// trigger that alerts without a new alert (it moved an alerted burst
// earlier); zoned that p lies in a suppression zone.
func (m *Memory) rescan(g *group, r *shape, p mark) (emit []mark, moved, zoned bool) {
	last := g.steps[len(g.steps)-1].events
	i := lowerBound(last, p)
	b0 := lowerBoundMarks(g.bursts, p)
	zn := int64(noZone)
	if b0 > 0 {
		zn = g.bursts[b0-1].time + r.s
	}
	zoned = zn != noZone && p.time < zn
	changedEnd := p.time + r.w
	j := b0
	fresh := m.marks[:0]
	for i < len(last) {
		x := mark{last[i].time, last[i].id}
		for j < len(g.bursts) && less(g.bursts[j], x) {
			j++
		}
		zo := int64(noZone)
		if j > 0 {
			zo = g.bursts[j-1].time + r.s
		}
		same := zn == zo || (zn <= x.time && zo <= x.time)
		if same && x.time >= changedEnd {
			break // from here on the old computation holds
		}
		if zn != noZone && x.time < zn {
			i = timeIndexFrom(last, zn, i+1) // suppressed: skip the zone
			continue
		}
		if m.completes(g, r, i) {
			fresh = append(fresh, x)
			zn = x.time + r.s
			i = timeIndexFrom(last, zn, i+1)
			continue
		}
		i++
	}
	end := len(g.bursts)
	if i < len(last) {
		end = lowerBoundMarks(g.bursts, mark{last[i].time, last[i].id})
	}
	old := g.bursts[b0:end]
	m.marks = fresh

	// The bursts that are new, oldest first; the last d of them are
	// reported.
	d := len(fresh) - len(old)
	added := m.added[:0]
	o := 0
	for _, x := range fresh {
		for o < len(old) && less(old[o], x) {
			o++
		}
		if o < len(old) && old[o] == x {
			continue
		}
		if x == p {
			moved = true
		}
		added = append(added, x)
	}
	m.added = added
	if d > 0 {
		emit = pick(added, d, func(x mark) bool {
			for _, a := range g.alerts {
				for _, b := range a.result.Bursts {
					if b.LastEventID == x.id {
						return true
					}
				}
			}
			return false
		})
	}
	if len(fresh) != len(old) || !slices.Equal(fresh, old) {
		if end == len(g.bursts) {
			g.bursts = append(g.bursts[:b0], fresh...)
		} else {
			g.bursts = slices.Concat(g.bursts[:b0], fresh, g.bursts[end:])
		}
		if over := len(g.bursts) - maxBursts; over > 0 {
			g.bursts = slices.Delete(g.bursts, 0, over)
		}
	}
	return emit, moved, zoned
}

// pick chooses the d bursts to report among those added, in order: the
// newest whose trigger has not alerted before (an alerted window that only
// moved earlier is not news), then, if need be, the newest of the others.
func pick(added []mark, d int, alerted func(mark) bool) []mark {
	if d >= len(added) {
		return added
	}
	chosen := make([]bool, len(added))
	n := 0
	for _, pass := range []bool{false, true} {
		for i := len(added) - 1; i >= 0 && n < d; i-- {
			if !chosen[i] && alerted(added[i]) == pass {
				chosen[i] = true
				n++
			}
		}
	}
	var out []mark
	for i, x := range added {
		if chosen[i] {
			out = append(out, x)
		}
	}
	return out
}

// completes reports whether the trigger at index i of the last step
// completes: every step is satisfied by events up to it within the window.
func (m *Memory) completes(g *group, r *shape, i int) bool {
	k := r.k()
	x := g.steps[k-1].events[i]
	t := x.time - r.w // steps take events strictly after t
	for s := range k - 1 {
		end, ok := m.satisfy(g.steps[s].events, r.step(s), t, x.time)
		if !ok {
			return false
		}
		t = end
	}
	last := g.steps[k-1].events
	a := timeIndex(last, t+1)
	if a > i {
		return false
	}
	st := r.step(k - 1)
	if !st.Distinct {
		return i-a+1 >= st.Count
	}
	n := 0
	for j := i; j >= a && n < st.Count; j-- {
		if _, ok := m.distinct[last[j].value]; !ok {
			m.distinct[last[j].value] = struct{}{}
			n++
		}
	}
	clear(m.distinct)
	return n >= st.Count
}

// satisfy finds the earliest events of a step after time t that satisfy
// it, and returns the time of the one that completes it; they must all be
// earlier than before.
func (m *Memory) satisfy(events []event, st Step, t, before int64) (int64, bool) {
	a := timeIndex(events, t+1)
	if !st.Distinct {
		e := a + st.Count - 1
		if e >= len(events) || events[e].time >= before {
			return 0, false
		}
		return events[e].time, true
	}
	defer clear(m.distinct)
	for j := a; j < len(events) && events[j].time < before; j++ {
		if _, ok := m.distinct[events[j].value]; ok {
			continue
		}
		m.distinct[events[j].value] = struct{}{}
		if len(m.distinct) == st.Count {
			return events[j].time, true
		}
	}
	return 0, false
}

// report describes the window of the trigger x, which completes.
func (m *Memory) report(g *group, r *shape, x mark) Burst {
	k := r.k()
	last := g.steps[k-1].events
	i := lowerBound(last, x)
	t := x.time - r.w
	if !r.sequence {
		// A threshold: every event of the window, up to MaxEventIDs ids.
		a := timeIndex(last, t+1)
		b := Burst{Start: last[a].time, End: x.time, Count: i - a + 1, FirstEventID: last[a].id, LastEventID: x.id,
			EventIDs: make([]string, 0, min(i-a+1, MaxEventIDs))}
		if r.step(0).Distinct {
			for _, e := range last[a : i+1] {
				m.distinct[e.value] = struct{}{}
			}
			b.Count = len(m.distinct)
			clear(m.distinct)
		}
		for _, e := range last[a:min(i+1, a+MaxEventIDs)] {
			b.EventIDs = append(b.EventIDs, e.id)
		}
		return b
	}
	// A sequence: the events that satisfy each step, the earliest for
	// every step but the last, which ends with x.
	b := Burst{End: x.time, LastEventID: x.id, Steps: make([]StepReport, k)}
	for s := range k - 1 {
		events, st := g.steps[s].events, r.step(s)
		a := timeIndex(events, t+1)
		n := 0
		for j := a; n < st.Count; j++ {
			e := events[j]
			if st.Distinct {
				if _, ok := m.distinct[e.value]; ok {
					continue
				}
				m.distinct[e.value] = struct{}{}
			}
			b.EventIDs = append(b.EventIDs, e.id)
			b.Steps[s].Last = e.time
			if n == 0 {
				b.Steps[s].First = e.time
			}
			n++
		}
		clear(m.distinct)
		b.Steps[s].Count = n
		t = b.Steps[s].Last
	}
	st := r.step(k - 1)
	a := timeIndex(last, t+1)
	var picked []string
	var first int64
	for j := i; j >= a && len(picked) < st.Count; j-- {
		e := last[j]
		if st.Distinct {
			if _, ok := m.distinct[e.value]; ok {
				continue
			}
			m.distinct[e.value] = struct{}{}
		}
		picked = append(picked, e.id)
		first = e.time
	}
	clear(m.distinct)
	slices.Reverse(picked)
	b.EventIDs = append(b.EventIDs, picked...)
	b.Steps[k-1] = StepReport{Count: len(picked), First: first, Last: x.time}
	b.Start = b.Steps[0].First
	b.Count = len(b.EventIDs)
	b.FirstEventID = b.EventIDs[0]
	return b
}

// insert adds e to s, keeping (time, id) order. Events mostly arrive in
// order, so the common case is an append.
func insert(s []event, e event) []event {
	if n := len(s); n == 0 || less(mark{s[n-1].time, s[n-1].id}, mark{e.time, e.id}) {
		return append(s, e)
	}
	return slices.Insert(s, lowerBound(s, mark{e.time, e.id}), e)
}

// lowerBound returns the index of the first event at or after x in (time,
// id) order.
func lowerBound(s []event, x mark) int {
	if n := len(s); n == 0 || less(mark{s[n-1].time, s[n-1].id}, x) {
		return len(s) // the common case: x is past the newest event
	}
	lo, hi := 0, len(s)
	for lo < hi {
		if mid := int(uint(lo+hi) >> 1); less(mark{s[mid].time, s[mid].id}, x) {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

func lowerBoundMarks(s []mark, x mark) int {
	lo, hi := 0, len(s)
	for lo < hi {
		if mid := int(uint(lo+hi) >> 1); less(s[mid], x) {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

// timeIndex returns the index of the first event at or after time t.
func timeIndex(s []event, t int64) int { return timeIndexFrom(s, t, 0) }

// timeIndexFrom is timeIndex searching from index from on.
func timeIndexFrom(s []event, t int64, from int) int {
	if n := len(s); n == 0 || s[n-1].time < t {
		return len(s)
	}
	lo, hi := from, len(s)
	for lo < hi {
		if mid := int(uint(lo+hi) >> 1); s[mid].time < t {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

// less orders events by time, then id byte-wise: Redis's order for members
// of a sorted set with equal scores.
func less(a, b mark) bool {
	return a.time < b.time || (a.time == b.time && a.id < b.id)
}
