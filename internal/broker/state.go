package broker

import (
	"log/slog"
	"sync"
	"time"
)

// problemLogEvery is how often a Problem that lasts is logged again at
// Error; the attempts between are logged at Debug, so a wrong password
// does not fill the log every few seconds.
const problemLogEvery = time.Minute

// linkState tracks a client's connection: it logs each change once, reports
// it through the OnConnection callback, and keeps the Problem that stops the
// client from connecting, if any. Callbacks are serialised and run without
// the state lock, so they may ask for the state.
type linkState struct {
	log     *slog.Logger
	onConn  func(bool)
	onError func(reason string)

	cbMu      sync.Mutex // serialises changes, so callbacks arrive in order
	mu        sync.Mutex // guards what follows
	connected bool
	problem   *Problem
	loggedAt  time.Time // when the last failure was logged at Warn or Error
	loggedAs  string    // and its reason ("" for a transient failure)
}

// connecting logs the start of a client.
func (s *linkState) connecting(nodes []node) {
	s.log.Info("connecting", "brokers", redactedAll(nodes))
}

// up records a connection (for the publisher: a confirming channel) to n.
// It clears the Problem: whatever it was, it is fixed.
func (s *linkState) up(n node) {
	s.cbMu.Lock()
	defer s.cbMu.Unlock()
	s.mu.Lock()
	changed := !s.connected
	s.connected, s.problem, s.loggedAs = true, nil, ""
	s.mu.Unlock()
	if !changed {
		return
	}
	s.log.Info("connected", "broker", n.redacted)
	if s.onConn != nil {
		s.onConn(true)
	}
}

// down records the loss of the connection; reason is nil when it was asked
// for (shutdown).
func (s *linkState) down(reason error) {
	s.cbMu.Lock()
	defer s.cbMu.Unlock()
	s.mu.Lock()
	changed := s.connected
	s.connected = false
	s.mu.Unlock()
	if !changed {
		return
	}
	if reason != nil {
		s.log.Warn("disconnected", "reason", reason.Error())
	} else {
		s.log.Info("disconnected", "reason", "shutdown")
	}
	if s.onConn != nil {
		s.onConn(false)
	}
}

// retrying logs a failed attempt and the wait before the next one. A
// Problem is logged at Error with what to fix, counted and kept for health;
// anything else is a broker that is down or unreachable, logged at Warn.
// Either is repeated at most once a minute while it lasts.
func (s *linkState) retrying(a attempt, failures int, wait time.Duration) {
	retryIn := wait.Round(time.Millisecond).String()
	p := classify(a.err)
	if p != nil {
		s.cbMu.Lock()
		s.report(p)
		s.cbMu.Unlock()
	}
	if a.up > 0 && p == nil {
		// The loss itself was logged when it happened.
		s.log.Info("reconnecting", "retry_in", retryIn)
		return
	}
	reason := ""
	if p != nil {
		reason = p.Reason
	}
	now := time.Now()
	s.mu.Lock()
	loud := reason != s.loggedAs || now.Sub(s.loggedAt) >= problemLogEvery
	if loud {
		s.loggedAt, s.loggedAs = now, reason
	}
	s.mu.Unlock()
	switch {
	case p != nil && loud:
		s.log.Error("the broker refused the service; retrying, but this needs fixing",
			"reason", p.Reason, "fix", p.Fix, "error", a.err.Error(), "failures", failures, "retry_in", retryIn)
	case loud:
		s.log.Warn("connect failed", "error", errString(a.err), "failures", failures, "retry_in", retryIn)
	default:
		s.log.Debug("connect failed", "error", errString(a.err), "reason", reason, "failures", failures, "retry_in", retryIn)
	}
}

// report keeps p for health and counts it. The caller holds cbMu.
func (s *linkState) report(p *Problem) {
	s.mu.Lock()
	s.problem = p
	s.mu.Unlock()
	if s.onError != nil {
		s.onError(p.Reason)
	}
}

func (s *linkState) get() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connected
}

// currentProblem returns the Problem of the last failed attempt, nil once
// connected again.
func (s *linkState) currentProblem() *Problem {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.problem
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func discardLogger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
