package state

import (
	"context"
	"errors"
	"fmt"
	"math"
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

const sec = int64(time.Second / time.Microsecond)

// base is a plausible event time, so that tests exercise 16-digit
// microsecond values like production does.
const base = int64(1_700_000_000) * sec

// at returns the time s seconds after base.
func at(s float64) int64 { return base + int64(math.Round(s*float64(sec))) }

// rule builds updates for one group: by default threshold 3 in 60s,
// suppressed for 60s around an alert.
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

func fire(start, end float64, count int, trigger string, suppressed int, ids ...string) Result {
	return Result{Outcome: Fired, Burst: Burst{
		Start: at(start), End: at(end), Count: count,
		FirstEventID: ids[0], TriggerEventID: trigger,
		EventIDs: ids, Suppressed: suppressed,
	}}
}

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
	dist := r
	dist.distinct = true
	single := rule{key: "b2", count: 1, window: time.Second, suppress: time.Second}

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
			name: "a fourth event inside the window is suppressed",
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
			name: "out of order events fire on the third arrival with the true span",
			steps: steps([]Update{r.ev("a", 50), r.ev("b", 10), r.ev("c", 30)},
				below, below, fire(10, 50, 3, "c", 0, "b", "c", "a")),
		},
		{
			name: "a late event completes a window that ends after it",
			steps: steps([]Update{r.ev("a", 20), r.ev("b", 40), r.ev("late", 5)},
				below, below, fire(5, 40, 3, "late", 0, "late", "a", "b")),
		},
		{
			name: "the earliest qualifying window fires, not the one that starts at the event",
			steps: steps([]Update{r.ev("a", 0), r.ev("b", 30), r.ev("c", 100), r.ev("d", 110), r.ev("e", 50)},
				below, below, below, below, fire(0, 50, 3, "e", 0, "a", "b", "e")),
		},
		{
			name: "events with equal times are ordered by id",
			steps: steps([]Update{r.ev("z", 5), r.ev("m", 5), r.ev("b", 5)},
				below, below, fire(5, 5, 3, "b", 0, "b", "m", "z")),
		},
		{
			name: "a burst beyond the suppression span fires again and counts the suppressed events",
			steps: steps([]Update{
				r.ev("a", 0), r.ev("b", 10), r.ev("c", 20), // fires
				r.ev("d", 30), r.ev("e", 79.9), r.ev("early", -59.9), // within 60s of [0,20]
				r.ev("f", 80), r.ev("g", 90), r.ev("h", 100),
			},
				below, below, fire(0, 20, 3, "c", 0, "a", "b", "c"),
				suppressed, suppressed, suppressed,
				below, below, fire(80, 100, 3, "h", 3, "f", "g", "h")),
		},
		{
			name: "the suppression zone is open at both ends",
			steps: steps([]Update{
				r.ev("a", 100), r.ev("b", 110), r.ev("c", 120),
				r.ev("before", 40), r.ev("after", 180), r.ev("inside", 40.5),
			},
				below, below, fire(100, 120, 3, "c", 0, "a", "b", "c"),
				below, below, suppressed),
		},
		{
			name: "events in a suppression zone do not count towards a later burst",
			steps: steps([]Update{
				shortSup.ev("a", 0), shortSup.ev("b", 10), shortSup.ev("c", 20), // fires; zone is (-10, 30)
				shortSup.ev("d", 31), shortSup.ev("e", 35), // a, b, c lie in the zone: not candidates
				shortSup.ev("f", 40),
			},
				below, below, fire(0, 20, 3, "c", 0, "a", "b", "c"),
				below, below, fire(31, 40, 3, "f", 0, "d", "e", "f")),
		},
		{
			name: "without suppression every qualifying event fires",
			steps: steps([]Update{noSup.ev("a", 0), noSup.ev("b", 10), noSup.ev("c", 20), noSup.ev("d", 30), noSup.ev("e", 70)},
				below, below,
				fire(0, 20, 3, "c", 0, "a", "b", "c"),
				fire(0, 30, 4, "d", 0, "a", "b", "c", "d"),
				fire(20, 70, 3, "e", 0, "c", "d", "e")),
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
				below, below, below, fire(50, 106, 3, "u", 0, "q", "u", "s")),
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
			name: "a redelivered trigger event returns the same alert",
			steps: steps([]Update{
				r.ev("a", 0), r.ev("b", 10), r.ev("c", 20), r.ev("d", 30),
				r.ev("c", 20), r.ev("a", 0), r.ev("c", 20),
			},
				below, below, fire(0, 20, 3, "c", 0, "a", "b", "c"), suppressed,
				fire(0, 20, 3, "c", 0, "a", "b", "c"), duplicate, fire(0, 20, 3, "c", 0, "a", "b", "c")),
		},
		{
			name: "a redelivered trigger event returns the alert with its suppressed count",
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
			name: "suppressed ids older than the retention are forgotten",
			steps: steps([]Update{
				r.ev("a", 0), r.ev("b", 10), r.ev("c", 20), r.ev("d", 30),
				r.ev("x", 389.9), r.ev("y", 391), // prunes before 31s
				r.ev("d", 30), // forgotten: zoned again, suppressed again
				r.ev("c", 20), // forgotten, but the alert still names it
			},
				below, below, fire(0, 20, 3, "c", 0, "a", "b", "c"), suppressed,
				below, below, suppressed, suppressed),
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
		// "t0-a" was dropped (and is dropped again when re-recorded, being
		// the oldest); "t0-b" and the rest are kept.
		got, err = s.Apply(t.Context(), []Update{big.ev("t0-a", 0), big.ev("t0-b", 0), big.ev("t1", 0.07)})
		if err != nil {
			t.Fatal(err)
		}
		if want := []Result{below, duplicate, duplicate}; !reflect.DeepEqual(got, want) {
			t.Fatalf("got %+v, want %+v", got, want)
		}
	})

	t.Run("a group quiet for longer than its key lives starts afresh, in event time", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		r := defaultRule() // 3 in 1m, suppress 1m: keys live 1m + 5m + 1m + 10m
		quiet := 17*60 + 1.0
		got, err := s.Apply(t.Context(), []Update{
			r.ev("a1", 0), r.ev("a2", 1), r.ev("a3", 2), r.ev("a4", 30),
			// Just inside the key's life: the group is remembered.
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

	t.Run("a flood of suppressed events keeps at most 4096 suppressed ids, dropping the oldest", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		flood := rule{key: "c4", count: 1, window: time.Hour, suppress: time.Hour}
		batch := []Update{flood.ev("alert", 0)}
		for i := range maxSuppressed + 1 {
			batch = append(batch, flood.ev(fmt.Sprintf("s%05d", i), 1+float64(i)*0.001))
		}
		got, err := s.Apply(t.Context(), batch)
		if err != nil {
			t.Fatal(err)
		}
		if got[0].Outcome != Fired || got[len(got)-1].Outcome != Suppressed {
			t.Fatalf("first %+v, last %+v; want fired, then suppressed", got[0], got[len(got)-1])
		}
		// The oldest suppressed id was forgotten: delivered again it is
		// suppressed again; a kept one is a duplicate.
		got, err = s.Apply(t.Context(), []Update{flood.ev("s00000", 1), flood.ev("s00001", 1.001)})
		if err != nil {
			t.Fatal(err)
		}
		if want := []Result{suppressed, duplicate}; !reflect.DeepEqual(got, want) {
			t.Fatalf("got %+v, want %+v", got, want)
		}
	})

	t.Run("a group remembers only the 16 most recent alerts", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		var batch []Update
		for i := range maxBursts + 1 {
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
			single.ev("late1", 10.5),   // near a kept alert: suppressed
			single.ev("late0", 0.5),    // near the forgotten alert: fires, dropping e1's
			single.ev("late16", 160.5), // near the newest alert: suppressed
			single.ev("late1b", 10.6),  // e1's alert is gone now
		})
		if err != nil {
			t.Fatal(err)
		}
		want := []Result{duplicate, first[1], suppressed,
			fire(0, 0.5, 2, "late0", 1, "e0", "late0"),
			suppressed,
			fire(10, 10.6, 2, "late1b", 1, "e1", "late1b"),
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("got %+v\nwant %+v", got, want)
		}
	})

	t.Run("an invalid update rejects the whole batch", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		bad := []Update{
			{EventID: "x", Time: at(0), Count: 1, Window: time.Second},
			{Key: "A1", EventID: "x", Time: at(0), Count: 1, Window: time.Second},
			{Key: "a1}", EventID: "x", Time: at(0), Count: 1, Window: time.Second},
			{Key: "a1", Time: at(0), Count: 1, Window: time.Second},
			{Key: "a1", EventID: "x", Time: -1, Count: 1, Window: time.Second},
			{Key: "a1", EventID: "x", Time: at(0), Count: 0, Window: time.Second},
			{Key: "a1", EventID: "x", Time: at(0), Count: 1, Window: time.Nanosecond},
			{Key: "a1", EventID: "x", Time: at(0), Count: 1, Window: time.Second, Suppress: -time.Second},
			{Key: "a1", EventID: "x", Time: at(0), Count: 1, Window: 400 * 24 * time.Hour},
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
			for i := range 100 {
				got, err := m.Apply(context.Background(), []Update{r.ev(fmt.Sprintf("g%d-%d", g, i), float64(i%50))})
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
			if r.Outcome == Fired {
				fired++
			}
		}
	}
	// 400 events in one group within one window: all but the first two fire.
	if fired != 398 {
		t.Fatalf("fired %d times, want 398", fired)
	}
}
