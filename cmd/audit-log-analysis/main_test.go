package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCmd(t *testing.T, env map[string]string, stdin string, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), append([]string{"audit-log-analysis"}, args...),
		func(k string) string { return env[k] }, strings.NewReader(stdin), &out, &errOut)
	return out.String(), errOut.String(), err
}

func writeRules(t *testing.T, name, src string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const (
	shadowEdit = `{"event_type":"file_modified","action_result":"MODIFIED","resource":"/etc//shadow"}`
	pamEdit    = `{"event_type":"file_modified","action_result":"MODIFIED","resource":"/etc/pam.d/sshd"}`
	pamRule    = "rules:\n  - id: USER-PAM\n    severity: HIGH\n    resource_type: FILE\n    match: {event_type: file_modified, resource: {path: [/etc/pam.d/*]}}\n"
)

func TestCommands(t *testing.T) {
	t.Parallel()
	bad := writeRules(t, "bad.yaml", "rules:\n  - id: X\n    severity: HIGH\n    match: {user_id: {like: a}}\n")
	empty := writeRules(t, "empty.yaml", "rules: []\n")
	disabled := writeRules(t, "disabled.yaml", "rules:\n  - id: OFF\n    severity: HIGH\n    enabled: false\n    match: {event_type: x}\n")
	pam := writeRules(t, "pam.yaml", pamRule)
	builtinOff := writeRules(t, "off.yaml", "rules:\n  - id: ANLY-SEC-002\n    severity: HIGH\n    enabled: false\n    match: {event_type: x}\n")
	typo := writeRules(t, "typo.yaml", "rules:\n  - id: T\n    severity: HIGH\n    match: {detials.command: {contains: curl}}\n")
	noBuiltins := map[string]string{"RULES_BUILTIN": "false"}
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		stdin   string
		wantErr string // "" for success
		wantOut string
		wantLog string // on stderr
	}{
		{"version prints the version", nil, []string{"version"}, "", "", "audit-log-analysis dev\nmodule github.com/audit-platform/audit-log-analysis", ""},
		{"version prints the revision", nil, []string{"version"}, "", "", "\nrevision ", ""},
		{"help lists the commands", nil, []string{"help"}, "", "", "rules check [PATH ...]", ""},
		{"an unknown command fails", nil, []string{"frobnicate"}, "", `unknown command "frobnicate"`, "", ""},
		{"serve takes no stray arguments", nil, []string{"serve", "extra"}, "", `serve takes no arguments, got "extra"`, "", ""},
		{"rules check accepts the examples", nil, []string{"rules", "check", "../../rules/examples.yaml"}, "", "", "13 rules OK (13 enabled)", ""},
		{"rules check names rule and line", nil, []string{"rules", "check", bad}, "", `bad.yaml:4: rule "X"`, "", ""},
		{"rules check refuses a file without rules", nil, []string{"rules", "check", empty}, "", "empty.yaml: the file defines no rules", "", ""},
		{"rules check refuses a file that changes nothing", nil, []string{"rules", "check", disabled}, "", "the file changes nothing", "", ""},
		{"rules check accepts a file that turns a built-in rule off", nil, []string{"rules", "check", builtinOff}, "", "", "2 rules OK (1 enabled)", ""},
		{"rules check refuses a set with no enabled rule", noBuiltins, []string{"rules", "check", disabled}, "", "no enabled rules", "", ""},
		{"rules check warns about an undocumented dotted path", nil, []string{"rules", "check", typo}, "", "", "rules OK", "did you mean details.command?"},
		{"rules check --strict fails on a warning", nil, []string{"rules", "check", typo, "--strict"}, "", "1 warnings with --strict", "", ""},
		{"rules check reads RULES_FILE", map[string]string{"RULES_FILE": pam}, []string{"rules", "check"}, "", "", "USER-PAM", ""},
		{"rules test runs the fixtures", nil, []string{"rules", "test", "../../rules/tests"}, "", "", "0 failed", ""},
		{"replay reads stdin", nil, []string{"replay"}, shadowEdit + "\n", "", `"rule_id":"ANLY-SEC-002"`, "alerts ANLY-SEC-001             0"},
		{"replay - is stdin", nil, []string{"replay", "-", "--quiet"}, shadowEdit + "\n", "", `"rule_id":"ANLY-SEC-002"`, "replay: 2 rules enabled (ANLY-SEC-001, ANLY-SEC-002)"},
		{"replay refuses a missing file", nil, []string{"replay", "/nonexistent.jsonl"}, "", "no such file", "", ""},
		{"replay --rules adds to the built-in rules", nil, []string{"replay", "--rules", pam}, shadowEdit + "\n" + pamEdit + "\n", "",
			`"rule_id":"USER-PAM"`, "replay: 3 rules enabled (ANLY-SEC-001, ANLY-SEC-002, USER-PAM)"},
		{"replay with RULES_BUILTIN=false runs the file alone", noBuiltins, []string{"replay", "--rules", pam}, shadowEdit + "\n" + pamEdit + "\n", "",
			`"rule_id":"USER-PAM"`, "replay: 1 rules enabled (USER-PAM)"},
		{"replay ignores broker and Redis settings", map[string]string{"RABBITMQ_PORT": "abc", "REDIS_URL": "nonsense", "APP_PORT": "0"},
			[]string{"replay"}, shadowEdit + "\n", "", `"rule_id":"ANLY-SEC-002"`, ""},
		{"replay reads the detection settings", map[string]string{"RULES_FILE": pam, "ENVIRONMENT": "REPLAYED"},
			[]string{"replay"}, pamEdit + "\n", "", `"environment":"REPLAYED"`, "USER-PAM"},
		{"replay refuses no enabled rule", noBuiltins, []string{"replay", "--rules", disabled}, "", "no enabled rules", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out, logs, err := runCmd(t, tc.env, tc.stdin, tc.args...)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("error: %v\nstderr: %s", err, logs)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
			}
			if !strings.Contains(out, tc.wantOut) {
				t.Errorf("stdout = %q, want it to contain %q", out, tc.wantOut)
			}
			if !strings.Contains(logs, tc.wantLog) {
				t.Errorf("stderr = %q, want it to contain %q", logs, tc.wantLog)
			}
		})
	}
}

// Every command answers -h and --help with its usage on stdout and
// success, without doing anything.
func TestEveryCommandAnswersHelp(t *testing.T) {
	t.Parallel()
	for _, cmd := range [][]string{
		{}, {"serve"}, {"replay"}, {"rules"}, {"rules", "check"}, {"rules", "test"},
		{"version"}, {"dead-letters"}, {"dead-letters", "list"}, {"dead-letters", "redrive"},
	} {
		for _, flag := range []string{"-h", "--help"} {
			args := append(append([]string{}, cmd...), flag)
			t.Run(strings.Join(args, " "), func(t *testing.T) {
				t.Parallel()
				// A broker setting that would fail any real work.
				out, logs, err := runCmd(t, map[string]string{"RABBITMQ_PORT": "abc"}, "", args...)
				if err != nil {
					t.Fatalf("error: %v (stderr %q)", err, logs)
				}
				if !strings.HasPrefix(out, "usage: audit-log-analysis") {
					t.Errorf("stdout = %q, want the usage", out)
				}
			})
		}
	}
}

func TestFlagsMayFollowArguments(t *testing.T) {
	t.Parallel()
	input := writeRules(t, "events.jsonl", shadowEdit+"\nnot json\n")
	pam := writeRules(t, "pam.yaml", pamRule)
	out, logs, err := runCmd(t, nil, "", "replay", input, "--quiet", "--rules", pam)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs, "skipped:") || !strings.Contains(logs, "USER-PAM") || !strings.Contains(out, "ANLY-SEC-002") {
		t.Errorf("--quiet and --rules after the file were not applied:\nstdout %s\nstderr %s", out, logs)
	}
	// "--" ends the flags.
	if _, _, err := runCmd(t, nil, "", "replay", "--", "--quiet"); err == nil || !strings.Contains(err.Error(), "--quiet") {
		t.Errorf("replay -- --quiet = %v, want --quiet read as a file", err)
	}
}

func TestABadFlagIsAUsageError(t *testing.T) {
	t.Parallel()
	_, logs, err := runCmd(t, nil, "", "replay", "--frobnicate")
	if err == nil || !strings.Contains(err.Error(), "bad usage") || !strings.Contains(logs, "usage: audit-log-analysis replay") {
		t.Errorf("err = %v, stderr = %q", err, logs)
	}
}
