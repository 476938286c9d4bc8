// Package httpapi owns the service's HTTP surface: the health endpoints that
// Kubernetes probes (/healthz, /readyz, /livez) and the Prometheus /metrics
// endpoint, on the application port and on the metrics port.
package httpapi

import (
	"encoding/json"
	"net/http"
	"time"
)

// Status is the service's health as the application reports it.
type Status struct {
	RabbitMQConnected bool
	RedisConnected    bool
	ConsumerAlive     bool
	// RabbitMQError describes an error that retrying alone will not fix
	// (refused credentials, a missing virtual host, a missing permission,
	// a failed TLS verification), with what to fix; "" when there is none.
	RabbitMQError string
	// RabbitMQBlocked is the broker's reason for blocking the publisher's
	// connection (a memory or disk alarm); "" while it is not blocked.
	RabbitMQBlocked string
}

// Healthy reports whether the service can do its work: both broker
// connections and Redis are up, the consumer loop runs, and the broker is
// not blocking publishes.
func (s Status) Healthy() bool {
	return s.RabbitMQConnected && s.RedisConnected && s.ConsumerAlive && s.RabbitMQBlocked == ""
}

// Checker reports the current Status. It is called on every probe, so it
// must be cheap and must not block on I/O.
type Checker interface {
	Status() Status
}

// RuleSet is what GET /rules shows: the running rules and where each one
// comes from.
type RuleSet struct {
	// SHA256 identifies the set: the hash audit_analysis_rules_info shows.
	SHA256 string `json:"sha256"`
	// Sources are the rule files in the order they were composed, the
	// built-in rules first.
	Sources []string   `json:"sources"`
	Enabled int        `json:"enabled"`
	Rules   []RuleInfo `json:"rules"`
}

// RuleInfo describes one loaded rule.
type RuleInfo struct {
	ID      string `json:"id"`
	Name    string `json:"name"`
	Kind    string `json:"kind"`
	Enabled bool   `json:"enabled"`
	File    string `json:"file"`
	Line    int    `json:"line"`
}

// RuleLister reports the running rules; like Checker, it must be cheap.
type RuleLister interface {
	Rules() RuleSet
}

// NewAppHandler serves the application port: /healthz and /readyz (healthy
// only when Status.Healthy), /livez (alive while the consumer runs), and,
// when they are not nil, /rules and /metrics. Each path answers GET and
// HEAD; other methods get 405 and unknown paths 404.
func NewAppHandler(c Checker, rules RuleLister, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	health := healthHandler(c)
	mux.Handle("GET /healthz", health)
	mux.Handle("GET /readyz", health)
	mux.Handle("GET /livez", livenessHandler(c))
	if rules != nil {
		mux.Handle("GET /rules", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, http.StatusOK, rules.Rules())
		}))
	}
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	return mux
}

// NewMetricsHandler serves the Prometheus port: /metrics only.
func NewMetricsHandler(metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	return mux
}

// NewServer returns a server for h on addr with timeouts and a header limit
// suited to probes and scrapes, so a slow or hostile client cannot hold
// connections open.
func NewServer(addr string, h http.Handler) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    maxHeaderBytes,
	}
}

// maxHeaderBytes is far more than a probe or a scrape sends.
const maxHeaderBytes = 16 << 10

// healthBody has the fields the Python service answered with, so probes
// and dashboards written against it keep working, and two more that appear
// only when they have something to say.
type healthBody struct {
	Status            string `json:"status"`
	RabbitMQConnected bool   `json:"rabbitmq_connected"`
	RedisConnected    bool   `json:"redis_connected"`
	ConsumerAlive     bool   `json:"consumer_thread_alive"`
	RabbitMQError     string `json:"rabbitmq_error,omitempty"`
	RabbitMQBlocked   string `json:"rabbitmq_blocked,omitempty"`
}

func healthHandler(c Checker) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s := c.Status()
		body := healthBody{
			Status:            "healthy",
			RabbitMQConnected: s.RabbitMQConnected,
			RedisConnected:    s.RedisConnected,
			ConsumerAlive:     s.ConsumerAlive,
			RabbitMQError:     s.RabbitMQError,
			RabbitMQBlocked:   s.RabbitMQBlocked,
		}
		code := http.StatusOK
		if !s.Healthy() {
			body.Status, code = "unhealthy", http.StatusServiceUnavailable
		}
		writeJSON(w, code, body)
	})
}

// livenessHandler looks at the consumer alone: an outage of RabbitMQ or
// Redis must not get the pod restarted, since a restart cannot fix it.
func livenessHandler(c Checker) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if c.Status().ConsumerAlive {
			writeJSON(w, http.StatusOK, map[string]string{"status": "alive"})
			return
		}
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "dead"})
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Only a programming error can get here: the bodies are fixed types.
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}
