// Package event owns the audit event: decoding a message body into a typed
// event, the field fallbacks producers disagree on, timestamps, canonical
// file paths and the event's idempotency id.
package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"path"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/google/uuid"
)

// Namespace is the UUID namespace of every id this service derives
// (version 5 UUIDs): event keys and alert ids.
var Namespace = uuid.MustParse("5558cf6c-9883-43cf-9c9b-c5d7707cd092")

// MaxBodyBytes is the default limit on a message body.
const MaxBodyBytes = 1 << 20

// Event is one audit event. The normalised fields hold what producers send
// under different names; Raw keeps the bytes as received.
type Event struct {
	// ID is event_id as received ("" when absent).
	ID string
	// Key is the event's idempotency id, always a UUID: ID itself when it
	// is one, otherwise a version 5 UUID derived from ID, or from the body
	// when there is no ID.
	Key string
	// Timestamp is the event time; zero when the event has none, or one
	// that could not be read (then TimestampInvalid is set).
	Timestamp        time.Time
	TimestampInvalid bool

	SourceService  string
	ServerHostname string
	EventType      string
	Severity       string
	UserID         string
	ActionResult   string
	// Resource is the top-level resource, else details.resource.
	Resource string
	// ClientIP is the top-level client_ip, else details.ip_address, as
	// sent (not validated: see alert for what is stored).
	ClientIP string

	// Raw is the message body.
	Raw []byte

	// text is the body, trimmed, as a string sharing Raw's memory: every
	// string field, key and member is a substring of it, so decoding
	// copies nothing.
	text    string
	top     object
	details object
	// members backs top's and details' members for bodies of up to 16
	// in all, which saves their allocations.
	members [16]member
}

// Reason classifies why a body can never become an event. The values are
// bounded: they label a metric.
type Reason string

// The reasons a body is rejected.
const (
	ReasonTooLarge    Reason = "too_large"
	ReasonEmpty       Reason = "empty"
	ReasonInvalidUTF8 Reason = "invalid_utf8"
	ReasonInvalidJSON Reason = "invalid_json"
	ReasonNotObject   Reason = "not_object"
	ReasonWrongType   Reason = "wrong_type"
	// ReasonUnprocessable is not a decoding failure: the event decoded,
	// but the state store refuses what the rules make of it. It is there
	// so that such an event is dead-lettered instead of holding the queue.
	ReasonUnprocessable Reason = "unprocessable"
	// ReasonRedeliveryLimit is not a decoding failure either: the broker
	// delivered the message more often than the limit allows, so handling
	// it keeps failing in a way nothing in the process can catch (it
	// crashes or kills the process). It is dead-lettered unread.
	ReasonRedeliveryLimit Reason = "redelivery_limit"
)

// Reasons lists every Reason, for pre-creating metric series.
var Reasons = []Reason{ReasonTooLarge, ReasonEmpty, ReasonInvalidUTF8, ReasonInvalidJSON, ReasonNotObject, ReasonWrongType, ReasonUnprocessable, ReasonRedeliveryLimit}

// DecodeError is a permanent failure: the same body will never decode.
type DecodeError struct {
	Reason Reason
	Err    error
}

func (e *DecodeError) Error() string { return string(e.Reason) + ": " + e.Err.Error() }
func (e *DecodeError) Unwrap() error { return e.Err }

func reject(r Reason, format string, args ...any) error {
	return &DecodeError{Reason: r, Err: fmt.Errorf(format, args...)}
}

// Fields are the normalised fields, by the names rules use.
var Fields = []string{
	"event_id", "timestamp", "source_service", "server_hostname", "event_type",
	"severity", "user_id", "action_result", "resource", "client_ip",
}

// stringFields are the top-level fields that must be strings (or null):
// every normalised field but the timestamp. Decode checks them in this
// order.
var stringFields = [...]string{
	"event_id", "source_service", "server_hostname", "event_type", "severity",
	"user_id", "action_result", "resource", "client_ip",
}

// The other top-level fields Decode reads, numbered after stringFields.
const (
	fieldTimestamp = len(stringFields) + iota
	fieldDetails
)

// topField numbers the top-level fields Decode reads: the index in
// stringFields, fieldTimestamp or fieldDetails; -1 for any other key.
func topField(key string) int {
	switch key {
	case "event_id":
		return 0
	case "source_service":
		return 1
	case "server_hostname":
		return 2
	case "event_type":
		return 3
	case "severity":
		return 4
	case "user_id":
		return 5
	case "action_result":
		return 6
	case "resource":
		return 7
	case "client_ip":
		return 8
	case "timestamp":
		return fieldTimestamp
	case "details":
		return fieldDetails
	}
	return -1
}

// Decode turns a message body into an Event. Every error it returns is a
// *DecodeError: the body can never be processed. The event keeps body (as
// Raw, for the alerts it raises) and shares its memory for its fields:
// the caller must not change body afterwards.
//
// Field names match exactly (encoding/json would also match "USER_ID" to
// user_id), invalid UTF-8 is refused rather than silently replaced, and a
// known field of the wrong type is refused rather than guessed at.
func Decode(body []byte, maxBytes int) (*Event, error) {
	if maxBytes > 0 && len(body) > maxBytes {
		return nil, reject(ReasonTooLarge, "body is %d bytes, the limit is %d", len(body), maxBytes)
	}
	if uint64(len(body)) > math.MaxUint32 {
		// Members are kept as 32-bit offsets.
		return nil, reject(ReasonTooLarge, "body is %d bytes, the limit is 4 GiB", len(body))
	}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return nil, reject(ReasonEmpty, "body is empty")
	}
	if !utf8.Valid(body) {
		return nil, reject(ReasonInvalidUTF8, "body is not valid UTF-8")
	}
	if trimmed[0] != '{' {
		if !json.Valid(trimmed) {
			return nil, reject(ReasonInvalidJSON, "body is not JSON")
		}
		return nil, reject(ReasonNotObject, "body is JSON but not an object")
	}
	if !valid(trimmed) {
		// Say where, as encoding/json would.
		var v any
		err := json.Unmarshal(trimmed, &v)
		return nil, reject(ReasonInvalidJSON, "body is not a JSON object: %v", err)
	}
	ev := &Event{Raw: body, text: unsafe.String(&trimmed[0], len(trimmed))}
	ev.top = scanObject(ev.members[:0], ev.text)
	// One pass over the members finds the fields Decode reads, the last
	// of duplicates winning as in get; they are then checked in the
	// order of stringFields, so the first wrong one named is the same.
	var raws [len(stringFields) + 2]string
	var found [len(stringFields) + 2]bool
	for _, m := range ev.top.members {
		if f := topField(ev.top.key(m)); f >= 0 {
			raws[f], found[f] = ev.top.value(m), true
		}
	}
	for f, name := range stringFields {
		if !found[f] {
			continue
		}
		s, err := decodeString(raws[f])
		if err != nil {
			return nil, reject(ReasonWrongType, "field %q: %v", name, err)
		}
		*ev.normalised(name) = s
	}
	if raw, ok := raws[fieldDetails], found[fieldDetails]; ok && !isNull(raw) {
		if len(raw) == 0 || raw[0] != '{' {
			return nil, reject(ReasonWrongType, "field %q: want an object", "details")
		}
		// The members after top's, unless top outgrew the array.
		rest := ev.members[min(len(ev.top.members), len(ev.members)):]
		ev.details = scanObject(rest[:0], raw)
	}
	for _, fb := range []struct {
		dst  *string
		name string
	}{{&ev.Resource, "resource"}, {&ev.ClientIP, "ip_address"}} {
		if *fb.dst != "" {
			continue
		}
		raw, ok := ev.details.get(fb.name)
		if !ok {
			continue
		}
		s, err := decodeString(raw)
		if err != nil {
			return nil, reject(ReasonWrongType, "field %q: %v", "details."+fb.name, err)
		}
		*fb.dst = s
	}
	if raw, ok := raws[fieldTimestamp], found[fieldTimestamp]; ok && !isNull(raw) {
		ts, err := decodeTimestamp(raw)
		if err != nil {
			// An unreadable time is not a reason to lose the event: it
			// counts at arrival time, and the caller can see it happened.
			ev.TimestampInvalid = true
		} else {
			ev.Timestamp = ts
		}
	}
	ev.Key = deriveKey(ev.ID, trimmed)
	return ev, nil
}

func isNull(raw string) bool { return raw == "null" }

// decodeString accepts a JSON string or null (""). raw is valid JSON.
func decodeString(raw string) (string, error) {
	if isNull(raw) {
		return "", nil
	}
	if len(raw) == 0 || raw[0] != '"' {
		return "", errors.New("want a string")
	}
	return unquote(raw), nil
}

// isCanonicalUUID reports whether s is a UUID as uuid.UUID.String writes
// it: 36 characters, lower-case hex digits and hyphens at 8, 13, 18, 23.
func isCanonicalUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return false
			}
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// deriveKey returns id when it is a UUID (canonical form), else a version 5
// UUID of id, or of the body when id is empty.
func deriveKey(id string, body []byte) string {
	if id != "" {
		if isCanonicalUUID(id) {
			// What u.String() would give, without a copy.
			return id
		}
		if u, err := uuid.Parse(id); err == nil && len(id) == 36 {
			return u.String()
		}
		return uuid.NewSHA1(Namespace, append([]byte("event_id\x00"), id...)).String()
	}
	return uuid.NewSHA1(Namespace, append([]byte("body\x00"), body...)).String()
}

// CanonicalPath cleans an absolute path lexically: "//", "/./" and "/../"
// are resolved, a trailing slash dropped. Relative paths are cleaned too but
// stay relative, so they never equal an absolute one.
func CanonicalPath(p string) string {
	if p == "" {
		return ""
	}
	return path.Clean(p)
}

// Field returns the value of a normalised field (event_id, timestamp,
// source_service, server_hostname, event_type, severity, user_id,
// action_result, resource, client_ip) or of a dotted path into the event
// (details.protocol). Non-string JSON values are returned as their JSON
// text (22, true); objects and arrays are not values. ok is false when the
// field is absent or null.
func (e *Event) Field(name string) (string, bool) {
	if name == "timestamp" {
		if e.Timestamp.IsZero() {
			return "", false
		}
		return e.Timestamp.Format(time.RFC3339Nano), true
	}
	if v := e.normalised(name); v != nil {
		return *v, *v != "" || e.has(name)
	}
	return e.lookup(name)
}

// normalised returns the field holding a normalised value, or nil.
func (e *Event) normalised(name string) *string {
	switch name {
	case "event_id":
		return &e.ID
	case "source_service":
		return &e.SourceService
	case "server_hostname":
		return &e.ServerHostname
	case "event_type":
		return &e.EventType
	case "severity":
		return &e.Severity
	case "user_id":
		return &e.UserID
	case "action_result":
		return &e.ActionResult
	case "resource":
		return &e.Resource
	case "client_ip":
		return &e.ClientIP
	}
	return nil
}

func (e *Event) has(name string) bool {
	raw, ok := e.top.get(name)
	return ok && !isNull(raw)
}

// lookup walks a dotted path through nested objects.
func (e *Event) lookup(dotted string) (string, bool) {
	parts := strings.Split(dotted, ".")
	var cur string
	var ok bool
	if parts[0] == "details" && e.details.members != nil && len(parts) > 1 {
		cur, ok = e.details.get(parts[1])
		parts = parts[2:]
	} else {
		cur, ok = e.top.get(parts[0])
		parts = parts[1:]
	}
	for ok && len(parts) > 0 {
		if len(cur) == 0 || cur[0] != '{' {
			return "", false
		}
		cur, ok = scanObject(nil, cur).get(parts[0])
		parts = parts[1:]
	}
	if !ok || len(cur) == 0 || isNull(cur) {
		return "", false
	}
	switch cur[0] {
	case '"':
		s, err := decodeString(cur)
		return s, err == nil
	case '{', '[':
		return "", false
	default:
		return cur, true
	}
}
