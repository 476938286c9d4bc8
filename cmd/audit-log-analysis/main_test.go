package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCmd(t *testing.T, stdin string, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), append([]string{"audit-log-analysis"}, args...),
		func(string) string { return "" }, strings.NewReader(stdin), &out, &errOut)
	return out.String(), errOut.String(), err
}

func TestCommands(t *testing.T) {
	t.Parallel()
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("rules:\n  - id: X\n    severity: HIGH\n    match: {user_id: {like: a}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		stdin   string
		wantErr string // "" for success
		wantOut string
	}{
		{"version prints the version", []string{"version"}, "", "", "audit-log-analysis dev"},
		{"help lists the commands", []string{"help"}, "", "", "rules check FILE"},
		{"an unknown command fails", []string{"frobnicate"}, "", `unknown command "frobnicate"`, ""},
		{"serve takes no stray arguments", []string{"serve", "extra"}, "", "serve takes only --rules FILE", ""},
		{"rules check accepts the examples", []string{"rules", "check", "../../rules/examples.yaml"}, "", "", "rules OK"},
		{"rules check names rule and line", []string{"rules", "check", bad}, "", `bad.yaml:4: rule "X"`, ""},
		{"rules test runs the fixtures", []string{"rules", "test", "../../rules/tests"}, "", "", "0 failed"},
		{"replay reads stdin", []string{"replay"}, `{"event_type":"file_modified","action_result":"MODIFIED","resource":"/etc//shadow"}` + "\n", "", `"rule_id":"ANLY-SEC-002"`},
		{"replay refuses a missing file", []string{"replay", "/nonexistent.jsonl"}, "", "no such file", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out, _, err := runCmd(t, tc.stdin, tc.args...)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
			}
			if !strings.Contains(out, tc.wantOut) {
				t.Errorf("stdout = %q, want it to contain %q", out, tc.wantOut)
			}
		})
	}
}
