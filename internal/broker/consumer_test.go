package broker

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

func TestConsumerAcksBatchesAndEmptiesTheQueue(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	q := a.queue("q", true)
	all := ids("m", 60)
	a.publish(q, all...)

	rec := newRecorder()
	var events connEvents
	c, err := NewConsumer(ConsumerConfig{
		URLs: []string{a.url}, Queue: q, Prefetch: 20, BatchSize: 10, BatchWait: 20 * time.Millisecond,
		Logger: testLogger(t), OnConnection: events.on,
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.Alive() {
		t.Error("Alive before Run")
	}
	stop := runConsumer(t, c, rec)
	waitFor(t, 10*time.Second, "all messages handled", func() bool { return rec.distinct() == len(all) })
	if !c.Alive() || !c.Connected() {
		t.Errorf("while running: Alive=%v Connected=%v, want both true", c.Alive(), c.Connected())
	}
	if err := stop(); err != nil {
		t.Fatalf("Run returned %v, want nil", err)
	}
	if c.Alive() || c.Connected() {
		t.Errorf("after Run: Alive=%v Connected=%v, want both false", c.Alive(), c.Connected())
	}

	for _, id := range all {
		if n := rec.count(id); n != 1 {
			t.Errorf("message %s handled %d times, want 1", id, n)
		}
	}
	rec.mu.Lock()
	largest := slices.Max(rec.batches)
	rec.mu.Unlock()
	if largest < 2 || largest > 10 {
		t.Errorf("largest batch %d, want between 2 and the batch size 10", largest)
	}
	if n := a.depth(q); n != 0 {
		t.Errorf("queue holds %d messages after every one was acked, want 0", n)
	}
	if got := events.get(); !slices.Equal(got, []bool{true, false}) {
		t.Errorf("OnConnection calls %v, want [true false]", got)
	}
}

func TestConsumerRejectRemovesWithoutRedelivery(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	q := a.queue("q", true)
	all := ids("m", 8)
	a.publish(q, all...)

	rec := newRecorder()
	// Alternate dispositions so acks and rejects interleave within a batch.
	rec.decide = func(d Delivery) Disposition {
		n, _ := strconv.Atoi(strings.TrimPrefix(d.MessageID, "m"))
		if n%2 == 0 {
			return Reject
		}
		return Ack
	}
	c, err := NewConsumer(ConsumerConfig{URLs: []string{a.url}, Queue: q, Prefetch: 8, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c, rec)
	waitFor(t, 10*time.Second, "all messages handled", func() bool { return rec.distinct() == len(all) })
	time.Sleep(300 * time.Millisecond) // room for a redelivery, if there were one
	if err := stop(); err != nil {
		t.Fatalf("Run returned %v, want nil", err)
	}
	if got := rec.total(); got != len(all) {
		t.Errorf("handled %d deliveries, want %d (no redelivery)", got, len(all))
	}
	if n := a.depth(q); n != 0 {
		t.Errorf("queue holds %d messages, want 0", n)
	}
}

func TestConsumerRetriesTheSameBatchAfterTransientErrors(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	q := a.queue("q", true)
	all := ids("m", 3)
	// A first delivery raises the consumer's prefetch from 1 (see
	// window): afterwards the three messages arrive as one batch.
	a.publish(q, "warm-up")

	const failures = 3
	var (
		mu          sync.Mutex
		calls       []time.Time
		batches     [][]string
		redelivered bool
		warm        = make(chan struct{})
	)
	h := HandlerFunc(func(_ context.Context, batch []Delivery) ([]Disposition, error) {
		mu.Lock()
		defer mu.Unlock()
		if batch[0].MessageID == "warm-up" {
			close(warm)
			return make([]Disposition, len(batch)), nil
		}
		calls = append(calls, time.Now())
		var got []string
		for _, d := range batch {
			got = append(got, d.MessageID)
			redelivered = redelivered || d.Redelivered
		}
		batches = append(batches, got)
		if len(calls) <= failures {
			return nil, errors.New("store unavailable")
		}
		return make([]Disposition, len(batch)), nil
	})
	ncalls := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(calls)
	}

	backoff := Backoff{Min: 50 * time.Millisecond, Max: 400 * time.Millisecond, Jitter: 0.1}
	c, err := NewConsumer(ConsumerConfig{
		URLs: []string{a.url}, Queue: q, Prefetch: 10, BatchWait: 50 * time.Millisecond,
		Logger: testLogger(t), Backoff: backoff,
	})
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c, h)
	select {
	case <-warm:
	case <-time.After(10 * time.Second):
		t.Fatal("warm-up message not handled")
	}
	a.publish(q, all...)
	waitFor(t, 5*time.Second, "a second attempt", func() bool { return ncalls() >= 2 })
	if n := a.depth(q); n != 0 {
		t.Errorf("while retrying, %d messages went back to the queue, want 0", n)
	}
	waitFor(t, 10*time.Second, "the successful attempt", func() bool { return ncalls() == failures+1 })
	time.Sleep(300 * time.Millisecond) // room for a redelivery, if there were one
	if err := stop(); err != nil {
		t.Fatalf("Run returned %v, want nil", err)
	}

	mu.Lock()
	defer mu.Unlock()
	if len(calls) != failures+1 {
		t.Fatalf("handler called %d times, want %d", len(calls), failures+1)
	}
	for i := 1; i < len(batches); i++ {
		if !slices.Equal(batches[i], batches[0]) {
			t.Errorf("attempt %d got batch %v, want the same batch %v", i+1, batches[i], batches[0])
		}
	}
	if !slices.Equal(batches[0], all) {
		t.Errorf("batch %v, want %v", batches[0], all)
	}
	for i := 1; i < len(calls); i++ {
		gap := calls[i].Sub(calls[i-1])
		// The i-th wait is Min·2^(i-1) with at most 10% jitter.
		least := time.Duration(float64(backoff.Min<<(i-1)) * 0.9)
		if gap < least {
			t.Errorf("attempt %d came %s after the previous one, want at least %s", i+1, gap, least)
		}
	}
	if redelivered {
		t.Error("a retried delivery was flagged redelivered: the batch went back to the broker")
	}
	if n := a.depth(q); n != 0 {
		t.Errorf("queue holds %d messages after success, want 0", n)
	}
}

func TestConsumerShutdownSettlesTheBatchInFlight(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	q := a.queue("q", true)
	a.publish(q, ids("m", 5)...)

	started := make(chan struct{})
	cancelled := make(chan struct{})
	var (
		mu         sync.Mutex
		calls      int
		handlerErr error
	)
	h := HandlerFunc(func(ctx context.Context, batch []Delivery) ([]Disposition, error) {
		mu.Lock()
		calls++
		first := calls == 1
		mu.Unlock()
		if first {
			close(started)
			<-cancelled
			// Still publishing alerts after shutdown began.
			time.Sleep(200 * time.Millisecond)
			mu.Lock()
			handlerErr = ctx.Err()
			mu.Unlock()
		}
		return make([]Disposition, len(batch)), nil
	})
	c, err := NewConsumer(ConsumerConfig{URLs: []string{a.url}, Queue: q, Prefetch: 10, BatchSize: 1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, h) }()

	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("handler never called")
	}
	cancel()
	close(cancelled)
	begin := time.Now()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run returned %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancellation")
	}
	if d := time.Since(begin); d > 2*time.Second {
		t.Errorf("Run took %s to return, want it prompt", d)
	}

	mu.Lock()
	defer mu.Unlock()
	if handlerErr != nil {
		t.Errorf("handler context ended during the grace period: %v", handlerErr)
	}
	if calls != 1 {
		t.Errorf("handler called %d times, want 1: no batch may start after cancellation", calls)
	}
	// The handled message was acked; the four prefetched ones went back.
	waitFor(t, 3*time.Second, "prefetched messages back in the queue", func() bool { return a.depth(q) == 4 })
}

func TestConsumerReconnectsAfterTheConnectionIsCut(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	q := a.queue("q", true)
	px := testenv.StartProxy(t, brokerAddr(t, a.url))
	first := ids("a", 5)
	a.publish(q, first...)

	var events connEvents
	rec := newRecorder()
	inFlight := make(chan struct{})
	var once sync.Once
	var firstBatch []string
	h := HandlerFunc(func(ctx context.Context, batch []Delivery) ([]Disposition, error) {
		isFirst := false
		once.Do(func() { isFirst = true })
		if isFirst {
			for _, d := range batch {
				firstBatch = append(firstBatch, d.MessageID)
			}
			close(inFlight)
			// Hold the batch until the loss is reported, then ack it:
			// that settlement belongs to a dead channel and must be dropped.
			// (Polled here rather than with waitFor: this is not the test's
			// goroutine, so it must not call t.Fatal.)
			for deadline := time.Now().Add(10 * time.Second); !slices.Contains(events.get(), false); {
				if time.Now().After(deadline) {
					t.Error("loss of the connection never reported")
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		return rec.Handle(ctx, batch)
	})
	c, err := NewConsumer(ConsumerConfig{
		URLs: []string{px.URL(t, a.url)}, Queue: q, Prefetch: 5, BatchSize: 5, BatchWait: 50 * time.Millisecond,
		Logger: testLogger(t), OnConnection: events.on, Backoff: fastBackoff,
	})
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c, h)
	select {
	case <-inFlight:
	case <-time.After(10 * time.Second):
		t.Fatal("handler never called")
	}
	px.SetRefuse(true)
	px.Cut()
	time.Sleep(300 * time.Millisecond) // a few failed reconnection attempts
	px.SetRefuse(false)
	waitFor(t, 10*time.Second, "reconnection", events.are(true, false, true))

	second := ids("b", 5)
	a.publish(q, second...)
	waitFor(t, 10*time.Second, "every message handled", func() bool { return rec.distinct() == len(first)+len(second) })
	time.Sleep(200 * time.Millisecond)
	if got := events.get(); !slices.Equal(got, []bool{true, false, true}) {
		// Another loss would mean a settlement the broker refused.
		t.Errorf("OnConnection calls %v, want [true false true]", got)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run returned %v, want nil", err)
	}
	rec.mu.Lock()
	if len(firstBatch) == 0 {
		t.Error("no batch was in flight during the cut")
	}
	for _, id := range firstBatch {
		if !rec.redelivered[id] {
			t.Errorf("message %s of the batch in flight during the cut was not redelivered", id)
		}
	}
	for _, id := range second {
		if rec.seen[id] != 1 {
			t.Errorf("message %s handled %d times, want 1", id, rec.seen[id])
		}
	}
	rec.mu.Unlock()
	if n := a.depth(q); n != 0 {
		t.Errorf("queue holds %d messages, want 0", n)
	}
}

func TestConsumerRedeclaresTheQueueWhenTheBrokerCancelsIt(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	q := a.queue("q", true)
	var events connEvents
	rec := newRecorder()
	c, err := NewConsumer(ConsumerConfig{
		URLs: []string{a.url}, Queue: q, Prefetch: 5, Logger: testLogger(t), OnConnection: events.on, Backoff: fastBackoff,
	})
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c, rec)
	waitFor(t, 10*time.Second, "connection", events.are(true))

	if _, err := a.ch.QueueDelete(q, false, false, false); err != nil {
		t.Fatalf("delete queue: %v", err)
	}
	waitFor(t, 10*time.Second, "reconnection", events.are(true, false, true))
	a.publish(q, "after")
	waitFor(t, 10*time.Second, "the message published after redeclaration", func() bool { return rec.count("after") == 1 })
	if err := stop(); err != nil {
		t.Fatalf("Run returned %v, want nil", err)
	}
}

func TestConsumerStopsWhenTheHandlerBreaksItsContract(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	q := a.queue("q", true)
	// The first batch is one delivery (the consumer starts with a
	// prefetch of 1); the next holds the other two.
	a.publish(q, "m0", "m1", "m2")
	h := HandlerFunc(func(context.Context, []Delivery) ([]Disposition, error) {
		return []Disposition{Ack}, nil // one short whatever the batch size
	})
	c, err := NewConsumer(ConsumerConfig{URLs: []string{a.url}, Queue: q, Prefetch: 2, BatchSize: 2, BatchWait: 100 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background(), h) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "dispositions") {
			t.Errorf("Run returned %v, want an error about dispositions", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	waitFor(t, 3*time.Second, "unsettled messages back in the queue", func() bool { return a.depth(q) == 2 })
}

func TestNewConsumerReportsEveryConfigProblem(t *testing.T) {
	t.Parallel()
	const secret = "s3cr3t-pw"
	tests := []struct {
		name string
		cfg  ConsumerConfig
		want []string
	}{
		{
			name: "an unparsable URL does not leak its password",
			cfg:  ConsumerConfig{URLs: []string{"amqp://user:" + secret + "@host:notaport/"}, Queue: "q", Prefetch: 1},
			want: []string{"broker URL"},
		},
		{
			name: "a URL with another scheme is refused",
			cfg:  ConsumerConfig{URLs: []string{"http://user:" + secret + "@host/"}, Queue: "q", Prefetch: 1},
			want: []string{"scheme"},
		},
		{
			name: "every problem is reported together",
			cfg:  ConsumerConfig{URLs: []string{"amqp://localhost/"}, Prefetch: 0, BatchSize: -1, Backoff: Backoff{Jitter: 2}},
			want: []string{"queue name is empty", "prefetch 0", "batch size -1", "jitter"},
		},
		{
			name: "a batch larger than the prefetch is refused",
			cfg:  ConsumerConfig{URLs: []string{"amqp://localhost/"}, Queue: "q", Prefetch: 5, BatchSize: 6},
			want: []string{"batch size 6"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewConsumer(tt.cfg)
			if err == nil {
				t.Fatal("NewConsumer succeeded, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error %q contains the password", err)
			}
		})
	}

	t.Run("defaults fill in zero fields", func(t *testing.T) {
		c, err := NewConsumer(ConsumerConfig{URLs: []string{"amqps://u:p@broker.example:5671/vh"}, Queue: "q", Prefetch: 50})
		if err != nil {
			t.Fatal(err)
		}
		if c.cfg.BatchSize != 50 || c.cfg.BatchWait != 5*time.Millisecond || c.cfg.ShutdownGrace != 5*time.Second {
			t.Errorf("defaults: batch size %d, wait %s, grace %s", c.cfg.BatchSize, c.cfg.BatchWait, c.cfg.ShutdownGrace)
		}
		if c.cfg.Backoff != (Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second, Jitter: 0.2}) {
			t.Errorf("default backoff %+v", c.cfg.Backoff)
		}
		if got := c.dialer.nodes[0].redacted; strings.Contains(got, ":p@") {
			t.Errorf("logged broker URL %q shows the password", got)
		}
	})
}

func TestPlanSettlement(t *testing.T) {
	t.Parallel()
	ack := func(tag uint64, multiple bool) settleOp { return settleOp{tag: tag, ack: true, multiple: multiple} }
	nack := func(tag uint64) settleOp { return settleOp{tag: tag} }
	tests := []struct {
		name        string
		settled     uint64
		tags        []uint64
		disps       []Disposition
		want        []settleOp
		wantSettled uint64
	}{
		{
			name: "a contiguous run of acks is one multiple ack",
			tags: []uint64{1, 2, 3}, disps: []Disposition{Ack, Ack, Ack},
			want: []settleOp{ack(3, true)}, wantSettled: 3,
		},
		{
			name: "a single ack is not multiple",
			tags: []uint64{1}, disps: []Disposition{Ack},
			want: []settleOp{ack(1, false)}, wantSettled: 1,
		},
		{
			name: "a reject splits the runs and is sent alone",
			tags: []uint64{1, 2, 3, 4, 5}, disps: []Disposition{Ack, Ack, Reject, Ack, Ack},
			want: []settleOp{ack(2, true), nack(3), ack(5, true)}, wantSettled: 5,
		},
		{
			name:    "a batch continuing after earlier ones uses multiple",
			settled: 10, tags: []uint64{11, 12}, disps: []Disposition{Ack, Ack},
			want: []settleOp{ack(12, true)}, wantSettled: 12,
		},
		{
			name:    "a gap before the batch forces single acks",
			settled: 10, tags: []uint64{12, 13}, disps: []Disposition{Ack, Ack},
			want: []settleOp{ack(12, false), ack(13, false)}, wantSettled: 10,
		},
		{
			name: "a gap inside the batch ends multiple acks",
			tags: []uint64{1, 2, 4, 5}, disps: []Disposition{Ack, Ack, Ack, Ack},
			want: []settleOp{ack(2, true), ack(4, false), ack(5, false)}, wantSettled: 2,
		},
		{
			name: "all rejects",
			tags: []uint64{1, 2}, disps: []Disposition{Reject, Reject},
			want: []settleOp{nack(1), nack(2)}, wantSettled: 2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, settled := planSettlement(tt.settled, tt.tags, tt.disps)
			if !slices.Equal(got, tt.want) || settled != tt.wantSettled {
				t.Errorf("got %+v settled %d, want %+v settled %d", got, settled, tt.want, tt.wantSettled)
			}
		})
	}
}

func TestBackoffDelayDoublesUpToTheCapWithJitter(t *testing.T) {
	t.Parallel()
	b := Backoff{}.withDefaults()
	for attempt := range 10 {
		base := min(b.Min<<attempt, b.Max)
		for range 50 {
			d := b.delay(attempt)
			lo, hi := time.Duration(float64(base)*0.8), time.Duration(float64(base)*1.2)
			if d < lo || d > hi {
				t.Fatalf("attempt %d: delay %s outside [%s, %s]", attempt, d, lo, hi)
			}
		}
	}
	if d := b.delay(1000); d > 6*time.Second {
		t.Errorf("delay after many attempts %s, want capped near 5s", d)
	}
}

func TestConsumerDropsAFailingBatchWhenItsChannelCloses(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	q := a.queue("q", true)
	px := testenv.StartProxy(t, brokerAddr(t, a.url))
	a.publish(q, "m0")

	var events connEvents
	var (
		mu           sync.Mutex
		failed       int
		failedAfter  int // failing calls after the loss was reported
		redelivered  int
		lossReported bool
	)
	h := HandlerFunc(func(_ context.Context, batch []Delivery) ([]Disposition, error) {
		mu.Lock()
		defer mu.Unlock()
		if batch[0].Redelivered {
			redelivered++
			return make([]Disposition, len(batch)), nil
		}
		// The dependency stays down for the first delivery of the message.
		failed++
		if lossReported {
			failedAfter++
		}
		return nil, errors.New("store unavailable")
	})
	c, err := NewConsumer(ConsumerConfig{
		URLs: []string{px.URL(t, a.url)}, Queue: q, Prefetch: 1, Logger: testLogger(t),
		OnConnection: func(up bool) {
			events.on(up)
			mu.Lock()
			lossReported = lossReported || !up
			mu.Unlock()
		},
		Backoff: Backoff{Min: 50 * time.Millisecond, Max: 50 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c, h)
	waitFor(t, 10*time.Second, "two failed attempts", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return failed >= 2
	})
	px.Cut()
	waitFor(t, 10*time.Second, "reconnection", events.are(true, false, true))
	waitFor(t, 10*time.Second, "the redelivered message handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return redelivered == 1
	})
	if err := stop(); err != nil {
		t.Fatalf("Run returned %v, want nil", err)
	}
	mu.Lock()
	defer mu.Unlock()
	// At most one attempt can have been under way when the loss was reported.
	if failedAfter > 1 {
		t.Errorf("the batch of the lost channel was retried %d times after the loss", failedAfter)
	}
	if n := a.depth(q); n != 0 {
		t.Errorf("queue holds %d messages, want 0", n)
	}
}
