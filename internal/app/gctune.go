package app

import (
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	runtimemetrics "runtime/metrics"
	"sync"
	"sync/atomic"
)

// heapFloor is the heap goal the collector is given while the live heap is
// small. A service draining events keeps a live heap of a few MiB, and the
// default GOGC=100 (a goal of twice the live heap) then runs a collection
// every few MiB allocated: measured on a 100,000-event drain, the collector
// was a large part of the CPU the service spends per event beyond what
// receiving and acknowledging the messages costs. A goal of 24 MiB
// collects several times less often, and keeps the drain's peak RSS
// around 40 MiB.
const heapFloor = 24 << 20

// maxGCPercent bounds the percentage the tuner sets. The runtime's heap
// goal is never below its minimum heap, 4 MiB × GOGC/100, whatever the
// live heap: a larger percentage would raise that minimum past the floor
// (GOGC=5000 gives 200 MiB before the first collection). 600 makes the
// minimum the floor itself, which is also the goal before the first
// collection, while the live heap is not known.
const maxGCPercent = heapFloor * 100 / (4 << 20)

var gcTuneOnce sync.Once

// tuneGC keeps the collector's heap goal at least heapFloor: after each
// collection GOGC becomes what makes the goal max(2 × live heap,
// heapFloor). Once the live heap passes half the floor it is the default
// 100, so large messages in flight (MAX_INFLIGHT_BYTES) get the runtime's
// usual behaviour, and the soft memory limit (GOMEMLIMIT, or the
// container's; see limitMemory) bounds the heap whatever the percentage.
// A GOGC in the environment is the operator's choice: then nothing is
// tuned. It runs once per process.
func tuneGC(logger *slog.Logger) {
	gcTuneOnce.Do(func() {
		if v, ok := os.LookupEnv("GOGC"); ok {
			logger.Info("GOGC set: the collector is not tuned", "gogc", v)
			return
		}
		t := &gcTuner{sample: []runtimemetrics.Sample{{Name: "/gc/heap/live:bytes"}}}
		t.tune()
		t.arm()
		logger.Debug("collector tuned", "heap_floor_bytes", heapFloor)
	})
}

// gcTuner sets GOGC after every collection, from a finalizer on an object
// that is garbage as soon as it is made: the finalizer runs after the
// collection that found it, and arms the next one.
type gcTuner struct {
	sample  []runtimemetrics.Sample // read by the finalizer goroutine only
	percent atomic.Int64            // the GOGC last set; 0 before the first
	stopped atomic.Bool             // no further collection re-arms it
}

// percentNow is the GOGC the tuner last set, 0 before it set one.
func (t *gcTuner) percentNow() int { return int(t.percent.Load()) }

// stop ends the tuning after the next collection.
func (t *gcTuner) stop() { t.stopped.Store(true) }

// sentinel is big enough, and holds a pointer, so that it is never packed
// with other objects by the tiny allocator (whose blocks are freed, and
// finalized, together).
type sentinel struct {
	_ *byte
	_ [16]byte
}

func (t *gcTuner) arm() {
	runtime.SetFinalizer(&sentinel{}, func(*sentinel) {
		if t.stopped.Load() {
			return
		}
		t.tune()
		t.arm()
	})
}

func (t *gcTuner) tune() {
	runtimemetrics.Read(t.sample)
	if t.sample[0].Value.Kind() != runtimemetrics.KindUint64 {
		return
	}
	if p := gcPercent(t.sample[0].Value.Uint64()); p != t.percentNow() {
		debug.SetGCPercent(p)
		t.percent.Store(int64(p))
	}
}

// gcPercent is the GOGC that gives a live heap of live bytes the goal
// max(2 × live, heapFloor): live × (1 + GOGC/100) = goal.
func gcPercent(live uint64) int {
	if live == 0 {
		return maxGCPercent
	}
	if live >= heapFloor/2 {
		return 100
	}
	p := int((heapFloor - live) * 100 / live)
	return min(max(p, 100), maxGCPercent)
}
