// Package alert owns the alert payload the platform's notification service
// stores: its JSON shape (kept from the Python service), deterministic ids,
// and the limits of the table it lands in (UUID ids, an IP address or null,
// column lengths, no NUL characters, raw_event_data an object).
package alert

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/audit-platform/audit-log-analysis/internal/event"
)

// Column limits of the notification service's alerts table, in characters.
const (
	LimitText  = 255 // names, ids, hostnames
	LimitShort = 50  // alert_type, severity, actor_type, resource_type
	// LimitDescription bounds the TEXT columns built from event values.
	LimitDescription = 4096
)

// TruncationMarker ends a value shortened to fit its column; the full value
// stays in raw_event_data.
const TruncationMarker = "…[truncated]"

// Alert is the payload published to the alert queue.
type Alert struct {
	AlertID           string           `json:"alert_id"`
	Timestamp         string           `json:"timestamp"`
	AlertName         string           `json:"alert_name"`
	AlertType         string           `json:"alert_type"`
	Severity          string           `json:"severity"`
	Description       string           `json:"description"`
	SourceServiceName string           `json:"source_service_name"`
	AnalysisRule      AnalysisRule     `json:"analysis_rule"`
	TriggeredBy       TriggeredBy      `json:"triggered_by"`
	ImpactedResource  ImpactedResource `json:"impacted_resource"`
	ActionObserved    string           `json:"action_observed"`
	CorrelationID     string           `json:"correlation_id"`
	RawEventData      json.RawMessage  `json:"raw_event_data"`
	Metadata          Metadata         `json:"metadata"`

	// Stateful rules' alerts only: thresholds and sequences have a window
	// and a suppressed count, new-value rules neither.
	Window          *Window           `json:"window,omitempty"`
	Group           map[string]string `json:"group,omitempty"`
	EventIDs        []string          `json:"event_ids,omitempty"`
	SuppressedSince *int              `json:"suppressed_count,omitempty"`
	// Sequence alerts only.
	Steps []Step `json:"steps,omitempty"`
	// New-value alerts only.
	NewValue *NewValue `json:"new_value,omitempty"`
}

// Step is one step of a sequence alert: how many events satisfied it, and
// the first and last of their times.
type Step struct {
	Step  int    `json:"step"`
	Count int    `json:"count"`
	First string `json:"first"`
	Last  string `json:"last"`
}

// NewValue is what a new-value alert saw: the value (of each field, for a
// combination) and how many values the group knows, this one included.
type NewValue struct {
	Values map[string]string `json:"values"`
	Known  int               `json:"known_values"`
}

// AnalysisRule names the rule that fired.
type AnalysisRule struct {
	RuleID          string `json:"rule_id"`
	RuleName        string `json:"rule_name"`
	RuleDescription string `json:"rule_description"`
}

// TriggeredBy is the actor. ClientIP is a valid address or nil (JSON null).
type TriggeredBy struct {
	ActorType string  `json:"actor_type"`
	ActorID   string  `json:"actor_id"`
	ClientIP  *string `json:"client_ip"`
}

// ImpactedResource is what the alert is about.
type ImpactedResource struct {
	ResourceType   string `json:"resource_type"`
	ResourceID     string `json:"resource_id"`
	ServerHostname string `json:"server_hostname"`
}

// Metadata carries the rule's guidance.
type Metadata struct {
	Tags                []string `json:"tags"`
	Environment         string   `json:"environment"`
	RemediationGuidance string   `json:"remediation_guidance"`
	PlaybookURL         string   `json:"playbook_url"`
}

// Window describes the burst behind a threshold alert.
type Window struct {
	Start     string  `json:"start"`
	End       string  `json:"end"`
	Seconds   float64 `json:"seconds"`
	Count     int     `json:"count"`
	Threshold int     `json:"threshold"`
}

// Rule is what a rule contributes to its alerts.
type Rule struct {
	ID, Name, Description          string
	AlertName, AlertType, Severity string
	ActionObserved, ResourceType   string
	ActorType                      string
	Tags                           []string
	Remediation, PlaybookURL       string
}

// Burst is what a stateful rule contributes: the group and its window.
type Burst struct {
	// GroupKey identifies the group (rule shape and values) for the id.
	GroupKey   string
	Group      map[string]string
	Start, End time.Time
	Window     time.Duration
	Count      int
	Threshold  int
	// FirstEventID and LastEventID are the window's first and last
	// events: with the rule and group they identify the alert.
	FirstEventID string
	LastEventID  string
	EventIDs     []string
	Suppressed   int
	// Steps is set for a sequence, NewValue for a new-value rule (which
	// has no window).
	Steps    []StepTimes
	NewValue *NewValue
}

// StepTimes is one step of a sequence.
type StepTimes struct {
	Count       int
	First, Last time.Time
}

// Input is everything an alert is built from.
type Input struct {
	Rule        Rule
	Description string
	Event       *event.Event
	// Burst is nil for rules without a threshold.
	Burst       *Burst
	Environment string
	// Now is the alert's timestamp: arrival time in the service, event
	// time in replay.
	Now time.Time
}

// Build assembles an alert and makes it fit the notification service's
// table.
func Build(in Input) Alert {
	ev := in.Event
	r := in.Rule
	a := Alert{
		AlertID:           ID(r.ID, in.Burst, ev),
		Timestamp:         in.Now.UTC().Format(time.RFC3339),
		AlertName:         r.AlertName,
		AlertType:         r.AlertType,
		Severity:          r.Severity,
		Description:       in.Description,
		SourceServiceName: orDefault(ev.SourceService, "unknown-event-source"),
		AnalysisRule:      AnalysisRule{RuleID: r.ID, RuleName: r.Name, RuleDescription: r.Description},
		TriggeredBy: TriggeredBy{
			ActorType: orDefault(r.ActorType, "USER"),
			ActorID:   orDefault(ev.UserID, "unknown"),
			ClientIP:  ClientIP(ev.ClientIP),
		},
		ImpactedResource: ImpactedResource{ResourceType: r.ResourceType, ServerHostname: orDefault(ev.ServerHostname, "unknown")},
		ActionObserved:   r.ActionObserved,
		CorrelationID:    ev.Key,
		RawEventData:     RawEventData(ev.Raw),
		Metadata: Metadata{
			Tags:                nonNil(r.Tags),
			Environment:         in.Environment,
			RemediationGuidance: r.Remediation,
			PlaybookURL:         r.PlaybookURL,
		},
	}
	if r.ResourceType == "FILE" {
		a.ImpactedResource.ResourceID = ev.Resource
	} else {
		a.ImpactedResource.ResourceID = a.ImpactedResource.ServerHostname
	}
	if b := in.Burst; b != nil {
		a.Group = b.Group
		a.EventIDs = b.EventIDs
		if b.NewValue != nil {
			nv := *b.NewValue
			a.NewValue = &nv
		} else {
			a.Window = &Window{
				Start:     b.Start.UTC().Format(time.RFC3339Nano),
				End:       b.End.UTC().Format(time.RFC3339Nano),
				Seconds:   b.Window.Seconds(),
				Count:     b.Count,
				Threshold: b.Threshold,
			}
			n := b.Suppressed
			a.SuppressedSince = &n
		}
		for i, st := range b.Steps {
			a.Steps = append(a.Steps, Step{
				Step: i + 1, Count: st.Count,
				First: st.First.UTC().Format(time.RFC3339Nano), Last: st.Last.UTC().Format(time.RFC3339Nano),
			})
		}
	}
	fit(&a)
	return a
}

// ID is the alert id: a version 5 UUID of the rule and the window's group
// and first and last events, or of the rule and the event for stateless
// rules. The same events give the same id, so a redelivered event that
// fires again is dropped by the notification service's primary key.
func ID(ruleID string, b *Burst, ev *event.Event) string {
	var buf bytes.Buffer
	buf.WriteString("alert\x00")
	buf.WriteString(ruleID)
	buf.WriteByte(0)
	if b != nil {
		buf.WriteString(b.GroupKey)
		buf.WriteByte(0)
		buf.WriteString(b.FirstEventID)
		buf.WriteByte(0)
		buf.WriteString(b.LastEventID)
	} else {
		buf.WriteString(ev.Key)
	}
	return uuid.NewSHA1(event.Namespace, buf.Bytes()).String()
}

// ClientIP returns the address in canonical form, or nil when s is not an
// IP address (the table's INET column refuses anything else). A zone
// (fe80::1%eth0) is dropped: INET has no place for it.
func ClientIP(s string) *string {
	addr, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return nil
	}
	out := addr.WithZone("").String()
	return &out
}

// maxRawDepth bounds the nesting kept as JSON in raw_event_data; deeper
// values are kept as their JSON text. Python's json, which the notification
// service stores alerts with, fails near a depth of 1000.
const maxRawDepth = 64

// maxNumberLen is the longest number literal kept as a number: Python
// refuses to read integers of more than 4300 digits.
const maxNumberLen = 4300

// RawEventData returns the body for raw_event_data. The body is kept as
// received unless the notification service could not store it: NUL
// characters and lone surrogates (which PostgreSQL refuses) become U+FFFD,
// numbers Python reads as infinity or refuses become strings, and values
// nested deeper than maxRawDepth become their JSON text.
func RawEventData(body []byte) json.RawMessage {
	body = bytes.TrimSpace(body)
	if !needsCleaning(body) {
		return body
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return body
	}
	out, err := json.Marshal(cleanValue(v, 0))
	if err != nil {
		return body
	}
	return out
}

// needsCleaning scans valid JSON for what RawEventData must change: \u
// escapes (they may hide NUL or a lone surrogate), deep nesting and numbers
// that are not storable.
func needsCleaning(b []byte) bool {
	depth := 0
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			for i++; i < len(b) && b[i] != '"'; i++ {
				if b[i] == '\\' {
					if i+1 < len(b) && b[i+1] == 'u' {
						return true
					}
					i++
				}
			}
		case c == '{' || c == '[':
			depth++
			if depth > maxRawDepth {
				return true
			}
		case c == '}' || c == ']':
			depth--
		case c == '-' || (c >= '0' && c <= '9'):
			j := i
			for j < len(b) && strings.IndexByte("+-.eE0123456789", b[j]) >= 0 {
				j++
			}
			if !storableNumber(string(b[i:j])) {
				return true
			}
			i = j - 1
		}
	}
	return false
}

func storableNumber(n string) bool {
	if len(n) > maxNumberLen {
		return false
	}
	if strings.ContainsAny(n, ".eE") {
		f, err := strconv.ParseFloat(n, 64)
		return err == nil && !math.IsInf(f, 0)
	}
	return true
}

func cleanValue(v any, depth int) any {
	switch x := v.(type) {
	case string:
		return clean(x)
	case json.Number:
		if !storableNumber(string(x)) {
			return string(x)
		}
		return x
	case map[string]any:
		if depth >= maxRawDepth {
			return deepText(x)
		}
		m := make(map[string]any, len(x))
		for k, val := range x {
			m[clean(k)] = cleanValue(val, depth+1)
		}
		return m
	case []any:
		if depth >= maxRawDepth {
			return deepText(x)
		}
		for i := range x {
			x[i] = cleanValue(x[i], depth+1)
		}
		return x
	}
	return v
}

// deepText is a value too deep to keep as JSON, as its JSON text.
func deepText(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return clean(string(b))
}

// clean replaces NUL, which PostgreSQL text cannot hold.
func clean(s string) string {
	if strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ReplaceAll(s, "\x00", "\uFFFD")
}

// Shorten cuts s to at most limit characters, ending with the marker when
// it had to cut.
func Shorten(s string, limit int) string {
	s = clean(s)
	if utf8.RuneCountInString(s) <= limit {
		return s
	}
	keep := limit - utf8.RuneCountInString(TruncationMarker)
	marker := TruncationMarker
	if keep < 1 {
		keep, marker = limit, ""
	}
	i := 0
	for n := 0; n < keep; n++ {
		_, size := utf8.DecodeRuneInString(s[i:])
		i += size
	}
	return s[:i] + marker
}

// fit applies the column limits and removes NUL from every string.
func fit(a *Alert) {
	for _, f := range []struct {
		s     *string
		limit int
	}{
		{&a.AlertName, LimitText}, {&a.AlertType, LimitShort}, {&a.Severity, LimitShort},
		{&a.SourceServiceName, LimitText}, {&a.AnalysisRule.RuleID, LimitText}, {&a.AnalysisRule.RuleName, LimitText},
		{&a.TriggeredBy.ActorType, LimitShort}, {&a.TriggeredBy.ActorID, LimitText},
		{&a.ImpactedResource.ResourceType, LimitShort}, {&a.ImpactedResource.ResourceID, LimitText},
		{&a.ImpactedResource.ServerHostname, LimitText}, {&a.ActionObserved, LimitText},
	} {
		*f.s = Shorten(*f.s, f.limit)
	}
	// Description and rule_description are TEXT; a bound keeps one
	// oversized field from making an alert of megabytes.
	a.Description = Shorten(a.Description, LimitDescription)
	a.AnalysisRule.RuleDescription = Shorten(a.AnalysisRule.RuleDescription, LimitDescription)
	a.Metadata.Environment = clean(a.Metadata.Environment)
	if a.Group != nil {
		g := make(map[string]string, len(a.Group))
		for k, v := range a.Group {
			g[Shorten(k, LimitText)] = Shorten(v, LimitText)
		}
		a.Group = g
	}
	if a.EventIDs != nil {
		ids := make([]string, len(a.EventIDs))
		for i, id := range a.EventIDs {
			ids[i] = clean(id)
		}
		a.EventIDs = ids
	}
	if a.NewValue != nil {
		values := make(map[string]string, len(a.NewValue.Values))
		for k, v := range a.NewValue.Values {
			values[Shorten(k, LimitText)] = Shorten(v, LimitText)
		}
		a.NewValue.Values = values
	}
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// Marshal encodes an alert. It cannot fail for values Build returns; the
// error is for callers that build alerts by hand.
func Marshal(a Alert) ([]byte, error) {
	b, err := json.Marshal(a)
	if err != nil {
		return nil, fmt.Errorf("encode alert %s: %w", a.AlertID, err)
	}
	return b, nil
}
