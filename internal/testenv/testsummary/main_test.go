package main

import (
	"strings"
	"testing"
)

func TestSummarizeCountsSkipsByMissingServerAndShowsFailures(t *testing.T) {
	t.Parallel()
	in := strings.Join([]string{
		`{"Action":"start","Package":"p/a"}`,
		`{"Action":"run","Package":"p/a","Test":"TestOK"}`,
		`{"Action":"output","Package":"p/a","Test":"TestOK","Output":"=== RUN   TestOK\n"}`,
		`{"Action":"pass","Package":"p/a","Test":"TestOK"}`,
		`{"Action":"output","Package":"p/a","Test":"TestMQ","Output":"    x_test.go:9: RabbitMQ is not reachable at 127.0.0.1:5672 (refused); start it with: rabbitmq-server -detached\n"}`,
		`{"Action":"skip","Package":"p/a","Test":"TestMQ"}`,
		`{"Action":"output","Package":"p/a","Test":"TestMQ2","Output":"    y_test.go:9: RabbitMQ is not reachable at 127.0.0.1:5672 (refused)\n"}`,
		`{"Action":"skip","Package":"p/a","Test":"TestMQ2"}`,
		`{"Action":"output","Package":"p/a","Test":"TestPG","Output":"    z_test.go:1: PostgreSQL is not used with -short\n"}`,
		`{"Action":"skip","Package":"p/a","Test":"TestPG"}`,
		`{"Action":"output","Package":"p/a","Test":"TestBad","Output":"    bad_test.go:3: it broke\n"}`,
		`{"Action":"fail","Package":"p/a","Test":"TestBad"}`,
		`{"Action":"output","Package":"p/a","Output":"FAIL\n"}`,
		`{"Action":"output","Package":"p/a","Output":"FAIL\tp/a\t0.1s\n"}`,
		`{"Action":"fail","Package":"p/a"}`,
		`{"Action":"output","Package":"p/b","Output":"PASS\n"}`,
		`{"Action":"output","Package":"p/b","Output":"ok  \tp/b\t0.2s\n"}`,
		`{"Action":"pass","Package":"p/b"}`,
	}, "\n")
	var out strings.Builder
	failed, err := summarize(strings.NewReader(in), &out)
	if err != nil || !failed {
		t.Fatalf("summarize = %v, %v; want a failure", failed, err)
	}
	want := "    bad_test.go:3: it broke\nFAIL\nFAIL\tp/a\t0.1s\nok  \tp/b\t0.2s\n" +
		"skipped: 3 tests: PostgreSQL (not used with -short) (1), RabbitMQ not reachable at 127.0.0.1:5672 (2)\n"
	if out.String() != want {
		t.Errorf("output =\n%s\nwant\n%s", out.String(), want)
	}
}

func TestSummarizeOfACleanRunSaysNothingWasSkipped(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	failed, err := summarize(strings.NewReader(`{"Action":"output","Package":"p","Output":"ok  \tp\t0.1s\n"}`+"\n"+`{"Action":"pass","Package":"p"}`), &out)
	if err != nil || failed || out.String() != "ok  \tp\t0.1s\nskipped: 0 tests\n" {
		t.Errorf("summarize = %v, %v, %q", failed, err, out.String())
	}
}

func TestABuildFailureFails(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	failed, _ := summarize(strings.NewReader(`{"ImportPath":"p","Action":"build-output","Output":"p/x.go:1: syntax error\n"}`+"\n"+`{"ImportPath":"p","Action":"build-fail"}`), &out)
	if !failed || !strings.Contains(out.String(), "syntax error") {
		t.Errorf("failed %v, output %q", failed, out.String())
	}
}
