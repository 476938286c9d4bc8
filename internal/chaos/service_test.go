//go:build chaos

package chaos

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

// The series the suite reads.
const (
	mConsumed     = "audit_analysis_rabbitmq_messages_consumed_total"
	mProcessed    = "audit_analysis_processed_total"
	mRejected     = "audit_analysis_rejected_messages_total"
	mDeadLettered = "audit_analysis_dead_lettered_total"
	mRuleAlerts   = "audit_analysis_rule_alerts_total"
	mStateResets  = "audit_analysis_state_resets_total"
	mBlocked      = "audit_analysis_rabbitmq_blocked"
)

// shutdownTimeout is the service's SHUTDOWN_TIMEOUT default; a clean stop
// must end within it.
const shutdownTimeout = 8 * time.Second

// service is the service binary run as a process, possibly several times
// in a row (a lifetime each) with the same environment and ports.
type service struct {
	t   *testing.T
	bin string
	env map[string]string
	dir string
	log string

	mu        sync.Mutex
	cmd       *exec.Cmd
	exited    chan struct{}
	exitErr   error
	last      metrics // the latest scrape of the running lifetime
	lifetimes []lifetime
}

// lifetime is one run of the process: the last metrics scraped from it,
// and whether it ended cleanly (so those are its final figures).
type lifetime struct {
	metrics metrics
	clean   bool
}

// metrics are a scrape, summed by series name over labels.
type metrics map[string]float64

// startService runs the service with env (on top of free ports and
// defaults the suite needs) and waits until it serves /livez.
func startService(t *testing.T, bin string, env map[string]string) *service {
	t.Helper()
	s := &service{t: t, bin: bin, dir: t.TempDir(), env: map[string]string{
		"APP_PORT":        strconv.Itoa(testenv.FreePort(t)),
		"PROMETHEUS_PORT": strconv.Itoa(testenv.FreePort(t)),
		"LOG_LEVEL":       "info",
		"ENVIRONMENT":     "DEVELOPMENT",
	}}
	maps.Copy(s.env, env)
	s.log = filepath.Join(s.dir, "service.log")
	t.Cleanup(func() {
		s.kill()
		if t.Failed() {
			t.Logf("service log (last lines but alerts):\n%s", tail(s.log, 40, `"alert published"`))
		}
	})
	s.start()
	return s
}

// start begins a new lifetime.
func (s *service) start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		s.t.Fatal("the service is already running")
	}
	out, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		s.t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(s.bin, "serve")
	cmd.Dir = s.dir // no .env file there
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range s.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start the service: %v", err)
	}
	s.cmd, s.exited, s.last = cmd, make(chan struct{}), nil
	exited := s.exited
	go func() {
		err := cmd.Wait()
		s.mu.Lock()
		s.exitErr = err
		s.mu.Unlock()
		close(exited)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(s.appURL("/livez"))
		if err == nil {
			resp.Body.Close()
			return
		}
		select {
		case <-exited:
			s.t.Fatalf("the service exited at start:\n%s", tail(s.log, 40, ""))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("the service does not serve /livez: %v", err)
		}
	}
}

func (s *service) appURL(path string) string { return "http://127.0.0.1:" + s.env["APP_PORT"] + path }

// running reports whether a lifetime is going on.
func (s *service) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}

// pid returns the running process's id.
func (s *service) pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		s.t.Fatal("the service is not running")
	}
	return s.cmd.Process.Pid
}

// scrape reads /metrics of the metrics port and remembers it as the
// lifetime's latest figures.
func (s *service) scrape() (metrics, error) {
	resp, err := http.Get("http://127.0.0.1:" + s.env["PROMETHEUS_PORT"] + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: %s", resp.Status)
	}
	m, err := parseMetrics(resp.Body)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.last = m
	s.mu.Unlock()
	return m, nil
}

// mustScrape is scrape for the test goroutine.
func (s *service) mustScrape() metrics {
	s.t.Helper()
	m, err := s.scrape()
	if err != nil {
		s.t.Fatalf("scrape the service: %v", err)
	}
	return m
}

// parseMetrics sums the samples of the Prometheus text format by name.
func parseMetrics(r io.Reader) (metrics, error) {
	m := metrics{}
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name := line
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name = line[:i]
		}
		j := strings.LastIndexByte(line, ' ')
		if j < 0 {
			return nil, fmt.Errorf("unreadable metrics line %q", line)
		}
		v, err := strconv.ParseFloat(line[j+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %w", line, err)
		}
		m[name] += v
	}
	return m, sc.Err()
}

// healthStatus is /healthz: the code and the body's fields.
type healthStatus struct {
	code int
	body map[string]any
}

func (h healthStatus) String() string {
	b, _ := json.Marshal(h.body)
	return fmt.Sprintf("%d %s", h.code, b)
}

func (s *service) health() (healthStatus, error) {
	resp, err := http.Get(s.appURL("/healthz"))
	if err != nil {
		return healthStatus{}, err
	}
	defer resp.Body.Close()
	h := healthStatus{code: resp.StatusCode}
	if err := json.NewDecoder(resp.Body).Decode(&h.body); err != nil {
		return h, fmt.Errorf("/healthz body: %w", err)
	}
	return h, nil
}

// waitHealth polls /healthz until it answers code, and returns how long
// that took.
func (s *service) waitHealth(code int, timeout time.Duration) time.Duration {
	s.t.Helper()
	start := time.Now()
	var last healthStatus
	var err error
	for time.Since(start) < timeout {
		if last, err = s.health(); err == nil && last.code == code {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.t.Fatalf("/healthz did not answer %d within %s: last %v (%v)", code, timeout, last, err)
	return 0
}

// stop sends SIGTERM and checks that the process exits 0 within
// SHUTDOWN_TIMEOUT; the last scrape before it is the lifetime's figures.
func (s *service) stop() {
	s.t.Helper()
	if _, err := s.scrape(); err != nil {
		s.t.Errorf("final scrape: %v", err)
	}
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		s.t.Fatal("the service is not running")
	}
	start := time.Now()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(shutdownTimeout + 5*time.Second):
		s.kill()
		s.t.Fatalf("the service did not exit within %s of SIGTERM", shutdownTimeout+5*time.Second)
	}
	took := time.Since(start)
	s.mu.Lock()
	err := s.exitErr
	s.lifetimes = append(s.lifetimes, lifetime{metrics: s.last, clean: true})
	s.cmd = nil
	s.mu.Unlock()
	if err != nil {
		s.t.Errorf("the service exited with %v after SIGTERM", err)
	}
	// A second of slack for the process to be reaped and the signal to
	// arrive on a loaded machine.
	if took > shutdownTimeout+time.Second {
		s.t.Errorf("the service took %s to stop; SHUTDOWN_TIMEOUT is %s", took.Round(time.Millisecond), shutdownTimeout)
	}
}

// kill sends SIGKILL; the lifetime's figures are then its last scrape,
// which may miss what it did after.
func (s *service) kill() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-exited
	s.mu.Lock()
	s.lifetimes = append(s.lifetimes, lifetime{metrics: s.last, clean: false})
	s.cmd = nil
	s.mu.Unlock()
}

// cpuTime returns the user and system CPU time the running process has
// used.
func (s *service) cpuTime() time.Duration {
	s.t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.pid()))
	if err != nil {
		s.t.Fatal(err)
	}
	// The fields after the command name, which is in parentheses:
	// state is field 3, utime 14 and stime 15.
	rest := string(data[bytes.LastIndexByte(data, ')')+2:])
	f := strings.Fields(rest)
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		s.t.Fatalf("/proc stat: %v", err)
	}
	const clockTicks = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / clockTicks
}

// peakRSS returns the running process's peak resident set (VmHWM).
func (s *service) peakRSS() int64 {
	s.t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.pid()))
	if err != nil {
		s.t.Fatal(err)
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(rest)
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				s.t.Fatal(err)
			}
			return kb << 10
		}
	}
	s.t.Fatal("no VmHWM in /proc status")
	return 0
}

// ended returns the lifetimes that have ended.
func (s *service) ended() []lifetime {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.lifetimes)
}

// dumpGoroutines makes the running service print its goroutines (SIGQUIT,
// which also ends it) and returns, for each, its state and the first frame
// in the service's own packages: where it waits.
func (s *service) dumpGoroutines() string {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return "(not running)"
	}
	before, err := os.Stat(s.log)
	if err != nil {
		return err.Error()
	}
	_ = cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
	}
	s.kill()
	data, err := os.ReadFile(s.log)
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	header := ""
	for line := range strings.Lines(string(data)) {
		switch {
		case strings.HasPrefix(line, "goroutine "):
			header = strings.TrimSpace(line)
		case header != "" && strings.Contains(line, "audit-log-analysis/internal/"):
			fmt.Fprintf(&b, "%s %s\n", header, strings.TrimSpace(line))
			header = ""
		}
	}
	// The log's tail, printed for a failed test, stays the service's own.
	_ = os.Truncate(s.log, before.Size())
	return b.String()
}

// alertsLogged returns, by alert_id, when the service logged each alert
// as published (confirmed by the broker), the latest time for an id
// published more than once.
func (s *service) alertsLogged() map[string]time.Time {
	s.t.Helper()
	data, err := os.ReadFile(s.log)
	if err != nil {
		s.t.Fatal(err)
	}
	at := map[string]time.Time{}
	for line := range strings.Lines(string(data)) {
		if !strings.Contains(line, `"alert published"`) {
			continue
		}
		var l struct {
			Time    time.Time `json:"time"`
			AlertID string    `json:"alert_id"`
		}
		if err := json.Unmarshal([]byte(line), &l); err != nil || l.AlertID == "" {
			continue
		}
		if l.Time.After(at[l.AlertID]) {
			at[l.AlertID] = l.Time
		}
	}
	return at
}

// tail returns the last n lines of a file, leaving out those containing
// skip (unless it is empty).
func tail(path string, n int, skip string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var lines []string
	for line := range strings.Lines(string(data)) {
		if skip == "" || !strings.Contains(line, skip) {
			lines = append(lines, line)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "")
}
