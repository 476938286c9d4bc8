package rules

import (
	"os"
	"reflect"
	"strings"
	"testing"

	rulefiles "github.com/audit-platform/audit-log-analysis/rules"
)

func TestLintWarnsAboutUndocumentedDottedPaths(t *testing.T) {
	t.Parallel()
	src := `rules:
  - id: TYPO
    severity: HIGH
    alert_description: "ran {{details.comand}} from {{client_ip}}"
    match:
      event_type: process_started
      detials.command: {contains: curl}
      details.protocol: ssh
    threshold:
      count: 2
      window: 1m
      group_by: [user_id, details.ip_adress]
      distinct: metadata.request_id
`
	if _, err := Parse("typo.yaml", []byte(src)); err != nil {
		t.Fatalf("the file must be valid for the test to mean anything: %v", err)
	}
	got := Lint("typo.yaml", []byte(src))
	want := []string{
		`typo.yaml:4: rule "TYPO": details.comand is not a documented field or details key (docs/rules.md); did you mean details.command?`,
		`typo.yaml:7: rule "TYPO": detials.command is not a documented field or details key (docs/rules.md); did you mean details.command?`,
		`typo.yaml:12: rule "TYPO": details.ip_adress is not a documented field or details key (docs/rules.md); did you mean details.ip_address?`,
		`typo.yaml:13: rule "TYPO": metadata.request_id is not a documented field or details key (docs/rules.md)`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Lint =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestTheShippedRulesHaveNoLintWarnings(t *testing.T) {
	t.Parallel()
	if w := Lint(rulefiles.DefaultName, rulefiles.Default); len(w) > 0 {
		t.Errorf("built-in rules: %v", w)
	}
	examples, err := os.ReadFile("../../rules/examples.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if w := Lint("examples.yaml", examples); len(w) > 0 {
		t.Errorf("example rules: %v", w)
	}
}

func TestEditDistanceCountsATranspositionOnce(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		a, b string
		want int
	}{{"detials", "details", 1}, {"", "abc", 3}, {"kitten", "sitting", 3}, {"same", "same", 0}} {
		if got := editDistance(tc.a, tc.b); got != tc.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}
