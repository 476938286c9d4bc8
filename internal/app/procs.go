package app

import (
	"log/slog"
	"runtime"
)

// oneProcessor runs the service's Go code on one processor
// (GOMAXPROCS=1) unless GOMAXPROCS is set. Every delivery passes from the
// client library's reader goroutine to the batch handler, and its
// acknowledgement back: on one processor those hand-offs are goroutine
// switches, on several they wake other threads, whose spinning and
// futex calls cost more than the handling itself. Measured draining a
// 100,000-event backlog on the 2-core development machine (make bench's
// drain, with the service's binary wrapped to set GOMAXPROCS): 16–19 µs of
// CPU per event on one processor against 23–29 µs on two, and a faster
// drain. One processor handles some 50,000 events/s, more than one queue
// delivers; the service scales out by replicas (README, Scaling).
func oneProcessor(logger *slog.Logger, env Env) {
	if env.SetProcs == nil {
		return
	}
	if v := env.Getenv("GOMAXPROCS"); v != "" {
		logger.Info("GOMAXPROCS set: the service uses it", "gomaxprocs", runtime.GOMAXPROCS(0))
		return
	}
	if prev := env.SetProcs(1); prev != 1 {
		logger.Info("running on one processor (GOMAXPROCS=1; set GOMAXPROCS to change it)", "cpus", runtime.NumCPU())
	}
}
