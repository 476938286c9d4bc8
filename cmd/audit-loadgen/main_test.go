package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/uuid"

	"github.com/audit-platform/audit-log-analysis/internal/sample"
)

func TestSampleWritesWhatTheGeneratorWrites(t *testing.T) {
	t.Parallel()
	var want bytes.Buffer
	if _, err := sample.Generate(&want, sample.Options{Seed: 3, Events: 100}); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"audit-loadgen", "sample", "-n", "100", "-seed", "3"}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(stdout.Bytes(), want.Bytes()) {
		t.Error("sample on standard output differs from the generator's")
	}
	file := filepath.Join(t.TempDir(), "sample.jsonl")
	if err := run(context.Background(), []string{"audit-loadgen", "sample", "-n", "100", "-seed", "3", "-o", file}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(file); err != nil || !bytes.Equal(got, want.Bytes()) {
		t.Errorf("sample in %s differs from the generator's (%v)", file, err)
	}
	if !bytes.Contains(stderr.Bytes(), []byte("built-in ANLY-SEC-001: 5 alerts")) {
		t.Errorf("no plan on standard error:\n%s", stderr.String())
	}
}

func TestBadCommandLinesAreUsageErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
	}{
		{"no command", nil},
		{"an unknown command", []string{"flood"}},
		{"an unknown flag", []string{"sample", "-x"}},
		{"an argument after the flags", []string{"sample", "extra"}},
		{"a start that is not a time", []string{"sample", "-start", "yesterday"}},
		{"too few events for the planted scenarios", []string{"sample", "-n", "10"}},
		{"the same queue for events and alerts", []string{"publish", "-queue", "q", "-alerts", "q"}},
		{"a negative rate", []string{"publish", "-rate", "-1"}},
		{"no events", []string{"publish", "-n", "0"}},
		{"a bench of no rounds", []string{"bench", "-rounds", "0"}},
		{"a bench load that is not a rate", []string{"bench", "-loads", "2000,fast"}},
		{"a bench load of zero", []string{"bench", "-loads", "0"}},
		{"a bench Redis address without a port", []string{"bench", "-redis", "localhost"}},
		{"an ack-only consumer without a queue", []string{"ackonly", "-n", "10"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), append([]string{"audit-loadgen"}, tc.args...), &stdout, &stderr)
			if err == nil {
				t.Fatal("no error")
			}
			if len(tc.args) > 0 && tc.args[0] == "sample" && tc.args[1] == "-n" {
				return // the generator's own error
			}
			if !errors.Is(err, errUsage) {
				t.Errorf("error %v is not a usage error", err)
			}
		})
	}
}

func TestHelpPrintsTheFlagsAndDoesNothingElse(t *testing.T) {
	t.Parallel()
	for _, cmd := range []string{"sample", "publish"} {
		var stdout, stderr bytes.Buffer
		if err := run(context.Background(), []string{"audit-loadgen", cmd, "-h"}, &stdout, &stderr); err != nil {
			t.Errorf("%s -h: %v", cmd, err)
		}
		if stdout.Len() > 0 || !bytes.Contains(stderr.Bytes(), []byte("-seed")) {
			t.Errorf("%s -h: wrote %d bytes to standard output, flags on standard error: %v", cmd, stdout.Len(), bytes.Contains(stderr.Bytes(), []byte("-seed")))
		}
	}
}

func TestFileEventsAreMatchedByTheIDTheServiceDerives(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "events.jsonl")
	id := uuid.NewString()
	body := `{"event_id": "evt-1"}` + "\r\n" + `{"event_id": "` + id + `"}` + "\n" + "[1]\n"
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	msgs, plan, err := loadMessages(publishConfig{File: file})
	if err != nil || plan != nil || len(msgs) != 3 {
		t.Fatalf("loadMessages: %d messages, plan %v, %v", len(msgs), plan, err)
	}
	if msgs[0].id != "evt-1" || uuid.Validate(msgs[0].key) != nil || msgs[0].key == "evt-1" {
		t.Errorf("a non-UUID event_id: id %q, key %q; want the id and a UUID derived from it", msgs[0].id, msgs[0].key)
	}
	if msgs[1].id != id || msgs[1].key != id {
		t.Errorf("a UUID event_id: id %q, key %q; want %s for both", msgs[1].id, msgs[1].key, id)
	}
	if string(msgs[0].body) != `{"event_id": "evt-1"}` || msgs[2].id != "" || msgs[2].key != "" {
		t.Errorf("lines not kept as they are: %q, %+v", msgs[0].body, msgs[2])
	}
}
