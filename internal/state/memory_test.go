package state

import (
	"fmt"
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
		for _, kind := range []string{"count", "distinct", "sequence", "new-value"} {
			b.Run(fmt.Sprintf("groups=%d/%s", groups, kind), func(b *testing.B) { benchmarkMemoryApply(b, groups, kind) })
		}
	}
}

func benchmarkMemoryApply(b *testing.B, groups int, kind string) {
	const batchSize, pool = 100, 1 << 20
	step := 10 * sec / int64(groups)
	keys := make([]string, groups)
	for i := range keys {
		keys[i] = fmt.Sprintf("%016x", uint64(i)*0x9e3779b97f4a7c15)
	}
	users := []string{"alice", "bob", "carol", "dave", "erin", "frank"}
	updates := make([]Update, pool)
	for i := range updates {
		u := Update{
			Key:      keys[i%groups],
			EventID:  fmt.Sprintf("evt-%08d", i),
			Time:     base + int64(i)*step,
			Value:    users[(i/groups)%len(users)],
			Count:    5,
			Window:   time.Minute,
			Suppress: time.Minute,
		}
		switch kind {
		case "distinct":
			u.Distinct = true
		case "sequence":
			u.Kind, u.Steps, u.Mask = Sequence, []Step{{Count: 4}, {Count: 1}}, 1
			if (i/groups)%5 == 4 {
				u.Mask = 2
			}
		case "new-value":
			u.Kind, u.History, u.MaxValues = NewValue, time.Hour, DefaultMaxValues
		}
		updates[i] = u
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
		b.Fatal("nothing fired: the benchmark does not exercise alerts")
	}
}

func TestMemoryForgetsGroupsIdleLongerThanTheirKeysLive(t *testing.T) {
	t.Parallel()
	m := NewMemory()
	r := rule{key: "ab", count: 3, window: time.Minute, suppress: time.Minute}
	nv := nvRule{key: "ac", history: time.Hour, max: 10}
	if _, err := m.Apply(t.Context(), []Update{r.ev("old", 0), nv.ev("old", 0, "v")}); err != nil {
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
	if _, ok := m.values["ac"]; ok {
		t.Error("a new-value group idle for a day is still kept")
	}
	if _, ok := m.groups["cd"]; !ok {
		t.Error("the active group was forgotten")
	}
}
