package broker

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Several queues on one channel: RABBITMQ_QUEUE=q1,q2,… for events a
// platform shards over several queues.

func TestPrefetchSharesSplitTheCountWithoutExceedingIt(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		total, n int
		want     []int
	}{
		{256, 1, []int{256}},
		{256, 4, []int{64, 64, 64, 64}},
		{10, 4, []int{3, 3, 2, 2}},
		{1, 4, []int{1, 1, 1, 1}}, // slow start: at least one each
	} {
		t.Run(fmt.Sprintf("%d over %d", tc.total, tc.n), func(t *testing.T) {
			t.Parallel()
			if got := prefetchShares(tc.total, tc.n); !slices.Equal(got, tc.want) {
				t.Errorf("prefetchShares(%d, %d) = %v, want %v", tc.total, tc.n, got, tc.want)
			}
		})
	}
}

func TestMergerRestoresTagOrderAcrossConsumers(t *testing.T) {
	t.Parallel()
	a, b := make(chan amqp.Delivery, 10), make(chan amqp.Delivery, 10)
	// Consumer b's deliveries are all ready before a's: the merger must
	// still pass them on as the broker numbered them.
	for _, tag := range []uint64{6, 7, 9} {
		b <- amqp.Delivery{DeliveryTag: tag}
	}
	close(b)
	quit := make(chan struct{})
	defer close(quit)
	m := newMerger([]<-chan amqp.Delivery{a, b}, 5, quit)
	go func() {
		time.Sleep(20 * time.Millisecond)
		for _, tag := range []uint64{5, 8, 10} {
			a <- amqp.Delivery{DeliveryTag: tag}
		}
		close(a)
	}()
	var got []uint64
	for d := range m.out {
		got = append(got, d.DeliveryTag)
	}
	if want := []uint64{5, 6, 7, 8, 9, 10}; !slices.Equal(got, want) {
		t.Errorf("merged tags %v, want %v", got, want)
	}
	if m.next != 11 {
		t.Errorf("next tag %d after the merge, want 11", m.next)
	}
}

func TestMergerLetsDeliveriesThroughPastATagThatNeverComes(t *testing.T) {
	t.Parallel()
	a := make(chan amqp.Delivery, 10)
	a <- amqp.Delivery{DeliveryTag: 3}
	a <- amqp.Delivery{DeliveryTag: 4}
	quit := make(chan struct{})
	defer close(quit)
	m := newMerger([]<-chan amqp.Delivery{a}, 1, quit)
	// Tags 1 and 2 never come, and the source stays open: after gapWait
	// the merger gives up on them.
	start := time.Now()
	for _, want := range []uint64{3, 4} {
		select {
		case d := <-m.out:
			if d.DeliveryTag != want {
				t.Fatalf("got tag %d, want %d", d.DeliveryTag, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("tag %d held back for good", want)
		}
	}
	if waited := time.Since(start); waited < gapWait/2 {
		t.Errorf("tags passed on after %s, before the gap could close", waited)
	}
	close(a)
	if _, ok := <-m.out; ok {
		t.Error("merger passed on a delivery that was never sent")
	}
}

func TestNewConsumerRejectsEmptyAndRepeatedQueues(t *testing.T) {
	t.Parallel()
	for name, cfg := range map[string]ConsumerConfig{
		"no queue":       {},
		"an empty name":  {Queues: []string{"a", ""}},
		"a name twice":   {Queues: []string{"a", "b", "a"}},
		"Queue repeated": {Queue: "a", Queues: []string{"a"}},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cfg.URLs, cfg.Prefetch = []string{"amqp://guest:guest@127.0.0.1:5672/"}, 10
			if _, err := NewConsumer(cfg); err == nil {
				t.Errorf("NewConsumer(%v) succeeded, want an error", cfg.Queues)
			}
		})
	}
}

// tagLog is a Handler that acks everything and records each batch's
// delivery tags and queues, and how many deliveries the consumer held
// unsettled at the time.
type tagLog struct {
	mu       sync.Mutex
	tags     []uint64
	queues   map[string]string // message id → queue
	maxHeld  int
	settled  int
	unacked  func() int // messages the broker counts as unacknowledged
	holdWait time.Duration
}

func (l *tagLog) Handle(_ context.Context, batch []Delivery) ([]Disposition, error) {
	// Give the broker time to push everything the prefetch allows.
	time.Sleep(l.holdWait)
	held := l.unacked()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.maxHeld = max(l.maxHeld, held)
	for _, d := range batch {
		l.tags = append(l.tags, d.tag)
		l.queues[d.MessageID] = d.Queue
	}
	l.settled += len(batch)
	return make([]Disposition, len(batch)), nil
}

func TestConsumerConsumesSeveralQueuesInTagOrderWithinOnePrefetch(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	classic := a.queue("q1", true)
	quorum := a.queue("q2", false)
	a.declareWith(quorum, amqp.Table{"x-queue-type": "quorum"})
	missing := a.queue("q3", false) // declared by the consumer
	queues := []string{classic, quorum, missing}
	const perQueue, prefetch = 20, 6
	var published atomic.Int64
	for i, q := range queues[:2] {
		publishConfirmed(t, a, q, ids(fmt.Sprintf("q%d-", i+1), perQueue))
	}
	published.Store(2 * perQueue)

	var unacked func() int
	log := &tagLog{queues: make(map[string]string), holdWait: 30 * time.Millisecond,
		unacked: func() int { return unacked() }}
	unacked = func() int {
		// Published minus settled minus ready: what the broker has
		// sent and not yet had settled. Published is read first and
		// counts only confirmed messages, so a publish in progress can
		// only make the figure lower, never higher.
		published := int(published.Load())
		ready := 0
		for _, q := range queues {
			_ = a.withChannel(func(ch *amqp.Channel) error {
				info, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
				ready += info.Messages
				return err
			})
		}
		log.mu.Lock()
		defer log.mu.Unlock()
		return published - log.settled - ready
	}
	var events connEvents
	c, err := NewConsumer(ConsumerConfig{URLs: []string{a.url}, Queues: queues, Prefetch: prefetch, BatchSize: prefetch,
		BatchWait: 20 * time.Millisecond, Logger: testLogger(t), OnConnection: events.on, Backoff: fastBackoff})
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c, log)
	waitFor(t, 20*time.Second, "the consumer up", events.are(true))
	// The third queue exists now; fill it while the others drain.
	publishConfirmed(t, a, missing, ids("q3-", perQueue))
	published.Add(perQueue)
	waitFor(t, 30*time.Second, "every message handled", func() bool {
		log.mu.Lock()
		defer log.mu.Unlock()
		return log.settled == 3*perQueue
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	log.mu.Lock()
	defer log.mu.Unlock()
	for i, tag := range log.tags {
		if tag != uint64(i+1) {
			t.Fatalf("handled tags %v: not 1, 2, 3, … in order, so acks could not be multiple", log.tags)
		}
	}
	for id, q := range log.queues {
		if want := queues[id[1]-'1']; q != want {
			t.Errorf("message %s reported from queue %q, want %q", id, q, want)
		}
	}
	if log.maxHeld > prefetch {
		t.Errorf("the consumer held up to %d unacknowledged deliveries, want at most the prefetch %d", log.maxHeld, prefetch)
	}
	for _, q := range queues {
		if n := a.depth(q); n != 0 {
			t.Errorf("queue %s holds %d messages after all were acked", q, n)
		}
	}
}

func TestConsumerOfSeveralQueuesReconnectsWhenOneIsDeleted(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	q1, q2 := a.queue("q1", true), a.queue("q2", true)
	var events connEvents
	rec := newRecorder()
	var depths sync.Map
	c, err := NewConsumer(ConsumerConfig{URLs: []string{a.url}, Queues: []string{q1, q2}, Prefetch: 5,
		Logger: testLogger(t), OnConnection: events.on, Backoff: fastBackoff, DepthInterval: 50 * time.Millisecond,
		OnQueueDepth: func(q string, n int, ok bool) { depths.Store(q, ok) }})
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c, rec)
	waitFor(t, 10*time.Second, "connection", events.are(true))
	waitFor(t, 10*time.Second, "a depth for each queue", func() bool {
		_, ok1 := depths.Load(q1)
		_, ok2 := depths.Load(q2)
		return ok1 && ok2
	})

	if _, err := a.ch.QueueDelete(q2, false, false, false); err != nil {
		t.Fatalf("delete queue: %v", err)
	}
	waitFor(t, 10*time.Second, "reconnection", events.are(true, false, true))
	a.publish(q1, "one")
	a.publish(q2, "two")
	waitFor(t, 10*time.Second, "a message from each queue", func() bool { return rec.count("one") == 1 && rec.count("two") == 1 })
	if err := stop(); err != nil {
		t.Fatalf("Run returned %v, want nil", err)
	}
}

func TestConsumerOfSeveralQueuesIsUpOnlyOnceItConsumesEveryOne(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	q1, q2 := a.queue("q1", true), a.queue("q2", true)
	// Someone else consumes q2 exclusively: the consumer can declare it
	// but not consume it.
	conn, err := amqp.Dial(a.url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	other, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Consume(q2, "", false, true, false, false, nil); err != nil {
		t.Fatalf("exclusive consume: %v", err)
	}
	var events connEvents
	rec := newRecorder()
	c, err := NewConsumer(ConsumerConfig{URLs: []string{a.url}, Queues: []string{q1, q2}, Prefetch: 4,
		Logger: testLogger(t), OnConnection: events.on, Backoff: fastBackoff})
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c, rec)
	time.Sleep(time.Second) // several attempts, each stopped at q2
	if got := events.get(); len(got) > 0 || c.Connected() {
		t.Errorf("with q2 in exclusive use elsewhere: OnConnection %v, Connected %v; want never up", got, c.Connected())
	}
	if err := other.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "up once q2 is free", events.are(true))
	a.publish(q2, "two")
	waitFor(t, 10*time.Second, "the message of q2", func() bool { return rec.count("two") == 1 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// publishConfirmed publishes a message per id to queue and returns once
// the broker has confirmed each, so that it is in the queue.
func publishConfirmed(t *testing.T, a *admin, queue string, ids []string) {
	t.Helper()
	err := a.withChannel(func(ch *amqp.Channel) error {
		if err := ch.Confirm(false); err != nil {
			return err
		}
		for _, id := range ids {
			c, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "", queue, false, false,
				amqp.Publishing{MessageId: id, Body: []byte(`{}`)})
			if err != nil {
				return err
			}
			if !c.Wait() {
				return fmt.Errorf("publish %s not confirmed", id)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("publish to %s: %v", queue, err)
	}
}
