package broker

import (
	"bytes"
	"context"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestWindow(t *testing.T) {
	t.Parallel()
	type seen struct {
		size        int
		redelivered bool
	}
	fresh := func(size, n int) []seen { return slices.Repeat([]seen{{size, false}}, n) }
	again := func(size, n int) []seen { return slices.Repeat([]seen{{size, true}}, n) }
	tests := []struct {
		name    string
		max     int
		budget  int64
		seen    []seen
		current int
		want    int
	}{
		{name: "a channel starts with one delivery at a time", max: 256, budget: 32 << 20, current: 1, want: 1},
		{name: "redeliveries keep it at one", max: 256, budget: 32 << 20, seen: again(1000, 5), current: 1, want: 1},
		{name: "a first-time delivery opens the window", max: 256, budget: 32 << 20, seen: append(again(1000, 5), fresh(1000, 1)...), current: 1, want: 256},
		{name: "large bodies lower it to what fits the budget", max: 256, budget: 32 << 20, seen: fresh(900_000, 3), current: 256, want: 37},
		{name: "a body larger than the budget still gets one", max: 256, budget: 1 << 20, seen: fresh(2<<20, 1), current: 256, want: 1},
		{name: "no byte budget means the configured count", max: 100, seen: fresh(1<<20, 1), current: 1, want: 100},
		{name: "a small rise is not worth restarting the consumer", max: 256, budget: 32 << 20, seen: fresh(600_000, 1), current: 37, want: 37},
		{name: "reaching the configured count is", max: 50, budget: 32 << 20, seen: fresh(600_000, 1), current: 37, want: 50},
		{
			name: "a large body keeps it low for the next period", max: 10, budget: 10 << 20,
			seen: append(fresh(5<<20, 1), fresh(100, 10)...), current: 2, want: 2,
		},
		{
			name: "and is forgotten after two periods", max: 10, budget: 10 << 20,
			seen: append(fresh(5<<20, 1), fresh(100, 20)...), current: 2, want: 10,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := newWindow(tt.max, tt.budget)
			for _, s := range tt.seen {
				w.observe(s.size, s.redelivered)
			}
			if got := w.want(tt.current); got != tt.want {
				t.Errorf("want(%d) = %d, want %d (size %d)", tt.current, got, tt.want, w.size())
			}
		})
	}
}

// heldHandler records each batch and holds the n-th until released.
type heldHandler struct {
	mu      sync.Mutex
	batches [][]Delivery
	hold    int
	held    chan struct{}
	release chan struct{}
}

func newHeldHandler(hold int) *heldHandler {
	return &heldHandler{hold: hold, held: make(chan struct{}), release: make(chan struct{})}
}

func (h *heldHandler) Handle(_ context.Context, batch []Delivery) ([]Disposition, error) {
	h.mu.Lock()
	h.batches = append(h.batches, batch)
	n := len(h.batches)
	h.mu.Unlock()
	if n == h.hold {
		close(h.held)
		<-h.release
	}
	return make([]Disposition, len(batch)), nil
}

func (h *heldHandler) sizes() (count []int, bytes []int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, b := range h.batches {
		count = append(count, len(b))
		bytes = append(bytes, batchBytes(b))
	}
	return count, bytes
}

func (h *heldHandler) total() int {
	c, _ := h.sizes()
	n := 0
	for _, x := range c {
		n += x
	}
	return n
}

func TestLargeBodiesLowerThePrefetchAndCloseBatchesEarly(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	q := a.queue("q", true)
	const n, size = 40, 100_000
	bodies := make([][]byte, n)
	for i := range bodies {
		bodies[i] = bytes.Repeat([]byte{'x'}, size)
	}
	a.publishBodies(q, bodies...)

	// 1 MB: prefetched bodies may take 500 KB (5 of these), a batch
	// 250 KB (2 of them).
	const budget = 1_000_000
	h := newHeldHandler(6)
	var mu sync.Mutex
	var peak int64
	c, err := NewConsumer(ConsumerConfig{URLs: []string{a.url}, Queue: q, Prefetch: 100, MaxInflightBytes: budget,
		BatchWait: 50 * time.Millisecond, Logger: testLogger(t),
		OnInflight: func(b int64) { mu.Lock(); peak = max(peak, b); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	runConsumer(t, c, h)
	select {
	case <-h.held:
	case <-time.After(20 * time.Second):
		t.Fatal("handler not called six times")
	}
	// While a batch is held nothing is acked: what the broker has handed
	// out and not yet had settled is the prefetch window.
	counts, _ := h.sizes()
	unacked := n - h.total() - a.depth(q)
	handed := unacked + counts[5]
	close(h.release)
	if handed > 5 {
		t.Errorf("%d deliveries handed out and not settled, want at most 5 (500 KB of 100 KB bodies)", handed)
	}
	if handed < 2 {
		t.Errorf("only %d deliveries handed out, want a window of several", handed)
	}
	waitFor(t, 20*time.Second, "every message handled", func() bool { return h.total() == n })
	counts, sizes := h.sizes()
	for i, b := range sizes {
		if b > budget/4 {
			t.Errorf("batch %d holds %d bytes, more than a quarter of the budget", i, b)
		}
	}
	if slices.Max(counts) != 2 {
		t.Errorf("batch sizes %v, want batches of two 100 KB bodies", counts)
	}
	mu.Lock()
	defer mu.Unlock()
	if peak == 0 || peak > budget/2 {
		t.Errorf("in-flight bytes peaked at %d, want between 1 and %d", peak, budget/2)
	}
}

func TestRedeliveriesAreTakenOneAtATime(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	q := a.queue("q", true)
	const n = 8
	a.publish(q, ids("m", n)...)
	// As after a crash: every message comes back redelivered.
	a.returnUnacked(q, n)

	h := newHeldHandler(1)
	c, err := NewConsumer(ConsumerConfig{URLs: []string{a.url}, Queue: q, Prefetch: 50, BatchWait: 50 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	runConsumer(t, c, h)
	select {
	case <-h.held:
	case <-time.After(20 * time.Second):
		t.Fatal("handler never called")
	}
	// A message that kills the process would take only itself down.
	if ready := a.depth(q); ready != n-1 {
		t.Errorf("%d messages left in the queue while the first redelivery is handled, want %d", ready, n-1)
	}
	close(h.release)
	waitFor(t, 20*time.Second, "every redelivery handled", func() bool { return h.total() == n })
	if counts, _ := h.sizes(); slices.Max(counts) != 1 {
		t.Errorf("batch sizes %v, want redeliveries one at a time", counts)
	}

	// First-time deliveries open the window again.
	a.publish(q, ids("fresh", 20)...)
	waitFor(t, 20*time.Second, "fresh messages handled", func() bool { return h.total() == n+20 })
	if counts, _ := h.sizes(); slices.Max(counts[n:]) < 2 {
		t.Errorf("batch sizes %v after fresh messages, want batches again", counts[n:])
	}
}
