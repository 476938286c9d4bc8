package event

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// FuzzValid holds valid to json.Valid's answer on any input.
func FuzzValid(f *testing.F) {
	for _, s := range []string{
		``, ` `, `{}`, `[]`, `{ }`, `[ ]`, `{"a":1}`, `{"a":1,}`, `[1,]`, `[,1]`, `{,}`, `{"a"}`, `{"a":}`,
		`{"a" : [1, 2.5, -0, -0.1e+10, 1E5, true, false, null, "x\"y\\u00e9\n"]}`,
		`01`, `-`, `1.`, `.5`, `1e`, `1e+`, `-a`, `tru`, `nulll`, `"\u12"`, `"\x"`, "\"\x01\"", `"abc`,
		`{"a":1}}`, `{"a":1} {}`, `[[[]]]`, `[[[]]`, `{"a":{"b":{}}}`, "\t{\r\n}\n", `"\/"`, `1 2`,
		`{"event_id": "e0015ed4-d7e7-4708-a6eb-94a00675d157", "details": {"pid": 16739, "tty": "/dev/pts/0"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if got, want := valid(data), json.Valid(data); got != want {
			t.Fatalf("valid(%q) = %v, json.Valid says %v", data, got, want)
		}
	})
}

func TestValidKeepsTheNestingLimitOfEncodingJSON(t *testing.T) {
	t.Parallel()
	for _, depth := range []int{63, 64, 65, maxDepth, maxDepth + 1} {
		for _, open := range []string{"[", `{"a":`} {
			close := map[string]string{"[": "]", `{"a":`: "}"}[open]
			data := []byte(strings.Repeat(open, depth) + "1" + strings.Repeat(close, depth))
			if got, want := valid(data), json.Valid(data); got != want {
				t.Errorf("%d levels of %s: valid = %v, json.Valid = %v", depth, open, got, want)
			}
		}
	}
}

func TestDecodeReadsBodiesWithManyMembers(t *testing.T) {
	t.Parallel()
	// Past the members the event holds inline, top and details must still
	// be read whole and apart.
	for _, n := range []int{0, 5, 15, 16, 17, 40} {
		var top, details []string
		for i := range n {
			top = append(top, fmt.Sprintf(`"t%d": %d`, i, i))
			details = append(details, fmt.Sprintf(`"d%d": "v%d"`, i, i))
		}
		body := fmt.Sprintf(`{%s"user_id": "alice", "details": {%s"ip_address": "10.0.0.1"}, "after": "x"}`,
			strings.Join(append(top, ""), ", "), strings.Join(append(details, ""), ", "))
		ev, err := Decode([]byte(body), 0)
		if err != nil {
			t.Fatalf("%d members: %v", n, err)
		}
		if ev.UserID != "alice" || ev.ClientIP != "10.0.0.1" {
			t.Errorf("%d members: user %q, client ip %q", n, ev.UserID, ev.ClientIP)
		}
		for _, f := range []struct{ name, want string }{
			{"after", "x"}, {fmt.Sprintf("t%d", n-1), fmt.Sprint(n - 1)}, {fmt.Sprintf("details.d%d", n-1), fmt.Sprintf("v%d", n-1)},
		} {
			if n == 0 && f.name != "after" {
				continue
			}
			if got, ok := ev.Field(f.name); !ok || got != f.want {
				t.Errorf("%d members: %s = %q, %v; want %q", n, f.name, got, ok, f.want)
			}
		}
	}
}
