//go:build chaos

package chaos

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Publishing bounds: confirms outstanding, by count and by bytes.
const (
	publishWindow      = 4096
	publishWindowBytes = 64 << 20
)

func dial(url string) (*amqp.Connection, error) {
	return amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
}

// declare declares queue durable with args (nil: as the service would).
func declare(t *testing.T, url, queue string, args amqp.Table) {
	t.Helper()
	conn, err := dial(url)
	if err != nil {
		t.Fatalf("declare %s: %v", queue, err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("declare %s: %v", queue, err)
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, args); err != nil {
		t.Fatalf("declare %s: %v", queue, err)
	}
}

// publish publishes msgs to queue in order, with publisher confirms, and
// fails the test unless the broker confirms every one. Persistent messages
// survive a restart of the broker's application; transient ones spare the
// broker's disk where no restart is planned.
func publish(t *testing.T, url, queue string, msgs []message, persistent bool) {
	t.Helper()
	conn, err := dial(url)
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatalf("publish: %v", err)
	}
	mode := amqp.Transient
	if persistent {
		mode = amqp.Persistent
	}
	returns := ch.NotifyReturn(make(chan amqp.Return, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	type pending struct {
		dc   *amqp.DeferredConfirmation
		size int
	}
	var window []pending
	inflight := 0
	settle := func(p pending) {
		if ok, err := p.dc.WaitContext(ctx); err != nil || !ok {
			t.Fatalf("publish to %s: not confirmed (%v)", queue, err)
		}
		inflight -= p.size
	}
	for _, m := range msgs {
		for len(window) >= publishWindow || (len(window) > 0 && inflight+len(m.body) > publishWindowBytes) {
			settle(window[0])
			window = window[1:]
		}
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false, amqp.Publishing{
			ContentType:  "application/json",
			DeliveryMode: mode,
			MessageId:    m.id,
			Timestamp:    time.Now(),
			Body:         m.body,
		})
		if err != nil {
			t.Fatalf("publish to %s: %v", queue, err)
		}
		window = append(window, pending{dc, len(m.body)})
		inflight += len(m.body)
	}
	for _, p := range window {
		settle(p)
	}
	select {
	case r := <-returns:
		t.Fatalf("publish to %s: returned unroutable (%s)", queue, r.ReplyText)
	default:
	}
}

// depth returns the messages ready in queue.
func depth(url, queue string) (int, error) {
	conn, err := dial(url)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return 0, err
	}
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		return 0, fmt.Errorf("depth of %s: %w", queue, err)
	}
	return q.Messages, nil
}

func mustDepth(t *testing.T, url, queue string) int {
	t.Helper()
	n, err := depth(url, queue)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// drain takes every message out of queue and returns them.
func drain(t *testing.T, url, queue string) []amqp.Delivery {
	t.Helper()
	conn, err := dial(url)
	if err != nil {
		t.Fatalf("drain %s: %v", queue, err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("drain %s: %v", queue, err)
	}
	var out []amqp.Delivery
	for {
		d, ok, err := ch.Get(queue, true)
		if err != nil {
			t.Fatalf("drain %s: %v", queue, err)
		}
		if !ok {
			return out
		}
		out = append(out, d)
	}
}

// deleteQueue deletes queue.
func deleteQueue(url, queue string) error {
	conn, err := dial(url)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	_, err = ch.QueueDelete(queue, false, false, false)
	return err
}

// collector consumes a queue as it fills, for a scenario that deletes the
// queue under the service: a deleted queue takes its messages with it, so
// they must have been read before. When the queue is gone it waits for the
// service to declare it again and consumes again.
type collector struct {
	url, queue string
	stop       chan struct{}
	done       chan struct{}

	mu     sync.Mutex
	bodies [][]byte
	err    error
	// cancels counts the times the queue disappeared under the consumer.
	cancels int
}

func startCollector(t *testing.T, url, queue string) *collector {
	t.Helper()
	c := &collector{url: url, queue: queue, stop: make(chan struct{}), done: make(chan struct{})}
	go c.run()
	t.Cleanup(c.close)
	return c
}

func (c *collector) run() {
	defer close(c.done)
	for {
		err := c.consume()
		select {
		case <-c.stop:
			return
		default:
		}
		if err != nil && !errors.Is(err, errCancelled) {
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var errCancelled = errors.New("consumer cancelled")

// consume reads until the queue is deleted, the connection fails, or the
// collector stops. Messages are acknowledged one by one after they are
// recorded, so none is lost with the connection; when the queue is deleted,
// what was delivered before is still read.
func (c *collector) consume() error {
	conn, err := dial(c.url)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	if _, err := ch.QueueDeclarePassive(c.queue, true, false, false, false, nil); err != nil {
		return nil // not there (yet): the service declares it
	}
	cancelled := ch.NotifyCancel(make(chan string, 1))
	deliveries, err := ch.Consume(c.queue, "", false, false, false, false, nil)
	if err != nil {
		return err
	}
	for {
		select {
		case <-c.stop:
			return nil
		case d, ok := <-deliveries:
			if !ok {
				// Closed by a cancel (the queue was deleted) or by the
				// connection closing.
				select {
				case <-cancelled:
					c.mu.Lock()
					c.cancels++
					c.mu.Unlock()
					return errCancelled
				default:
					return errors.New("delivery channel closed")
				}
			}
			c.mu.Lock()
			c.bodies = append(c.bodies, d.Body)
			c.mu.Unlock()
			if err := d.Ack(false); err != nil {
				return err
			}
		}
	}
}

func (c *collector) close() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	<-c.done
}

// collected stops the collector and returns what it read.
func (c *collector) collected() [][]byte {
	c.close()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bodies
}

func (c *collector) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.bodies)
}
