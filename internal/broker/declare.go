package broker

import (
	"context"
	"errors"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Queue types a missing queue can be declared with.
const (
	QueueClassic = "classic"
	QueueQuorum  = "quorum"
)

func checkQueueType(t string) error {
	if t != QueueClassic && t != QueueQuorum {
		return fmt.Errorf("queue type %q must be %s or %s", t, QueueClassic, QueueQuorum)
	}
	return nil
}

// declareQueue makes sure queue exists and returns what the broker says of
// it. A queue that exists is used as the platform declared it, whatever its
// type and arguments: it is only declared passively. A missing one is
// declared durable, of type queueType, with no other argument. Each step
// runs on a channel of its own, because a failed passive declare closes its
// channel, and a channel the caller uses must not be lost to a 404.
func declareQueue(ctx context.Context, l *link, queue, queueType string) (amqp.Queue, error) {
	q, err := inspectQueue(ctx, l, queue)
	if err == nil || !isNotFound(err) {
		return q, err
	}
	ch, err := l.channel(ctx)
	if err != nil {
		return amqp.Queue{}, err
	}
	defer closeChannel(l, ch)
	err = l.bounded(ctx, opTimeout, func() error {
		var err error
		q, err = ch.QueueDeclare(queue, true, false, false, false, amqp.Table{"x-queue-type": queueType})
		return err
	})
	if err != nil {
		// Someone else may have declared it meanwhile, with arguments
		// of their own (406): the next attempt finds it passively.
		return amqp.Queue{}, fmt.Errorf("declare queue %q: %w", queue, err)
	}
	return q, nil
}

// inspectQueue declares queue passively: it fails with a 404 when the
// queue does not exist, and never changes it.
func inspectQueue(ctx context.Context, l *link, queue string) (amqp.Queue, error) {
	ch, err := l.channel(ctx)
	if err != nil {
		return amqp.Queue{}, err
	}
	defer closeChannel(l, ch)
	var q amqp.Queue
	err = l.bounded(ctx, opTimeout, func() error {
		var err error
		q, err = ch.QueueDeclarePassive(queue, false, false, false, false, nil)
		return err
	})
	if err != nil {
		return amqp.Queue{}, fmt.Errorf("inspect queue %q: %w", queue, err)
	}
	return q, nil
}

func isNotFound(err error) bool {
	var ae *amqp.Error
	return errors.As(err, &ae) && ae.Code == amqp.NotFound
}

// closeChannel closes a short-lived channel, unless the broker already did.
func closeChannel(l *link, ch *amqp.Channel) {
	if !ch.IsClosed() {
		_ = l.bounded(context.Background(), closeTimeout, ch.Close)
	}
}
