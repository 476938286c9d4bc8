// Package deadletter lets an operator look into the dead-letter queue and,
// once the cause is fixed, send its messages back to the event queue. It
// reads the headers the service writes when it dead-letters a message
// (x-rejection-reason, x-rejection-error, x-original-queue, x-rejected-at,
// x-original-message-id, x-original-timestamp).
package deadletter

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// The headers the service adds to a dead letter.
const (
	HeaderReason            = "x-rejection-reason"
	HeaderError             = "x-rejection-error"
	HeaderOriginalQueue     = "x-original-queue"
	HeaderRejectedAt        = "x-rejected-at"
	HeaderOriginalMessageID = "x-original-message-id"
	HeaderOriginalTimestamp = "x-original-timestamp"
)

// opTimeout bounds each broker operation.
const opTimeout = 10 * time.Second

// Message is one dead-lettered message.
type Message struct {
	Reason        string
	Error         string
	OriginalQueue string
	RejectedAt    string
	// MessageID is the producer's message id ("" when it sent none).
	MessageID string
	Body      []byte

	delivery amqp.Delivery
}

// Filter selects messages: by rejection reason (any of Reasons; none means
// every reason), at most Limit of them (0: no limit).
type Filter struct {
	Reasons []string
	Limit   int
}

func (f Filter) matches(m Message) bool {
	if len(f.Reasons) == 0 {
		return true
	}
	for _, r := range f.Reasons {
		if r == m.Reason {
			return true
		}
	}
	return false
}

// List returns the messages of queue that match f, in queue order, and
// the number of messages the queue held. Every message stays in the queue:
// they are taken without acknowledgement and returned when the channel
// closes (RabbitMQ then marks them redelivered).
func List(ctx context.Context, conn *amqp.Connection, queue string, f Filter) ([]Message, int, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, 0, fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	var out []Message
	depth, err := scan(ctx, ch, queue, f, func(m Message) error {
		out = append(out, m)
		return nil
	})
	return out, depth, err
}

// Redrive publishes the messages of queue that match f to target, one at a
// time, and removes each from queue only once the broker has confirmed
// its copy in target. The producer's headers and properties travel with
// it; the rejection headers do not. It returns the messages moved; on an
// error, the ones moved before it.
func Redrive(ctx context.Context, conn *amqp.Connection, queue, target string, f Filter) ([]Message, error) {
	if queue == target {
		return nil, fmt.Errorf("redrive: the dead-letter queue %q is also the target", queue)
	}
	pub, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open channel: %w", err)
	}
	defer pub.Close()
	if _, err := pub.QueueDeclarePassive(target, true, false, false, false, nil); err != nil {
		return nil, fmt.Errorf("target queue %q: %w", target, err)
	}
	if err := pub.Confirm(false); err != nil {
		return nil, fmt.Errorf("confirm mode: %w", err)
	}
	returns := pub.NotifyReturn(make(chan amqp.Return, 1))
	get, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open channel: %w", err)
	}
	defer get.Close()
	var moved []Message
	_, err = scan(ctx, get, queue, f, func(m Message) error {
		if err := republish(ctx, pub, returns, target, m); err != nil {
			return err
		}
		if err := m.delivery.Ack(false); err != nil {
			return fmt.Errorf("remove message from %q after its copy was confirmed (it is now in both queues): %w", queue, err)
		}
		moved = append(moved, m)
		return nil
	})
	return moved, err
}

// republish publishes m to target and waits for the broker's confirm.
func republish(ctx context.Context, ch *amqp.Channel, returns <-chan amqp.Return, target string, m Message) error {
	d := m.delivery
	headers := amqp.Table{}
	maps.Copy(headers, d.Headers)
	for _, h := range []string{HeaderReason, HeaderError, HeaderOriginalQueue, HeaderRejectedAt, HeaderOriginalMessageID, HeaderOriginalTimestamp} {
		delete(headers, h)
	}
	msg := amqp.Publishing{
		Headers:         headers,
		ContentType:     d.ContentType,
		ContentEncoding: d.ContentEncoding,
		DeliveryMode:    amqp.Persistent,
		Priority:        d.Priority,
		CorrelationId:   d.CorrelationId,
		ReplyTo:         d.ReplyTo,
		Expiration:      d.Expiration,
		MessageId:       m.MessageID,
		Type:            d.Type,
		UserId:          d.UserId,
		AppId:           d.AppId,
		Body:            d.Body,
	}
	if ts, ok := d.Headers[HeaderOriginalTimestamp].(string); ok {
		if t, err := time.Parse(time.RFC3339, ts); err == nil {
			msg.Timestamp = t
		}
	}
	pctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	conf, err := ch.PublishWithDeferredConfirmWithContext(pctx, "", target, true, false, msg)
	if err != nil {
		return fmt.Errorf("publish to %q: %w", target, err)
	}
	ok, err := conf.WaitContext(pctx)
	if err != nil {
		return fmt.Errorf("wait for the confirm of %q: %w", target, err)
	}
	// A return comes before the confirm of the same message.
	select {
	case r := <-returns:
		return fmt.Errorf("publish to %q: returned: %s", target, r.ReplyText)
	default:
	}
	if !ok {
		return fmt.Errorf("publish to %q: the broker refused the message (nack)", target)
	}
	return nil
}

// scan gets the messages queue held when it started, without
// acknowledging them, and calls visit for each that f selects. Messages
// the scan takes and visit does not acknowledge go back to the queue when
// the channel closes.
func scan(ctx context.Context, ch *amqp.Channel, queue string, f Filter, visit func(Message) error) (int, error) {
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Code == amqp.NotFound {
			return 0, fmt.Errorf("dead-letter queue %q does not exist", queue)
		}
		return 0, fmt.Errorf("dead-letter queue %q: %w", queue, err)
	}
	found := 0
	for range q.Messages {
		if err := ctx.Err(); err != nil {
			return q.Messages, err
		}
		d, ok, err := ch.Get(queue, false)
		if err != nil {
			return q.Messages, fmt.Errorf("get from %q: %w", queue, err)
		}
		if !ok {
			break
		}
		m := fromDelivery(d)
		if !f.matches(m) {
			continue
		}
		if err := visit(m); err != nil {
			return q.Messages, err
		}
		found++
		if f.Limit > 0 && found >= f.Limit {
			break
		}
	}
	return q.Messages, nil
}

func fromDelivery(d amqp.Delivery) Message {
	str := func(h string) string {
		s, _ := d.Headers[h].(string)
		return s
	}
	return Message{
		Reason:        str(HeaderReason),
		Error:         str(HeaderError),
		OriginalQueue: str(HeaderOriginalQueue),
		RejectedAt:    str(HeaderRejectedAt),
		MessageID:     str(HeaderOriginalMessageID),
		Body:          d.Body,
		delivery:      d,
	}
}

// Preview returns the start of a body as printable text for a terminal:
// at most n bytes, quoted as a Go string when it is not plain text.
func Preview(body []byte, n int) string {
	short := body
	if len(short) > n {
		short = short[:n]
	}
	s := string(short)
	quoted := fmt.Sprintf("%q", s)
	if strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f || r == '\uFFFD' }) {
		s = quoted
	}
	if len(body) > n {
		s += fmt.Sprintf("… (%d bytes)", len(body))
	}
	return s
}
