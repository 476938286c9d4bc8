// Command testsummary reads "go test -json" on standard input and writes
// what a plain "go test" would (a line per package, the output of failed
// tests), then one last line counting the skipped tests and naming the
// servers they were missing. It exits 1 when a test or a build failed.
//
//	go test -json ./... | go run ./internal/testenv/testsummary
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
)

// testEvent is one line of go test -json (cmd/test2json).
type testEvent struct {
	Action     string
	Package    string
	Test       string
	Output     string
	ImportPath string
}

// skipReasons turn a skip message into what was missing; the first
// pattern that matches wins.
var skipReasons = []struct {
	re     *regexp.Regexp
	format string
}{
	{regexp.MustCompile(`(\S+) is not reachable at (\S+)`), "$1 not reachable at $2"},
	{regexp.MustCompile(`(\S+) is not used with -short`), "$1 (not used with -short)"},
	{regexp.MustCompile(`(\S+) is not installed`), "$1 not installed"},
}

func main() {
	failed, err := summarize(os.Stdin, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testsummary:", err)
		os.Exit(2)
	}
	if failed {
		os.Exit(1)
	}
}

// summarize copies the run to w as plain go test output, then the skip
// line. It reports whether anything failed.
func summarize(r io.Reader, w io.Writer) (failed bool, err error) {
	type key struct{ pkg, test string }
	outputs := map[key]*strings.Builder{}
	skipped := map[string]int{}
	total := 0
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var ev testEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			// Not an event (go vet or the toolchain writing plain text).
			fmt.Fprintln(w, sc.Text())
			continue
		}
		k := key{ev.Package, ev.Test}
		switch {
		case ev.Action == "build-output":
			fmt.Fprint(w, ev.Output)
		case ev.Action == "build-fail":
			failed = true
		case ev.Test == "":
			if ev.Action == "fail" {
				failed = true
			}
			if ev.Action == "output" && ev.Output != "PASS\n" {
				fmt.Fprint(w, ev.Output)
			}
		case ev.Action == "output":
			if outputs[k] == nil {
				outputs[k] = &strings.Builder{}
			}
			outputs[k].WriteString(ev.Output)
		case ev.Action == "fail":
			failed = true
			if b := outputs[k]; b != nil {
				fmt.Fprint(w, b.String())
			}
			delete(outputs, k)
		case ev.Action == "skip":
			total++
			skipped[skipReason(outputs[k])]++
			delete(outputs, k)
		case ev.Action == "pass":
			delete(outputs, k)
		}
	}
	if err := sc.Err(); err != nil {
		return true, err
	}
	fmt.Fprintln(w, skipLine(total, skipped))
	return failed, nil
}

// skipReason finds what a skipped test was missing in its output.
func skipReason(out *strings.Builder) string {
	if out == nil {
		return "no reason given"
	}
	text := out.String()
	for _, r := range skipReasons {
		if m := r.re.FindStringSubmatchIndex(text); m != nil {
			return string(r.re.ExpandString(nil, r.format, text, m))
		}
	}
	return "other reasons"
}

func skipLine(total int, reasons map[string]int) string {
	if total == 0 {
		return "skipped: 0 tests"
	}
	parts := make([]string, 0, len(reasons))
	for _, r := range slices.Sorted(maps.Keys(reasons)) {
		parts = append(parts, fmt.Sprintf("%s (%d)", r, reasons[r]))
	}
	return fmt.Sprintf("skipped: %d tests: %s", total, strings.Join(parts, ", "))
}
