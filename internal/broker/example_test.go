package broker_test

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/audit-platform/audit-log-analysis/internal/broker"
)

// A consumer whose handler publishes what it derives from each batch and
// acks the batch only once the publisher has confirmed it.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	url := "amqp://guest:guest@127.0.0.1:5672/"

	pub, err := broker.NewPublisher(broker.PublisherConfig{URLs: []string{url}, Logger: log, Queues: []string{"audit_alerts"}})
	if err != nil {
		log.Error("publisher", "error", err)
		return
	}
	con, err := broker.NewConsumer(broker.ConsumerConfig{URLs: []string{url}, Logger: log, Queue: "audit_events", Prefetch: 200})
	if err != nil {
		log.Error("consumer", "error", err)
		return
	}

	// The publisher outlives the consumer, so the last batch can publish.
	pubCtx, stopPub := context.WithCancel(context.WithoutCancel(ctx))
	pubDone := make(chan error, 1)
	go func() { pubDone <- pub.Run(pubCtx) }()

	err = con.Run(ctx, broker.HandlerFunc(func(ctx context.Context, batch []broker.Delivery) ([]broker.Disposition, error) {
		var alerts []broker.Message
		disps := make([]broker.Disposition, len(batch))
		for i, d := range batch {
			if len(d.Body) == 0 {
				disps[i] = broker.Reject // can never be handled
				continue
			}
			alerts = append(alerts, broker.Message{
				Queue: "audit_alerts", MessageID: "alert-" + d.MessageID,
				ContentType: "application/json", Body: d.Body,
			})
		}
		if err := pub.Publish(ctx, alerts); err != nil {
			return nil, err // transient: the same batch is retried
		}
		return disps, nil
	}))
	stopPub()
	<-pubDone
	if err != nil {
		log.Error("consumer", "error", err)
	}
}
