// Package rules owns detection rules: the rule model, loading and validating
// rule files, matching events against conditions, and the engine that turns
// a batch of events into alerts with the help of a state store.
package rules

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"strconv"
	"strings"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/alert"
	"github.com/audit-platform/audit-log-analysis/internal/event"
)

// Rule is one compiled detection rule.
type Rule struct {
	Alert alert.Rule
	// Category labels the rule's alerts in metrics (the Python service's
	// alert_type label: failed_login_burst, sensitive_file_modified).
	Category string
	Enabled  bool
	// Match holds the conditions; all must hold.
	Match []Condition
	// Threshold is nil when every matching event alerts.
	Threshold *Threshold
	// Suppress is how close to an alerted window further matches of the
	// same group are suppressed.
	Suppress time.Duration

	description      template
	alertDescription template
	// Line is where the rule starts in its file; File names the file
	// (set by ParseFile and Compose).
	Line int
	File string
	// Digest identifies the rule's definition, so that a reload can tell
	// a changed rule from an unchanged one.
	Digest string
}

// ID returns the rule id.
func (r *Rule) ID() string { return r.Alert.ID }

// Threshold makes a rule count matching events per group over a window of
// event time.
type Threshold struct {
	Count    int
	Window   time.Duration
	GroupBy  []string
	Distinct string
	// shape identifies the rule's state: a reload that keeps the id,
	// group-by, window and distinct field keeps the counters.
	shape []byte
}

// Matches reports whether every condition holds for ev.
func (r *Rule) Matches(ev *event.Event) bool {
	for i := range r.Match {
		if !r.Match[i].Matches(ev) {
			return false
		}
	}
	return true
}

// groupKey hashes the rule's shape and the group's values into the store
// key: fixed length, lowercase hex, so no value can collide with another
// group or choose a Redis Cluster slot.
func (t *Threshold) groupKey(values []string) string {
	h := sha256.New()
	h.Write(t.shape)
	var n [8]byte
	for _, v := range values {
		binary.BigEndian.PutUint64(n[:], uint64(len(v)))
		h.Write(n[:])
		h.Write([]byte(v))
	}
	sum := h.Sum(nil)
	return hex.EncodeToString(sum[:16])
}

func (t *Threshold) computeShape(ruleID string) {
	var b strings.Builder
	for _, part := range append([]string{ruleID, t.Distinct, strconv.FormatInt(int64(t.Window), 10)}, t.GroupBy...) {
		b.WriteString(strconv.Itoa(len(part)))
		b.WriteByte(':')
		b.WriteString(part)
	}
	t.shape = []byte(b.String())
}

// Set is an immutable set of rules, swapped whole on reload.
type Set struct {
	Rules []*Rule
	// Source names where the rules came from; Hash is the SHA-256 of the
	// file's bytes.
	Source string
	Hash   string
	// Warnings are Lint's findings for the file (set by ParseFile).
	Warnings []string
}

// Enabled counts the enabled rules.
func (s *Set) Enabled() int {
	n := 0
	for _, r := range s.Rules {
		if r.Enabled {
			n++
		}
	}
	return n
}

// Rule returns the rule with the given id, or nil.
func (s *Set) Rule(id string) *Rule {
	for _, r := range s.Rules {
		if r.Alert.ID == id {
			return r
		}
	}
	return nil
}
