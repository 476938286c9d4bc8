package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"

	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

// TestMain lets the test binary stand in for audit-loadgen as the bench
// command's reference consumer: the bench runs "<itself> ackonly …".
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "ackonly" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := run(ctx, os.Args, os.Stdout, os.Stderr)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "audit-loadgen:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// buildService builds the service binary for the test.
func buildService(t *testing.T) string {
	t.Helper()
	return testenv.BuildService(t)
}

func TestBenchWritesBenchmarksWithSaneFiguresAndCleansUp(t *testing.T) {
	url, addr := testenv.RabbitMQURL(t), testenv.RedisAddr(t)
	bin := buildService(t)
	out := filepath.Join(t.TempDir(), "BENCHMARKS.md")
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	err := run(ctx, []string{"audit-loadgen", "bench", "-service", bin, "-self", os.Args[0], "-url", url, "-redis", addr,
		"-rounds", "1", "-n", "2000", "-loads", "2000", "-duration", "2s", "-replay-events", "20000", "-groups", "300",
		"-gobench=false", "-o", out}, &stdout, &stderr)
	t.Logf("bench took %s:\n%s", time.Since(start).Round(time.Millisecond), stderr.String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	prev, err := readPrevious(b)
	if err != nil || prev.Results == nil {
		t.Fatalf("the file written does not read back: %v", err)
	}
	r := prev.Results
	if !strings.Contains(r.RabbitMQ, "RabbitMQ") || !strings.HasPrefix(r.Redis, "Redis ") || r.Machine.CPUs < 1 {
		t.Errorf("servers and machine: %q, %q, %+v", r.RabbitMQ, r.Redis, r.Machine)
	}
	for _, c := range []struct {
		key    string
		lo, hi float64
	}{
		{"drain.service", 1, 1e7},
		{"drain.reference", 1, 1e7},
		{"cpu.service", 0.01, 1e5},
		{"rss.service", 1, 1024},
		{"latency.2000.p50", 0, 1e4},
		{"latency.2000.samples", 1, 1e6},
		{"latency.2000.achieved", 100, 1e5},
		{"replay.one_core", 1, 1e8},
		{"replay.all_cores", 1, 1e8},
		{"redis.bytes_per_group", 10, 1e5},
		{"redis.keys_per_group", 1, 20},
		{"redis.max_ttl", 1, r.Settings.TTLLimitSecs + 1},
	} {
		f, ok := r.figure(c.key)
		if !ok || math.IsNaN(f.Median) || f.Median < c.lo || f.Median > c.hi {
			t.Errorf("%s = %+v, want %g to %g", c.key, f, c.lo, c.hi)
		}
	}
	p50, _ := r.figure("latency.2000.p50")
	p99, _ := r.figure("latency.2000.p99")
	maxLat, _ := r.figure("latency.2000.max")
	if !(p50.Median <= p99.Median && p99.Median <= maxLat.Median) {
		t.Errorf("latency p50 %v, p99 %v, max %v out of order", p50.Median, p99.Median, maxLat.Median)
	}
	for _, want := range []string{"## Targets", "## Figures", "## Machine", "## Commands", defaultProfileFindings} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("BENCHMARKS.md lacks %q", want)
		}
	}

	// Every queue and key of the run is gone.
	m := regexp.MustCompile(`bench (bench-[0-9a-f]+):`).FindStringSubmatch(stderr.String())
	if m == nil {
		t.Fatal("no run id in the log")
	}
	id := m[1]
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	var left []string
	it := rdb.Scan(ctx, 0, id+"*", 1000).Iterator()
	for it.Next(ctx) {
		left = append(left, it.Val())
	}
	if err := it.Err(); err != nil || len(left) > 0 {
		t.Errorf("keys left under %s: %v (%v)", id, left, err)
	}
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, kind := range []string{"drain-service", "drain-reference", "latency-2000", "redis"} {
		for _, suffix := range []string{"-events", "-alerts", "-events.dead-letter"} {
			q := id + "-r1-" + kind + suffix
			ch, err := conn.Channel()
			if err != nil {
				t.Fatal(err)
			}
			_, err = ch.QueueDeclarePassive(q, true, false, false, false, nil)
			var ae *amqp.Error
			if !errors.As(err, &ae) || ae.Code != amqp.NotFound {
				t.Errorf("queue %s is still there (%v)", q, err)
				ch.Close()
			}
		}
	}
}
