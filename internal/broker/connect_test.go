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

	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

// deadURL is the broker's URL moved to a port where nothing listens.
func deadURL(t *testing.T, base string) string {
	t.Helper()
	return strings.Replace(base, brokerAddr(t, base), fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), 1)
}

func TestClientsMoveOnFromANodeThatDoesNotAnswer(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	q := a.queue("q", true)
	alerts := a.queue("alerts", false)
	a.publish(q, "m")
	urls := []string{deadURL(t, a.url), a.url}

	rec := newRecorder()
	c, err := NewConsumer(ConsumerConfig{URLs: urls, Queue: q, Prefetch: 5, Logger: testLogger(t), Backoff: fastBackoff})
	if err != nil {
		t.Fatal(err)
	}
	runConsumer(t, c, rec)
	p := newTestPublisher(t, PublisherConfig{URLs: urls, Queues: []string{alerts}})
	runPublisher(t, p)

	waitFor(t, 20*time.Second, "the message consumed through the second node", func() bool { return rec.count("m") == 1 })
	waitFor(t, 20*time.Second, "publisher ready", p.Connected)
	if err := p.Publish(context.Background(), []Message{{Queue: alerts, MessageID: "a", Body: []byte("{}")}}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if p.Problem() != nil || c.Problem() != nil {
		t.Errorf("problems reported for a node that is merely down: %v, %v", p.Problem(), c.Problem())
	}
}

func TestAConnectionLostMovesToTheNextNode(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	q := a.queue("q", true)
	first := testenv.StartProxy(t, brokerAddr(t, a.url))
	second := testenv.StartProxy(t, brokerAddr(t, a.url))
	var events connEvents
	rec := newRecorder()
	c, err := NewConsumer(ConsumerConfig{URLs: []string{first.URL(t, a.url), second.URL(t, a.url)}, Queue: q, Prefetch: 5,
		Logger: testLogger(t), OnConnection: events.on, Backoff: fastBackoff})
	if err != nil {
		t.Fatal(err)
	}
	runConsumer(t, c, rec)
	waitFor(t, 20*time.Second, "connected", events.are(true))
	// The first node drops the connection but would still accept a new
	// one: the consumer tries the second first.
	first.Cut()
	waitFor(t, 20*time.Second, "reconnected", events.are(true, false, true))
	second.Cut()
	waitFor(t, 20*time.Second, "reconnected again", events.are(true, false, true, false, true))
	a.publish(q, "after")
	waitFor(t, 20*time.Second, "consuming", func() bool { return rec.count("after") == 1 })
}

// problemClient is a consumer or a publisher, seen by these tests.
type problemClient interface {
	Problem() *Problem
	Connected() bool
}

// startBoth starts a consumer and a publisher on url, both counting the
// problems they report.
func startBoth(t *testing.T, a *admin, url string) (map[string]problemClient, *errorCounts) {
	t.Helper()
	counts := &errorCounts{n: map[string]int{}}
	q := a.queue("q", false)
	alerts := a.queue("alerts", false)
	c, err := NewConsumer(ConsumerConfig{URLs: []string{url}, Queue: q, Prefetch: 5, Logger: testLogger(t),
		Backoff: fastBackoff, OnError: counts.add})
	if err != nil {
		t.Fatal(err)
	}
	runConsumer(t, c, newRecorder())
	p := newTestPublisher(t, PublisherConfig{URLs: []string{url}, Queues: []string{alerts}, OnError: counts.add})
	runPublisher(t, p)
	return map[string]problemClient{"consumer": c, "publisher": p}, counts
}

type errorCounts struct {
	mu sync.Mutex
	n  map[string]int
}

func (e *errorCounts) add(reason string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.n[reason]++
}

func (e *errorCounts) get(reason string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.n[reason]
}

func TestErrorsRetryingWillNotFixAreReportedAsProblems(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	user, password := tempUser(t)
	vhost := tempVhost(t) // the user has no permission on it
	tests := []struct {
		name   string
		url    string
		reason string
		fix    string
	}{
		{"a wrong password", urlFor(t, a.url, user, "wrong-"+password, ""), ReasonAuthentication, "RABBITMQ_PASS"},
		{"a virtual host that does not exist", urlFor(t, a.url, user, password, vhost+"-missing"), ReasonVhostNotFound, "add_vhost"},
		{"a user without permissions on the virtual host", urlFor(t, a.url, user, password, vhost), ReasonAccessRefused, "set_permissions"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			clients, counts := startBoth(t, a, tt.url)
			for name, c := range clients {
				waitFor(t, 30*time.Second, name+" problem", func() bool { return c.Problem() != nil })
				p := c.Problem()
				if p.Reason != tt.reason || !strings.Contains(p.Error(), tt.fix) {
					t.Errorf("%s reports %v, want reason %s and a fix mentioning %s", name, p, tt.reason, tt.fix)
				}
				if strings.Contains(p.Error(), password) {
					t.Errorf("%s problem %q shows the password", name, p)
				}
				if c.Connected() {
					t.Errorf("%s connected", name)
				}
			}
			// Retrying goes on, and every attempt is counted.
			waitFor(t, 30*time.Second, "retries counted", func() bool { return counts.get(tt.reason) >= 4 })
		})
	}
}

func TestAProblemClearsOnceFixed(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	user, password := tempUser(t)
	vhost := tempVhost(t)
	clients, counts := startBoth(t, a, urlFor(t, a.url, user, password, vhost))
	for name, c := range clients {
		waitFor(t, 30*time.Second, name+" problem", func() bool { p := c.Problem(); return p != nil && p.Reason == ReasonAccessRefused })
	}
	rabbitmqctl(t, "set_permissions", "-p", vhost, user, ".*", ".*", ".*")
	for name, c := range clients {
		waitFor(t, 30*time.Second, name+" connected", c.Connected)
		if p := c.Problem(); p != nil {
			t.Errorf("%s still reports %v once connected", name, p)
		}
	}
	if counts.get(ReasonAccessRefused) == 0 {
		t.Error("no error counted")
	}
}

func TestClassify(t *testing.T) {
	t.Parallel()
	if p := classify(errors.New("dial tcp 127.0.0.1:5672: connect: connection refused")); p != nil {
		t.Errorf("a refused connection classified as %v; it is worth retrying", p)
	}
	if p := classify(fmt.Errorf("dial: %w", ErrNotConnected)); p != nil {
		t.Errorf("not connected classified as %v", p)
	}
}

func TestSettledCountsOnlySettlementsSent(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	q := a.queue("q", true)
	px := testenv.StartProxy(t, brokerAddr(t, a.url))
	all := ids("m", 6)
	a.publish(q, all...)

	var events connEvents
	var settled sync.Map
	var total, calls int
	var mu sync.Mutex
	h := HandlerFunc(func(_ context.Context, batch []Delivery) ([]Disposition, error) {
		mu.Lock()
		calls++
		first := calls == 1
		mu.Unlock()
		if first {
			// Held until the connection is gone: its settlement is
			// dropped, and must not be counted.
			for deadline := time.Now().Add(20 * time.Second); !slices.Contains(events.get(), false) && time.Now().Before(deadline); {
				time.Sleep(10 * time.Millisecond)
			}
		}
		for _, d := range batch {
			settled.Store(d.MessageID, true)
		}
		return make([]Disposition, len(batch)), nil
	})
	c, err := NewConsumer(ConsumerConfig{URLs: []string{px.URL(t, a.url)}, Queue: q, Prefetch: 10, Logger: testLogger(t),
		OnConnection: events.on, Backoff: fastBackoff,
		OnSettled: func(n int) { mu.Lock(); total += n; mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c, h)
	waitFor(t, 20*time.Second, "the first batch in flight", func() bool { mu.Lock(); defer mu.Unlock(); return calls > 0 })
	px.Cut()
	waitFor(t, 20*time.Second, "reconnected", events.are(true, false, true))
	waitFor(t, 20*time.Second, "queue emptied", func() bool { return a.depth(q) == 0 })
	time.Sleep(300 * time.Millisecond)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if total != len(all) {
		t.Errorf("settled %d, want %d: each delivery once, when its ack is sent", total, len(all))
	}
}
