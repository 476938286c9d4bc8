package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// queueNames are the queues of one measurement, fresh for it.
type queueNames struct {
	Events, Alerts, DeadLetter string
}

func (q queueNames) all() []string { return []string{q.Events, q.Alerts, q.DeadLetter} }

// child is a process the bench started: the service or the reference
// consumer.
type child struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // set once exited is closed
	// log is where its output goes.
	log string
}

// startChild starts bin with args and env (PATH added) in dir, with its
// output in dir/name.log. It dies with the bench (Pdeathsig).
func startChild(dir, name, bin string, args, env []string, stdin io.Reader, stdout io.Writer) (*child, error) {
	logPath := filepath.Join(dir, name+".log")
	out, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir // no .env file there
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, out, out
	if stdout != nil {
		cmd.Stdout = stdout
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	c := &child{cmd: cmd, exited: make(chan struct{}), log: logPath}
	go func() {
		c.err = cmd.Wait()
		close(c.exited)
	}()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// stop ends the process with SIGTERM, and SIGKILL after grace.
func (c *child) stop(grace time.Duration) {
	select {
	case <-c.exited:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(grace):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
}

// failure describes why the process is gone, with the end of its log.
func (c *child) failure() error {
	b, _ := os.ReadFile(c.log)
	return fmt.Errorf("%s exited (%v); the end of its log:\n%s", filepath.Base(c.cmd.Path), c.err, tailLines(string(b), 20))
}

// service is the service binary running serve against one measurement's
// queues and key prefix.
type service struct {
	*child
	metricsURL string
	client     *http.Client
	// env is what it was started with, beyond PATH.
	env []string
}

// startService runs the service at its defaults: only the broker and Redis
// addresses, the queue names, the key prefix and free ports are set.
func (b *bench) startService(names queueNames, prefix string) (*service, error) {
	appPort, err := freePort()
	if err != nil {
		return nil, err
	}
	metricsPort, err := freePort()
	if err != nil {
		return nil, err
	}
	env := b.serviceEnv(names, prefix, strconv.Itoa(appPort), strconv.Itoa(metricsPort))
	c, err := startChild(b.dir, "service-"+names.Events, b.cfg.Service, []string{"serve"}, env, nil, nil)
	if err != nil {
		return nil, err
	}
	return &service{
		child:      c,
		metricsURL: "http://127.0.0.1:" + strconv.Itoa(metricsPort) + "/metrics",
		client:     &http.Client{Timeout: 5 * time.Second},
		env:        env,
	}, nil
}

func (b *bench) serviceEnv(names queueNames, prefix, appPort, metricsPort string) []string {
	host, port, _ := net.SplitHostPort(b.cfg.Redis)
	return []string{
		"RABBITMQ_URL=" + b.cfg.URL,
		"REDIS_HOST=" + host,
		"REDIS_PORT=" + port,
		"RABBITMQ_QUEUE=" + names.Events,
		"RABBITMQ_ALERT_QUEUE=" + names.Alerts,
		"RABBITMQ_DEAD_LETTER_QUEUE=" + names.DeadLetter,
		"REDIS_KEY_PREFIX=" + prefix,
		"APP_PORT=" + appPort,
		"PROMETHEUS_PORT=" + metricsPort,
	}
}

// consumed reads audit_analysis_rabbitmq_messages_consumed_total.
func (s *service) consumed(ctx context.Context) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.metricsURL, nil)
	if err != nil {
		return 0, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s: %s", s.metricsURL, resp.Status)
	}
	return metricValue(resp.Body, "audit_analysis_rabbitmq_messages_consumed_total")
}

// metricValue sums the samples of one metric in the Prometheus text
// format.
func metricValue(r io.Reader, name string) (float64, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	found := false
	var sum float64
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %q is not a number", name, f[0])
		}
		sum += v
		found = true
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	if !found {
		return 0, fmt.Errorf("no %s in the metrics", name)
	}
	return sum, nil
}

// waitSettled polls the service's consumed counter until it reaches n and
// returns when that happened: between the last scrape that saw less and
// the first that saw n, taken as the middle of the two. Scrapes are sparse
// while much is left and every few milliseconds near the end, so that they
// cost the service little and the time is exact to a few milliseconds.
func (s *service) waitSettled(ctx context.Context, n int) (time.Time, error) {
	var prev time.Time
	start := time.Now()
	for {
		before := time.Now()
		got, err := s.consumed(ctx)
		at := before.Add(time.Since(before) / 2)
		if err != nil {
			select {
			case <-s.exited:
				return time.Time{}, s.failure()
			default:
			}
			if ctx.Err() != nil {
				return time.Time{}, fmt.Errorf("wait for %d messages settled: %w", n, ctx.Err())
			}
			// The metrics server may not listen yet.
			got = 0
		}
		if got >= float64(n) {
			if prev.IsZero() {
				return at, nil
			}
			return prev.Add(at.Sub(prev) / 2), nil
		}
		prev = at
		wait := 250 * time.Millisecond
		if elapsed := time.Since(start).Seconds(); got > 0 && elapsed > 0 {
			// Half the time the rest should take at the rate so far.
			left := time.Duration((float64(n) - got) / (got / elapsed) / 2 * float64(time.Second))
			wait = min(max(left, 3*time.Millisecond), wait)
		}
		select {
		case <-time.After(wait):
		case <-s.exited:
			return time.Time{}, s.failure()
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("wait for %d messages settled (%.0f so far): %w", n, got, ctx.Err())
		}
	}
}

// waitConsumer polls queue every millisecond until it has a consumer, and
// returns when it saw one. exited ends the wait early.
func waitConsumer(ctx context.Context, conn *amqp.Connection, queue string, exited <-chan struct{}) (time.Time, error) {
	ch, err := conn.Channel()
	if err != nil {
		return time.Time{}, fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	for {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		at := time.Now()
		if err != nil {
			return time.Time{}, fmt.Errorf("read queue %q: %w", queue, err)
		}
		if q.Consumers > 0 {
			return at, nil
		}
		select {
		case <-time.After(time.Millisecond):
		case <-exited:
			return time.Time{}, errExited
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("wait for a consumer on %q: %w", queue, ctx.Err())
		}
	}
}

// waitEmpty polls queue every 20 milliseconds until no message is ready
// in it (those delivered and not yet acknowledged are not counted). exited
// ends the wait early.
func waitEmpty(ctx context.Context, conn *amqp.Connection, queue string, exited <-chan struct{}) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	for {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		if err != nil {
			return fmt.Errorf("read queue %q: %w", queue, err)
		}
		if q.Messages == 0 {
			return nil
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-exited:
			return errExited
		case <-ctx.Done():
			return fmt.Errorf("wait for %q to empty: %w", queue, ctx.Err())
		}
	}
}

// errExited says the process meant to consume exited first.
var errExited = errors.New("the consumer exited before it consumed")

// freePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
