package replay

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTheShippedDetectionFixturesPass runs rules/tests, the fixtures of the
// built-in and example rules, so that `go test ./...` checks them too.
func TestTheShippedDetectionFixturesPass(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	if err := RunFixtures(context.Background(), filepath.Join("..", "..", "rules", "tests"), &out); err != nil {
		t.Fatalf("%v\n%s", err, failures(out.String()))
	}
	if !strings.Contains(out.String(), " 0 failed") {
		t.Fatalf("report does not end in a summary:\n%s", out.String())
	}
}

// failures keeps the lines of a report that are about failing cases.
func failures(report string) string {
	var b strings.Builder
	for _, line := range strings.Split(report, "\n") {
		if !strings.HasPrefix(line, "ok ") {
			b.WriteString(line)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

func TestAWrongFixtureFailsWithAMessageThatSaysWhatDiffers(t *testing.T) {
	t.Parallel()
	failure := func(id string, second int) string {
		return fmt.Sprintf("  - {event_id: %s, timestamp: \"2026-11-01T10:00:%02dZ\", event_type: user_login, action_result: FAILURE, user_id: bob, server_hostname: web-01}\n", id, second)
	}
	pair := "events:\n" + failure("f1", 0) + failure("f2", 10)
	burst := pair + failure("f3", 20)
	tests := []struct {
		name    string
		fixture string
		want    []string // each must appear in the report
	}{
		{
			name:    "an expected alert that does not come",
			fixture: "name: two failures alert\n" + pair + "expect:\n  - rule: ANLY-SEC-001\n    group: {user_id: bob, server_hostname: web-01}\n",
			want:    []string{"FAIL ", "wrong.yaml: two failures alert", "alert 1: want ANLY-SEC-001 {server_hostname=web-01, user_id=bob}, got no alert"},
		},
		{
			name:    "an alert that is not expected",
			fixture: "name: a burst is quiet\n" + burst + "expect: []\n",
			want:    []string{"FAIL ", "a burst is quiet", "alert 1: unexpected ANLY-SEC-001", "alert 1: unexpected ANLY-SEC-001 alert", "≠   count: 3"},
		},
		{
			name:    "the wrong count, group and suppressed count",
			fixture: "name: wrong details\n" + burst + "expect:\n  - rule: ANLY-SEC-001\n    group: {user_id: alice, server_hostname: web-01}\n    count: 4\n    suppressed: 2\n",
			want:    []string{"alert 1: ", "count 3, want 4", "suppressed 0, want 2", `want {server_hostname: "web-01", user_id: "alice"}`, "    user_id: alice           ≠     user_id: bob"},
		},
		{
			name:    "the wrong rule",
			fixture: "name: wrong rule\n" + burst + "expect:\n  - rule: ANLY-SEC-002\n",
			want:    []string{"alert 1: rule ANLY-SEC-001, want ANLY-SEC-002"},
		},
		{
			name:    "a misspelt key",
			fixture: "name: typo\n" + burst + "expects: []\n",
			want:    []string{"bad fixture:", "expects"},
		},
		{
			name:    "a rules file that does not exist",
			fixture: "name: missing rules\nrules: nowhere.yaml\n" + burst + "expect: []\n",
			want:    []string{"missing rules", "nowhere.yaml"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			// A passing case next to the failing one: one bad case fails
			// the run, and the report still lists the good one.
			good := "name: a burst alerts\n" + burst + "expect:\n  - {rule: ANLY-SEC-001, count: 3}\n"
			writeFile(t, filepath.Join(dir, "good.yaml"), good)
			writeFile(t, filepath.Join(dir, "wrong.yaml"), tt.fixture)
			var out bytes.Buffer
			err := RunFixtures(context.Background(), dir, &out)
			if err == nil {
				t.Fatalf("RunFixtures passed a wrong fixture; report:\n%s", out.String())
			}
			if !strings.Contains(err.Error(), "1 of 2 fixtures failed") {
				t.Errorf("error = %q, want it to count the failed fixtures", err)
			}
			report := out.String()
			for _, w := range append(tt.want, "ok   "+filepath.Join(dir, "good.yaml"), "1 passed, 1 failed") {
				if !strings.Contains(report, w) {
					t.Errorf("report lacks %q:\n%s", w, report)
				}
			}
		})
	}
}

func TestRunFixturesRefusesADirectoryWithoutFixtures(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "notes.txt"), "not a fixture")
	err := RunFixtures(context.Background(), dir, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "no *.yaml fixtures") {
		t.Fatalf("error = %v, want one saying there are no fixtures", err)
	}
}

func writeFile(t *testing.T, name, content string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
