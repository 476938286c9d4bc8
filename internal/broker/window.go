package broker

// window decides the consumer's prefetch count: how many unacknowledged
// deliveries the broker may push to it. RabbitMQ ignores basic.qos's
// prefetch-size and the client library holds every prefetched delivery in
// memory, so the count is what bounds the bytes the client holds.
//
//   - Slow start: a channel begins at 1 and stays there while the deliveries
//     are redeliveries. After a crash every delivery that was in flight comes
//     back; taken one at a time, a message that kills the process comes back
//     alone each time and reaches the delivery limit alone, instead of
//     taking a whole window of innocent messages with it.
//   - Bytes: once a first-time delivery arrives, the count is as many bodies
//     of the largest recent size as fit in the byte budget, between 1 and the
//     configured prefetch.
//
// RabbitMQ applies a new prefetch count only to consumers started after it,
// so the consumer changes it by cancelling, settling what it holds, and
// consuming again: want changes it at once to lower it, and only when it at
// least doubles (or reaches the configured count) to raise it, so bodies
// of mixed sizes do not restart the consumer over and over.
type window struct {
	max    int   // the configured prefetch count
	budget int64 // bytes the prefetched bodies may take; 0: no bound
	fresh  bool  // a delivery that was not a redelivery has been seen

	// largest is the largest body of this period, previous of the one
	// before: a large body keeps the count low for one to two periods of
	// max deliveries.
	largest, previous int
	seen              int
}

func newWindow(max int, budget int64) *window {
	return &window{max: max, budget: budget}
}

// observe takes one delivery into account.
func (w *window) observe(size int, redelivered bool) {
	if !redelivered {
		w.fresh = true
	}
	w.largest = max(w.largest, size)
	w.seen++
	if w.seen >= w.max {
		w.previous, w.largest, w.seen = w.largest, 0, 0
	}
}

// size is the prefetch count the deliveries seen so far call for.
func (w *window) size() int {
	if !w.fresh {
		return 1
	}
	if w.budget <= 0 {
		return w.max
	}
	largest := int64(max(w.largest, w.previous, 1))
	return int(min(max(w.budget/largest, 1), int64(w.max)))
}

// want returns the prefetch count to move to from current: current itself
// when it should stay.
func (w *window) want(current int) int {
	n := w.size()
	switch {
	case n < current:
		return n
	case n > current && (n >= 2*current || n == w.max):
		return n
	}
	return current
}
