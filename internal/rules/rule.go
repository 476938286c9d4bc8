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
	"github.com/audit-platform/audit-log-analysis/internal/state"
)

// Rule is one compiled detection rule.
type Rule struct {
	Alert alert.Rule
	// Category labels the rule's alerts in metrics (the Python service's
	// alert_type label: failed_login_burst, sensitive_file_modified).
	Category string
	Enabled  bool
	// Mode says where its alerts go.
	Mode Mode
	// Match holds the conditions; all must hold.
	Match []Condition
	// At most one of Threshold, Sequence and NewValue is set; with none,
	// every matching event alerts.
	Threshold *Threshold
	Sequence  *Sequence
	NewValue  *NewValue
	// Suppress is how long after an alerted window's last event further
	// completions for the same group are suppressed (thresholds and
	// sequences).
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

// Mode is where a rule's alerts go.
type Mode string

const (
	// Live alerts go to the alert queue.
	Live Mode = "live"
	// Shadow alerts are counted and logged, and published to the shadow
	// queue when there is one, never to the alert queue: a rule can be
	// tried on live traffic without paging anyone.
	Shadow Mode = "shadow"
)

// Sequence makes a rule alert when its steps happen in order, in event
// time, within a window, per group.
type Sequence struct {
	Steps   []Step
	Window  time.Duration
	GroupBy []string
	steps   []state.Step
	shape   []byte
}

// Step is one step of a sequence: Count events matching its conditions, or
// Count distinct values of the field Distinct.
type Step struct {
	Match    []Condition
	Count    int
	Distinct string
}

// NewValue makes a rule alert when a group sees a value (of Fields,
// together) it has not seen within History, once the group's first event
// is at least Learn old.
type NewValue struct {
	Fields    []string
	GroupBy   []string
	History   time.Duration
	Learn     time.Duration
	MaxValues int
	shape     []byte
}

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

// digest hashes a shape and values into a fixed-length lowercase hex
// string: a store key no value can collide with or choose a Redis Cluster
// slot by, or a distinct value of bounded size.
func digest(shape []byte, values []string) string {
	h := sha256.New()
	h.Write(shape)
	var n [8]byte
	for _, v := range values {
		binary.BigEndian.PutUint64(n[:], uint64(len(v)))
		h.Write(n[:])
		h.Write([]byte(v))
	}
	var sum [sha256.Size]byte
	return hex.EncodeToString(h.Sum(sum[:0])[:16])
}

// shapeOf encodes the parts that identify a rule's state: a reload that
// keeps them keeps the state.
func shapeOf(parts ...string) []byte {
	var b strings.Builder
	for _, part := range parts {
		b.WriteString(strconv.Itoa(len(part)))
		b.WriteByte(':')
		b.WriteString(part)
	}
	return []byte(b.String())
}

func (t *Threshold) computeShape(ruleID string) {
	t.shape = shapeOf(append([]string{ruleID, t.Distinct, strconv.FormatInt(int64(t.Window), 10)}, t.GroupBy...)...)
}

func (s *Sequence) computeShape(ruleID string) {
	parts := []string{"sequence", ruleID, strconv.FormatInt(int64(s.Window), 10), strconv.Itoa(len(s.Steps))}
	s.steps = make([]state.Step, len(s.Steps))
	for i, st := range s.Steps {
		parts = append(parts, st.Distinct)
		s.steps[i] = state.Step{Count: st.Count, Distinct: st.Distinct != ""}
	}
	s.shape = shapeOf(append(parts, s.GroupBy...)...)
}

func (n *NewValue) computeShape(ruleID string) {
	parts := append([]string{"new_value", ruleID, strconv.Itoa(len(n.Fields))}, n.Fields...)
	n.shape = shapeOf(append(parts, n.GroupBy...)...)
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
