package rules

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	rulefiles "github.com/audit-platform/audit-log-analysis/rules"
)

func builtin(t *testing.T) *Set {
	t.Helper()
	set, err := ParseFile(rulefiles.DefaultName, rulefiles.Default)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

func writeFile(t *testing.T, dir, name, src string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func ids(s *Set) []string {
	var out []string
	for _, r := range s.Rules {
		out = append(out, r.ID()+"@"+filepath.Base(r.File))
	}
	return out
}

// rule is a rules file with one rule.
func rule(id string, enabled bool) string {
	return fmt.Sprintf("rules:\n  - id: %s\n    severity: HIGH\n    enabled: %t\n    match: {event_type: x}\n", id, enabled)
}

func TestComposeAddsUserRulesToTheBuiltIns(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a := writeFile(t, dir, "a.yaml", rule("USER-1", true))
	files, err := LoadPaths([]string{a})
	if err != nil {
		t.Fatal(err)
	}
	set, replaced, err := Compose(builtin(t), files)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ids(set), []string{"ANLY-SEC-001@default.yaml", "ANLY-SEC-002@default.yaml", "USER-1@a.yaml"}; !reflect.DeepEqual(got, want) {
		t.Errorf("rules = %v, want %v", got, want)
	}
	if len(replaced) != 0 {
		t.Errorf("replaced = %v, want none", replaced)
	}
	if set.Source != rulefiles.DefaultName+","+a {
		t.Errorf("Source = %q", set.Source)
	}
	if r := set.Rule("USER-1"); r.Line != 2 || r.Digest == "" {
		t.Errorf("USER-1 line %d digest %q", r.Line, r.Digest)
	}
}

func TestAUserRuleWithABuiltInIDReplacesItInPlace(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a := writeFile(t, dir, "a.yaml", rule("ANLY-SEC-001", false)+"  - id: USER-2\n    severity: LOW\n    match: {event_type: y}\n")
	files, err := LoadPaths([]string{a})
	if err != nil {
		t.Fatal(err)
	}
	set, replaced, err := Compose(builtin(t), files)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ids(set), []string{"ANLY-SEC-001@a.yaml", "ANLY-SEC-002@default.yaml", "USER-2@a.yaml"}; !reflect.DeepEqual(got, want) {
		t.Errorf("rules = %v, want %v", got, want)
	}
	if set.Rule("ANLY-SEC-001").Enabled || set.Enabled() != 2 {
		t.Errorf("ANLY-SEC-001 enabled %v, %d enabled; want it disabled by the user file", set.Rule("ANLY-SEC-001").Enabled, set.Enabled())
	}
	if len(replaced) != 1 || !strings.Contains(replaced[0], "ANLY-SEC-001 ("+rulefiles.DefaultName+") replaced by "+a+":2") {
		t.Errorf("replaced = %v", replaced)
	}
}

func TestComposeRefusesOneIDInTwoUserFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a := writeFile(t, dir, "a.yaml", rule("DUP", true))
	b := writeFile(t, dir, "b.yaml", "\n"+rule("DUP", true))
	files, err := LoadPaths([]string{a, b})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = Compose(nil, files)
	if err == nil || !strings.Contains(err.Error(), b+`:3: rule "DUP": also defined at `+a+":2") {
		t.Errorf("Compose error = %v", err)
	}
}

func TestZeroEnabledRulesIsAnError(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	off := writeFile(t, dir, "off.yaml", rule("OFF", false))
	files, err := LoadPaths([]string{off})
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		builtin *Set
		files   []*Set
		want    string
	}{
		"no built-ins and only disabled rules": {nil, files, "all 1 rules disabled in " + off},
		"nothing at all":                       {nil, nil, "no rules in nothing"},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := Compose(tc.builtin, tc.files)
			if !errors.Is(err, ErrNoEnabledRules) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Compose error = %v, want ErrNoEnabledRules mentioning %q", err, tc.want)
			}
		})
	}
	// Beside the built-in rules, a file of disabled rules changes nothing:
	// a mistake, not a wish.
	if _, _, err := Compose(builtin(t), files); err == nil || !strings.Contains(err.Error(), off+": every rule in the file is disabled and none replaces a built-in rule") {
		t.Errorf("built-ins plus a file of disabled rules: %v", err)
	}
}

func TestAFileWithoutRulesIsAnError(t *testing.T) {
	t.Parallel()
	empty := writeFile(t, t.TempDir(), "empty.yaml", "rules: []\n")
	_, err := LoadPaths([]string{empty})
	if err == nil || !strings.Contains(err.Error(), empty+": the file defines no rules") {
		t.Errorf("LoadPaths error = %v", err)
	}
}

func TestADirectoryStandsForItsYAMLFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeFile(t, dir, "b.yml", rule("B", true))
	writeFile(t, dir, "a.yaml", rule("A", true))
	writeFile(t, dir, "notes.txt", "not rules")
	writeFile(t, dir, ".hidden.yaml", "not: rules")
	writeFile(t, dir, "sub/c.yaml", rule("C", true))
	// What a mounted ConfigMap looks like: the key is a link into a
	// hidden directory.
	writeFile(t, dir, "..2026_01_01/d.yaml", rule("D", true))
	if err := os.Symlink("..2026_01_01/d.yaml", filepath.Join(dir, "d.yaml")); err != nil {
		t.Fatal(err)
	}
	files, err := ExpandPaths([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yml"), filepath.Join(dir, "d.yaml")}
	if !reflect.DeepEqual(files, want) {
		t.Errorf("ExpandPaths = %v, want %v", files, want)
	}
	if files, err := ExpandPaths([]string{t.TempDir()}); err != nil || len(files) != 0 {
		t.Errorf("an empty directory = %v, %v; want nothing and no error", files, err)
	}
	if _, err := ExpandPaths([]string{filepath.Join(dir, "absent")}); err == nil {
		t.Error("a missing path is not an error")
	}
}

func TestLoadPathsReportsEveryFilesProblems(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a := writeFile(t, dir, "a.yaml", "rules:\n  - id: A\n    match: {event_type: x}\n")
	b := writeFile(t, dir, "b.yaml", "rules:\n  - id: B\n    severity: HIGH\n    match: {nope: {like: x}}\n")
	_, err := LoadPaths([]string{a, b})
	for _, want := range []string{a + `:2: rule "A": missing severity`, b + `:4: rule "B"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("LoadPaths error = %v, want it to contain %q", err, want)
		}
	}
}

func TestDiffNamesAddedRemovedAndChangedRules(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	load := func(src string) *Set {
		t.Helper()
		f := writeFile(t, dir, "r.yaml", src)
		files, err := LoadPaths([]string{f})
		if err != nil {
			t.Fatal(err)
		}
		set, _, err := Compose(nil, files)
		if err != nil {
			t.Fatal(err)
		}
		return set
	}
	old := load(rule("KEEP", true) + "  - id: GONE\n    severity: LOW\n    match: {event_type: y}\n  - id: EDIT\n    severity: LOW\n    match: {event_type: z}\n")
	cur := load("# a comment changes nothing\n" + rule("KEEP", true) + "  - id: EDIT\n    severity: HIGH\n    match: {event_type: z}\n  - id: NEW\n    severity: LOW\n    match: {event_type: n}\n")
	got := Diff(old, cur)
	want := Change{Added: []string{"NEW"}, Removed: []string{"GONE"}, Changed: []string{"EDIT"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Diff = %+v, want %+v", got, want)
	}
	if d := Diff(cur, cur); !d.Empty() || d.Removed == nil {
		t.Error("a set differs from itself")
	}
	if old.Hash == cur.Hash {
		t.Error("different files give the same hash")
	}
}
