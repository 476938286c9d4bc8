package alert_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/audit-platform/audit-log-analysis/internal/alert"
	"github.com/audit-platform/audit-log-analysis/internal/event"
	"github.com/audit-platform/audit-log-analysis/internal/replay"
	"github.com/audit-platform/audit-log-analysis/internal/rules"
	"github.com/audit-platform/audit-log-analysis/internal/testenv"
	rulefiles "github.com/audit-platform/audit-log-analysis/rules"
)

// The notification service's alerts table and indexes, as its
// postgres_service.py creates them; %[1]s is the schema.
const alertsTable = `CREATE TABLE %[1]s.alerts (
	alert_id UUID PRIMARY KEY,
	correlation_id UUID NOT NULL,
	timestamp TIMESTAMP WITH TIME ZONE NOT NULL,
	received_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
	alert_name VARCHAR(255) NOT NULL,
	alert_type VARCHAR(50) NOT NULL,
	severity VARCHAR(50) NOT NULL,
	description TEXT,
	source_service_name VARCHAR(255),
	rule_id VARCHAR(255),
	rule_name VARCHAR(255),
	actor_type VARCHAR(50),
	actor_id VARCHAR(255),
	client_ip INET,
	resource_type VARCHAR(50),
	resource_id VARCHAR(255),
	server_hostname VARCHAR(255),
	action_observed VARCHAR(255),
	analysis_rule_details JSONB,
	triggered_by_details JSONB,
	impacted_resource_details JSONB,
	metadata JSONB,
	raw_event_data JSONB NOT NULL
)`

var alertsIndexes = []string{
	"CREATE INDEX idx_alerts_timestamp ON %[1]s.alerts (timestamp DESC)",
	"CREATE INDEX idx_alerts_alert_type ON %[1]s.alerts (alert_type)",
	"CREATE INDEX idx_alerts_severity ON %[1]s.alerts (severity)",
	"CREATE INDEX idx_alerts_actor_id ON %[1]s.alerts (actor_id)",
	"CREATE INDEX idx_alerts_server_hostname ON %[1]s.alerts (server_hostname)",
	"CREATE INDEX idx_alerts_rule_name ON %[1]s.alerts (rule_name)",
	"CREATE INDEX idx_alerts_metadata_gin ON %[1]s.alerts USING GIN (metadata)",
	"CREATE INDEX idx_alerts_raw_event_data_gin ON %[1]s.alerts USING GIN (raw_event_data)",
}

// The insert of the notification service, with the duplicate handling the
// contract asks for: a known alert_id changes nothing.
const insertAlert = `INSERT INTO %[1]s.alerts (
	alert_id, correlation_id, timestamp, alert_name, alert_type, severity, description,
	source_service_name, rule_id, rule_name,
	actor_type, actor_id, client_ip,
	resource_type, resource_id, server_hostname, action_observed,
	analysis_rule_details, triggered_by_details, impacted_resource_details, metadata, raw_event_data
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)
ON CONFLICT (alert_id) DO NOTHING`

// alertsDB is a private copy of the notification service's table.
type alertsDB struct {
	conn   *pgx.Conn
	schema string // quoted
}

// newAlertsDB creates the table in a schema of its own, dropped when the
// test ends, in the PostgreSQL other tests share.
func newAlertsDB(t *testing.T) *alertsDB {
	t.Helper()
	dsn := testenv.PostgresDSN(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect to PostgreSQL: %v", err)
	}
	db := &alertsDB{conn: conn, schema: pgx.Identifier{testenv.Name(t, "ac")}.Sanitize()}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+db.schema+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", db.schema, err)
		}
		conn.Close(ctx)
	})
	for _, stmt := range append([]string{"CREATE SCHEMA %[1]s", alertsTable}, alertsIndexes...) {
		if _, err := conn.Exec(ctx, fmt.Sprintf(stmt, db.schema)); err != nil {
			t.Fatalf("%s: %v", strings.SplitN(stmt, "(", 2)[0], err)
		}
	}
	return db
}

// insert stores a published alert the way the notification service does.
// It reports whether a row was added (false: the alert_id was known).
func (db *alertsDB) insert(ctx context.Context, body []byte) (bool, error) {
	args, err := notificationServiceRow(body)
	if err != nil {
		return false, err
	}
	tag, err := db.conn.Exec(ctx, fmt.Sprintf(insertAlert, db.schema), args...)
	if err != nil {
		return false, fmt.Errorf("insert: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}

// notificationServiceRow reads a published alert as the notification
// service (Python: json.loads, then psycopg) does and returns its insert's
// arguments. It fails wherever the service would fail before PostgreSQL
// has a say: json.loads refusing the body, a missing timestamp, a string
// psycopg cannot send (NUL, lone surrogates), a number json.dumps writes
// as Infinity in a JSONB column.
func notificationServiceRow(body []byte) ([]any, error) {
	if err := pythonLoads(body); err != nil {
		return nil, err
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil {
		return nil, fmt.Errorf("json.loads: %w", err)
	}
	if top == nil {
		return nil, errors.New("the alert is not a JSON object")
	}
	sub := func(key string) (map[string]json.RawMessage, any, error) {
		raw, ok := top[key]
		if !ok {
			return map[string]json.RawMessage{}, "{}", nil // alert_payload.get(key, {})
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(raw, &m); err != nil || m == nil {
			return nil, nil, fmt.Errorf("%s is %.40s, not an object: .get fails", key, raw)
		}
		if err := pythonDumps(raw); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", key, err)
		}
		return m, string(raw), nil
	}
	rule, ruleJSON, err := sub("analysis_rule")
	if err != nil {
		return nil, err
	}
	by, byJSON, err := sub("triggered_by")
	if err != nil {
		return nil, err
	}
	res, resJSON, err := sub("impacted_resource")
	if err != nil {
		return nil, err
	}
	_, metaJSON, err := sub("metadata")
	if err != nil {
		return nil, err
	}
	_, rawJSON, err := sub("raw_event_data")
	if err != nil {
		return nil, err
	}

	var errs []error
	text := func(m map[string]json.RawMessage, key string) any {
		s, err := pythonString(m[key])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", key, err))
		}
		if s == nil {
			return nil
		}
		return *s
	}
	rawTS, ok := top["timestamp"]
	if !ok {
		return nil, errors.New("KeyError: 'timestamp'")
	}
	var ts time.Time
	if s, err := pythonString(rawTS); err != nil || s == nil {
		errs = append(errs, fmt.Errorf("timestamp %s is not a string", rawTS))
	} else {
		v := *s
		if strings.HasSuffix(v, "+00:00Z") || strings.HasSuffix(v, "-00:00Z") {
			v = v[:len(v)-1]
		}
		if ts, err = time.Parse(time.RFC3339Nano, v); err != nil {
			errs = append(errs, fmt.Errorf("datetime.fromisoformat(%q): %w", v, err))
		}
	}
	clientIP := text(by, "client_ip")
	if s, ok := clientIP.(string); ok && (s == "N/A" || s == "") {
		clientIP = nil
	}
	args := []any{
		text(top, "alert_id"), text(top, "correlation_id"), ts,
		text(top, "alert_name"), text(top, "alert_type"), text(top, "severity"), text(top, "description"),
		text(top, "source_service_name"), text(rule, "rule_id"), text(rule, "rule_name"),
		text(by, "actor_type"), text(by, "actor_id"), clientIP,
		text(res, "resource_type"), text(res, "resource_id"), text(res, "server_hostname"), text(top, "action_observed"),
		ruleJSON, byJSON, resJSON, metaJSON, rawJSON,
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return args, nil
}

// pythonString decodes a JSON string or null the way json.loads does, and
// refuses what psycopg cannot send: NUL, and lone surrogates, which
// json.loads keeps and UTF-8 cannot encode. encoding/json would quietly
// turn those into U+FFFD.
func pythonString(raw json.RawMessage) (*string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	if raw[0] != '"' {
		return nil, fmt.Errorf("%.40s is not a string", raw)
	}
	if problem := refusedEscape(raw); problem != "" {
		return nil, fmt.Errorf("psycopg cannot send a string with %s", problem)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, err
	}
	if strings.IndexByte(s, 0) >= 0 {
		return nil, errors.New("PostgreSQL text fields cannot contain NUL (0x00) bytes")
	}
	return &s, nil
}

// refusedEscape returns what in a JSON text PostgreSQL text and JSONB
// refuse: a \u0000 escape or a \u escape of a lone surrogate; "" if none.
func refusedEscape(b []byte) string {
	highPending := false
	for i := 0; i < len(b); i++ {
		if b[i] != '\\' {
			if highPending {
				return "a lone high surrogate"
			}
			continue
		}
		if i+1 < len(b) && b[i+1] != 'u' {
			if highPending {
				return "a lone high surrogate"
			}
			i++ // \" \\ \n ...: never the start of another escape
			continue
		}
		if i+5 >= len(b) {
			return ""
		}
		r, err := strconv.ParseUint(string(b[i+2:i+6]), 16, 32)
		if err != nil {
			return ""
		}
		i += 5
		switch {
		case r == 0:
			return `a \u0000 escape`
		case r >= 0xD800 && r <= 0xDBFF:
			if highPending {
				return "a lone high surrogate"
			}
			highPending = true
		case r >= 0xDC00 && r <= 0xDFFF:
			if !highPending {
				return "a lone low surrogate"
			}
			highPending = false
		default:
			if highPending {
				return "a lone high surrogate"
			}
		}
	}
	if highPending {
		return "a lone high surrogate"
	}
	return ""
}

// pythonMaxDepth is about where CPython's json.loads raises
// RecursionError (the default recursion limit is 1000).
const pythonMaxDepth = 990

// pythonLoads fails where CPython's json.loads fails on input Go accepts:
// nesting deeper than the recursion limit, and integers of more than 4300
// digits (ValueError since Python 3.11). The notification service requeues
// the message in both cases, forever.
func pythonLoads(body []byte) error {
	return walkNumbers(body, func(n json.Number) error {
		s := strings.TrimPrefix(n.String(), "-")
		if !strings.ContainsAny(s, ".eE") && len(s) > 4300 {
			return fmt.Errorf("json.loads: ValueError: an integer of %d digits exceeds the limit of 4300", len(s))
		}
		return nil
	})
}

// pythonDumps fails where json.dumps of what json.loads read writes
// something JSONB refuses: a float beyond float64, read as inf and
// written as Infinity.
func pythonDumps(raw []byte) error {
	return walkNumbers(raw, func(n json.Number) error {
		s := n.String()
		if !strings.ContainsAny(s, ".eE") {
			return nil
		}
		if f, _ := strconv.ParseFloat(s, 64); math.IsInf(f, 0) {
			return fmt.Errorf("json.dumps writes %.20s as Infinity, which JSONB refuses", s)
		}
		return nil
	})
}

// walkNumbers calls fn for every number in a JSON text, after checking
// its nesting depth.
func walkNumbers(b []byte, fn func(json.Number) error) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	depth := 0
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("json.loads: %w", err)
		}
		switch v := tok.(type) {
		case json.Delim:
			if v == '{' || v == '[' {
				if depth++; depth > pythonMaxDepth {
					return fmt.Errorf("json.loads: RecursionError: nesting deeper than %d", pythonMaxDepth)
				}
			} else {
				depth--
			}
		case json.Number:
			if err := fn(v); err != nil {
				return err
			}
		}
	}
}

// storedAlert is a row read back from the table.
type storedAlert struct {
	AlertID, CorrelationID                                   string
	Timestamp                                                time.Time
	AlertName, AlertType, Severity                           string
	Description, SourceServiceName, RuleID, RuleName         *string
	ActorType, ActorID, ClientIP                             *string
	ResourceType, ResourceID, ServerHostname, ActionObserved *string
	RawType                                                  string
	Raw                                                      string
}

func (db *alertsDB) read(ctx context.Context, alertID string) (storedAlert, error) {
	var r storedAlert
	err := db.conn.QueryRow(ctx, fmt.Sprintf(`SELECT alert_id::text, correlation_id::text, timestamp,
		alert_name, alert_type, severity, description, source_service_name, rule_id, rule_name,
		actor_type, actor_id, host(client_ip), resource_type, resource_id, server_hostname, action_observed,
		jsonb_typeof(raw_event_data), raw_event_data::text
		FROM %s.alerts WHERE alert_id = $1`, db.schema), alertID).Scan(
		&r.AlertID, &r.CorrelationID, &r.Timestamp,
		&r.AlertName, &r.AlertType, &r.Severity, &r.Description, &r.SourceServiceName, &r.RuleID, &r.RuleName,
		&r.ActorType, &r.ActorID, &r.ClientIP, &r.ResourceType, &r.ResourceID, &r.ServerHostname, &r.ActionObserved,
		&r.RawType, &r.Raw)
	return r, err
}

// columns lists the row's text columns with their limits in characters
// (0: TEXT).
func (r storedAlert) columns() []struct {
	name  string
	value *string
	limit int
} {
	p := func(s string) *string { return &s }
	return []struct {
		name  string
		value *string
		limit int
	}{
		{"alert_name", p(r.AlertName), 255}, {"alert_type", p(r.AlertType), 50}, {"severity", p(r.Severity), 50},
		{"description", r.Description, 0}, {"source_service_name", r.SourceServiceName, 255},
		{"rule_id", r.RuleID, 255}, {"rule_name", r.RuleName, 255}, {"actor_type", r.ActorType, 50},
		{"actor_id", r.ActorID, 255}, {"resource_type", r.ResourceType, 50}, {"resource_id", r.ResourceID, 255},
		{"server_hostname", r.ServerHostname, 255}, {"action_observed", r.ActionObserved, 255},
	}
}

// contractCase is one alert to store, with what the stored row must show
// besides what every row must.
type contractCase struct {
	name  string
	alert alert.Alert
	// truncated names the columns whose value was too long for them.
	truncated []string
	// clientIP is the stored address; "" means NULL.
	clientIP *string
	// rawUserID is the user_id raw_event_data must keep, when set.
	rawUserID *string
}

func ptr[T any](v T) *T { return &v }

// TestAlertsFitTheNotificationServicesTable stores alerts built from
// hostile events, and those of a replay of sample events, the way the
// notification service does, and reads them back.
func TestAlertsFitTheNotificationServicesTable(t *testing.T) {
	db := newAlertsDB(t)
	set, err := rules.Parse(rulefiles.DefaultName, rulefiles.Default)
	if err != nil {
		t.Fatal(err)
	}
	var cases []contractCase
	cases = append(cases, builtFromHostileEvents(t, set)...)
	cases = append(cases, replayed(t, "hostile events", set, hostileReplayLines())...)
	if lines := sampleFileLines(t); lines != nil {
		cases = append(cases, replayed(t, "sample events", set, lines)...)
	}
	cases = append(cases, replayed(t, "generated events", set, generatedEventLines(t))...)
	// The example rules add sequence and new-value alerts.
	examples, err := rules.LoadFile(filepath.Join("..", "..", "rules", "examples.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	withExamples := replayed(t, "generated and hostile events, example rules", examples,
		append(append(generatedEventLines(t), hostileReplayLines()...), hostileSequenceLines()...))
	kinds := map[string]bool{}
	for _, c := range withExamples {
		kinds["sequence"] = kinds["sequence"] || c.alert.Steps != nil
		kinds["new_value"] = kinds["new_value"] || c.alert.NewValue != nil
	}
	if !kinds["sequence"] || !kinds["new_value"] {
		t.Fatalf("the example rules raised no sequence or no new-value alert (%v): the input misses a case", kinds)
	}
	cases = append(cases, withExamples...)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stored := 0
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			body, err := alert.Marshal(tc.alert)
			if err != nil {
				t.Fatal(err)
			}
			added, err := db.insert(ctx, body)
			if err != nil {
				t.Fatalf("the notification service cannot store the alert: %v\nalert: %.600s", err, body)
			}
			if added {
				stored++
			}
			// A redelivered alert is acknowledged and dropped.
			if again, err := db.insert(ctx, body); err != nil || again {
				t.Errorf("storing the alert again: added %v, error %v; want a no-op", again, err)
			}
			row, err := db.read(ctx, tc.alert.AlertID)
			if err != nil {
				t.Fatalf("read back %s: %v", tc.alert.AlertID, err)
			}
			checkRow(t, tc, row)
		})
	}
	var rows int
	if err := db.conn.QueryRow(ctx, "SELECT count(*) FROM "+db.schema+".alerts").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != stored {
		t.Errorf("the table holds %d rows, %d alerts were stored", rows, stored)
	}
	t.Logf("%d alerts offered, %d rows stored", len(cases), rows)
}

func checkRow(t *testing.T, tc contractCase, row storedAlert) {
	t.Helper()
	a := tc.alert
	for _, id := range []struct{ name, got, want string }{
		{"alert_id", row.AlertID, a.AlertID}, {"correlation_id", row.CorrelationID, a.CorrelationID},
	} {
		if u, err := uuid.Parse(id.want); err != nil || u.String() != id.want || id.got != id.want {
			t.Errorf("%s: published %q, stored %q; want one canonical UUID", id.name, id.want, id.got)
		}
	}
	if !strings.HasSuffix(a.Timestamp, "Z") {
		t.Errorf("timestamp %q does not end in Z", a.Timestamp)
	}
	if want, _ := time.Parse(time.RFC3339, a.Timestamp); !row.Timestamp.Equal(want) {
		t.Errorf("timestamp stored as %v, published %q", row.Timestamp, a.Timestamp)
	}
	if row.RawType != "object" {
		t.Errorf("raw_event_data is a JSON %s, want an object", row.RawType)
	}
	truncated := map[string]bool{}
	for _, c := range tc.truncated {
		truncated[c] = true
	}
	for _, c := range row.columns() {
		if c.value == nil {
			if truncated[c.name] {
				t.Errorf("%s is NULL, want a shortened value", c.name)
			}
			continue
		}
		n := utf8.RuneCountInString(*c.value)
		cut := strings.HasSuffix(*c.value, alert.TruncationMarker)
		switch {
		case c.limit > 0 && n > c.limit:
			t.Errorf("%s has %d characters, the column holds %d", c.name, n, c.limit)
		case truncated[c.name] && (!cut || (c.limit > 0 && n != c.limit)):
			t.Errorf("%s: %d characters ending %q; want it cut to %d ending with %q", c.name, n, lastRunes(*c.value, 12), c.limit, alert.TruncationMarker)
		case !truncated[c.name] && cut && c.limit > 0 && n != c.limit:
			t.Errorf("%s ends with the marker but has %d characters, not %d", c.name, n, c.limit)
		}
	}
	if tc.clientIP != nil {
		switch {
		case *tc.clientIP == "" && row.ClientIP != nil:
			t.Errorf("client_ip = %q, want NULL", *row.ClientIP)
		case *tc.clientIP != "" && (row.ClientIP == nil || *row.ClientIP != *tc.clientIP):
			t.Errorf("client_ip = %v, want %q", deref(row.ClientIP), *tc.clientIP)
		}
	}
	if tc.rawUserID != nil {
		var raw struct {
			UserID string `json:"user_id"`
		}
		if err := json.Unmarshal([]byte(row.Raw), &raw); err != nil || raw.UserID != *tc.rawUserID {
			t.Errorf("raw_event_data.user_id has %d characters, want the full %d", utf8.RuneCountInString(raw.UserID), utf8.RuneCountInString(*tc.rawUserID))
		}
	}
}

// hostileEvent is an event body no producer should send and some will.
type hostileEvent struct {
	name string
	body string
	// clientIP is the stored address; "" means NULL.
	clientIP string
	// truncated names the columns the event's values overflow.
	truncated []string
	rawUserID *string
}

// q writes s as a JSON string; NUL and control characters become escapes.
func q(s string) string {
	b, err := json.Marshal(s)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// huge is 10,000 characters of one-, two-, three- and four-byte UTF-8.
var huge = strings.Repeat("aü用😀", 2500)

func hostileEvents() []hostileEvent {
	const id = "5f0c9f5e-1b2a-4c3d-8e9f-0a1b2c3d4e5f"
	withIP := func(ip string) string {
		return `{"event_id": ` + q("ip-"+ip) + `, "timestamp": "2026-11-01T10:00:00Z", "user_id": "bob", "server_hostname": "web-01", "resource": "/etc/shadow", "client_ip": ` + q(ip) + `}`
	}
	nul := "\x00"
	events := []hostileEvent{
		{
			name: "10,000-character multi-byte user, host, resource and source",
			body: `{"event_id": ` + q(huge) + `, "timestamp": "2026-11-01T10:00:00Z", "source_service": ` + q(huge) +
				`, "server_hostname": ` + q(huge) + `, "user_id": ` + q(huge) + `, "resource": ` + q(huge) +
				`, "client_ip": ` + q(huge) + `, "details": {` + q(huge) + `: ` + q(huge) + `}}`,
			truncated: []string{"source_service_name", "actor_id", "resource_id", "server_hostname"},
			rawUserID: ptr(huge),
		},
		{
			name: "NUL in every string field and in raw_event_data keys and values",
			body: `{"event_id": "e\u0000", "timestamp": "2026-11-01T10:00:00Z\u0000", "source_service": "src\u0000", "server_hostname": "web\u000001",` +
				` "event_type": "user_login\u0000", "severity": "\u0000", "user_id": "bob\u0000root", "action_result": "FAILURE\u0000",` +
				` "resource": "/etc/shadow\u0000", "client_ip": "10.0.0.1\u0000", "\u0000": "\u0000",` +
				` "details": {"k\u0000": "v\u0000", "list": ["\u0000", {"\u0000": "\u0000"}]}}`,
			rawUserID: ptr("bob\uFFFDroot"),
		},
		{
			name:      "NUL filling a 300-character user",
			body:      `{"event_id": "e-nul-long", "user_id": ` + q(strings.Repeat(nul, 300)) + `, "server_hostname": "web-01", "resource": "/etc/shadow"}`,
			truncated: []string{"actor_id"},
		},
		{
			name: "lone surrogate escapes in raw strings and keys",
			body: `{"event_id": "\ud800", "timestamp": "2026-11-01T10:00:00Z", "source_service": "\udfff", "server_hostname": "web\udfff",` +
				` "user_id": "\ud800bob", "resource": "/etc/shadow\udbff", "client_ip": "\ud800", "\udc00": "\ud800\ud800",` +
				` "details": {"\ud800k": ["\udc00", "\ud83d\ude00"]}}`,
			rawUserID: ptr("\uFFFDbob"),
		},
		{name: `client_ip "N/A"`, body: withIP("N/A")},
		{name: `client_ip ""`, body: withIP("")},
		{name: `client_ip "not-an-ip"`, body: withIP("not-an-ip")},
		{name: `client_ip with a zone`, body: withIP("fe80::1%eth0"), clientIP: "fe80::1"},
		{name: `client_ip IPv4-mapped`, body: withIP("::ffff:10.0.0.1"), clientIP: "::ffff:10.0.0.1"},
		{name: `client_ip with spaces`, body: withIP(" 10.0.0.1 "), clientIP: "10.0.0.1"},
		{name: `client_ip a network`, body: withIP("10.0.0.0/8")},
		{name: `client_ip with a port`, body: withIP("[2001:db8::1]:22")},
		{name: "client_ip null", body: `{"event_id": "ip-null", "user_id": "bob", "client_ip": null}`},
		{name: "client_ip a 10,000-character text", body: `{"event_id": "ip-huge", "user_id": "bob", "client_ip": ` + q(huge) + `}`},
		{name: "client_ip only in details.ip_address", body: `{"event_id": "ip-details", "user_id": "bob", "details": {"ip_address": "2001:DB8::1"}}`, clientIP: "2001:db8::1"},
		{name: "event_id missing", body: `{"timestamp": "2026-11-01T10:00:00Z", "user_id": "bob", "server_hostname": "web-01", "resource": "/etc/shadow"}`},
		{name: "event_id not a UUID", body: `{"event_id": "not-a-uuid", "user_id": "bob"}`},
		{name: "event_id an uppercase UUID", body: `{"event_id": "` + strings.ToUpper(id) + `", "user_id": "bob"}`},
		{name: "event_id a UUID in braces", body: `{"event_id": "{` + id + `}", "user_id": "bob"}`},
		{name: "event_id empty", body: `{"event_id": "", "user_id": "bob"}`},
		{
			name: "unicode everywhere",
			body: `{"event_id": "événement-😀", "timestamp": "2026-11-01T10:00:00Z", "source_service": "سرویس",` +
				` "server_hostname": "сервер-01.例え.jp", "user_id": "José\u202eliame\u200d👩‍💻e\u0301\ufeff", "resource": "/etc/ファイル\u2028\u2029",` +
				` "client_ip": "１０.０.０.１", "details": {"ключ": "值", "emoji": "🏳️‍🌈", "ctl": "\t\n\r\u0001\u001f\u007f"}}`,
		},
		{
			name: "no fields at all",
			body: `{}`,
		},
		{
			name: "empty strings everywhere",
			body: `{"event_id": "", "timestamp": "", "source_service": "", "server_hostname": "", "user_id": "", "resource": "", "client_ip": "", "details": {}}`,
		},
		{
			name: "placeholders and SQL in values",
			body: `{"event_id": "sql", "user_id": "{{threshold}}'); DROP TABLE alerts;--", "server_hostname": "%s%n%x", "resource": "$1"}`,
		},
		{
			name: "a number beyond float64 in raw_event_data",
			body: `{"event_id": "big-float", "user_id": "bob", "details": {"bytes": 1e400}}`,
		},
		{
			name: "a 5,000-digit integer in raw_event_data",
			body: `{"event_id": "big-int", "user_id": "bob", "details": {"n": ` + strings.Repeat("9", 5000) + `}}`,
		},
		{
			name: "raw_event_data nested 2,000 deep",
			body: `{"event_id": "deep", "user_id": "bob", "details": {"x": ` + strings.Repeat("[", 2000) + strings.Repeat("]", 2000) + `}}`,
		},
	}
	return events
}

// builtFromHostileEvents builds an alert of each built-in rule from each
// hostile event with alert.Build directly: the rules need not match.
func builtFromHostileEvents(t *testing.T, set *rules.Set) []contractCase {
	t.Helper()
	now := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	var cases []contractCase
	for _, h := range hostileEvents() {
		ev, err := event.Decode([]byte(h.body), event.MaxBodyBytes)
		if err != nil {
			t.Fatalf("%s: decode: %v", h.name, err)
		}
		login := set.Rule(rules.FailedLoginRuleID).Alert
		login.Description = "Detects 3 failed logins within 60 seconds."
		file := set.Rule(rules.SensitiveFileRuleID).Alert
		file.Description = "Detects modifications to predefined sensitive system files."
		inputs := []alert.Input{
			{
				Rule:        login,
				Description: fmt.Sprintf("3 or more failed login attempts for user '%s' on '%s' within 60 seconds.", ev.UserID, ev.ServerHostname),
				Event:       ev,
				Burst: &alert.Burst{
					GroupKey: "0123456789abcdef", Group: map[string]string{"user_id": ev.UserID, "server_hostname": ev.ServerHostname},
					Start: now.Add(-40 * time.Second), End: now, Window: time.Minute, Count: 3, Threshold: 3,
					FirstEventID: ev.Key, EventIDs: []string{ev.Key, ev.ID},
				},
				Environment: "PRODUCTION",
				Now:         now,
			},
			{
				Rule:        file,
				Description: fmt.Sprintf("Sensitive file '%s' modified by '%s' on '%s'.", ev.Resource, ev.UserID, ev.ServerHostname),
				Event:       ev,
				Environment: "PRODUCTION",
				Now:         now,
			},
		}
		for _, in := range inputs {
			truncated := h.truncated
			if in.Rule.ResourceType == "SERVER" {
				// resource_id is the host name for a SERVER alert.
				truncated = without(truncated, "resource_id")
				if ev.ServerHostname == huge {
					truncated = append(truncated, "resource_id")
				}
			}
			cases = append(cases, contractCase{
				name:      "built/" + in.Rule.ID + "/" + h.name,
				alert:     alert.Build(in),
				truncated: truncated,
				clientIP:  ptr(h.clientIP),
				rawUserID: h.rawUserID,
			})
		}
	}
	return cases
}

func without(list []string, drop string) []string {
	var out []string
	for _, s := range list {
		if s != drop {
			out = append(out, s)
		}
	}
	return out
}

// hostileReplayLines are hostile events shaped to fire the built-in rules,
// so that the engine's own descriptions and groups are stored too.
func hostileReplayLines() []string {
	var lines []string
	identities := []struct{ user, host, ip string }{
		{huge, huge, "203.0.113.7"},
		{"bob\x00", "web\x0001", "N/A"},
		{"用户ü😀" + huge, "сервер-01", "fe80::1%eth0"},
		{"a:b", "c", "::ffff:10.0.0.1"},
		{"", "", ""},
	}
	for i, id := range identities {
		for j, second := range []int{0, 10, 20} {
			lines = append(lines, fmt.Sprintf(`{"event_id": "r%d-%d", "timestamp": "2026-11-01T10:%02d:%02dZ", "event_type": "user_login", "action_result": "FAILURE", "user_id": %s, "server_hostname": %s, "client_ip": %s}`,
				i, j, i, second, q(id.user), q(id.host), q(id.ip)))
		}
		// A 10,000-character path that cleans to /etc/shadow.
		resource := "/etc/" + strings.Repeat("ü/../", 1999) + "shadow"
		lines = append(lines, fmt.Sprintf(`{"event_id": "r%d-m", "timestamp": "2026-11-01T10:%02d:30Z", "event_type": "file_modified", "action_result": "MODIFIED", "user_id": %s, "server_hostname": %s, "client_ip": %s, "resource": %s}`,
			i, i, q(id.user), q(id.host), q(id.ip), q(resource)))
	}
	// Lone surrogates where the rules read, and NUL in details.
	lines = append(lines,
		`{"event_id": "s1", "timestamp": "2026-11-01T11:00:00Z", "event_type": "user_login", "action_result": "FAILURE", "user_id": "\ud800", "server_hostname": "\udc00", "details": {"\u0000": "\ud800"}}`,
		`{"event_id": "s2", "timestamp": "2026-11-01T11:00:01Z", "event_type": "user_login", "action_result": "FAILURE", "user_id": "\ud800", "server_hostname": "\udc00"}`,
		`{"event_id": "s3", "timestamp": "2026-11-01T11:00:02Z", "event_type": "user_login", "action_result": "FAILURE", "user_id": "\ud800", "server_hostname": "\udc00"}`,
		`{"event_id": "s4", "timestamp": "2026-11-01T11:00:03Z", "event_type": "file_modified", "action_result": "MODIFIED", "resource": "/etc/passwd", "details": {"k": "\ud800\u0000"}}`,
		// A number JSON allows and float64 does not hold.
		`{"event_id": "n1", "timestamp": "2026-11-01T12:00:00Z", "event_type": "file_modified", "action_result": "MODIFIED", "resource": "/etc/shadow", "details": {"bytes": 1e400}}`,
	)
	return lines
}

// sampleFileLines returns the lines of testdata/sample-events.jsonl, or
// nil while that file does not exist.
// hostileSequenceLines are brute forces that succeed and logins of a
// privileged account from new addresses, with the identities no producer
// should send.
func hostileSequenceLines() []string {
	var lines []string
	identities := []struct{ user, host, ip string }{
		{huge, huge, "203.0.113.7"},
		{"bob\x00", "web\x0001", "N/A"},
		{"用户ü😀" + huge, "сервер-01", "fe80::1%eth0"},
	}
	n := 0
	line := func(ts, result, user, host, ip string) {
		n++
		lines = append(lines, fmt.Sprintf(`{"event_id": "s%d", "timestamp": %q, "event_type": "user_login", "action_result": %q, "user_id": %s, "server_hostname": %s, "client_ip": %s}`,
			n, ts, result, q(user), q(host), q(ip)))
	}
	for i, id := range identities {
		for j := range 4 {
			line(fmt.Sprintf("2026-11-02T10:%02d:%02dZ", i, j*5), "FAILURE", id.user, id.host, id.ip)
		}
		line(fmt.Sprintf("2026-11-02T10:%02d:30Z", i), "SUCCESS", id.user, id.host, id.ip)
	}
	for day, ip := range []string{"10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.1", "::ffff:10.0.0.9\u0000", "10.0.0.9"} {
		line(fmt.Sprintf("2026-11-%02dT12:00:00Z", 3+day), "SUCCESS", "root", "web-01", ip)
	}
	return lines
}

func sampleFileLines(t *testing.T) []string {
	t.Helper()
	name := filepath.Join("..", "..", "testdata", "sample-events.jsonl")
	f, err := os.Open(name)
	if errors.Is(err, os.ErrNotExist) {
		t.Logf("%s does not exist: only generated events are replayed", name)
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), event.MaxBodyBytes+2)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	return lines
}

// generatedEventLines returns half a day of events in the generator's
// shape, many of them firing the built-in rules.
func generatedEventLines(t *testing.T) []string {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	users := []string{"alice", "bob", "carol", "root", "admin", "attacker_bob", "svc-backup"}
	hosts := []string{"prod-web-01", "prod-web-02", "prod-db-01", "staging-01"}
	files := []string{"/etc/shadow", "/etc/passwd", "/etc/sudoers", "/root/.ssh/authorized_keys", "/var/log/syslog", "/home/bob/notes.txt", "/etc//shadow"}
	ips := []string{"192.168.1.150", "10.0.0.5", "203.0.113.7", "2001:db8::7", "N/A"}
	at := time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC)
	var lines []string
	for i := range 1000 {
		at = at.Add(time.Duration(rng.IntN(40_000)) * time.Millisecond)
		ev := map[string]any{
			"event_id":        uuid.NewSHA1(uuid.NameSpaceOID, []byte(strconv.Itoa(i))).String(),
			"timestamp":       at.Format(time.RFC3339Nano),
			"source_service":  "audit-event-generator",
			"server_hostname": hosts[rng.IntN(len(hosts))],
			"user_id":         users[rng.IntN(len(users))],
			"severity":        "INFO",
		}
		switch rng.IntN(5) {
		case 0:
			// A burst: the same failure three times within seconds.
			ev["event_type"] = "user_login"
			ev["action_result"] = "FAILURE"
			ev["client_ip"] = ips[rng.IntN(len(ips))]
			id := ev["event_id"]
			for j := range 2 {
				ev["event_id"] = uuid.NewSHA1(uuid.NameSpaceOID, fmt.Appendf(nil, "%d-%d", i, j)).String()
				b, err := json.Marshal(ev)
				if err != nil {
					t.Fatal(err)
				}
				lines = append(lines, string(b))
			}
			ev["event_id"] = id
		case 1:
			ev["event_type"] = "user_login"
			ev["action_result"] = []string{"SUCCESS", "FAILURE", "FAILURE"}[rng.IntN(3)]
			ev["details"] = map[string]any{"ip_address": ips[rng.IntN(len(ips))], "protocol": "ssh", "port": 22}
		case 2:
			ev["event_type"] = "file_modified"
			ev["action_result"] = "MODIFIED"
			ev["resource"] = files[rng.IntN(len(files))]
		default:
			ev["event_type"] = "file_accessed"
			ev["action_result"] = "SUCCESS"
			ev["resource"] = files[rng.IntN(len(files))]
		}
		b, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, string(b))
	}
	return lines
}

// replayed runs lines through the built-in rules as the replay command
// does and returns the alerts.
func replayed(t *testing.T, label string, set *rules.Set, lines []string) []contractCase {
	t.Helper()
	var out bytes.Buffer
	in := strings.NewReader(strings.Join(lines, "\n"))
	sum, err := replay.Run(context.Background(), []replay.Input{{Name: label, Reader: in}}, &out, replay.Options{Rules: set, Environment: "TEST"})
	if err != nil {
		t.Fatalf("replay %s: %v", label, err)
	}
	var cases []contractCase
	dec := json.NewDecoder(&out)
	for dec.More() {
		var a alert.Alert
		if err := dec.Decode(&a); err != nil {
			t.Fatalf("replay %s: read alert: %v", label, err)
		}
		// What the event sent decides which columns must come out cut.
		var raw struct {
			UserID         *string `json:"user_id"`
			ServerHostname string  `json:"server_hostname"`
		}
		if err := json.Unmarshal(a.RawEventData, &raw); err != nil {
			t.Fatalf("replay %s: raw_event_data: %v", label, err)
		}
		ev, err := event.Decode(a.RawEventData, event.MaxBodyBytes)
		if err != nil {
			t.Fatalf("replay %s: raw_event_data: %v", label, err)
		}
		long := func(s string) bool { return utf8.RuneCountInString(s) > alert.LimitText }
		var truncated []string
		if long(ev.UserID) {
			truncated = append(truncated, "actor_id")
		}
		if long(ev.ServerHostname) {
			truncated = append(truncated, "server_hostname")
		}
		if (a.ImpactedResource.ResourceType == "FILE" && long(ev.Resource)) || (a.ImpactedResource.ResourceType == "SERVER" && long(ev.ServerHostname)) {
			truncated = append(truncated, "resource_id")
		}
		cases = append(cases, contractCase{
			name:      fmt.Sprintf("replayed %s/%d %s %.30s", label, len(cases)+1, a.AnalysisRule.RuleID, a.TriggeredBy.ActorID),
			alert:     a,
			truncated: truncated,
			rawUserID: raw.UserID,
		})
	}
	if len(cases) == 0 {
		t.Fatalf("replay %s: no alerts (%+v)", label, sum)
	}
	return cases
}
