package broker

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os/exec"
	"slices"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// fastBackoff keeps reconnection tests quick.
var fastBackoff = Backoff{Min: 20 * time.Millisecond, Max: 200 * time.Millisecond}

// brokerAddr returns host:port of the broker URL.
func brokerAddr(t *testing.T, brokerURL string) string {
	t.Helper()
	u, err := url.Parse(brokerURL)
	if err != nil {
		t.Fatalf("parse broker URL: %v", err)
	}
	return u.Host
}

// admin is the test's own view of the broker: it declares, fills, inspects
// and deletes queues directly.
type admin struct {
	t   *testing.T
	url string
	ch  *amqp.Channel
}

func newAdmin(t *testing.T) *admin {
	t.Helper()
	u := testenv.RabbitMQURL(t)
	conn, err := amqp.Dial(u)
	if err != nil {
		t.Fatalf("admin dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("admin channel: %v", err)
	}
	return &admin{t: t, url: u, ch: ch}
}

// withChannel runs f on a fresh channel, so a channel error in one check
// cannot spoil the next.
func (a *admin) withChannel(f func(ch *amqp.Channel) error) error {
	conn, err := amqp.Dial(a.url)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	return f(ch)
}

// queue returns a unique queue name, deleted when the test ends; declared
// (durable, no arguments) when declare is set.
func (a *admin) queue(prefix string, declare bool) string {
	a.t.Helper()
	name := testenv.Name(a.t, prefix)
	if declare {
		if _, err := a.ch.QueueDeclare(name, true, false, false, false, nil); err != nil {
			a.t.Fatalf("declare %s: %v", name, err)
		}
	}
	a.t.Cleanup(func() {
		_ = a.withChannel(func(ch *amqp.Channel) error {
			_, err := ch.QueueDelete(name, false, false, false)
			return err
		})
	})
	return name
}

func (a *admin) publish(queue string, ids ...string) {
	a.t.Helper()
	for _, id := range ids {
		err := a.ch.PublishWithContext(context.Background(), "", queue, false, false, amqp.Publishing{
			MessageId:    id,
			DeliveryMode: amqp.Persistent,
			Body:         []byte(`{"id":"` + id + `"}`),
		})
		if err != nil {
			a.t.Fatalf("publish %s: %v", id, err)
		}
	}
}

// depth returns the number of ready messages in queue.
func (a *admin) depth(queue string) int {
	a.t.Helper()
	var n int
	err := a.withChannel(func(ch *amqp.Channel) error {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		n = q.Messages
		return err
	})
	if err != nil {
		a.t.Fatalf("inspect %s: %v", queue, err)
	}
	return n
}

// drain takes every ready message from queue.
func (a *admin) drain(queue string) []amqp.Delivery {
	a.t.Helper()
	var out []amqp.Delivery
	err := a.withChannel(func(ch *amqp.Channel) error {
		for {
			d, ok, err := ch.Get(queue, true)
			if err != nil || !ok {
				return err
			}
			out = append(out, d)
		}
	})
	if err != nil {
		a.t.Fatalf("drain %s: %v", queue, err)
	}
	return out
}

func ids(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return out
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// connEvents records OnConnection calls.
type connEvents struct {
	mu     sync.Mutex
	events []bool
}

func (e *connEvents) on(connected bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.events = append(e.events, connected)
}

func (e *connEvents) get() []bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.events)
}

// are reports whether the events so far are exactly want.
func (e *connEvents) are(want ...bool) func() bool {
	return func() bool { return slices.Equal(e.get(), want) }
}

// runConsumer starts c.Run and returns a function that cancels it and
// returns Run's result; the test fails if Run does not return promptly.
func runConsumer(t *testing.T, c *Consumer, h Handler) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, h) }()
	var once sync.Once
	var result error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case result = <-done:
			case <-time.After(15 * time.Second):
				t.Error("consumer Run did not return after cancellation")
			}
		})
		return result
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// runPublisher starts p.Run and returns a function that stops it.
func runPublisher(t *testing.T, p *Publisher) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var once sync.Once
	var result error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case result = <-done:
			case <-time.After(15 * time.Second):
				t.Error("publisher Run did not return after cancellation")
			}
		})
		return result
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// recorder is a Handler that acks everything and remembers what it saw.
type recorder struct {
	mu          sync.Mutex
	seen        map[string]int
	redelivered map[string]bool
	batches     []int
	decide      func(d Delivery) Disposition
}

func newRecorder() *recorder {
	return &recorder{seen: make(map[string]int), redelivered: make(map[string]bool)}
}

func (r *recorder) Handle(_ context.Context, batch []Delivery) ([]Disposition, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.batches = append(r.batches, len(batch))
	out := make([]Disposition, len(batch))
	for i, d := range batch {
		r.seen[d.MessageID]++
		if d.Redelivered {
			r.redelivered[d.MessageID] = true
		}
		if r.decide != nil {
			out[i] = r.decide(d)
		}
	}
	return out, nil
}

func (r *recorder) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[id]
}

func (r *recorder) distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

func (r *recorder) total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.seen {
		n += c
	}
	return n
}

// rabbitmqctl runs rabbitmqctl against the shared broker. Tests use it only
// for additions of their own (a user, a virtual host) that they remove
// afterwards; nothing shared is changed.
func rabbitmqctl(t *testing.T, args ...string) {
	t.Helper()
	if _, err := exec.LookPath("rabbitmqctl"); err != nil {
		msg := "rabbitmqctl is not installed: " + err.Error()
		if testenv.Required() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rabbitmqctl", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("rabbitmqctl %v: %v\n%s", args, err, out)
	}
}

// tempVhost adds a virtual host of the test's own to the shared broker,
// deleted when the test ends.
func tempVhost(t *testing.T) string {
	t.Helper()
	vhost := testenv.Name(t, "vhost")
	rabbitmqctl(t, "add_vhost", vhost)
	t.Cleanup(func() { rabbitmqctl(t, "delete_vhost", vhost) })
	return vhost
}

// tempUser adds a user of the test's own to the shared broker, deleted
// when the test ends, and returns its name and password.
func tempUser(t *testing.T) (user, password string) {
	t.Helper()
	user, password = testenv.Name(t, "user"), randomHex(12)
	rabbitmqctl(t, "add_user", user, password)
	t.Cleanup(func() { rabbitmqctl(t, "delete_user", user) })
	return user, password
}

// urlFor returns the shared broker's URL with other credentials and
// virtual host.
func urlFor(t *testing.T, base, user, password, vhost string) string {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(user, password)
	u.Path = "/" + vhost
	u.RawPath = "/" + url.PathEscape(vhost)
	return u.String()
}

// declareWith declares queue with args on a fresh channel.
func (a *admin) declareWith(queue string, args amqp.Table) {
	a.t.Helper()
	err := a.withChannel(func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclare(queue, true, false, false, false, args)
		return err
	})
	if err != nil {
		a.t.Fatalf("declare %s with %v: %v", queue, args, err)
	}
}

// hasArgs reports whether queue exists with exactly these arguments: the
// broker accepts a non-passive declare only when they are equivalent.
func (a *admin) hasArgs(queue string, args amqp.Table) error {
	return a.withChannel(func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclare(queue, true, false, false, false, args)
		return err
	})
}

// publishBodies publishes bodies to queue, each with a message id of its
// index.
func (a *admin) publishBodies(queue string, bodies ...[]byte) {
	a.t.Helper()
	for i, b := range bodies {
		err := a.ch.PublishWithContext(context.Background(), "", queue, false, false, amqp.Publishing{
			MessageId: fmt.Sprint(i), DeliveryMode: amqp.Persistent, Body: b,
		})
		if err != nil {
			a.t.Fatalf("publish: %v", err)
		}
	}
}

// returnUnacked takes every ready message of queue on a channel of its own
// and closes the channel without settling them, so that the broker
// delivers them again, as after a crash.
func (a *admin) returnUnacked(queue string, n int) {
	a.t.Helper()
	err := a.withChannel(func(ch *amqp.Channel) error {
		d, err := ch.Consume(queue, "", false, false, false, false, nil)
		if err != nil {
			return err
		}
		for range n {
			select {
			case <-d:
			case <-time.After(10 * time.Second):
				return fmt.Errorf("fewer than %d messages delivered", n)
			}
		}
		return ch.Close()
	})
	if err != nil {
		a.t.Fatalf("return unacked messages of %s: %v", queue, err)
	}
	waitFor(a.t, 10*time.Second, "messages back in the queue", func() bool { return a.depth(queue) == n })
}
