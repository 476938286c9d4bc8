package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/audit-platform/audit-log-analysis/internal/config"
	"github.com/audit-platform/audit-log-analysis/internal/deadletter"
)

const deadLettersAbout = `Look into the dead-letter queue (RABBITMQ_DEAD_LETTER_QUEUE) and send its
messages back to the event queue (RABBITMQ_QUEUE) once their cause is fixed.

  list     show the messages with their rejection reason and error; every
           message stays in the queue
  redrive  publish each message to the event queue, wait for the broker's
           confirm, and only then remove it from the dead-letter queue

The broker settings come from the environment, as for serve.`

func runDeadLetters(ctx context.Context, env Env, args []string) error {
	top := newCommand("dead-letters", "dead-letters list|redrive [--reason R] [--limit N]", deadLettersAbout)
	if len(args) == 0 {
		return top.usageError(env, "dead-letters: want list or redrive")
	}
	sub, args := args[0], args[1:]
	if isHelp(sub) {
		top.writeUsage(env.Stdout)
		return nil
	}
	if sub != "list" && sub != "redrive" {
		return top.usageError(env, "dead-letters: unknown subcommand %q", sub)
	}
	c := newCommand("dead-letters "+sub, "dead-letters "+sub+" [--reason R] [--limit N] [--queue Q]", deadLettersAbout)
	var reasons listFlag
	c.fs.Var(&reasons, "reason", "only messages rejected for this reason (invalid_json, wrong_type, ...; repeatable, comma-separated)")
	defLimit, limitHelp := 20, "at most this many messages (0: all)"
	if sub == "redrive" {
		defLimit = 0
	}
	limit := c.fs.Int("limit", defLimit, limitHelp)
	queue := c.fs.String("queue", "", "dead-letter queue (default RABBITMQ_DEAD_LETTER_QUEUE)")
	var target *string
	if sub == "redrive" {
		target = c.fs.String("to", "", "queue to publish to (default: the first queue of RABBITMQ_QUEUE)")
	}
	rest, err := c.parse(env, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return c.usageError(env, "dead-letters %s takes no arguments, got %q", sub, rest[0])
	}
	if *limit < 0 {
		return c.usageError(env, "--limit must be 0 or more")
	}
	cfg, _, err := loadConfig(env.Getenv)
	if err != nil {
		return err
	}
	if *queue == "" {
		*queue = cfg.RabbitMQDeadLetterQueue
	}
	if *queue == "" {
		return fmt.Errorf("dead-letters: RABBITMQ_DEAD_LETTER_QUEUE is none; name a queue with --queue")
	}
	conn, err := dialBroker(ctx, cfg, "audit-log-analysis dead-letters")
	if err != nil {
		return err
	}
	defer conn.Close()
	filter := deadletter.Filter{Reasons: reasons, Limit: *limit}
	if sub == "list" {
		msgs, depth, err := deadletter.List(ctx, conn, *queue, filter)
		if err != nil {
			return fmt.Errorf("dead-letters list: %w", err)
		}
		for i, m := range msgs {
			writeDeadLetter(env, i+1, m)
		}
		fmt.Fprintf(env.Stderr, "%d messages shown of %d in %q; all of them stay in the queue\n", len(msgs), depth, *queue)
		return nil
	}
	to := *target
	if to == "" {
		to = cfg.RabbitMQQueues[0]
	}
	moved, err := deadletter.Redrive(ctx, conn, *queue, to, filter)
	for i, m := range moved {
		writeDeadLetter(env, i+1, m)
	}
	fmt.Fprintf(env.Stderr, "%d messages moved from %q to %q\n", len(moved), *queue, to)
	if err != nil {
		return fmt.Errorf("dead-letters redrive: %w", err)
	}
	return nil
}

func writeDeadLetter(env Env, n int, m deadletter.Message) {
	fmt.Fprintf(env.Stdout, "%d. reason=%s rejected_at=%s queue=%s message_id=%s bytes=%d\n   error: %s\n   body:  %s\n",
		n, orDash(m.Reason), orDash(m.RejectedAt), orDash(m.OriginalQueue), orDash(m.MessageID), len(m.Body),
		orDash(m.Error), deadletter.Preview(m.Body, 200))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// dialTimeout bounds a command's connection to the broker.
const dialTimeout = 10 * time.Second

// dialBroker opens one connection for a command, to the first node of
// RABBITMQ_URLS that answers; the service itself connects through
// internal/broker, which reconnects.
func dialBroker(ctx context.Context, cfg config.Config, name string) (*amqp.Connection, error) {
	props := amqp.NewConnectionProperties()
	props["connection_name"] = name
	redacted := cfg.RedactedRabbitMQURLs()
	var errs []error
	for i, raw := range cfg.RabbitMQURLs {
		u, err := amqp.ParseURI(raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", redacted[i], err))
			continue
		}
		ac := amqp.Config{
			Properties: props,
			Dial: func(network, addr string) (net.Conn, error) {
				d := net.Dialer{Timeout: dialTimeout}
				dctx, cancel := context.WithTimeout(ctx, dialTimeout)
				defer cancel()
				return d.DialContext(dctx, network, addr)
			},
		}
		if u.Scheme == "amqps" {
			if ac.TLSClientConfig, err = cfg.RabbitMQTLS.ClientConfig(u.Host); err != nil {
				return nil, fmt.Errorf("RabbitMQ TLS: %w", err)
			}
		}
		conn, err := amqp.DialConfig(raw, ac)
		if err == nil {
			return conn, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", redacted[i], err))
	}
	return nil, fmt.Errorf("connect to RabbitMQ: %w", errors.Join(errs...))
}
