package event

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

func TestDecodeRejectsWhatCanNeverBeProcessed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		body string
		want Reason
	}{
		{"not json", `hello`, ReasonInvalidJSON},
		{"truncated object", `{"event_type": "user_login"`, ReasonInvalidJSON},
		{"trailing data", `{"a":"b"} {"c":"d"}`, ReasonInvalidJSON},
		{"json array", `[{"event_type":"user_login"}]`, ReasonNotObject},
		{"json string", `"user_login"`, ReasonNotObject},
		{"json number", `42`, ReasonNotObject},
		{"json null", `null`, ReasonNotObject},
		{"empty", ``, ReasonEmpty},
		{"whitespace", " \n\t", ReasonEmpty},
		{"invalid utf-8", "{\"user_id\": \"bob\xff\"}", ReasonInvalidUTF8},
		{"user_id a number", `{"user_id": 42}`, ReasonWrongType},
		{"event_type an object", `{"event_type": {"x": 1}}`, ReasonWrongType},
		{"details a string", `{"details": "x"}`, ReasonWrongType},
		{"details.resource a number", `{"details": {"resource": 3}}`, ReasonWrongType},
		{"details.ip_address a list", `{"details": {"ip_address": ["1.2.3.4"]}}`, ReasonWrongType},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Decode([]byte(tc.body), MaxBodyBytes)
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("Decode(%q) error = %v, want a DecodeError", tc.body, err)
			}
			if de.Reason != tc.want {
				t.Fatalf("Decode(%q) reason = %s, want %s (%v)", tc.body, de.Reason, tc.want, err)
			}
		})
	}
}

func TestDecodeRejectsBodiesOverTheLimit(t *testing.T) {
	t.Parallel()
	body := `{"user_id":"` + strings.Repeat("a", 100) + `"}`
	_, err := Decode([]byte(body), 50)
	var de *DecodeError
	if !errors.As(err, &de) || de.Reason != ReasonTooLarge {
		t.Fatalf("error = %v, want too_large", err)
	}
}

func TestDecodeReadsTheGeneratorsShape(t *testing.T) {
	t.Parallel()
	body := `{"event_id": "5f0c9f5e-1b2a-4c3d-8e9f-0a1b2c3d4e5f", "timestamp": "2026-11-28T21:04:05.123456Z",
	 "source_service": "audit-event-generator", "server_hostname": "prod-web-01", "event_type": "user_login",
	 "severity": "WARNING", "user_id": "attacker_bob", "action_result": "FAILURE",
	 "details": {"reason": "Incorrect password", "ip_address": "192.168.1.150", "protocol": "ssh", "port": 22, "geo": {"country": "NL"}}}`
	ev, err := Decode([]byte(body), MaxBodyBytes)
	if err != nil {
		t.Fatal(err)
	}
	want := time.Date(2026, 11, 28, 21, 4, 5, 123456000, time.UTC)
	if !ev.Timestamp.Equal(want) {
		t.Errorf("Timestamp = %v, want %v", ev.Timestamp, want)
	}
	checks := map[string]string{
		"event_id": "5f0c9f5e-1b2a-4c3d-8e9f-0a1b2c3d4e5f", "user_id": "attacker_bob", "server_hostname": "prod-web-01",
		"event_type": "user_login", "action_result": "FAILURE", "client_ip": "192.168.1.150", "severity": "WARNING",
		"source_service": "audit-event-generator", "details.protocol": "ssh", "details.port": "22", "details.geo.country": "NL",
	}
	for field, wantV := range checks {
		if got, ok := ev.Field(field); !ok || got != wantV {
			t.Errorf("Field(%q) = %q, %v; want %q", field, got, ok, wantV)
		}
	}
	for _, absent := range []string{"resource", "details.missing", "details.geo", "nope.deeper", "details.protocol.x"} {
		if got, ok := ev.Field(absent); ok {
			t.Errorf("Field(%q) = %q, want absent", absent, got)
		}
	}
	if ev.Key != "5f0c9f5e-1b2a-4c3d-8e9f-0a1b2c3d4e5f" {
		t.Errorf("Key = %q, want the event_id", ev.Key)
	}
	if string(ev.Raw) != body {
		t.Error("Raw is not the body as received")
	}
}

func TestDecodeFieldFallbacks(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, body, resource, clientIP string
	}{
		{"resource from details", `{"details": {"resource": "/etc/shadow"}}`, "/etc/shadow", ""},
		{"top-level resource wins", `{"resource": "/a", "details": {"resource": "/b"}}`, "/a", ""},
		{"client_ip from details.ip_address", `{"details": {"ip_address": "10.0.0.1"}}`, "", "10.0.0.1"},
		{"top-level client_ip wins", `{"client_ip": "10.0.0.2", "details": {"ip_address": "10.0.0.1"}}`, "", "10.0.0.2"},
		{"null details", `{"details": null, "resource": "/x"}`, "/x", ""},
		{"exact key names only", `{"RESOURCE": "/etc/shadow", "Client_IP": "1.1.1.1"}`, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ev, err := Decode([]byte(tc.body), MaxBodyBytes)
			if err != nil {
				t.Fatal(err)
			}
			if ev.Resource != tc.resource || ev.ClientIP != tc.clientIP {
				t.Errorf("resource, client_ip = %q, %q; want %q, %q", ev.Resource, ev.ClientIP, tc.resource, tc.clientIP)
			}
		})
	}
}

func TestParseTimestamp(t *testing.T) {
	t.Parallel()
	base := time.Date(2026, 11, 28, 21, 4, 5, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Time
	}{
		{"2026-11-28T21:04:05Z", base},
		{"2026-11-28T21:04:05z", base},
		{"2026-11-28T21:04:05.123456Z", base.Add(123456 * time.Microsecond)},
		{"2026-11-28T22:04:05+01:00", base},
		{"2026-11-28T21:04:05.5-00:30", base.Add(30*time.Minute + 500*time.Millisecond)},
		{"2026-11-28T21:04:05+00:00Z", base},
		{"2026-11-28T21:04:05.123456", base.Add(123456 * time.Microsecond)},
		{"2026-11-28 21:04:05", base},
		// Offsets without a colon (Python's %z) and hours only.
		{"2026-11-28T23:04:05+0200", base},
		{"2026-11-28T16:04:05-05", base},
		{"2026-11-28T16:04:05.25-0500", base.Add(250 * time.Millisecond)},
		{"2026-11-28T23:04:05.000001+02", base.Add(time.Microsecond)},
		// A lowercase t or a space between date and time.
		{"2026-11-28t21:04:05Z", base},
		{"2026-11-28 23:04:05+02:00", base},
		{"2026-11-28 23:04:05 +0200", base},
		// Fractions of any length; past nanoseconds the digits are dropped.
		{"2026-11-28T21:04:05.1Z", base.Add(100 * time.Millisecond)},
		{"2026-11-28T21:04:05.123456789Z", base.Add(123456789)},
		{"2026-11-28T21:04:05.1234567891234Z", base.Add(123456789)},
		{"2026-11-28T21:04:05,5Z", base.Add(500 * time.Millisecond)},
		{"  2026-11-28T21:04:05Z  ", base},
		{"2024-02-29T00:00:00Z", time.Date(2024, 2, 29, 0, 0, 0, 0, time.UTC)},
	}
	for _, tc := range tests {
		got, err := ParseTimestamp(tc.in)
		if err != nil || !got.Equal(tc.want) {
			t.Errorf("ParseTimestamp(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{
		"", "yesterday", "2026-13-01T00:00:00Z", "28/11/2026", "2026-11-28",
		"2026-11-28T21:04Z", "2026-11-28T21:04:05.Z", "2026-11-28T21:04:05+2",
		"2026-11-28T21:04:05+02:0", "2026-11-28T21:04:05+24:00", "2026-11-28T21:04:05+02:60",
		"2026-11-28T24:00:00Z", "2026-11-28T21:60:00Z", "2026-11-28T21:04:61Z",
		"2026-02-29T00:00:00Z", "2026-04-31T00:00:00Z", "2026-11-28X21:04:05Z",
		"2026-11-28T21:04:05ZZ", "2026-11-28T21:04:05+01:00Z", "2026-11-28T21:04:05 Z x",
		"2026-11-28T21:04:05UTC", "+2026-11-28T21:04:05Z", "2026-11-28T21:04:05+02:00:00",
	} {
		if got, err := ParseTimestamp(bad); err == nil {
			t.Errorf("ParseTimestamp(%q) = %v, want an error", bad, got)
		}
	}
}

// TestParseTimestampAgreesWithTimeParse checks the hand-written scanner
// against the standard library on every form both read.
func TestParseTimestampAgreesWithTimeParse(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		want := time.Unix(rng.Int64N(1<<33), rng.Int64N(1e9)).UTC()
		off := time.Duration(rng.IntN(47*4)-(47*4)/2) * 15 * time.Minute
		zone := time.FixedZone("", int(off.Seconds()))
		in := want.In(zone).Format(time.RFC3339Nano)
		got, err := ParseTimestamp(in)
		if err != nil || !got.Equal(want) {
			t.Fatalf("ParseTimestamp(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
}

func TestDecodeTimestampForms(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		body    string
		want    time.Time
		invalid bool
	}{
		{"missing", `{}`, time.Time{}, false},
		{"null", `{"timestamp": null}`, time.Time{}, false},
		{"unix seconds", `{"timestamp": 1764363845.25}`, time.Unix(1764363845, 250000000).UTC(), false},
		{"unreadable string counts at arrival", `{"timestamp": "soon"}`, time.Time{}, true},
		{"boolean counts at arrival", `{"timestamp": true}`, time.Time{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ev, err := Decode([]byte(tc.body), MaxBodyBytes)
			if err != nil {
				t.Fatal(err)
			}
			if !ev.Timestamp.Equal(tc.want) || ev.TimestampInvalid != tc.invalid {
				t.Errorf("Timestamp = %v (invalid %v), want %v (invalid %v)", ev.Timestamp, ev.TimestampInvalid, tc.want, tc.invalid)
			}
		})
	}
}

func TestKeyIsAlwaysAStableUUID(t *testing.T) {
	t.Parallel()
	decode := func(body string) *Event {
		ev, err := Decode([]byte(body), MaxBodyBytes)
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}
	tests := []struct{ name, a, b string }{
		{"non-uuid event_id", `{"event_id": "evt-1"}`, `{"event_id": "evt-1", "user_id": "x"}`},
		{"no event_id: the body", `{"user_id": "x"}`, `{"user_id": "x"}`},
	}
	for _, tc := range tests {
		a, b := decode(tc.a), decode(tc.b)
		if _, err := uuid.Parse(a.Key); err != nil {
			t.Errorf("%s: Key %q is not a UUID", tc.name, a.Key)
		}
		if a.Key != b.Key {
			t.Errorf("%s: Key differs between %s and %s", tc.name, tc.a, tc.b)
		}
	}
	if decode(`{"event_id": "evt-1"}`).Key == decode(`{"event_id": "evt-2"}`).Key {
		t.Error("different event ids share a key")
	}
	if decode(`{"user_id": "x"}`).Key == decode(`{"user_id": "y"}`).Key {
		t.Error("different bodies without event_id share a key")
	}
	if got := decode(`{"event_id": "5F0C9F5E-1B2A-4C3D-8E9F-0A1B2C3D4E5F"}`).Key; got != "5f0c9f5e-1b2a-4c3d-8e9f-0a1b2c3d4e5f" {
		t.Errorf("upper-case UUID key = %q, want its canonical form", got)
	}
}

func TestCanonicalPath(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"/etc/shadow":          "/etc/shadow",
		"/etc//shadow":         "/etc/shadow",
		"/etc/./shadow":        "/etc/shadow",
		"/etc/ssh/../shadow":   "/etc/shadow",
		"//etc/passwd":         "/etc/passwd",
		"/etc/shadow/":         "/etc/shadow",
		"/../etc/shadow":       "/etc/shadow",
		"etc/shadow":           "etc/shadow",
		"/etc/passwd.bak":      "/etc/passwd.bak",
		"/home/x/etc/passwd":   "/home/x/etc/passwd",
		"":                     "",
		"/etc/sudoers.d/./90-": "/etc/sudoers.d/90-",
	}
	for in, want := range tests {
		if got := CanonicalPath(in); got != want {
			t.Errorf("CanonicalPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"event_id":"x","details":{"resource":"/etc/shadow"}}`))
	f.Add([]byte(`[1,2]`))
	f.Add([]byte("\xff"))
	f.Add([]byte(`{"user_id":"a\"b","user_id":"c","event_type":"x\u0041","details":{"ip_address":"1.2.3.4","n":[1,{"a":"}"}]}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		ev, err := Decode(body, MaxBodyBytes)
		if err != nil {
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error %v is not a DecodeError", err)
			}
			return
		}
		if _, err := uuid.Parse(ev.Key); err != nil {
			t.Fatalf("Key %q is not a UUID", ev.Key)
		}
		// The scanner must read what encoding/json reads.
		var m map[string]any
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatalf("Decode accepted what encoding/json refuses: %v", err)
		}
		for _, f := range []string{"user_id", "server_hostname", "event_type", "action_result", "event_id"} {
			want, _ := m[f].(string)
			if got, _ := ev.Field(f); got != want {
				t.Fatalf("Field(%q) = %q, encoding/json reads %q", f, got, want)
			}
		}
	})
}

func TestIsCanonicalUUIDIsWhatUUIDStringWrites(t *testing.T) {
	t.Parallel()
	for _, s := range []string{
		"9b2d13b0-90ee-40f1-86f1-8f021fb0d769", "9B2D13B0-90EE-40F1-86F1-8F021FB0D769",
		"9b2d13b090ee40f186f18f021fb0d769", "{9b2d13b0-90ee-40f1-86f1-8f021fb0d769}",
		"urn:uuid:9b2d13b0-90ee-40f1-86f1-8f021fb0d769", "9b2d13b0-90ee-40f1-86f1-8f021fb0d76g",
		"9b2d13b0-90ee-40f1-86f1_8f021fb0d769", "00000000-0000-0000-0000-000000000000", "", "x",
	} {
		u, err := uuid.Parse(s)
		want := err == nil && u.String() == s
		if got := isCanonicalUUID(s); got != want {
			t.Errorf("isCanonicalUUID(%q) = %v, want %v", s, got, want)
		}
	}
}
