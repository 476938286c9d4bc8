package app

import (
	"runtime"
	"runtime/debug"
	runtimemetrics "runtime/metrics"
	"testing"
	"time"
)

func TestGCPercentGivesTheFloorWhileTheLiveHeapIsSmall(t *testing.T) {
	t.Parallel()
	const mib = 1 << 20
	if maxGCPercent*(4*mib)/100 != heapFloor {
		t.Fatalf("maxGCPercent = %d: the runtime's minimum heap (4 MiB × GOGC/100) would not be the floor", maxGCPercent)
	}
	for _, c := range []struct {
		live uint64
		want int
	}{
		{0, maxGCPercent},
		{1, maxGCPercent},
		{2 * mib, maxGCPercent}, // 2 MiB × 12 would be 24 MiB, but the minimum heap would pass it
		{4 * mib, 500},          // 4 MiB × 6 = 24 MiB
		{8 * mib, 200},          // 8 MiB × 3
		{10 * mib, 140},         // 24 MiB
		{12 * mib, 100},         // twice the live heap is the floor
		{200 * mib, 100},        // large messages in flight: the default
	} {
		if got := gcPercent(c.live); got != c.want {
			t.Errorf("gcPercent(%d MiB) = %d, want %d", c.live/mib, got, c.want)
		}
	}
}

// The tuner sets GOGC after each collection, from the live heap the
// collection left.
func TestTunerSetsGOGCAfterEachCollection(t *testing.T) {
	// Not parallel: it changes the process's GOGC, and puts it back.
	old := debug.SetGCPercent(100)
	defer debug.SetGCPercent(old)

	tuner := &gcTuner{sample: []runtimemetrics.Sample{{Name: "/gc/heap/live:bytes"}}}
	tuner.arm()
	defer tuner.stop()
	deadline := time.Now().Add(5 * time.Second)
	for tuner.percentNow() == 0 && time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	p := tuner.percentNow()
	if p == 0 {
		t.Fatal("no collection ran the tuner")
	}
	// (Another tuner, from a serve earlier in this process, may have set
	// GOGC since: compare with what this one chose, not with GOGC.)
	sample := []runtimemetrics.Sample{{Name: "/gc/heap/live:bytes"}}
	runtimemetrics.Read(sample)
	if live := sample[0].Value.Uint64(); live < heapFloor/4 && p <= 100 {
		t.Errorf("live heap %d bytes, GOGC %d: the floor was not applied", live, p)
	}
}
