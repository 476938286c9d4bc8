package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// ackOnlyReport is what the reference consumer prints once it has acked
// every message: wall-clock times, comparable across processes.
type ackOnlyReport struct {
	Acked     int   `json:"acked"`
	FirstUnix int64 `json:"first_unix_ns"`
	LastUnix  int64 `json:"last_unix_ns"`
}

// runAckOnly is the hidden command the bench command runs as its reference
// consumer: a bare amqp091-go consumer that only acknowledges, with a
// prefetch of 500 and multiple acks. It stops after -n messages, prints an
// ackOnlyReport on stdout, and then waits for standard input to close, so
// that whoever started it can read its /proc figures before it exits.
func runAckOnly(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ackonly", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "amqp://guest:guest@127.0.0.1:5672/", "RabbitMQ URL")
	queue := fs.String("queue", "", "queue to drain")
	n := fs.Int("n", 0, "messages to ack before reporting")
	prefetch := fs.Int("prefetch", 500, "prefetch count")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return flagError(fs, err)
	}
	if *queue == "" || *n <= 0 || *prefetch <= 0 {
		return fmt.Errorf("ackonly: -queue, -n and -prefetch are required: %w", errUsage)
	}
	conn, err := dial(*url, "audit-loadgen ack-only reference")
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	if err := ch.Qos(*prefetch, 0, false); err != nil {
		return fmt.Errorf("set prefetch: %w", err)
	}
	deliveries, err := ch.Consume(*queue, "", false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume %q: %w", *queue, err)
	}
	rep, err := ackAll(ctx, deliveries, *n, *prefetch/2)
	if err != nil {
		return err
	}
	if err := json.NewEncoder(stdout).Encode(rep); err != nil {
		return err
	}
	// Wait to be read from /proc; EOF (or anything) on stdin ends it.
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, stdin)
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return nil
}

// ackAll acks n deliveries in order, with one multiple ack per ackEvery
// deliveries or whenever no further delivery is waiting.
func ackAll(ctx context.Context, deliveries <-chan amqp.Delivery, n, ackEvery int) (ackOnlyReport, error) {
	var rep ackOnlyReport
	var last amqp.Delivery
	pending := 0
	ack := func() error {
		if pending == 0 {
			return nil
		}
		pending = 0
		return last.Ack(true)
	}
	for rep.Acked < n {
		var d amqp.Delivery
		var ok bool
		select {
		case d, ok = <-deliveries:
		default:
			// Nothing waiting: settle what was taken, then block.
			if err := ack(); err != nil {
				return rep, fmt.Errorf("ack: %w", err)
			}
			select {
			case d, ok = <-deliveries:
			case <-ctx.Done():
				return rep, ctx.Err()
			}
		}
		if !ok {
			return rep, errors.New("the broker closed the channel before every message came")
		}
		if rep.Acked == 0 {
			rep.FirstUnix = time.Now().UnixNano()
		}
		last = d
		pending++
		rep.Acked++
		if pending >= ackEvery || rep.Acked == n {
			if err := ack(); err != nil {
				return rep, fmt.Errorf("ack: %w", err)
			}
		}
	}
	rep.LastUnix = time.Now().UnixNano()
	return rep, nil
}
