package rules

import (
	"strings"
	"time"
)

// The built-in rules the Python service's environment variables tune.
const (
	FailedLoginRuleID   = "ANLY-SEC-001"
	SensitiveFileRuleID = "ANLY-SEC-002"
)

// Overrides are the Python service's tuning variables. Zero values leave a
// rule as its file says.
type Overrides struct {
	FailedLoginThreshold int           // FAILED_LOGIN_THRESHOLD
	FailedLoginWindow    time.Duration // FAILED_LOGIN_WINDOW_SECONDS
	SensitiveFiles       []string      // SENSITIVE_FILES
}

// WithOverrides returns a copy of the set with the overrides applied to the
// built-in rules it contains, and a line per override applied.
func (s *Set) WithOverrides(o Overrides) (*Set, []string) {
	out := *s
	out.Rules = make([]*Rule, len(s.Rules))
	var applied []string
	for i, r := range s.Rules {
		c := *r
		switch {
		case c.Alert.ID == FailedLoginRuleID && c.Threshold != nil && (o.FailedLoginThreshold > 0 || o.FailedLoginWindow > 0):
			th := *c.Threshold
			if o.FailedLoginThreshold > 0 {
				th.Count = o.FailedLoginThreshold
				applied = append(applied, FailedLoginRuleID+" threshold from FAILED_LOGIN_THRESHOLD")
			}
			if o.FailedLoginWindow > 0 {
				if c.Suppress == th.Window {
					c.Suppress = o.FailedLoginWindow
				}
				th.Window = o.FailedLoginWindow
				applied = append(applied, FailedLoginRuleID+" window from FAILED_LOGIN_WINDOW_SECONDS")
			}
			th.computeShape(c.Alert.ID)
			c.Threshold = &th
		case c.Alert.ID == SensitiveFileRuleID && len(o.SensitiveFiles) > 0:
			c.Match = append([]Condition(nil), c.Match...)
			for j := range c.Match {
				if c.Match[j].Field != "resource" {
					continue
				}
				cond := Condition{Field: "resource", Op: OpPath}
				for _, f := range o.SensitiveFiles {
					cond.Values = append(cond.Values, escapeGlob(f))
				}
				if err := cond.compile(); err == nil {
					c.Match[j] = cond
					applied = append(applied, SensitiveFileRuleID+" files from SENSITIVE_FILES")
				}
			}
		}
		out.Rules[i] = &c
	}
	return &out, applied
}

// escapeGlob makes a literal path match only itself.
func escapeGlob(p string) string {
	r := strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`)
	return r.Replace(p)
}
