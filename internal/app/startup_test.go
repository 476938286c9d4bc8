package app

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// serveOnce runs serve with env and returns its error and what it logged.
// Every case here fails before connecting to anything.
func serveOnce(t *testing.T, env map[string]string) (logs string, err error) {
	t.Helper()
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = Main(ctx, Env{
		Args: []string{"audit-log-analysis", "serve"}, Getenv: func(k string) string { return env[k] },
		Stdin: strings.NewReader(""), Stdout: &out, Stderr: &out, Build: Build{Version: "test"},
	})
	return out.String(), err
}

// logLines decodes JSON log lines, failing on anything else.
func logLines(t *testing.T, logs string) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(logs), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q is not JSON: %v", l, err)
		}
		lines = append(lines, m)
	}
	return lines
}

func TestServeRefusesToStartWithoutAnEnabledRule(t *testing.T) {
	t.Parallel()
	off := filepath.Join(t.TempDir(), "off.yaml")
	if err := os.WriteFile(off, []byte("rules:\n  - id: OFF\n    severity: HIGH\n    enabled: false\n    match: {event_type: x}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logs, err := serveOnce(t, map[string]string{"RULES_BUILTIN": "false", "RULES_FILE": off})
	if err == nil || !Reported(err) || !strings.Contains(err.Error(), "no enabled rules (all 1 rules disabled in "+off+"): detection would be off") {
		t.Fatalf("serve = %v (reported %v), want a reported error about no enabled rules", err, Reported(err))
	}
	lines := logLines(t, logs)
	last := lines[len(lines)-1]
	if last["level"] != "ERROR" || last["msg"] != "start-up failed" || !strings.Contains(last["error"].(string), "no enabled rules") {
		t.Errorf("last log line = %v, want the start-up failure", last)
	}
	// Beside the built-in rules, the same file changes nothing: refused too.
	_, err = serveOnce(t, map[string]string{"RULES_FILE": off})
	if err == nil || !strings.Contains(err.Error(), "the file changes nothing") {
		t.Errorf("serve with the built-ins and a file of disabled rules = %v, want a refusal", err)
	}
}

func TestStartUpFailuresAreLoggedInTheConfiguredFormat(t *testing.T) {
	t.Parallel()
	t.Run("json by default", func(t *testing.T) {
		t.Parallel()
		logs, err := serveOnce(t, map[string]string{"RABBITMQ_PORT": "abc"})
		if err == nil || !Reported(err) {
			t.Fatalf("serve = %v, want a reported error", err)
		}
		lines := logLines(t, logs)
		if len(lines) != 1 || lines[0]["msg"] != "start-up failed" || !strings.Contains(lines[0]["error"].(string), `RABBITMQ_PORT: "abc" is not a port`) {
			t.Errorf("logs = %v", lines)
		}
	})
	t.Run("text when asked", func(t *testing.T) {
		t.Parallel()
		logs, err := serveOnce(t, map[string]string{"RABBITMQ_PORT": "abc", "LOG_FORMAT": "text"})
		if err == nil || !strings.HasPrefix(logs, "time=") || !strings.Contains(logs, `level=ERROR msg="start-up failed"`) {
			t.Errorf("serve = %v, logs %q", err, logs)
		}
	})
}

// The .env file is read from the working directory, so this test changes
// it and cannot run in parallel.
func TestTheStartUpLineNamesTheDotEnvFile(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	if err := os.WriteFile(filepath.Join(dir, "off.yaml"), []byte("rules:\n  - id: OFF\n    severity: HIGH\n    enabled: false\n    match: {event_type: x}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Settings that make serve stop right after its start-up line.
	if err := os.WriteFile(filepath.Join(dir, ".env"), []byte("RULES_BUILTIN=false\nRULES_FILE=off.yaml\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logs, _ := serveOnce(t, nil)
	lines := logLines(t, logs)
	if lines[0]["msg"] != "starting" || lines[0]["env_file"] != ".env" {
		t.Errorf("start-up line = %v, want env_file .env", lines[0])
	}
	cfg, _ := lines[0]["config"].(map[string]any)
	if cfg["shutdown_timeout"] != "8s" {
		t.Errorf("durations in the start-up line are %v, want strings such as 8s", cfg["shutdown_timeout"])
	}
}

func TestLogsWriteDurationsWithTheirUnit(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	newLogger(slog.LevelInfo, "json", &out).Info("retrying", "retry_in", 1500*time.Millisecond,
		slog.Group("g", slog.Duration("wait", time.Minute)))
	want := `"retry_in":"1.5s","g":{"wait":"1m0s"}`
	if !strings.Contains(out.String(), want) {
		t.Errorf("log line %s, want it to contain %s", out.String(), want)
	}
}
