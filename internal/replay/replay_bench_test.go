package replay

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/rules"
	rulefiles "github.com/audit-platform/audit-log-analysis/rules"
)

// benchEvents builds n generator-shaped events: mostly background, with a
// failed login every few events spread over many users and hosts.
func benchEvents(n int) []byte {
	var buf bytes.Buffer
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		ts := start.Add(time.Duration(i) * 10 * time.Millisecond).Format("2006-01-02T15:04:05.000000Z")
		typ, result, extra := "file_accessed", "SUCCESS", `"resource": "/var/log/app.log"`
		switch i % 7 {
		case 0:
			typ, result, extra = "user_login", "FAILURE", `"reason": "Incorrect password", "ip_address": "192.168.1.150", "protocol": "ssh"`
		case 1:
			typ, result, extra = "file_modified", "MODIFIED", `"resource": "/etc/hosts"`
		case 2:
			typ, result, extra = "user_login", "SUCCESS", `"ip_address": "10.0.0.7", "protocol": "ssh"`
		}
		fmt.Fprintf(&buf, `{"event_id": "00000000-0000-4000-8000-%012d", "timestamp": %q, "source_service": "audit-event-generator", "server_hostname": "prod-web-%02d", "event_type": %q, "severity": "INFO", "user_id": "user%d", "action_result": %q, "details": {%s}}`+"\n",
			i, ts, i%13, typ, i%997, result, extra)
	}
	return buf.Bytes()
}

// BenchmarkReplay measures the whole replay path: reading lines, decoding,
// matching the built-in rules, the in-memory store and encoding alerts.
func BenchmarkReplay(b *testing.B) {
	set, err := rules.Parse(rulefiles.DefaultName, rulefiles.Default)
	if err != nil {
		b.Fatal(err)
	}
	const n = 100_000
	input := benchEvents(n)
	b.SetBytes(int64(len(input)))
	b.ResetTimer()
	for range b.N {
		sum, err := Run(context.Background(), []Input{{Name: "bench", Reader: bytes.NewReader(input)}}, io.Discard, Options{Rules: set})
		if err != nil {
			b.Fatal(err)
		}
		if sum.Events != n {
			b.Fatalf("replayed %d events, want %d", sum.Events, n)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "events/s")
}
