package broker

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Queues the platform declared with arguments of its own are used as they
// are: a declare without those arguments would fail with 406
// PRECONDITION_FAILED and close the channel.

func TestConsumerConsumesAQuorumQueueTheServiceWouldHaveMadeClassic(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	q := a.queue("q", false)
	quorum := amqp.Table{"x-queue-type": "quorum"}
	a.declareWith(q, quorum)
	a.publish(q, ids("m", 5)...)

	rec := newRecorder()
	var events connEvents
	c, err := NewConsumer(ConsumerConfig{URLs: []string{a.url}, Queue: q, QueueType: QueueClassic, Prefetch: 10,
		Logger: testLogger(t), OnConnection: events.on, Backoff: fastBackoff})
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c, rec)
	waitFor(t, 20*time.Second, "every message handled", func() bool { return rec.distinct() == 5 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got := events.get(); len(got) != 2 {
		t.Errorf("OnConnection calls %v, want one connection and its end", got)
	}
	if err := a.hasArgs(q, quorum); err != nil {
		t.Errorf("the queue is no longer the quorum queue it was: %v", err)
	}
}

func TestPublisherPublishesToQueuesWithTheirOwnArguments(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	alerts := a.queue("alerts", false)
	dead := a.queue("dead", false)
	limited := amqp.Table{"x-max-length": int32(2)}
	expiring := amqp.Table{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": alerts, "x-message-ttl": int32(600000)}
	a.declareWith(alerts, limited)
	a.declareWith(dead, expiring)

	// Configured for quorum queues: existing queues keep their type too.
	p := newTestPublisher(t, PublisherConfig{URLs: []string{a.url}, Queues: []string{alerts, dead}, QueueType: QueueQuorum})
	runPublisher(t, p)
	waitFor(t, 20*time.Second, "publisher ready", p.Connected)
	var msgs []Message
	for i := range 3 {
		msgs = append(msgs, Message{Queue: alerts, MessageID: "a" + strconv.Itoa(i), Body: []byte("{}")})
	}
	msgs = append(msgs, Message{Queue: dead, MessageID: "d", Body: []byte("{}")})
	if err := p.Publish(context.Background(), msgs); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	// x-max-length 2 keeps the last two.
	if n := a.depth(alerts); n != 2 {
		t.Errorf("alert queue holds %d messages, want 2 (its x-max-length)", n)
	}
	if n := a.depth(dead); n != 1 {
		t.Errorf("dead-letter queue holds %d messages, want 1", n)
	}
	if err := a.hasArgs(alerts, limited); err != nil {
		t.Errorf("alert queue lost its arguments: %v", err)
	}
	if err := a.hasArgs(dead, expiring); err != nil {
		t.Errorf("dead-letter queue lost its arguments: %v", err)
	}
}

func TestAMissingQueueIsDeclaredWithTheConfiguredTypeOnly(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	events := a.queue("q", false)
	alerts := a.queue("alerts", false)

	c, err := NewConsumer(ConsumerConfig{URLs: []string{a.url}, Queue: events, QueueType: QueueQuorum, Prefetch: 10,
		Logger: testLogger(t), Backoff: fastBackoff})
	if err != nil {
		t.Fatal(err)
	}
	runConsumer(t, c, newRecorder())
	waitFor(t, 20*time.Second, "consumer connected", c.Connected)
	p := newTestPublisher(t, PublisherConfig{URLs: []string{a.url}, Queues: []string{alerts}, QueueType: QueueQuorum})
	runPublisher(t, p)
	waitFor(t, 20*time.Second, "publisher ready", p.Connected)

	quorum := amqp.Table{"x-queue-type": "quorum"}
	for _, q := range []string{events, alerts} {
		if err := a.hasArgs(q, quorum); err != nil {
			t.Errorf("queue %s is not a plain quorum queue: %v", q, err)
		}
	}

	// A deleted alert queue is declared again the same way.
	if err := a.withChannel(func(ch *amqp.Channel) error { _, err := ch.QueueDelete(alerts, false, false, false); return err }); err != nil {
		t.Fatal(err)
	}
	err = p.Publish(context.Background(), []Message{{Queue: alerts, MessageID: "m", Body: []byte("{}")}})
	if !errors.Is(err, ErrUnroutable) {
		t.Fatalf("Publish to the deleted queue returned %v, want ErrUnroutable", err)
	}
	if err := a.hasArgs(alerts, quorum); err != nil {
		t.Errorf("the alert queue declared again is not a plain quorum queue: %v", err)
	}
	if err := p.Publish(context.Background(), []Message{{Queue: alerts, MessageID: "m", Body: []byte("{}")}}); err != nil {
		t.Errorf("retry after the queue was declared again: %v", err)
	}
}

func TestConsumerReadsQuorumDeliveryCounts(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	q := a.queue("q", false)
	a.declareWith(q, amqp.Table{"x-queue-type": "quorum"})
	a.publish(q, "m")
	// Two deliveries end without a settlement, as when a process dies.
	a.returnUnacked(q, 1)
	a.returnUnacked(q, 1)

	got := make(chan Delivery, 1)
	c, err := NewConsumer(ConsumerConfig{URLs: []string{a.url}, Queue: q, Prefetch: 5, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	runConsumer(t, c, HandlerFunc(func(_ context.Context, batch []Delivery) ([]Disposition, error) {
		for _, d := range batch {
			select {
			case got <- d:
			default:
			}
		}
		return make([]Disposition, len(batch)), nil
	}))
	select {
	case d := <-got:
		if d.DeliveryCount != 2 || !d.Redelivered {
			t.Errorf("delivery count %d, redelivered %v; want 2, true", d.DeliveryCount, d.Redelivered)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("message not delivered")
	}
}

func TestConsumerReportsQueueDepths(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	q := a.queue("q", true)
	other := a.queue("other", true)
	a.publish(other, ids("m", 3)...)

	type depth struct {
		n  int
		ok bool
	}
	depths := make(chan map[string]depth, 100)
	c, err := NewConsumer(ConsumerConfig{
		URLs: []string{a.url}, Queue: q, Prefetch: 5, Logger: testLogger(t),
		DepthQueues: []string{other}, DepthInterval: 50 * time.Millisecond,
		OnQueueDepth: func(queue string, messages int, ok bool) {
			select {
			case depths <- map[string]depth{queue: {messages, ok}}:
			default:
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	runConsumer(t, c, newRecorder())
	want := func(queue string, d depth) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			select {
			case m := <-depths:
				if got, ok := m[queue]; ok && got == d {
					return
				}
			case <-deadline:
				t.Fatalf("no depth %+v reported for %s", d, queue)
			}
		}
	}
	want(other, depth{3, true})
	want(q, depth{0, true})
	if err := a.withChannel(func(ch *amqp.Channel) error { _, err := ch.QueueDelete(other, false, false, false); return err }); err != nil {
		t.Fatal(err)
	}
	want(other, depth{0, false})
	if !c.Connected() {
		t.Error("a missing queue among those watched cost the consumer its connection")
	}
}
