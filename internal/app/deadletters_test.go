package app

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

// The service dead-letters a bad message; dead-letters list shows it and
// leaves it there; dead-letters redrive sends it back to the event queue,
// where the service refuses it again.
func TestDeadLettersListAndRedriveAgainstTheService(t *testing.T) {
	t.Parallel()
	env := serviceEnv(t, testenv.RedisAddr(t))
	s := startService(t, env)
	publish(t, s.queue, []byte(`{"event_type": "user_login", `), []byte(`{"user_id": 7}`))
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitFor("two dead letters", func() bool { return queueDepth(t, s.deadQueue) == 2 })

	cli := func(args ...string) (string, string, error) {
		var out, errOut bytes.Buffer
		err := Main(context.Background(), Env{
			Args: append([]string{"audit-log-analysis", "dead-letters"}, args...), Getenv: func(k string) string { return env[k] },
			Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut,
		})
		return out.String(), errOut.String(), err
	}
	out, logs, err := cli("list")
	if err != nil {
		t.Fatalf("list: %v (%s)", err, logs)
	}
	for _, want := range []string{"1. reason=invalid_json", "2. reason=wrong_type", `error: wrong_type: field "user_id": want a string`, `body:  {"user_id": 7}`} {
		if !strings.Contains(out, want) {
			t.Errorf("list output lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(logs, "2 messages shown of 2") {
		t.Errorf("list summary = %q", logs)
	}
	waitFor("the listed messages back in the queue", func() bool { return queueDepth(t, s.deadQueue) == 2 })

	out, logs, err = cli("redrive", "--reason", "wrong_type", "--limit", "5")
	if err != nil || !strings.Contains(out, "reason=wrong_type") || strings.Contains(out, "invalid_json") || !strings.Contains(logs, "1 messages moved") {
		t.Fatalf("redrive = %v\nstdout %s\nstderr %s", err, out, logs)
	}
	// The service takes it again and dead-letters it again: three dead
	// letters in all, two in the queue.
	waitMetric(t, s.promURL, "audit_analysis_dead_lettered_total", 3, 20*time.Second)
	waitFor("the redriven message dead-lettered again", func() bool { return queueDepth(t, s.deadQueue) == 2 })
}
