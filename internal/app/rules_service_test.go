package app

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/httpapi"
	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

func getRules(t *testing.T, base string) httpapi.RuleSet {
	t.Helper()
	resp, err := http.Get(base + "/rules")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var set httpapi.RuleSet
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /rules = %d", resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		t.Fatal(err)
	}
	return set
}

func ruleIDs(set httpapi.RuleSet) []string {
	var ids []string
	for _, r := range set.Rules {
		ids = append(ids, fmt.Sprintf("%s@%s:%d/%s/%v", r.ID, filepath.Base(r.File), r.Line, r.Kind, r.Enabled))
	}
	return ids
}

// A rules directory adds to the built-in rules; GET /rules lists what
// runs; a reload that would leave nothing enabled is refused and counted,
// and the running rules stay.
func TestServiceComposesRulesAndNeverRunsWithoutOne(t *testing.T) {
	t.Parallel()
	redisAddr := testenv.RedisAddr(t)
	env := serviceEnv(t, redisAddr)
	dir := t.TempDir()
	write := func(name, src string) {
		t.Helper()
		tmp := filepath.Join(dir, "."+name+".tmp")
		if err := os.WriteFile(tmp, []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	write("pam.yaml", "rules:\n  - id: USER-PAM\n    severity: HIGH\n    resource_type: FILE\n    match: {event_type: file_modified, resource: {path: [/etc/pam.d/*]}}\n")
	env["RULES_FILE"] = dir
	s := startService(t, env)
	t.Cleanup(func() { deleteKeys(t, redisAddr, s.prefix) })

	set := getRules(t, s.appURL)
	want := []string{"ANLY-SEC-001@default.yaml:6/threshold/true", "ANLY-SEC-002@default.yaml:27/match/true", "USER-PAM@pam.yaml:2/match/true"}
	if got := ruleIDs(set); !slices.Equal(got, want) || set.Enabled != 3 || len(set.SHA256) != 64 {
		t.Fatalf("GET /rules = %v (%d enabled, sha256 %q), want %v", got, set.Enabled, set.SHA256, want)
	}
	base := time.Now().UTC().Add(-time.Hour).Format(time.RFC3339)
	publish(t, s.queue,
		ev(uuidFor(1), base, "file_modified", "MODIFIED", "root", "web-01", map[string]any{"resource": "/etc/shadow"}),
		ev(uuidFor(2), base, "file_modified", "MODIFIED", "root", "web-01", map[string]any{"resource": "/etc/pam.d/sshd"}))
	var got []string
	for _, a := range decodeAlerts(t, collect(t, s.alertQueue, 2, 2*time.Second, 30*time.Second)) {
		got = append(got, a["analysis_rule"].(map[string]any)["rule_id"].(string))
	}
	if slices.Sort(got); !slices.Equal(got, []string{"ANLY-SEC-002", "USER-PAM"}) {
		t.Fatalf("alerts from rules %v, want the built-in and the user rule", got)
	}

	// Turning every rule off is refused: built-ins replaced by disabled
	// copies, the user rule disabled.
	off := "rules:\n"
	for _, id := range []string{"ANLY-SEC-001", "ANLY-SEC-002", "USER-PAM"} {
		off += "  - id: " + id + "\n    severity: HIGH\n    enabled: false\n    match: {event_type: x}\n"
	}
	write("pam.yaml", off)
	waitMetric(t, s.promURL, `audit_analysis_rules_reload_total{result="failure"}`, 1, 15*time.Second)
	if got := ruleIDs(getRules(t, s.appURL)); !slices.Equal(got, want) {
		t.Errorf("after a refused reload GET /rules = %v, want the running rules %v", got, want)
	}
	if n := metric(t, s.promURL, "audit_analysis_rules_loaded"); n != 3 {
		t.Errorf("audit_analysis_rules_loaded = %v, want 3", n)
	}
	if !strings.Contains(s.logs.String(), "no enabled rules") {
		t.Error("the refused reload does not say why")
	}

	// A second file joins the first; the log names what changed.
	write("pam.yaml", "rules:\n  - id: USER-PAM\n    severity: LOW\n    resource_type: FILE\n    match: {event_type: file_modified, resource: {path: [/etc/pam.d/*]}}\n")
	write("admin.yaml", "rules:\n  - id: USER-ADMIN\n    severity: HIGH\n    match: {user_id: admin}\n")
	waitMetric(t, s.promURL, `audit_analysis_rules_reload_total{result="success"}`, 1, 15*time.Second)
	if got := ruleIDs(getRules(t, s.appURL)); !slices.Contains(got, "USER-ADMIN@admin.yaml:2/match/true") {
		t.Errorf("after reload GET /rules = %v, want USER-ADMIN too", got)
	}
	var reloaded map[string]any
	for _, l := range strings.Split(s.logs.String(), "\n") {
		if strings.Contains(l, `"msg":"rules reloaded"`) {
			_ = json.Unmarshal([]byte(l), &reloaded)
		}
	}
	if fmt.Sprint(reloaded["added"], reloaded["changed"], reloaded["removed"]) != "[USER-ADMIN] [USER-PAM] []" {
		t.Errorf("reload log = %v, want added [USER-ADMIN] changed [USER-PAM] removed []", reloaded)
	}
}
