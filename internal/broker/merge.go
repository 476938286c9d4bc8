package broker

import (
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// gapWait is how long the merger holds deliveries back behind a missing
// delivery tag before it gives up on the order and lets them through.
const gapWait = 100 * time.Millisecond

// merger joins the deliveries of a session's consumers, one per queue, into
// one stream in delivery-tag order.
//
// The broker numbers the deliveries of a channel 1, 2, 3, … whatever
// consumer of the channel they go to, and the client library hands each
// consumer its deliveries through a goroutine of its own, so two
// consumers' deliveries can reach the session out of order. Batches in tag
// order are what let planSettlement settle a whole batch with one multiple
// ack; out of order it falls back to one ack per delivery, which is safe
// but slow. A tag can only be missing for the moment its delivery spends in
// another consumer's goroutine, so the merger waits for it, at most
// gapWait, and then lets the later ones through anyway.
type merger struct {
	out  chan amqp.Delivery
	next uint64 // the tag expected next; read by the owner once out is closed
}

// newMerger starts merging srcs, expecting tag next first. out is closed
// once every source is closed and everything is passed on, or when quit is
// closed.
func newMerger(srcs []<-chan amqp.Delivery, next uint64, quit <-chan struct{}) *merger {
	m := &merger{out: make(chan amqp.Delivery), next: next}
	in := make(chan amqp.Delivery)
	var wg sync.WaitGroup
	for _, src := range srcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range src {
				select {
				case in <- d:
				case <-quit:
					return
				}
			}
		}()
	}
	go func() {
		wg.Wait()
		close(in)
	}()
	go m.run(in, quit)
	return m
}

func (m *merger) run(in <-chan amqp.Delivery, quit <-chan struct{}) {
	defer close(m.out)
	held := make(map[uint64]amqp.Delivery)
	// gap runs while held is not empty (Go 1.23 timers: a stopped timer
	// delivers nothing stale).
	gap := time.NewTimer(time.Hour)
	gap.Stop()
	defer gap.Stop()
	armed := false
	emit := func(d amqp.Delivery) bool {
		select {
		case m.out <- d:
			m.next = max(m.next, d.DeliveryTag+1)
			return true
		case <-quit:
			return false
		}
	}
	for {
		if d, ok := held[m.next]; ok {
			delete(held, m.next)
			if !emit(d) {
				return
			}
			continue
		}
		if in == nil {
			if len(held) == 0 {
				return
			}
			m.next = lowest(held)
			continue
		}
		switch {
		case len(held) > 0 && !armed:
			gap.Reset(gapWait)
			armed = true
		case len(held) == 0 && armed:
			gap.Stop()
			armed = false
		}
		select {
		case d, ok := <-in:
			switch {
			case !ok:
				in = nil
			case d.DeliveryTag <= m.next:
				if !emit(d) {
					return
				}
			default:
				held[d.DeliveryTag] = d
			}
		case <-gap.C:
			armed = false
			m.next = lowest(held)
		case <-quit:
			return
		}
	}
}

func lowest(held map[uint64]amqp.Delivery) uint64 {
	first := true
	var low uint64
	for tag := range held {
		if first || tag < low {
			low, first = tag, false
		}
	}
	return low
}

// prefetchShares splits a prefetch count over n consumers of one channel,
// so that together they hold at most total deliveries: RabbitMQ's shared
// (global) prefetch is not supported by quorum queues, so each consumer
// gets a share of its own. Every consumer gets at least 1, so below n the
// total is n.
func prefetchShares(total, n int) []int {
	shares := make([]int, n)
	for i := range shares {
		shares[i] = total / n
		if i < total%n {
			shares[i]++
		}
		shares[i] = max(shares[i], 1)
	}
	return shares
}
