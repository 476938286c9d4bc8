package state

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strconv"
	"testing"
	"time"
)

// stream is a random stream of updates for a few groups: thresholds
// (counting and distinct), sequences of two or three steps and new-value
// groups, with equal times, events arriving up to the lateness late,
// redeliveries and quiet spells long enough for a group to start afresh.
type stream struct {
	rng     *rand.Rand
	shapes  []Update // one per group: the rule's fields
	updates []Update
}

func randomShape(rng *rand.Rand, key string) Update {
	w := time.Duration(1+rng.IntN(120)) * time.Second
	u := Update{Key: key, Window: w}
	u.Suppress = []time.Duration{0, w / 2, w, w, 2 * w, time.Duration(rng.Int64N(int64(3 * w)))}[rng.IntN(6)]
	switch rng.IntN(7) {
	case 0, 1:
		u.Kind, u.Count = Threshold, 1+rng.IntN(5)
	case 2:
		u.Kind, u.Count, u.Distinct = Threshold, 1+rng.IntN(4), true
	case 3, 4, 5:
		u.Kind = Sequence
		for range 2 + rng.IntN(2) {
			u.Steps = append(u.Steps, Step{Count: 1 + rng.IntN(3), Distinct: rng.IntN(4) == 0})
		}
	default:
		u.Kind = NewValue
		u.History = time.Duration(10+rng.IntN(50)) * time.Minute
		u.Learn = []time.Duration{0, time.Minute, 20 * time.Minute}[rng.IntN(3)]
		u.MaxValues = DefaultMaxValues
	}
	return u
}

// newStream draws n events (before redeliveries) over groups groups.
func newStream(rng *rand.Rand, groups, n int) *stream {
	s := &stream{rng: rng}
	for k := range groups {
		s.shapes = append(s.shapes, randomShape(rng, fmt.Sprintf("%x", 0xa0+k)))
	}
	grain := []int64{1, 1000, sec, 5 * sec}[rng.IntN(4)]
	// Ids compare byte-wise: "e10" < "e9", and bytes above 0x7f sort last.
	prefixes := []string{"e", "E", "\xc3\xa9", "\xff"}
	values := []string{"alice", "bob", "carol", "dave"}[:1+rng.IntN(4)]
	type timed struct {
		u       Update
		arrival int64
	}
	var all []timed
	clock := base
	for i := range n {
		shape := s.shapes[rng.IntN(len(s.shapes))]
		gap := int64(rng.ExpFloat64() * float64(shape.Window.Microseconds()) / 3)
		if rng.IntN(60) == 0 {
			gap += micros(2 * time.Hour) // a quiet spell
		}
		clock += gap
		u := shape
		u.EventID = prefixes[rng.IntN(len(prefixes))] + strconv.Itoa(i)
		u.Time = clock / grain * grain
		switch u.Kind {
		case Threshold:
			u.Value = values[rng.IntN(len(values))]
		case Sequence:
			for u.Mask == 0 {
				u.Mask = rng.Uint64N(1 << len(u.Steps))
			}
			u.Values = make([]string, len(u.Steps))
			for j := range u.Values {
				u.Values[j] = values[rng.IntN(len(values))]
			}
		case NewValue:
			u.Value = values[rng.IntN(len(values))] + strconv.Itoa(rng.IntN(3))
		}
		// Arrival is the event time plus a random delay, so that no event
		// arrives more than the lateness after a later one.
		delay := rng.Int64N(lateness(min(shape.Window, time.Minute)) + 1)
		if rng.IntN(3) == 0 {
			delay = 0
		}
		all = append(all, timed{u, u.Time + delay})
	}
	slices.SortStableFunc(all, func(a, b timed) int {
		switch {
		case a.arrival < b.arrival:
			return -1
		case a.arrival > b.arrival:
			return 1
		}
		return 0
	})
	for _, t := range all {
		if len(s.updates) > 0 && rng.IntN(8) == 0 {
			// Redeliver an earlier update, as a retried batch would.
			s.updates = append(s.updates, s.updates[rng.IntN(len(s.updates))])
		}
		s.updates = append(s.updates, t.u)
	}
	return s
}

// batches cuts the updates into batches of random sizes.
func (s *stream) batches() [][]Update {
	var out [][]Update
	rest := s.updates
	for len(rest) > 0 {
		n := min(len(rest), 1+s.rng.IntN(12))
		out = append(out, rest[:n])
		rest = rest[n:]
	}
	return out
}

// TestMemoryAgreesWithTheReference applies random streams to the memory
// store and to the reference implementation and requires the same answer
// to every update.
func TestMemoryAgreesWithTheReference(t *testing.T) {
	t.Parallel()
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	seen := map[Kind]map[Outcome]int{Threshold: {}, Sequence: {}, NewValue: {}}
	multi := 0
	for seq := range 400 {
		s := newStream(rng, 1+rng.IntN(3), 30+rng.IntN(150))
		m, ref := NewMemory(), newReference()
		for _, batch := range s.batches() {
			got, err := m.Apply(t.Context(), batch)
			if err != nil {
				t.Fatal(err)
			}
			for i, u := range batch {
				want := ref.apply(u)
				if !reflect.DeepEqual(got[i], want) {
					t.Fatalf("sequence %d (seed %d), shapes %+v\nupdate %+v\nmemory    %+v\nreference %+v\nhistory: %s",
						seq, seed, s.shapes, u, got[i], want, history(s.updates, u))
				}
				seen[u.Kind][got[i].Outcome]++
				if len(got[i].Bursts) > 1 {
					multi++
				}
			}
		}
	}
	t.Logf("outcomes: %v; updates raising more than one alert: %d", seen, multi)
	for k, outcomes := range seen {
		for _, o := range []Outcome{Below, Fired} {
			if outcomes[o] < 50 {
				t.Errorf("%v: only %d %v outcomes: the generator misses a case", k, outcomes[o], o)
			}
		}
	}
	for _, k := range []Kind{Threshold, Sequence} {
		for _, o := range []Outcome{Suppressed, Duplicate} {
			if seen[k][o] < 50 {
				t.Errorf("%v: only %d %v outcomes: the generator misses a case", k, seen[k][o], o)
			}
		}
	}
}

// history lists the updates of u's group up to u, for failure messages.
func history(updates []Update, u Update) string {
	out := ""
	for _, x := range updates {
		if x.Key != u.Key {
			continue
		}
		out += fmt.Sprintf("\n  %s t=%d mask=%b values=%v value=%q", x.EventID, (x.Time-base)/1000, x.Mask, x.Values, x.Value)
		if x.EventID == u.EventID && x.Time == u.Time {
			break
		}
	}
	return out
}

// TestShufflingArrivalChangesNoAlertCount delivers the same events in
// different orders, each event at most the lateness late, and requires the
// same number of alerts per group: as many as processing the events in
// time order raises.
func TestShufflingArrivalChangesNoAlertCount(t *testing.T) {
	t.Parallel()
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 0x0de7))
	total := 0
	for seq := range 300 {
		s := newStream(rng, 1+rng.IntN(3), 30+rng.IntN(150))
		var events []Update
		seen := map[string]bool{}
		for _, u := range s.updates {
			if u.Kind != NewValue && !seen[u.EventID] {
				seen[u.EventID] = true
				events = append(events, u)
			}
		}
		// In time order, then shuffled twice within the lateness.
		orders := [][]Update{slices.Clone(events)}
		slices.SortStableFunc(orders[0], func(a, b Update) int { return cmpTime(a.Time, b.Time) })
		for range 2 {
			type timed struct {
				u       Update
				arrival int64
			}
			var ts []timed
			for _, u := range events {
				ts = append(ts, timed{u, u.Time + rng.Int64N(lateness(min(u.Window, time.Minute))+1)})
			}
			slices.SortStableFunc(ts, func(a, b timed) int { return cmpTime(a.arrival, b.arrival) })
			var order []Update
			for _, x := range ts {
				order = append(order, x.u)
			}
			orders = append(orders, order)
		}
		var counts []map[string]int
		for _, order := range orders {
			m := NewMemory()
			got, err := m.Apply(t.Context(), order)
			if err != nil {
				t.Fatal(err)
			}
			c := map[string]int{}
			for i, r := range got {
				c[order[i].Key] += len(r.Bursts)
			}
			counts = append(counts, c)
		}
		// A group remembers maxBursts alerting triggers: with more than
		// that many alerts (a rule without suppression) a late event may
		// come too late to count.
		for key, n := range counts[0] {
			if n >= maxBursts {
				for _, c := range counts {
					delete(c, key)
				}
			}
		}
		for i := 1; i < len(counts); i++ {
			if !reflect.DeepEqual(counts[i], counts[0]) {
				t.Fatalf("sequence %d (seed %d), shapes %+v: alerts per group %v in time order, %v shuffled",
					seq, seed, s.shapes, counts[0], counts[i])
			}
		}
		for _, n := range counts[0] {
			total += n
		}
	}
	if total < 1000 {
		t.Errorf("only %d alerts: the generator misses the interesting cases", total)
	}
}

func cmpTime(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
