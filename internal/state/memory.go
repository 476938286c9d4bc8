package state

import (
	"context"
	"hash/maphash"
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
	// newest is the newest event time applied; applied counts updates
	// between sweeps of idle groups.
	newest  int64
	applied int
	seed    maphash.Seed // hashes event ids for the groups' id sets
	// Scratch space reused under mu, so that replaying millions of
	// events does not allocate per update.
	cands  []event
	values map[string]int
	// fullScan turns the narrowing of distinct candidates off, for tests
	// comparing the two.
	fullScan bool
}

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory {
	return &Memory{groups: make(map[string]*group), seed: maphash.MakeSeed(), values: make(map[string]int)}
}

// event is a recorded event, or (in group.suppressed) a suppressed id with
// its time and no value.
type event struct {
	time  int64
	hash  uint64 // of id, for group.seen
	id    string
	value string // counted by distinct rules; "" when recorded by a counting rule
}

// group is the state of one Key.
type group struct {
	events     []event // recorded events in (time, id) order
	suppressed []event // suppressed ids in (time, id) order
	seen       idSet   // ids in events or suppressed
	bursts     []Burst // alerted bursts, oldest first
	spans      []span  // Start and End of each burst, scanned by every update
	sinceAlert int     // events suppressed since the last burst
	// ttl is how long, in event time, the group outlives its newest event
	// (see idleLimit).
	ttl int64
	// count and suppress are the rule's last seen; wide is set once a
	// burst was forgotten or they changed (a reload), after which windows
	// of earlier events may hold the threshold without having fired, and
	// distinct updates scan every candidate (see distinctCandidates).
	count    int
	suppress int64
	wide     bool
}

// sweepEvery is how many updates pass between sweeps of idle groups.
const sweepEvery = 1 << 14

// sweep reclaims the groups whose newest event is more than twice their
// ttl behind the newest event of all. Such a group would start afresh on
// any update newer than its ttl; only an update that much later than the
// rest of the stream still sees it gone, as it would see an expired Redis
// key.
func (m *Memory) sweep() {
	for k, g := range m.groups {
		if last, ok := g.lastTime(); !ok || last+2*g.ttl < m.newest {
			delete(m.groups, k)
		}
	}
}

// lastTime is the newest time recorded or suppressed in the group.
func (g *group) lastTime() (int64, bool) {
	var last int64
	ok := false
	if n := len(g.events); n > 0 {
		last, ok = g.events[n-1].time, true
	}
	if n := len(g.suppressed); n > 0 && (!ok || g.suppressed[n-1].time > last) {
		last, ok = g.suppressed[n-1].time, true
	}
	return last, ok
}

type span struct{ start, end int64 }

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
		results[i] = m.apply(u)
	}
	return results, nil
}

func (m *Memory) apply(u Update) Result {
	m.newest = max(m.newest, u.Time)
	if m.applied++; m.applied%sweepEvery == 0 {
		m.sweep()
	}
	g := m.groups[u.Key]
	if g != nil {
		if last, ok := g.lastTime(); ok && u.Time-last > idleLimit(u) {
			g = nil // quiet for longer than its key lives: start afresh
		}
	}
	if g == nil {
		g = &group{}
		m.groups[u.Key] = g
	}
	g.ttl = idleLimit(u)
	if g.count != 0 && (g.count != u.Count || g.suppress != micros(u.Suppress)) {
		g.wide = true
	}
	g.count, g.suppress = u.Count, micros(u.Suppress)
	w, sup := micros(u.Window), micros(u.Suppress)
	h := m.hash(u.EventID)

	if g.seen.has(h, u.EventID) {
		// A redelivered trigger must produce the same alert again.
		for i := len(g.bursts) - 1; i >= 0; i-- {
			if g.bursts[i].TriggerEventID == u.EventID {
				return fired(g.bursts[i])
			}
		}
		return Result{Outcome: Duplicate}
	}
	if g.zoned(u.Time, sup) {
		g.suppressed = insert(g.suppressed, event{time: u.Time, hash: h, id: u.EventID})
		g.seen.add(h, u.EventID)
		if over := len(g.suppressed) - maxSuppressed; over > 0 {
			g.suppressed = g.drop(g.suppressed, over)
		}
		g.sinceAlert++
		return Result{Outcome: Suppressed}
	}

	e := event{time: u.Time, hash: h, id: u.EventID}
	if u.Distinct {
		e.value = u.Value
	}
	g.events = insert(g.events, e)
	g.seen.add(h, u.EventID)
	g.prune(retention(u.Window))

	var cands []event
	if u.Distinct && sup > 0 && !g.wide && !m.fullScan {
		cands = m.distinctCandidates(g, u, w, sup)
	} else {
		cands = m.candidates(g, u.Time, w, sup)
	}
	if len(cands) < u.Count {
		return Result{Outcome: Below} // no window can hold more than all candidates
	}
	b, ok := m.firstBurst(cands, u, w)
	if !ok {
		return Result{Outcome: Below}
	}
	b.TriggerEventID = u.EventID
	b.Suppressed = g.sinceAlert
	g.sinceAlert = 0
	g.bursts = append(g.bursts, b)
	g.spans = append(g.spans, span{b.Start, b.End})
	if over := len(g.bursts) - maxBursts; over > 0 {
		g.bursts = slices.Delete(g.bursts, 0, over)
		g.spans = slices.Delete(g.spans, 0, over)
		g.wide = true
	}
	return fired(b)
}

// fired returns b without sharing its id slice with the stored burst.
func fired(b Burst) Result {
	b.EventIDs = slices.Clone(b.EventIDs)
	return Result{Outcome: Fired, Burst: b}
}

// zoned reports whether time t lies within sup of an alerted burst.
func (g *group) zoned(t, sup int64) bool {
	if sup <= 0 {
		return false
	}
	for _, b := range g.spans {
		if b.start-sup < t && t < b.end+sup {
			return true
		}
	}
	return false
}

// hash returns the id's hash for idSet, which reserves 0.
func (m *Memory) hash(id string) uint64 {
	return max(maphash.String(m.seed, id), 1)
}

// prune forgets events and suppressed ids older than keep behind the newest
// event, then the oldest events beyond maxEvents.
func (g *group) prune(keep int64) {
	floor := g.events[len(g.events)-1].time - keep
	n := 0
	for n < len(g.events) && g.events[n].time < floor {
		n++
	}
	n = max(n, len(g.events)-maxEvents)
	g.events = g.drop(g.events, n)

	n = 0
	for n < len(g.suppressed) && g.suppressed[n].time < floor {
		n++
	}
	g.suppressed = g.drop(g.suppressed, n)
}

// drop removes the first n entries of s from the group.
func (g *group) drop(s []event, n int) []event {
	if n == 0 {
		return s
	}
	for _, e := range s[:n] {
		g.seen.remove(e.hash, e.id)
	}
	clear(s[:n]) // release the strings now; the array goes at the next growth
	return s[n:]
}

// candidates returns the events that may share a window with an event at t:
// those less than w away, minus those within sup of an alerted burst.
func (m *Memory) candidates(g *group, t, w, sup int64) []event {
	c := g.events[atOrAfter(g.events, t-w+1):atOrAfter(g.events, t+w)]
	if sup <= 0 || len(g.spans) == 0 {
		return c
	}
	m.cands = m.cands[:0]
	for _, e := range c {
		if !g.zoned(e.time, sup) {
			m.cands = append(m.cands, e)
		}
	}
	return m.cands
}

// distinctCandidates returns the candidates of a distinct rule's update,
// narrowed to those strictly between the nearest other candidates with the
// same value, before and after it.
//
// That changes no answer and bounds the work under a flood of one value.
// With suppression on, no window of earlier candidates holds Count values
// (it would have fired, and its events would now be in a suppression
// zone), so a window that reaches Count now must contain u and gain u's
// value from it: it cannot also contain another event with that value. The
// windows cut short by the narrowing are subsets of windows that cannot
// fire, and so cannot fire either. The premise fails once a burst (and its
// zone) has been forgotten, or the rule's count or suppression changed:
// such a group is "wide" and scans every candidate.
func (m *Memory) distinctCandidates(g *group, u Update, w, sup int64) []event {
	at, found := slices.BinarySearchFunc(g.events, event{time: u.Time, id: u.EventID}, func(a, b event) int {
		switch {
		case less(a, b):
			return -1
		case less(b, a):
			return 1
		}
		return 0
	})
	if !found {
		return nil // pruned at once: too old to be in any window
	}
	lo, hi := at, at
	for j := at - 1; j >= 0; j-- {
		e := g.events[j]
		if e.time <= u.Time-w {
			break
		}
		if g.zoned(e.time, sup) {
			continue
		}
		if e.value == u.Value {
			break
		}
		lo = j
	}
	for j := at + 1; j < len(g.events); j++ {
		e := g.events[j]
		if e.time >= u.Time+w {
			break
		}
		if g.zoned(e.time, sup) {
			continue
		}
		if e.value == u.Value {
			break
		}
		hi = j
	}
	m.cands = m.cands[:0]
	for _, e := range g.events[lo : hi+1] {
		if !g.zoned(e.time, sup) {
			m.cands = append(m.cands, e)
		}
	}
	return m.cands
}

// firstBurst slides a window over the candidates, oldest start first, and
// returns the first window starting no later than u that reaches u.Count.
// Every such window contains u, because candidates are less than w from it.
func (m *Memory) firstBurst(c []event, u Update, w int64) (b Burst, ok bool) {
	size, i, j := 0, 0, 0
	for ; i < len(c) && c[i].time <= u.Time; i++ {
		for ; j < len(c) && c[j].time < c[i].time+w; j++ {
			if !u.Distinct {
				size++
			} else if m.values[c[j].value]++; m.values[c[j].value] == 1 {
				size++
			}
		}
		if size >= u.Count {
			ok = true
			break
		}
		if !u.Distinct {
			size--
		} else if m.values[c[i].value]--; m.values[c[i].value] == 0 {
			delete(m.values, c[i].value)
			size--
		}
	}
	if u.Distinct {
		// Empty the scratch map entry by entry: clear would cost as
		// much as the largest window it ever held.
		for _, e := range c[i:j] {
			delete(m.values, e.value)
		}
	}
	if !ok {
		return Burst{}, false
	}
	ids := make([]string, 0, min(j-i, MaxEventIDs))
	for _, e := range c[i:min(j, i+MaxEventIDs)] {
		ids = append(ids, e.id)
	}
	return Burst{
		Start:        c[i].time,
		End:          c[j-1].time,
		Count:        size,
		FirstEventID: c[i].id,
		EventIDs:     ids,
	}, true
}

// insert adds e to s, keeping (time, id) order. Events mostly arrive in
// order, so the common case is an append.
func insert(s []event, e event) []event {
	if n := len(s); n == 0 || less(s[n-1], e) {
		return append(s, e)
	}
	lo, hi := 0, len(s)
	for lo < hi {
		if mid := int(uint(lo+hi) >> 1); less(e, s[mid]) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return slices.Insert(s, lo, e)
}

// atOrAfter returns the index of the first event at or after time t.
func atOrAfter(s []event, t int64) int {
	if n := len(s); n == 0 || s[n-1].time < t {
		return len(s) // the common case: t is past the newest event
	}
	lo, hi := 0, len(s)
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
func less(a, b event) bool {
	return a.time < b.time || (a.time == b.time && a.id < b.id)
}
