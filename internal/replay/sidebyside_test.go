package replay

import (
	"strings"
	"testing"

	"github.com/audit-platform/audit-log-analysis/internal/alert"
)

func TestAFailedFixtureShowsExpectedAndReceivedAlertsSideBySide(t *testing.T) {
	t.Parallel()
	three, two := 3, 2
	want := []Expectation{{Rule: "ANLY-SEC-001", Group: map[string]string{"user_id": "bob"}, Count: &three}}
	got := []alert.Alert{
		{AnalysisRule: alert.AnalysisRule{RuleID: "ANLY-SEC-001"}, Group: map[string]string{"user_id": "bob"}, Window: &alert.Window{Count: 2}, SuppressedSince: &two},
		{AnalysisRule: alert.AnalysisRule{RuleID: "ANLY-SEC-002"}, ImpactedResource: alert.ImpactedResource{ResourceID: "/etc/shadow"}, CorrelationID: "c1"},
	}
	wantLines := []string{
		"expected                received",
		"- rule: ANLY-SEC-001  | - rule: ANLY-SEC-001",
		"  group:              |   group:",
		"    user_id: bob      |     user_id: bob",
		"  count: 3            ≠   count: 2",
		"                      ≠ - rule: ANLY-SEC-002",
		"                      ≠   resource: /etc/shadow",
		"                      ≠   correlation_id: c1",
	}
	if out := sideBySide(want, got, nil); strings.Join(out, "\n") != strings.Join(wantLines, "\n") {
		t.Errorf("sideBySide =\n%s\nwant\n%s", strings.Join(out, "\n"), strings.Join(wantLines, "\n"))
	}
}
