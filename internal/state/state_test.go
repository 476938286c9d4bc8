package state

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"
)

// store is what both implementations offer.
type store interface {
	Apply(ctx context.Context, updates []Update) ([]Result, error)
}

var (
	_ store = (*Memory)(nil)
	_ store = (*Redis)(nil)
)

// rule builds threshold updates for one group: by default 3 in 60s,
// suppressed for 60s after an alert.
type rule struct {
	key      string
	count    int
	window   time.Duration
	suppress time.Duration
	distinct bool
}

func defaultRule() rule {
	return rule{key: "a1", count: 3, window: time.Minute, suppress: time.Minute}
}

func (r rule) ev(id string, s float64) Update {
	return Update{Key: r.key, EventID: id, Time: at(s), Count: r.count, Window: r.window, Suppress: r.suppress, Distinct: r.distinct}
}

func (r rule) val(id string, s float64, value string) Update {
	u := r.ev(id, s)
	u.Value = value
	return u
}

// seqRule builds sequence updates.
type seqRule struct {
	key      string
	steps    []Step
	window   time.Duration
	suppress time.Duration
}

// ev is an event matching the steps in mask, with values for distinct ones.
func (r seqRule) ev(id string, s float64, mask uint64, values ...string) Update {
	u := Update{Kind: Sequence, Key: r.key, EventID: id, Time: at(s), Steps: r.steps, Mask: mask, Window: r.window, Suppress: r.suppress}
	if len(values) > 0 {
		u.Values = values
	}
	return u
}

// nvRule builds new-value updates.
type nvRule struct {
	key            string
	history, learn time.Duration
	max            int
}

func (r nvRule) ev(id string, s float64, value string) Update {
	return Update{Kind: NewValue, Key: r.key, EventID: id, Time: at(s), Value: value, History: r.history, Learn: r.learn, MaxValues: r.max}
}

// step is one Apply call and what it must return.
type step struct {
	updates []Update
	want    []Result
}

func one(u Update, want Result) step { return step{updates: []Update{u}, want: []Result{want}} }

var (
	below      = Result{Outcome: Below}
	suppressed = Result{Outcome: Suppressed}
	duplicate  = Result{Outcome: Duplicate}
)

// fire is a threshold alert: the window from start to end holding count
// events, ids[0] first, last the trigger that completes it.
func fire(start, end float64, count int, last string, suppressed int, ids ...string) Result {
	return Result{Outcome: Fired, Bursts: []Burst{{
		Start: at(start), End: at(end), Count: count,
		FirstEventID: ids[0], LastEventID: last,
		EventIDs: ids, Suppressed: suppressed,
	}}}
}

// fireSeq is a sequence alert; steps are (count, first, last) triples.
func fireSeq(suppressed int, steps [][3]float64, ids ...string) Result {
	b := Burst{Count: len(ids), FirstEventID: ids[0], LastEventID: ids[len(ids)-1], EventIDs: ids, Suppressed: suppressed}
	for _, s := range steps {
		b.Steps = append(b.Steps, StepReport{Count: int(s[0]), First: at(s[1]), Last: at(s[2])})
	}
	b.Start, b.End = b.Steps[0].First, b.Steps[len(steps)-1].Last
	return Result{Outcome: Fired, Bursts: []Burst{b}}
}

// fireNew is a new-value alert.
func fireNew(id string, s float64, known, evicted int) Result {
	return Result{Outcome: Fired, Known: known, Evicted: evicted, Bursts: []Burst{{
		Start: at(s), End: at(s), Count: 1, FirstEventID: id, LastEventID: id, EventIDs: []string{id},
	}}}
}

func known(n, evicted int) Result { return Result{Outcome: Below, Known: n, Evicted: evicted} }

func steps(updates []Update, want ...Result) []step {
	s := make([]step, len(updates))
	for i := range updates {
		s[i] = one(updates[i], want[i])
	}
	return s
}

// testStore runs the behavioural suite against the stores newStore returns.
func testStore(t *testing.T, newStore func(t *testing.T) store) {
	r := defaultRule()
	noSup := r
	noSup.suppress = 0
	shortSup := r
	shortSup.suppress = 10 * time.Second
	halfSup := r
	halfSup.count, halfSup.suppress = 2, 30*time.Second
	dist := r
	dist.distinct = true
	single := rule{key: "b2", count: 1, window: time.Second, suppress: time.Second}
	// Two failures, then a success, within a minute.
	seq := seqRule{key: "5e", steps: []Step{{Count: 2}, {Count: 1}}, window: time.Minute, suppress: time.Minute}
	const F, S = 1, 2
	seqDistinct := seqRule{key: "5f", steps: []Step{{Count: 3, Distinct: true}, {Count: 1}}, window: time.Minute, suppress: time.Minute}
	seqOverlap := seqRule{key: "60", steps: []Step{{Count: 1}, {Count: 1}}, window: time.Minute, suppress: time.Minute}
	nv := nvRule{key: "7a", history: time.Hour, learn: 10 * time.Minute, max: 3}
	nvNow := nv
	nvNow.learn = 0

	cases := []struct {
		name  string
		steps []step
	}{
		{
			name: "three events within the window fire once at the third",
			steps: steps([]Update{r.ev("a", 0), r.ev("b", 10), r.ev("c", 20)},
				below, below, fire(0, 20, 3, "c", 0, "a", "b", "c")),
		},
		{
			name: "a fourth event inside the suppression zone is suppressed",
			steps: steps([]Update{r.ev("a", 0), r.ev("b", 10), r.ev("c", 20), r.ev("d", 30)},
				below, below, fire(0, 20, 3, "c", 0, "a", "b", "c"), suppressed),
		},
		{
			name: "events exactly one window apart do not fire",
			steps: steps([]Update{r.ev("a", 0), r.ev("b", 30), r.ev("c", 60)},
				below, below, below),
		},
		{
			name: "events spread over more than the window do not fire",
			steps: steps([]Update{r.ev("a", 0), r.ev("b", 30), r.ev("c", 61)},
				below, below, below),
		},
		{
			name: "out of order events fire on the arrival that completes the window, which ends at its newest event",
			steps: steps([]Update{r.ev("a", 50), r.ev("b", 10), r.ev("c", 30)},
				below, below, fire(10, 50, 3, "a", 0, "b", "c", "a")),
		},
		{
			name: "a late event completes a window that ends after it",
			steps: steps([]Update{r.ev("a", 20), r.ev("b", 40), r.ev("late", 5)},
				below, below, fire(5, 40, 3, "b", 0, "late", "a", "b")),
		},
		{
			name: "the earliest window to reach the count fires, and its zone suppresses what follows",
			steps: steps([]Update{r.ev("a", 0), r.ev("b", 30), r.ev("c", 100), r.ev("d", 110), r.ev("e", 50)},
				below, below, below, below, fire(0, 50, 3, "e", 0, "a", "b", "e")),
		},
		{
			name: "events with equal times are ordered by id",
			steps: steps([]Update{r.ev("z", 5), r.ev("m", 5), r.ev("b", 5)},
				below, below, fire(5, 5, 3, "z", 0, "b", "m", "z")),
		},
		{
			name: "a burst continued past the suppression zone fires again, counting the suppressed matches",
			// The zone of the alert at 20 s is [20 s, 80 s): 30 and 79.9 are
			// suppressed and still count; at 80 the window (20 s, 80 s]
			// holds three.
			steps: steps([]Update{
				r.ev("a", 0), r.ev("b", 10), r.ev("c", 20),
				r.ev("d", 30), r.ev("e", 79.9), r.ev("early", -59.9),
				r.ev("f", 80), r.ev("g", 90), r.ev("h", 100),
			},
				below, below, fire(0, 20, 3, "c", 0, "a", "b", "c"),
				suppressed, suppressed, below,
				fire(30, 80, 3, "f", 2, "d", "e", "f"), suppressed, suppressed),
		},
		{
			name: "the issue's case: 0, 10, 20 alert; 70 is suppressed; 85 and 95 make three with it",
			steps: steps([]Update{r.ev("a", 0), r.ev("b", 10), r.ev("c", 20), r.ev("d", 70), r.ev("e", 85), r.ev("f", 95)},
				below, below, fire(0, 20, 3, "c", 0, "a", "b", "c"), suppressed, below,
				fire(70, 95, 3, "f", 1, "d", "e", "f")),
		},
		{
			name: "the suppression zone ends exactly suppress after the alerting trigger",
			steps: steps([]Update{halfSup.ev("a", 0), halfSup.ev("b", 10), halfSup.ev("c", 39.999), halfSup.ev("d", 40)},
				below, fire(0, 10, 2, "b", 0, "a", "b"), suppressed, fire(0, 40, 4, "d", 1, "a", "b", "c", "d")),
		},
		{
			name: "with a zone shorter than the window, a continued burst alerts once per zone",
			steps: steps([]Update{
				shortSup.ev("a", 0), shortSup.ev("b", 10), shortSup.ev("c", 20), // fires; zone [20, 30)
				shortSup.ev("d", 31), shortSup.ev("e", 35), shortSup.ev("f", 40),
			},
				below, below, fire(0, 20, 3, "c", 0, "a", "b", "c"),
				fire(0, 31, 4, "d", 0, "a", "b", "c", "d"), suppressed, suppressed),
		},
		{
			name: "without suppression every completing event fires",
			steps: steps([]Update{noSup.ev("a", 0), noSup.ev("b", 10), noSup.ev("c", 20), noSup.ev("d", 30), noSup.ev("e", 70)},
				below, below,
				fire(0, 20, 3, "c", 0, "a", "b", "c"),
				fire(0, 30, 4, "d", 0, "a", "b", "c", "d"),
				fire(20, 70, 3, "e", 0, "c", "d", "e")),
		},
		{
			name: "without suppression a late event fires every window it completes",
			steps: []step{
				one(noSup.ev("b", 10), below), one(noSup.ev("c", 50), below), one(noSup.ev("d", 71), below),
				{updates: []Update{noSup.ev("a", 12)}, want: []Result{{Outcome: Fired, Bursts: []Burst{
					{Start: at(10), End: at(50), Count: 3, FirstEventID: "b", LastEventID: "c", EventIDs: []string{"b", "a", "c"}},
					{Start: at(12), End: at(71), Count: 3, FirstEventID: "a", LastEventID: "d", EventIDs: []string{"a", "c", "d"}},
				}}}},
			},
		},
		{
			name: "a distinct rule counts distinct values, not events",
			steps: append(steps([]Update{
				dist.val("1", 0, "alice"), dist.val("2", 1, "bob"), dist.val("3", 2, "alice"),
				dist.val("4", 3, "bob"), dist.val("5", 4, "alice"), dist.val("6", 5, "bob"),
				dist.val("7", 6, "alice"), dist.val("8", 7, "bob"), dist.val("9", 8, "alice"),
				dist.val("10", 9, "bob"),
			}, below, below, below, below, below, below, below, below, below, below),
				one(dist.val("11", 10, "carol"), fire(0, 10, 3, "11", 0, "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"))),
		},
		{
			name: "a distinct window keeps a value another event still holds",
			steps: steps([]Update{
				dist.val("p", 45, "x"), dist.val("q", 50, "x"), dist.val("s", 106, "y"), dist.val("u", 100, "z"),
			},
				below, below, below, fire(50, 106, 3, "s", 0, "q", "u", "s")),
		},
		{
			name: "the same event id counts once",
			steps: steps([]Update{r.ev("a", 0), r.ev("a", 0), r.ev("a", 5), r.ev("b", 10), r.ev("c", 20)},
				below, duplicate, duplicate, below, fire(0, 20, 3, "c", 0, "a", "b", "c")),
		},
		{
			name: "a suppressed event id redelivered is a duplicate",
			steps: steps([]Update{r.ev("a", 0), r.ev("b", 10), r.ev("c", 20), r.ev("d", 30), r.ev("d", 30)},
				below, below, fire(0, 20, 3, "c", 0, "a", "b", "c"), suppressed, duplicate),
		},
		{
			name: "a redelivered event returns the alert it raised",
			steps: steps([]Update{
				r.ev("a", 0), r.ev("b", 10), r.ev("c", 20), r.ev("d", 30),
				r.ev("c", 20), r.ev("a", 0), r.ev("c", 20),
			},
				below, below, fire(0, 20, 3, "c", 0, "a", "b", "c"), suppressed,
				fire(0, 20, 3, "c", 0, "a", "b", "c"), duplicate, fire(0, 20, 3, "c", 0, "a", "b", "c")),
		},
		{
			name: "a redelivered event returns the alert with its suppressed count",
			steps: steps([]Update{
				r.ev("a", 0), r.ev("b", 10), r.ev("c", 20), r.ev("d", 30),
				r.ev("f", 80), r.ev("g", 90), r.ev("h", 100), r.ev("h", 100),
			},
				below, below, fire(0, 20, 3, "c", 0, "a", "b", "c"), suppressed,
				below, below, fire(80, 100, 3, "h", 1, "f", "g", "h"), fire(80, 100, 3, "h", 1, "f", "g", "h")),
		},
		{
			name: "a batch sees its own earlier updates to the same key",
			steps: []step{{
				updates: []Update{r.ev("a", 0), r.ev("b", 10), r.ev("b", 10), r.ev("c", 20), r.ev("d", 25), r.ev("c", 20)},
				want: []Result{below, below, duplicate, fire(0, 20, 3, "c", 0, "a", "b", "c"), suppressed,
					fire(0, 20, 3, "c", 0, "a", "b", "c")},
			}},
		},
		{
			name:  "an empty batch returns no results",
			steps: []step{{updates: []Update{}, want: []Result{}}},
		},
		{
			name: "events older than the retention behind the newest are forgotten",
			// Retention is 60s + 5min: at 400s everything before 40s goes.
			steps: steps([]Update{r.ev("a", 0), r.ev("b", 10), r.ev("new", 400), r.ev("late", 20), r.ev("a", 0), r.ev("a", 0)},
				below, below, below, below, below, below),
		},
		{
			name: "events within the retention are kept",
			steps: steps([]Update{r.ev("a", 40), r.ev("b", 50), r.ev("new", 400), r.ev("late", 60), r.ev("a", 40)},
				below, below, below, fire(40, 60, 3, "late", 0, "a", "b", "late"), duplicate),
		},
		{
			name: "suppressed events older than the retention are forgotten",
			steps: steps([]Update{
				r.ev("a", 0), r.ev("b", 10), r.ev("c", 20), r.ev("d", 30),
				r.ev("x", 389.9), r.ev("y", 391), // prunes before 31s
				r.ev("d", 30), // forgotten, and too late to count again
				r.ev("c", 20),
			},
				below, below, fire(0, 20, 3, "c", 0, "a", "b", "c"), suppressed,
				below, below, below, below),
		},
		{
			name: "a late event that moves an alerted window earlier raises no second alert",
			// 100, 110, 120 alert; then 0, 20 and 45 arrive, which alert on
			// their own at 45; 40 then moves that alert to 40.
			steps: steps([]Update{
				r.ev("f1", 100), r.ev("f2", 110), r.ev("f3", 120),
				r.ev("f4", 45), r.ev("f5", 0), r.ev("f6", 20), r.ev("f7", 40),
			},
				below, below, fire(100, 120, 3, "f3", 0, "f1", "f2", "f3"),
				below, below, fire(0, 45, 3, "f4", 0, "f5", "f6", "f4"), suppressed),
		},
		{
			name: "a sequence in order alerts on its last step",
			steps: steps([]Update{seq.ev("f1", 0, F), seq.ev("f2", 10, F), seq.ev("s", 20, S)},
				below, below, fireSeq(0, [][3]float64{{2, 0, 10}, {1, 20, 20}}, "f1", "f2", "s")),
		},
		{
			name: "a sequence delivered out of order alerts when its last event arrives",
			steps: steps([]Update{seq.ev("s", 20, S), seq.ev("f2", 10, F), seq.ev("f1", 0, F)},
				below, below, fireSeq(0, [][3]float64{{2, 0, 10}, {1, 20, 20}}, "f1", "f2", "s")),
		},
		{
			name: "steps out of order in event time do not alert",
			steps: steps([]Update{seq.ev("s", 0, S), seq.ev("f1", 10, F), seq.ev("f2", 20, F)},
				below, below, below),
		},
		{
			name: "a later step must be strictly later than the step before it",
			steps: steps([]Update{seq.ev("f1", 0, F), seq.ev("f2", 10, F), seq.ev("s", 10, S), seq.ev("s2", 10.001, S)},
				below, below, below, fireSeq(0, [][3]float64{{2, 0, 10}, {1, 10.001, 10.001}}, "f1", "f2", "s2")),
		},
		{
			name: "a sequence longer than its window does not alert",
			steps: steps([]Update{seq.ev("f1", 0, F), seq.ev("f2", 10, F), seq.ev("s", 60, S)},
				below, below, below),
		},
		{
			name: "a sequence short of a step's count does not alert",
			steps: steps([]Update{seq.ev("f1", 0, F), seq.ev("s", 20, S), seq.ev("s2", 30, S)},
				below, below, below),
		},
		{
			name: "a sequence's suppression zone starts at its last event",
			steps: steps([]Update{
				seq.ev("f1", 0, F), seq.ev("f2", 10, F), seq.ev("s1", 20, S),
				seq.ev("s2", 30, S), seq.ev("s3", 85, S),
				seq.ev("f3", 90, F), seq.ev("f4", 95, F), seq.ev("s4", 100, S),
			},
				below, below, fireSeq(0, [][3]float64{{2, 0, 10}, {1, 20, 20}}, "f1", "f2", "s1"),
				suppressed, below, below, below,
				fireSeq(1, [][3]float64{{2, 90, 95}, {1, 100, 100}}, "f3", "f4", "s4")),
		},
		{
			name: "a distinct step counts distinct values and lists their first events",
			steps: steps([]Update{
				seqDistinct.ev("f1", 0, F, "a", ""), seqDistinct.ev("f2", 5, F, "a", ""),
				seqDistinct.ev("f3", 10, F, "b", ""), seqDistinct.ev("s1", 12, S, "", ""),
				seqDistinct.ev("f4", 15, F, "c", ""), seqDistinct.ev("s2", 20, S, "", ""),
			},
				below, below, below, below, below,
				fireSeq(0, [][3]float64{{3, 0, 15}, {1, 20, 20}}, "f1", "f3", "f4", "s2")),
		},
		{
			name: "an event matching two steps serves one of them",
			steps: steps([]Update{seqOverlap.ev("x1", 0, F|S), seqOverlap.ev("x2", 10, F|S)},
				below, fireSeq(0, [][3]float64{{1, 0, 0}, {1, 10, 10}}, "x1", "x2")),
		},
		{
			name: "a redelivered sequence event returns its alert",
			steps: steps([]Update{seq.ev("f1", 0, F), seq.ev("f2", 10, F), seq.ev("s", 20, S), seq.ev("s", 20, S), seq.ev("f1", 0, F)},
				below, below, fireSeq(0, [][3]float64{{2, 0, 10}, {1, 20, 20}}, "f1", "f2", "s"),
				fireSeq(0, [][3]float64{{2, 0, 10}, {1, 20, 20}}, "f1", "f2", "s"), duplicate),
		},
		{
			name: "a new value alerts only once the group has learnt long enough, and the least recently seen goes first",
			steps: steps([]Update{
				nv.ev("e1", 0, "a"), nv.ev("e2", 300, "b"), nv.ev("e3", 660, "c"),
				nv.ev("e4", 720, "a"), nv.ev("e5", 780, "d"), nv.ev("e6", 790, "b"),
			},
				known(1, 0), known(2, 0), fireNew("e3", 660, 3, 0),
				known(3, 0), fireNew("e5", 780, 3, 1), fireNew("e6", 790, 3, 1)),
		},
		{
			name: "a value not seen for the history is new again",
			steps: steps([]Update{nvNow.ev("e1", 0, "a"), nvNow.ev("e2", 1800, "a"), nvNow.ev("e3", 5399, "a"), nvNow.ev("e4", 9000, "a")},
				fireNew("e1", 0, 1, 0), known(1, 0), known(1, 0), fireNew("e4", 9000, 1, 0)),
		},
		{
			name: "a value already seen later is not new",
			steps: steps([]Update{nvNow.ev("e1", 600, "a"), nvNow.ev("e2", 300, "a"), nvNow.ev("e3", 300, "b")},
				fireNew("e1", 600, 1, 0), known(1, 0), fireNew("e3", 300, 2, 0)),
		},
		{
			name: "a redelivered new-value event returns its alert",
			steps: steps([]Update{nvNow.ev("e1", 0, "a"), nvNow.ev("e1", 0, "a"), nvNow.ev("e2", 1, "a"), nvNow.ev("e2", 1, "a")},
				fireNew("e1", 0, 1, 0), fireNew("e1", 0, 1, 0), known(1, 0), known(1, 0)),
		},
		{
			name: "a new-value group quiet for longer than its keys live learns afresh",
			// History 1h, learning 10min: the keys live 1h5min.
			steps: steps([]Update{nv.ev("e1", 0, "a"), nv.ev("e2", 700, "b"), nv.ev("e3", 700+3901, "c"), nv.ev("e4", 700+3902, "d")},
				known(1, 0), fireNew("e2", 700, 2, 0), known(1, 0), known(2, 0)),
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newStore(t)
			for i, st := range tc.steps {
				got, err := s.Apply(t.Context(), st.updates)
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				if !reflect.DeepEqual(got, st.want) {
					t.Fatalf("step %d: Apply(%+v)\n got %+v\nwant %+v", i, st.updates, got, st.want)
				}
			}
		})
	}

	t.Run("many keys in one batch fire independently", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		var batch []Update
		var want []Result
		for round := range 3 {
			for k := range 200 {
				u := defaultRule()
				u.key = fmt.Sprintf("%x", 0x1000+k)
				id := fmt.Sprintf("e%d", round)
				batch = append(batch, u.ev(id, float64(round*10+k%7)))
				if round < 2 {
					want = append(want, below)
				} else {
					want = append(want, fire(float64(k%7), float64(20+k%7), 3, "e2", 0, "e0", "e1", "e2"))
				}
			}
		}
		got, err := s.Apply(t.Context(), batch)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("got %+v\nwant %+v", got, want)
		}
	})

	t.Run("a group keeps at most 4096 events, dropping the oldest by time then id", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		// 70ms apart, 4097 events stay within the retention (1s + 5min)
		// and 1s windows never reach 100.
		big := rule{key: "c3", count: 100, window: time.Second}
		batch := []Update{big.ev("t0-b", 0), big.ev("t0-a", 0)}
		for i := 1; i < maxEvents; i++ {
			batch = append(batch, big.ev(fmt.Sprintf("t%d", i), float64(i)*0.07))
		}
		got, err := s.Apply(t.Context(), batch)
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range got {
			if r.Outcome != Below {
				t.Fatalf("update %d: got %+v, want below", i, r)
			}
		}
		// "t0-a" was dropped (and is dropped again when recorded again,
		// being the oldest); "t0-b" and the rest are kept.
		got, err = s.Apply(t.Context(), []Update{big.ev("t0-a", 0), big.ev("t0-b", 0), big.ev("t1", 0.07)})
		if err != nil {
			t.Fatal(err)
		}
		if want := []Result{below, duplicate, duplicate}; !reflect.DeepEqual(got, want) {
			t.Fatalf("got %+v, want %+v", got, want)
		}
	})

	t.Run("a group quiet for longer than its keys live starts afresh, in event time", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		r := defaultRule() // 3 in 1m, suppress 1m: keys live 1m + 5m, and 10m more after an alert
		const quiet = 960.0
		got, err := s.Apply(t.Context(), []Update{
			r.ev("a1", 0), r.ev("a2", 1), r.ev("a3", 2), r.ev("a4", 30),
			// Just inside the keys' life: the group is remembered.
			r.ev("b1", 30+quiet-2), r.ev("b2", 30+quiet-1), r.ev("b3", 30+quiet), r.ev("b4", 40+quiet),
			// Past it: the suppressed count and the alerts are forgotten.
			r.ev("c1", 40+2*quiet+1), r.ev("c2", 40+2*quiet+2), r.ev("c3", 40+2*quiet+3),
		})
		if err != nil {
			t.Fatal(err)
		}
		want := []Result{
			below, below, fire(0, 2, 3, "a3", 0, "a1", "a2", "a3"), suppressed,
			below, below, fire(30+quiet-2, 30+quiet, 3, "b3", 1, "b1", "b2", "b3"), suppressed,
			below, below, fire(40+2*quiet+1, 40+2*quiet+3, 3, "c3", 0, "c1", "c2", "c3"),
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("got %+v\nwant %+v", got, want)
		}
	})

	t.Run("a flood of suppressed events keeps at most 4096 events and still suppresses", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		flood := rule{key: "c4", count: 1, window: time.Hour, suppress: time.Hour}
		batch := []Update{flood.ev("alert", 0)}
		for i := range maxEvents + 1 {
			batch = append(batch, flood.ev(fmt.Sprintf("s%05d", i), 1+float64(i)*0.001))
		}
		got, err := s.Apply(t.Context(), batch)
		if err != nil {
			t.Fatal(err)
		}
		if got[0].Outcome != Fired || got[len(got)-1].Outcome != Suppressed {
			t.Fatalf("first %+v, last %+v; want fired, then suppressed", got[0], got[len(got)-1])
		}
		// The oldest were forgotten: delivered again, the oldest is
		// dropped at once; a kept one is a duplicate; a new one is still
		// suppressed, though the event that alerted was forgotten.
		got, err = s.Apply(t.Context(), []Update{flood.ev("s00000", 1), flood.ev("s00001", 1.001), flood.ev("new", 10)})
		if err != nil {
			t.Fatal(err)
		}
		if want := []Result{below, duplicate, suppressed}; !reflect.DeepEqual(got, want) {
			t.Fatalf("got %+v, want %+v", got, want)
		}
	})

	t.Run("a group remembers the 16 most recent alerts for redelivered events", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		var batch []Update
		for i := range maxAlerts + 1 {
			batch = append(batch, single.ev(fmt.Sprintf("e%d", i), float64(i*10)))
		}
		first, err := s.Apply(t.Context(), batch)
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range first {
			if r.Outcome != Fired {
				t.Fatalf("update %d: got %+v, want fired", i, r)
			}
		}
		got, err := s.Apply(t.Context(), []Update{
			single.ev("e0", 0),         // alert forgotten: a plain duplicate
			single.ev("e1", 10),        // alert kept
			single.ev("late1", 10.5),   // near an alert: suppressed
			single.ev("late0", 0.5),    // near the alert forgotten for redelivery: still suppressed
			single.ev("late16", 160.5), // near the newest alert: suppressed
		})
		if err != nil {
			t.Fatal(err)
		}
		want := []Result{duplicate, first[1], suppressed, suppressed, suppressed}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("got %+v\nwant %+v", got, want)
		}
	})

	t.Run("with 64 alerting triggers remembered, an event before the oldest is too late", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		var batch []Update
		for i := range maxBursts + 1 {
			batch = append(batch, single.ev(fmt.Sprintf("e%d", i), float64(i*2)))
		}
		if _, err := s.Apply(t.Context(), batch); err != nil {
			t.Fatal(err)
		}
		// e0 is forgotten, e1 (at 2s) is the oldest remembered.
		got, err := s.Apply(t.Context(), []Update{single.ev("x", 1.5), single.ev("a", 2), single.ev("z", 2.5)})
		if err != nil {
			t.Fatal(err)
		}
		if want := []Result{below, below, suppressed}; !reflect.DeepEqual(got, want) {
			t.Fatalf("got %+v, want %+v", got, want)
		}
	})

	t.Run("an invalid update rejects the whole batch", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		ok := Update{Key: "a1", EventID: "x", Time: at(0), Count: 1, Window: time.Second}
		with := func(f func(*Update)) Update {
			u := ok
			f(&u)
			return u
		}
		bad := []Update{
			with(func(u *Update) { u.Key = "" }),
			with(func(u *Update) { u.Key = "A1" }),
			with(func(u *Update) { u.Key = "a1}" }),
			with(func(u *Update) { u.EventID = "" }),
			with(func(u *Update) { u.EventID = "x\x00y" }),
			with(func(u *Update) { u.Time = -1 }),
			with(func(u *Update) { u.Count = 0 }),
			with(func(u *Update) { u.Window = time.Nanosecond }),
			with(func(u *Update) { u.Suppress = -time.Second }),
			with(func(u *Update) { u.Window = 400 * 24 * time.Hour }),
			with(func(u *Update) { u.Kind = 9 }),
			with(func(u *Update) { u.Kind = Sequence; u.Mask = 1 }),
			with(func(u *Update) { u.Kind, u.Steps, u.Mask = Sequence, []Step{{Count: 1}}, 0 }),
			with(func(u *Update) { u.Kind, u.Steps, u.Mask = Sequence, []Step{{Count: 1}}, 2 }),
			with(func(u *Update) { u.Kind, u.Steps, u.Mask = Sequence, []Step{{Count: 0}}, 1 }),
			with(func(u *Update) {
				u.Kind, u.Steps, u.Mask, u.Values = Sequence, []Step{{Count: 1}}, 1, []string{"a", "b"}
			}),
			with(func(u *Update) {
				u.Kind, u.Steps, u.Mask = Sequence, []Step{{Count: 600}, {Count: 600}}, 1
			}),
			with(func(u *Update) { u.Kind, u.Value, u.MaxValues = NewValue, "v", 10 }),
			with(func(u *Update) { u.Kind, u.Value, u.History = NewValue, "v", time.Hour }),
			with(func(u *Update) { u.Kind, u.History, u.MaxValues = NewValue, time.Hour, 10 }),
		}
		for i, u := range bad {
			_, err := s.Apply(t.Context(), []Update{r.ev("ok", 0), u})
			if !errors.Is(err, ErrInvalidUpdate) {
				t.Errorf("update %d (%+v): got error %v, want ErrInvalidUpdate", i, u, err)
			}
		}
		got, err := s.Apply(t.Context(), []Update{r.ev("ok", 0)})
		if err != nil {
			t.Fatal(err)
		}
		if got[0].Outcome != Below {
			t.Fatalf("got %+v: a rejected batch was applied", got[0])
		}
	})
}

func TestMemory(t *testing.T) {
	t.Parallel()
	testStore(t, func(*testing.T) store { return NewMemory() })
}

func TestMemoryIsSafeForConcurrentUse(t *testing.T) {
	t.Parallel()
	m := NewMemory()
	r := defaultRule()
	r.suppress = 0
	done := make(chan []Result)
	for g := range 4 {
		go func() {
			var all []Result
			for i := range 15 {
				got, err := m.Apply(context.Background(), []Update{r.ev(fmt.Sprintf("g%d-%d", g, i), float64(i))})
				if err != nil {
					t.Error(err)
				}
				all = append(all, got...)
			}
			done <- all
		}()
	}
	fired := 0
	for range 4 {
		for _, r := range <-done {
			fired += len(r.Bursts)
		}
	}
	// 60 events in one group within one window, no suppression: every
	// event but the first two, in time order, completes a window, whatever
	// the order they arrive in.
	if fired != 58 {
		t.Fatalf("fired %d times, want 58", fired)
	}
}
