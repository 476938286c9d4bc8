package httpapi

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// fakeChecker reports a fixed Status.
type fakeChecker Status

func (f fakeChecker) Status() Status { return Status(f) }

// fakeMetrics stands in for the Prometheus handler.
var fakeMetrics = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	_, _ = io.WriteString(w, "audit_events_total 1\n")
})

var (
	allUp     = Status{RabbitMQConnected: true, RedisConnected: true, ConsumerAlive: true}
	redisDown = Status{RabbitMQConnected: true, RedisConnected: false, ConsumerAlive: true}
	mqDown    = Status{RabbitMQConnected: false, RedisConnected: true, ConsumerAlive: true}
	allDown   = Status{}
	refused   = Status{RedisConnected: true, ConsumerAlive: true,
		RabbitMQError: "authentication_failed: username or password not allowed (check RABBITMQ_USER)"}
	blocked = Status{RabbitMQConnected: true, RedisConnected: true, ConsumerAlive: true, RabbitMQBlocked: "low on memory"}
)

func TestAppHandler(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		status   Status
		method   string
		path     string
		wantCode int
		wantBody string
	}{
		{"healthz is healthy when everything is up", allUp, "GET", "/healthz", 200,
			`{"status":"healthy","rabbitmq_connected":true,"redis_connected":true,"consumer_thread_alive":true}`},
		{"healthz is unhealthy when Redis is down", redisDown, "GET", "/healthz", 503,
			`{"status":"unhealthy","rabbitmq_connected":true,"redis_connected":false,"consumer_thread_alive":true}`},
		{"healthz is unhealthy when RabbitMQ is down", mqDown, "GET", "/healthz", 503,
			`{"status":"unhealthy","rabbitmq_connected":false,"redis_connected":true,"consumer_thread_alive":true}`},
		{"healthz is unhealthy when the consumer is dead", Status{RabbitMQConnected: true, RedisConnected: true}, "GET", "/healthz", 503,
			`{"status":"unhealthy","rabbitmq_connected":true,"redis_connected":true,"consumer_thread_alive":false}`},
		{"readyz is ready when everything is up", allUp, "GET", "/readyz", 200,
			`{"status":"healthy","rabbitmq_connected":true,"redis_connected":true,"consumer_thread_alive":true}`},
		{"readyz is not ready when RabbitMQ is down", mqDown, "GET", "/readyz", 503,
			`{"status":"unhealthy","rabbitmq_connected":false,"redis_connected":true,"consumer_thread_alive":true}`},
		{"healthz says why the broker refuses the service", refused, "GET", "/healthz", 503,
			`{"status":"unhealthy","rabbitmq_connected":false,"redis_connected":true,"consumer_thread_alive":true,` +
				`"rabbitmq_error":"authentication_failed: username or password not allowed (check RABBITMQ_USER)"}`},
		{"healthz is unhealthy while the broker blocks publishing", blocked, "GET", "/healthz", 503,
			`{"status":"unhealthy","rabbitmq_connected":true,"redis_connected":true,"consumer_thread_alive":true,"rabbitmq_blocked":"low on memory"}`},
		{"readyz is not ready while the broker blocks publishing", blocked, "GET", "/readyz", 503,
			`{"status":"unhealthy","rabbitmq_connected":true,"redis_connected":true,"consumer_thread_alive":true,"rabbitmq_blocked":"low on memory"}`},
		{"livez stays alive while the broker blocks publishing", blocked, "GET", "/livez", 200, `{"status":"alive"}`},
		{"livez is alive when everything is up", allUp, "GET", "/livez", 200, `{"status":"alive"}`},
		{"livez stays alive through a Redis outage", redisDown, "GET", "/livez", 200, `{"status":"alive"}`},
		{"livez stays alive through a RabbitMQ outage", mqDown, "GET", "/livez", 200, `{"status":"alive"}`},
		{"livez is dead when the consumer is", allDown, "GET", "/livez", 503, `{"status":"dead"}`},
		{"metrics come from the metrics handler", allDown, "GET", "/metrics", 200, "audit_events_total 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := NewAppHandler(fakeChecker(tt.status), nil, fakeMetrics)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(tt.method, tt.path, nil))
			if rec.Code != tt.wantCode {
				t.Errorf("code = %d, want %d", rec.Code, tt.wantCode)
			}
			if got := strings.TrimSpace(rec.Body.String()); got != tt.wantBody {
				t.Errorf("body = %s, want %s", got, tt.wantBody)
			}
			if tt.path == "/metrics" {
				return
			}
			if got := rec.Header().Get("Content-Type"); got != "application/json" {
				t.Errorf("Content-Type = %q, want application/json", got)
			}
			if got := rec.Header().Get("Cache-Control"); got != "no-store" {
				t.Errorf("Cache-Control = %q, want no-store", got)
			}
		})
	}
}

func TestWrongMethodsAndPaths(t *testing.T) {
	t.Parallel()
	handlers := map[string]http.Handler{
		"app":     NewAppHandler(fakeChecker(allUp), nil, fakeMetrics),
		"metrics": NewMetricsHandler(fakeMetrics),
	}
	tests := []struct {
		name      string
		handler   string
		method    string
		path      string
		wantCode  int
		wantAllow bool
	}{
		{"POST to healthz is not allowed", "app", "POST", "/healthz", 405, true},
		{"DELETE to readyz is not allowed", "app", "DELETE", "/readyz", 405, true},
		{"PUT to livez is not allowed", "app", "PUT", "/livez", 405, true},
		{"POST to metrics is not allowed", "app", "POST", "/metrics", 405, true},
		{"POST to metrics on the metrics port is not allowed", "metrics", "POST", "/metrics", 405, true},
		{"an unknown path is not found", "app", "GET", "/health", 404, false},
		{"the root is not found", "app", "GET", "/", 404, false},
		{"a trailing slash is not found", "app", "GET", "/healthz/", 404, false},
		{"health is not served on the metrics port", "metrics", "GET", "/healthz", 404, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := httptest.NewRecorder()
			handlers[tt.handler].ServeHTTP(rec, httptest.NewRequest(tt.method, tt.path, nil))
			if rec.Code != tt.wantCode {
				t.Errorf("code = %d, want %d", rec.Code, tt.wantCode)
			}
			allow := rec.Header().Get("Allow")
			if tt.wantAllow && (!strings.Contains(allow, "GET") || !strings.Contains(allow, "HEAD")) {
				t.Errorf("Allow = %q, want GET and HEAD", allow)
			}
		})
	}
}

func TestMetricsHandlerServesMetrics(t *testing.T) {
	t.Parallel()
	rec := httptest.NewRecorder()
	NewMetricsHandler(fakeMetrics).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), "audit_events_total 1") {
		t.Errorf("GET /metrics = %d %q, want 200 with the metrics", rec.Code, rec.Body.String())
	}
}

func TestAppHandlerWithoutMetrics(t *testing.T) {
	t.Parallel()
	rec := httptest.NewRecorder()
	NewAppHandler(fakeChecker(allUp), nil, nil).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 404 {
		t.Errorf("GET /metrics without a metrics handler = %d, want 404", rec.Code)
	}
}

// TestHeadOverHTTP goes through a real server, which is what drops the body
// of a HEAD response.
func TestHeadOverHTTP(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(NewAppHandler(fakeChecker(redisDown), nil, fakeMetrics))
	t.Cleanup(srv.Close)
	tests := []struct {
		path     string
		wantCode int
	}{
		{"/healthz", 503},
		{"/readyz", 503},
		{"/livez", 200},
		{"/metrics", 200},
	}
	for _, tt := range tests {
		req, err := http.NewRequest(http.MethodHead, srv.URL+tt.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatalf("HEAD %s: %v", tt.path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.wantCode || len(body) != 0 {
			t.Errorf("HEAD %s = %d with %d body bytes, want %d and no body", tt.path, resp.StatusCode, len(body), tt.wantCode)
		}
	}
}

func TestNewServer(t *testing.T) {
	t.Parallel()
	h := NewMetricsHandler(fakeMetrics)
	s := NewServer("127.0.0.1:0", h)
	if s.Addr != "127.0.0.1:0" || s.Handler == nil {
		t.Errorf("Addr %q, Handler %v", s.Addr, s.Handler)
	}
	for name, got := range map[string]time.Duration{
		"ReadHeaderTimeout": s.ReadHeaderTimeout - 5*time.Second,
		"ReadTimeout":       s.ReadTimeout - 10*time.Second,
		"WriteTimeout":      s.WriteTimeout - 30*time.Second,
		"IdleTimeout":       s.IdleTimeout - 60*time.Second,
	} {
		if got != 0 {
			t.Errorf("%s is off by %v", name, got)
		}
	}
	if s.MaxHeaderBytes <= 0 || s.MaxHeaderBytes > 64<<10 {
		t.Errorf("MaxHeaderBytes = %d, want a small positive limit", s.MaxHeaderBytes)
	}
}

type fakeRules struct{ set RuleSet }

func (f fakeRules) Rules() RuleSet { return f.set }

func TestRulesListsTheRunningRules(t *testing.T) {
	t.Parallel()
	set := fakeRules{RuleSet{SHA256: "abc", Sources: []string{"built-in", "/etc/rules/a.yaml"}, Enabled: 1, Rules: []RuleInfo{
		{ID: "ANLY-SEC-001", Name: "Failed Login Burst Detection", Kind: "threshold", Enabled: true, File: "built-in", Line: 6},
		{ID: "USER-1", Name: "USER-1", Kind: "match", Enabled: false, File: "/etc/rules/a.yaml", Line: 2},
	}}}
	rec := httptest.NewRecorder()
	NewAppHandler(fakeChecker(allUp), set, nil).ServeHTTP(rec, httptest.NewRequest("GET", "/rules", nil))
	want := `{"sha256":"abc","sources":["built-in","/etc/rules/a.yaml"],"enabled":1,"rules":[` +
		`{"id":"ANLY-SEC-001","name":"Failed Login Burst Detection","kind":"threshold","enabled":true,"file":"built-in","line":6},` +
		`{"id":"USER-1","name":"USER-1","kind":"match","enabled":false,"file":"/etc/rules/a.yaml","line":2}]}` + "\n"
	if rec.Code != 200 || rec.Body.String() != want || rec.Header().Get("Content-Type") != "application/json" {
		t.Errorf("GET /rules = %d %s\nwant 200 %s", rec.Code, rec.Body.String(), want)
	}
}
