package state

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"strconv"
	"testing"
	"time"
)

// BenchmarkMemoryApply replays a stream the way the engine does: each of
// the active groups sees an event every 10s, so a 60s window holds a handful
// and most updates end up below the threshold or suppressed while some fire.
// Event times advance with every update. One op is one update, applied in
// batches of 100. Past a few thousand groups the state no longer fits in the
// CPU caches, which is what the larger case measures.
func BenchmarkMemoryApply(b *testing.B) {
	for _, groups := range []int{1_000, 10_000} {
		for _, distinct := range []bool{false, true} {
			name := fmt.Sprintf("groups=%d/count", groups)
			if distinct {
				name = fmt.Sprintf("groups=%d/distinct", groups)
			}
			b.Run(name, func(b *testing.B) { benchmarkMemoryApply(b, groups, distinct) })
		}
	}
}

func benchmarkMemoryApply(b *testing.B, groups int, distinct bool) {
	const batchSize, pool = 100, 1 << 20
	step := 10 * sec / int64(groups)
	keys := make([]string, groups)
	for i := range keys {
		keys[i] = fmt.Sprintf("%016x", uint64(i)*0x9e3779b97f4a7c15)
	}
	users := []string{"alice", "bob", "carol", "dave", "erin", "frank"}
	updates := make([]Update, pool)
	for i := range updates {
		updates[i] = Update{
			Key:      keys[i%groups],
			EventID:  fmt.Sprintf("evt-%08d", i),
			Time:     base + int64(i)*step,
			Value:    users[(i/groups)%len(users)],
			Distinct: distinct,
			Count:    5,
			Window:   time.Minute,
			Suppress: time.Minute,
		}
	}
	m := NewMemory()
	batch := make([]Update, batchSize)
	fired := 0
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; n < b.N; n += batchSize {
		for j := range batch {
			i := n + j
			u := updates[i%pool]
			// Later passes over the pool are later in time, so their
			// ids were pruned long ago and count as new events.
			u.Time += int64(i/pool) * pool * step
			batch[j] = u
		}
		results, err := m.Apply(b.Context(), batch)
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range results {
			if r.Outcome == Fired {
				fired++
			}
		}
	}
	b.StopTimer()
	if b.N >= 100_000 && fired == 0 {
		b.Fatal("nothing fired: the benchmark does not exercise bursts")
	}
}

func TestMemoryForgetsGroupsIdleLongerThanTheirKeyTTL(t *testing.T) {
	t.Parallel()
	m := NewMemory()
	r := rule{key: "ab", count: 3, window: time.Minute, suppress: time.Minute}
	if _, err := m.Apply(t.Context(), []Update{r.ev("old", 0)}); err != nil {
		t.Fatal(err)
	}
	// Enough updates on another group, far later in event time, to sweep.
	other := rule{key: "cd", count: 1000, window: time.Minute}
	var batch []Update
	for i := range sweepEvery {
		batch = append(batch, other.ev(fmt.Sprintf("o%d", i), 86400+float64(i)*0.001))
	}
	if _, err := m.Apply(t.Context(), batch); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.groups["ab"]; ok {
		t.Error("a group idle for a day is still kept")
	}
	if _, ok := m.groups["cd"]; !ok {
		t.Error("the active group was forgotten")
	}
}

// TestNarrowingChangesNoAnswer compares the store with and without the
// narrowing of distinct candidates (distinctCandidates) over random
// sequences: redeliveries, out-of-order times, many bursts (some
// forgotten) and rules whose count or suppression changes midway, as a
// reload does.
func TestNarrowingChangesNoAnswer(t *testing.T) {
	t.Parallel()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0xd157))
	fired := 0
	for seq := range 2000 {
		narrow, full := NewMemory(), NewMemory()
		full.fullScan = true
		w := time.Duration(1+rng.IntN(120)) * time.Second
		r := rule{key: "ab", count: 1 + rng.IntN(6), window: w, suppress: []time.Duration{w / 4, w / 2, w, 2 * w}[rng.IntN(4)], distinct: true}
		values := []string{"alice", "bob", "carol", "dave", "erin", "frank", "grace"}[:2+rng.IntN(6)]
		span := time.Duration(2+rng.IntN(40)) * w
		var history, updates []Update
		for i := range 20 + rng.IntN(200) {
			if len(history) > 0 && rng.IntN(8) == 0 {
				updates = append(updates, history[rng.IntN(len(history))])
				continue
			}
			if rng.IntN(60) == 0 {
				// A reload changes the threshold or the suppression.
				r.count = 1 + rng.IntN(6)
				if rng.IntN(2) == 0 {
					r.suppress = []time.Duration{w / 4, w / 2, w, 2 * w}[rng.IntN(4)]
				}
			}
			u := r.val("e"+strconv.Itoa(i), 0, values[rng.IntN(len(values))])
			u.Time = base + micros(time.Duration(rng.Int64N(int64(span))).Truncate(time.Second))
			history = append(history, u)
			updates = append(updates, u)
		}
		for len(updates) > 0 {
			n := min(len(updates), 1+rng.IntN(10))
			want, err := full.Apply(t.Context(), updates[:n])
			if err != nil {
				t.Fatal(err)
			}
			got, err := narrow.Apply(t.Context(), updates[:n])
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("sequence %d (seed %d), rule %+v: batch %+v\nnarrowed %+v\nfull     %+v", seq, seed, r, updates[:n], got, want)
			}
			for _, res := range got {
				if res.Outcome == Fired {
					fired++
				}
			}
			updates = updates[n:]
		}
	}
	if fired < 1000 {
		t.Errorf("only %d alerts: the generator misses the interesting cases", fired)
	}
}
