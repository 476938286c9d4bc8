package scale

import (
	"slices"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

// Events sharded by user over four queues through RabbitMQ's
// consistent-hash exchange, consumed by two replicas that each take all
// four (RABBITMQ_QUEUE=q1,q2,q3,q4), raise exactly replay's alerts. The
// exchange's plugin is enabled on a private node: never on the shared one.
func TestTwoReplicasOfFourShardedQueuesRaiseReplaysAlerts(t *testing.T) {
	redisAddr := testenv.RedisAddr(t)
	node := testenv.LaunchRabbitMQ(t, testenv.RabbitMQOptions{Plugins: []string{"rabbitmq_consistent_hash_exchange"}})
	bin := buildService(t)
	in := newInput(t, bin, 3, 40)
	node.WaitReady()
	b := dialBroker(t, node.URL())

	// What an operator declares: the exchange, and each queue bound with
	// its weight as the routing key.
	qs := b.queues("events", 4)
	alerts := b.queues("alerts", 1)[0]
	exchange := testenv.Name(t, "events")
	b.declare(qs...)
	err := b.do(func(ch *amqp.Channel) error {
		if err := ch.ExchangeDeclare(exchange, "x-consistent-hash", true, false, false, false, nil); err != nil {
			return err
		}
		for _, q := range qs {
			if err := ch.QueueBind(q, "1", exchange, false, nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("declare the consistent-hash exchange: %v", err)
	}
	b.publish(exchange, "", in.msgs)
	var shares []int
	for _, q := range qs {
		shares = append(shares, b.ready(q))
	}
	t.Logf("%d messages sharded over four queues: %v", len(in.msgs), shares)
	for i, n := range shares {
		if n == 0 {
			t.Errorf("queue %d got no events: the exchange did not shard", i+1)
		}
	}

	host, port, _ := strings.Cut(redisAddr, ":")
	env := map[string]string{
		"RABBITMQ_URL": node.URL(), "RABBITMQ_QUEUE": strings.Join(qs, ","), "RABBITMQ_ALERT_QUEUE": alerts,
		"REDIS_HOST": host, "REDIS_PORT": port, "REDIS_KEY_PREFIX": redisPrefix(t, redisAddr),
	}
	start := time.Now()
	rs := startReplicas(t, bin, 2, env)
	for _, r := range rs {
		deadline := time.Now().Add(30 * time.Second)
		for !r.ready() && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if !r.ready() {
			t.Errorf("%s is not ready while it consumes the four queues", r.name)
		}
		depths := r.depths()
		for _, q := range qs {
			if !depths[q] {
				t.Errorf("%s reports no depth for queue %s: it reports %v", r.name, q, depths)
			}
		}
	}
	got := finish(t, b, bin, env, rs, qs, alerts)
	t.Logf("2 replicas of 4 queues: %d messages handled and %d alerts in %s", len(in.msgs), len(got),
		time.Since(start).Round(time.Millisecond))
	checkAlerts(t, "two replicas of four sharded queues", in, got)

	// Malformed messages, sharded like the others, are dead-lettered to
	// the first queue's dead-letter queue, each naming its own queue.
	malformed := 0
	for _, m := range in.msgs {
		if strings.HasPrefix(m.key, "malformed-") {
			malformed++
		}
	}
	dls := b.drainDeliveries(qs[0] + ".dead-letter")
	if len(dls) != malformed {
		t.Errorf("%d dead letters, want one per malformed message: %d", len(dls), malformed)
	}
	from := map[string]int{}
	for _, d := range dls {
		q, _ := d.Headers["x-original-queue"].(string)
		if !slices.Contains(qs, q) {
			t.Errorf("dead letter with x-original-queue %q, want one of the event queues %v", q, qs)
			break
		}
		from[q]++
	}
	if len(from) < 2 {
		t.Errorf("dead letters came from queues %v: malformed messages spread over the four", from)
	}
}
