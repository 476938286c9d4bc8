package deadletter

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

// broker gives a test a connection and two queues of its own: a
// dead-letter queue holding what the service would have put there, and an
// event queue.
type broker struct {
	t           *testing.T
	conn        *amqp.Connection
	dlq, events string
}

func newBroker(t *testing.T) *broker {
	t.Helper()
	conn, err := amqp.Dial(testenv.RabbitMQURL(t))
	if err != nil {
		t.Fatal(err)
	}
	b := &broker{t: t, conn: conn, dlq: testenv.Name(t, "dlq"), events: testenv.Name(t, "events")}
	ch := b.channel()
	for _, q := range []string{b.dlq, b.events} {
		if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		ch, err := conn.Channel()
		if err == nil {
			for _, q := range []string{b.dlq, b.events} {
				_, _ = ch.QueueDelete(q, false, false, false)
			}
		}
		conn.Close()
	})
	return b
}

func (b *broker) channel() *amqp.Channel {
	b.t.Helper()
	ch, err := b.conn.Channel()
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() { ch.Close() })
	return ch
}

// deadLetter puts a message in the dead-letter queue as the service does.
func (b *broker) deadLetter(n int, reason string) {
	b.t.Helper()
	ch := b.channel()
	if err := ch.Confirm(false); err != nil {
		b.t.Fatal(err)
	}
	conf, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "", b.dlq, true, false, amqp.Publishing{
		Headers: amqp.Table{
			HeaderReason: reason, HeaderError: reason + ": details", HeaderOriginalQueue: b.events,
			HeaderRejectedAt: "2026-11-01T10:00:00Z", HeaderOriginalMessageID: fmt.Sprintf("msg-%d", n),
			HeaderOriginalTimestamp: "2026-11-01T09:59:59Z", "x-producer": "gen-1",
		},
		ContentType: "application/json", DeliveryMode: amqp.Persistent, MessageId: fmt.Sprintf("dl-%d", n),
		Body: fmt.Appendf(nil, `{"n":%d}`, n),
	})
	if err != nil {
		b.t.Fatal(err)
	}
	if ok, err := conf.WaitContext(context.Background()); !ok || err != nil {
		b.t.Fatalf("dead letter %d not confirmed: %v", n, err)
	}
}

// depth waits for the queue's ready count to settle on want: returned
// messages take a moment to come back after a channel closes.
func (b *broker) depth(queue string, want int) {
	b.t.Helper()
	ch := b.channel()
	deadline := time.Now().Add(15 * time.Second)
	for {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		if err != nil {
			b.t.Fatal(err)
		}
		if q.Messages == want {
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("queue %s holds %d messages, want %d", queue, q.Messages, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func bodies(msgs []Message) []string {
	var out []string
	for _, m := range msgs {
		out = append(out, string(m.Body))
	}
	return out
}

func TestListShowsMessagesAndLeavesThemInTheQueue(t *testing.T) {
	t.Parallel()
	b := newBroker(t)
	for i, r := range []string{"invalid_json", "wrong_type", "invalid_json", "too_large"} {
		b.deadLetter(i+1, r)
	}
	ctx := context.Background()
	msgs, depth, err := List(ctx, b.conn, b.dlq, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if depth != 4 || !slices.Equal(bodies(msgs), []string{`{"n":1}`, `{"n":2}`, `{"n":3}`, `{"n":4}`}) {
		t.Fatalf("List = %v of %d, want all four in order", bodies(msgs), depth)
	}
	m := msgs[1]
	if m.Reason != "wrong_type" || m.Error != "wrong_type: details" || m.OriginalQueue != b.events || m.RejectedAt != "2026-11-01T10:00:00Z" || m.MessageID != "msg-2" {
		t.Errorf("message 2 = %+v", m)
	}
	b.depth(b.dlq, 4)

	msgs, _, err = List(ctx, b.conn, b.dlq, Filter{Reasons: []string{"invalid_json"}, Limit: 1})
	if err != nil || !slices.Equal(bodies(msgs), []string{`{"n":1}`}) {
		t.Fatalf("List --reason invalid_json --limit 1 = %v, %v", bodies(msgs), err)
	}
	msgs, _, err = List(ctx, b.conn, b.dlq, Filter{Reasons: []string{"invalid_json", "too_large"}})
	if err != nil || !slices.Equal(bodies(msgs), []string{`{"n":1}`, `{"n":3}`, `{"n":4}`}) {
		t.Fatalf("List --reason invalid_json,too_large = %v, %v", bodies(msgs), err)
	}
	b.depth(b.dlq, 4)
}

func TestRedriveMovesConfirmedCopiesAndOnlyThem(t *testing.T) {
	t.Parallel()
	b := newBroker(t)
	for i, r := range []string{"unprocessable", "wrong_type", "unprocessable"} {
		b.deadLetter(i+1, r)
	}
	moved, err := Redrive(context.Background(), b.conn, b.dlq, b.events, Filter{Reasons: []string{"unprocessable"}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(bodies(moved), []string{`{"n":1}`, `{"n":3}`}) {
		t.Fatalf("moved %v", bodies(moved))
	}
	b.depth(b.dlq, 1)
	b.depth(b.events, 2)
	ch := b.channel()
	d, ok, err := ch.Get(b.events, true)
	if err != nil || !ok {
		t.Fatalf("get: %v %v", ok, err)
	}
	if string(d.Body) != `{"n":1}` || d.MessageId != "msg-1" || d.ContentType != "application/json" || d.DeliveryMode != amqp.Persistent ||
		!d.Timestamp.Equal(time.Date(2026, 11, 1, 9, 59, 59, 0, time.UTC)) {
		t.Errorf("redriven message = %q id %q type %q mode %d ts %v", d.Body, d.MessageId, d.ContentType, d.DeliveryMode, d.Timestamp)
	}
	if d.Headers["x-producer"] != "gen-1" || d.Headers[HeaderReason] != nil || d.Headers[HeaderOriginalQueue] != nil {
		t.Errorf("redriven headers = %v, want the producer's and no rejection headers", d.Headers)
	}
	left, _, err := List(context.Background(), b.conn, b.dlq, Filter{})
	if err != nil || len(left) != 1 || left[0].Reason != "wrong_type" {
		t.Errorf("left in the dead-letter queue: %v, %v", left, err)
	}
}

func TestRedriveToAMissingQueueMovesNothing(t *testing.T) {
	t.Parallel()
	b := newBroker(t)
	b.deadLetter(1, "invalid_json")
	moved, err := Redrive(context.Background(), b.conn, b.dlq, testenv.Name(t, "absent"), Filter{})
	if err == nil || len(moved) != 0 || !strings.Contains(err.Error(), "target queue") {
		t.Errorf("Redrive = %v, %v; want an error about the target and nothing moved", moved, err)
	}
	b.depth(b.dlq, 1)
}

func TestListOfAMissingQueueSaysSo(t *testing.T) {
	t.Parallel()
	b := newBroker(t)
	name := testenv.Name(t, "absent")
	if _, _, err := List(context.Background(), b.conn, name, Filter{}); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("List of a missing queue = %v", err)
	}
}

func TestPreviewKeepsTerminalsSafe(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		body string
		n    int
		want string
	}{
		{`{"a":1}`, 200, `{"a":1}`},
		{"\x1b[2Jboom", 200, `"\x1b[2Jboom"`},
		{"abcdef", 3, "abc… (6 bytes)"},
	} {
		if got := Preview([]byte(tc.body), tc.n); got != tc.want {
			t.Errorf("Preview(%q, %d) = %q, want %q", tc.body, tc.n, got, tc.want)
		}
	}
}
