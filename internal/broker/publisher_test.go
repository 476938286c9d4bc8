package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

func newTestPublisher(t *testing.T, cfg PublisherConfig) *Publisher {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	if cfg.Backoff == (Backoff{}) {
		cfg.Backoff = fastBackoff
	}
	p, err := NewPublisher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPublisherDeliversConfirmedPersistentMessages(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	q := a.queue("alerts", false) // the publisher declares it
	var events connEvents
	p := newTestPublisher(t, PublisherConfig{URLs: []string{a.url}, Queues: []string{q}, OnConnection: events.on})
	stop := runPublisher(t, p)
	waitFor(t, 10*time.Second, "connection", p.Connected)

	at := time.Unix(1700000000, 0)
	var msgs []Message
	for i := range 3 {
		msgs = append(msgs, Message{
			Queue:       q,
			Body:        []byte(fmt.Sprintf(`{"n":%d}`, i)),
			MessageID:   fmt.Sprintf("alert-%d", i),
			ContentType: "application/json",
			Headers:     map[string]any{"rule": "r1"},
			Timestamp:   at,
		})
	}
	if err := p.Publish(context.Background(), msgs); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	got := a.drain(q)
	if len(got) != len(msgs) {
		t.Fatalf("queue held %d messages, want %d", len(got), len(msgs))
	}
	for i, d := range got {
		m := msgs[i]
		if d.MessageId != m.MessageID || d.ContentType != m.ContentType || string(d.Body) != string(m.Body) {
			t.Errorf("message %d: id %q type %q body %s, want %q %q %s", i, d.MessageId, d.ContentType, d.Body, m.MessageID, m.ContentType, m.Body)
		}
		if d.DeliveryMode != amqp.Persistent {
			t.Errorf("message %d: delivery mode %d, want persistent (2)", i, d.DeliveryMode)
		}
		if d.Headers["rule"] != "r1" || !d.Timestamp.Equal(at) {
			t.Errorf("message %d: headers %v timestamp %v", i, d.Headers, d.Timestamp)
		}
	}
	if err := stop(); err != nil {
		t.Fatalf("Run returned %v, want nil", err)
	}
	if p.Connected() {
		t.Error("Connected after Run returned")
	}
	if got := events.get(); !slices.Equal(got, []bool{true, false}) {
		t.Errorf("OnConnection calls %v, want [true false]", got)
	}
	if err := p.Publish(context.Background(), msgs); !errors.Is(err, ErrNotConnected) {
		t.Errorf("Publish after Run returned %v, want ErrNotConnected", err)
	}
}

func TestPublisherReportsUnroutableMessages(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	q := a.queue("alerts", true)
	missing := a.queue("missing", false) // never declared
	p := newTestPublisher(t, PublisherConfig{URLs: []string{a.url}})
	runPublisher(t, p)
	waitFor(t, 10*time.Second, "connection", p.Connected)

	err := p.Publish(context.Background(), []Message{{Queue: missing, MessageID: "lost", Body: []byte("{}")}})
	if !errors.Is(err, ErrUnroutable) {
		t.Fatalf("Publish to a missing queue returned %v, want ErrUnroutable", err)
	}
	err = p.Publish(context.Background(), []Message{
		{Queue: q, MessageID: "kept", Body: []byte("{}")},
		{Queue: missing, MessageID: "lost-too", Body: []byte("{}")},
	})
	if !errors.Is(err, ErrUnroutable) || !strings.Contains(err.Error(), "lost-too") {
		t.Fatalf("Publish of a partly unroutable set returned %v, want ErrUnroutable naming lost-too", err)
	}
	// A return from an earlier call does not fail a later one.
	if err := p.Publish(context.Background(), []Message{{Queue: q, MessageID: "later", Body: []byte("{}")}}); err != nil {
		t.Fatalf("Publish after an unroutable one: %v", err)
	}
	var got []string
	for _, d := range a.drain(q) {
		got = append(got, d.MessageId)
	}
	if !slices.Equal(got, []string{"kept", "later"}) {
		t.Errorf("queue held %v, want [kept later]", got)
	}
}

func TestPublisherRefusesWhenNotReady(t *testing.T) {
	t.Parallel()
	p, err := NewPublisher(PublisherConfig{URLs: []string{"amqp://guest:guest@127.0.0.1:1/"}})
	if err != nil {
		t.Fatal(err)
	}
	if p.Connected() {
		t.Error("Connected before Run")
	}
	err = p.Publish(context.Background(), []Message{{Queue: "q", MessageID: "m", Body: []byte("{}")}})
	if !errors.Is(err, ErrNotConnected) {
		t.Errorf("Publish before Run returned %v, want ErrNotConnected", err)
	}
	if err := p.Publish(context.Background(), []Message{{Queue: "q", Body: []byte("{}")}}); err == nil {
		t.Error("Publish of a message without an id succeeded")
	}
	if err := p.Publish(context.Background(), nil); err != nil {
		t.Errorf("Publish of nothing returned %v", err)
	}
}

func TestPublisherReopensItsChannelAfterAChannelError(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	q := a.queue("alerts", false)
	var events connEvents
	p := newTestPublisher(t, PublisherConfig{URLs: []string{a.url}, Queues: []string{q}, OnConnection: events.on})
	runPublisher(t, p)
	waitFor(t, 10*time.Second, "connection", p.Connected)

	before := p.cur.Load()
	// The broker closes a channel that declares a missing queue passively
	// (404), as it would after any channel-level error.
	_, err := before.ch.QueueDeclarePassive(a.queue("absent", false), true, false, false, false, nil)
	var amqpErr *amqp.Error
	if !errors.As(err, &amqpErr) || amqpErr.Code != amqp.NotFound {
		t.Fatalf("passive declare returned %v, want a 404 channel error", err)
	}
	waitFor(t, 10*time.Second, "channel reopened", events.are(true, false, true))
	after := p.cur.Load()
	if after == nil || after == before || after.conn != before.conn {
		t.Fatal("want a new channel on the same connection")
	}
	if err := p.Publish(context.Background(), []Message{{Queue: q, MessageID: "m", Body: []byte("{}")}}); err != nil {
		t.Fatalf("Publish after the channel was reopened: %v", err)
	}
	if n := a.depth(q); n != 1 {
		t.Errorf("queue holds %d messages, want 1", n)
	}
}

func TestPublisherReconnectsAfterTheConnectionIsCut(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	q := a.queue("alerts", false)
	px := testenv.StartProxy(t, brokerAddr(t, a.url))
	var events connEvents
	p := newTestPublisher(t, PublisherConfig{URLs: []string{px.URL(t, a.url)}, Queues: []string{q}, OnConnection: events.on})
	runPublisher(t, p)
	waitFor(t, 10*time.Second, "connection", p.Connected)
	if err := p.Publish(context.Background(), []Message{{Queue: q, MessageID: "before", Body: []byte("{}")}}); err != nil {
		t.Fatalf("Publish: %v", err)
	}

	px.Cut()
	waitFor(t, 10*time.Second, "loss reported", func() bool { return slices.Contains(events.get(), false) })
	// The caller retries the whole set until it is confirmed.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := p.Publish(context.Background(), []Message{{Queue: q, MessageID: "after", Body: []byte("{}")}})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Publish still failing after reconnection: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := events.get(); !slices.Equal(got, []bool{true, false, true}) {
		t.Errorf("OnConnection calls %v, want [true false true]", got)
	}
	var got []string
	for _, d := range a.drain(q) {
		got = append(got, d.MessageId)
	}
	if !slices.Equal(got, []string{"before", "after"}) {
		t.Errorf("queue held %v, want [before after]", got)
	}
}

func TestPublisherTimesOutWhenConfirmsDoNotCome(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	q := a.queue("alerts", false)
	px := testenv.StartProxy(t, brokerAddr(t, a.url))
	p := newTestPublisher(t, PublisherConfig{URLs: []string{px.URL(t, a.url)}, Queues: []string{q}, ConfirmTimeout: 300 * time.Millisecond})
	runPublisher(t, p)
	waitFor(t, 10*time.Second, "connection", p.Connected)

	px.SetPaused(true)
	begin := time.Now()
	err := p.Publish(context.Background(), []Message{{Queue: q, MessageID: "stuck", Body: []byte("{}")}})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Publish with no confirm coming returned %v, want a deadline error", err)
	}
	if d := time.Since(begin); d > 2*time.Second {
		t.Errorf("Publish took %s, want about the 300ms confirm timeout", d)
	}
	px.SetPaused(false)
	if err := p.Publish(context.Background(), []Message{{Queue: q, MessageID: "flowing", Body: []byte("{}")}}); err != nil {
		t.Fatalf("Publish once the broker answers again: %v", err)
	}
}

func TestPublisherFailsFastWhileBlocked(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	q := a.queue("alerts", false)
	p := newTestPublisher(t, PublisherConfig{URLs: []string{a.url}, Queues: []string{q}})
	runPublisher(t, p)
	waitFor(t, 10*time.Second, "connection", p.Connected)

	// What the watcher records on connection.blocked during a memory or
	// disk alarm.
	p.cur.Load().conn.block.set(true, "low on memory")
	msgs := []Message{{Queue: q, MessageID: "m", Body: []byte("{}")}}
	if err := p.Publish(context.Background(), msgs); !errors.Is(err, ErrBlocked) {
		t.Errorf("Publish while blocked returned %v, want ErrBlocked", err)
	}
	p.cur.Load().conn.block.set(false, "")
	if err := p.Publish(context.Background(), msgs); err != nil {
		t.Errorf("Publish once unblocked: %v", err)
	}
}

func TestPublisherIsSafeForConcurrentUse(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	q := a.queue("alerts", false)
	p := newTestPublisher(t, PublisherConfig{URLs: []string{a.url}, Queues: []string{q}})
	runPublisher(t, p)
	waitFor(t, 10*time.Second, "connection", p.Connected)

	const workers, calls = 8, 5
	var wg sync.WaitGroup
	errs := make(chan error, workers*calls)
	for w := range workers {
		wg.Go(func() {
			for c := range calls {
				errs <- p.Publish(context.Background(), []Message{
					{Queue: q, MessageID: fmt.Sprintf("w%d-c%d-a", w, c), Body: []byte("{}")},
					{Queue: q, MessageID: fmt.Sprintf("w%d-c%d-b", w, c), Body: []byte("{}")},
				})
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Publish: %v", err)
		}
	}
	if n := a.depth(q); n != workers*calls*2 {
		t.Errorf("queue holds %d messages, want %d", n, workers*calls*2)
	}
}

func TestNewPublisherReportsConfigProblems(t *testing.T) {
	t.Parallel()
	_, err := NewPublisher(PublisherConfig{URLs: []string{"amqp://u:hunter2@[::1"}, Queues: []string{""}, ConfirmTimeout: -1})
	if err == nil {
		t.Fatal("NewPublisher succeeded, want an error")
	}
	for _, w := range []string{"broker URL", "empty name", "confirm timeout"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not mention %q", err, w)
		}
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error %q contains the password", err)
	}
}

func TestPublisherDeclaresADeletedQueueAgain(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	q := a.queue("alerts", false)
	p := newTestPublisher(t, PublisherConfig{URLs: []string{a.url}, Queues: []string{q}})
	runPublisher(t, p)
	waitFor(t, 10*time.Second, "connection", p.Connected)

	if err := a.withChannel(func(ch *amqp.Channel) error { _, err := ch.QueueDelete(q, false, false, false); return err }); err != nil {
		t.Fatal(err)
	}
	err := p.Publish(context.Background(), []Message{{Queue: q, MessageID: "first", Body: []byte("{}")}})
	if !errors.Is(err, ErrUnroutable) {
		t.Fatalf("Publish to the deleted queue returned %v, want ErrUnroutable", err)
	}
	// The retry reaches the queue, declared again.
	if err := p.Publish(context.Background(), []Message{{Queue: q, MessageID: "first", Body: []byte("{}")}}); err != nil {
		t.Fatalf("retry after the queue was deleted: %v", err)
	}
	if got := a.drain(q); len(got) != 1 || got[0].MessageId != "first" {
		t.Fatalf("queue held %v, want the retried message", got)
	}
}
