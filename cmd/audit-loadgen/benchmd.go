package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// benchResults is everything one bench run measured. It is rendered as
// BENCHMARKS.md and also kept in it as JSON, so that the next run shows
// these figures as the previous ones.
type benchResults struct {
	Version   int         `json:"version"`
	Date      time.Time   `json:"date"`
	Revision  string      `json:"revision,omitempty"`
	Machine   machineInfo `json:"machine"`
	RabbitMQ  string      `json:"rabbitmq"`
	Redis     string      `json:"redis"`
	GoVersion string      `json:"go"`
	LoadStart loadAverage `json:"load_start"`
	LoadEnd   loadAverage `json:"load_end"`
	// Command is the bench command line; Commands are what it ran.
	Command  string        `json:"command"`
	Commands []string      `json:"commands,omitempty"`
	Settings benchSettings `json:"settings"`
	// Figures are in the order they are shown.
	Figures        []figureSummary `json:"figures"`
	GoBench        []goBenchResult `json:"go_bench,omitempty"`
	GoBenchCommand string          `json:"go_bench_command,omitempty"`
	// Notes describe how figures were measured, for people.
	Notes []string `json:"notes,omitempty"`
}

// benchSettings are the sizes a run used.
type benchSettings struct {
	Rounds        int       `json:"rounds"`
	DrainEvents   int       `json:"drain_events"`
	Loads         []float64 `json:"loads"`
	Duration      string    `json:"duration"`
	ReplayEvents  int       `json:"replay_events"`
	RedisGroups   int       `json:"redis_groups"`
	TTLLimitSecs  float64   `json:"ttl_limit_seconds"`
	TTLLimitNote  string    `json:"ttl_limit_note,omitempty"`
	LatencyStream string    `json:"latency_stream,omitempty"`
}

// figureSummary is one measured quantity: a value per round, their median
// and range.
type figureSummary struct {
	Key    string    `json:"key"`
	Label  string    `json:"label"`
	Unit   string    `json:"unit"`
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	Values []float64 `json:"values"`
}

// newFigure summarises the values of the rounds (NaNs, for rounds that
// measured nothing, are left out).
func newFigure(key, label, unit string, values []float64) figureSummary {
	f := figureSummary{Key: key, Label: label, Unit: unit, Values: values}
	f.Median, f.Min, f.Max = medianRange(values)
	return f
}

// medianRange returns the median, least and greatest of the values that
// are not NaN; all NaN when none is. The median of an even count is the
// mean of the middle two.
func medianRange(values []float64) (median, lo, hi float64) {
	var v []float64
	for _, x := range values {
		if !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return math.NaN(), math.NaN(), math.NaN()
	}
	slices.Sort(v)
	n := len(v)
	median = v[n/2]
	if n%2 == 0 {
		median = (v[n/2-1] + v[n/2]) / 2
	}
	return median, v[0], v[n-1]
}

func (r *benchResults) figure(key string) (figureSummary, bool) {
	for _, f := range r.Figures {
		if f.Key == key {
			return f, true
		}
	}
	return figureSummary{}, false
}

// target is one of the goals for a figure's median (or, with
// useMax, its greatest value).
type target struct {
	Text   string
	Key    string
	Op     string // ">=", "<=" or "<"
	Limit  float64
	UseMax bool
}

// targets are the goals the figures are held to. The TTL limit comes from
// the rules, so it is passed in.
func targets(ttlLimit float64) []target {
	return []target{
		{"drain rate ≥ 0.95 × the ack-only consumer's", "drain.ratio", ">=", 0.95, false},
		{"CPU per event ≤ 1.25 × the ack-only consumer's", "cpu.ratio", "<=", 1.25, false},
		{"peak RSS ≤ 48 MiB with the backlog", "rss.service", "<=", 48, false},
		{"p99 event-to-alert latency < 20 ms at 2,000 events/s", "latency.2000.p99", "<", 20, false},
		{"replay ≥ 250,000 events/s on one core", "replay.one_core", ">=", 250000, false},
		{"Redis ≤ 250 bytes per one-event group", "redis.bytes_per_group", "<=", 250, false},
		{fmt.Sprintf("a one-event group's keys gone within window + lateness (%s)", formatSeconds(ttlLimit)), "redis.max_ttl", "<=", ttlLimit, true},
	}
}

// met says whether v meets t.
func (t target) met(v float64) bool {
	switch t.Op {
	case ">=":
		return v >= t.Limit
	case "<=":
		return v <= t.Limit
	case "<":
		return v < t.Limit
	}
	return false
}

func formatSeconds(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(time.Second).String()
}

// Markers of the parts of BENCHMARKS.md that are read back.
const (
	profileHeading = "## Profile findings"
	dataStart      = "<!-- bench-data"
	dataEnd        = "-->"
)

// defaultProfileFindings is the section written until someone records
// findings by hand.
const defaultProfileFindings = profileHeading + `

Findings from profiles (` + "`go test -cpuprofile`/`-memprofile` of the benchmarks below, `pprof` of a bench run" + `) are recorded here by hand. ` +
	"`make bench` rewrites the rest of this file and keeps this section as it is.\n"

// previousFile is what a rewrite keeps from the file it replaces.
type previousFile struct {
	Results *benchResults
	// Profile is the "## Profile findings" section, heading included.
	Profile string
}

// readPrevious reads an earlier BENCHMARKS.md. A file without a data
// block gives no previous figures; a block that does not decode is an
// error, so that a hand edit gone wrong is noticed instead of dropped.
func readPrevious(b []byte) (previousFile, error) {
	var p previousFile
	s := string(b)
	if i := strings.Index(s, "\n"+profileHeading+"\n"); i >= 0 || strings.HasPrefix(s, profileHeading+"\n") {
		if i < 0 {
			i = -1
		}
		rest := s[i+1:]
		end := len(rest)
		for _, stop := range []string{"\n## ", "\n" + dataStart} {
			if j := strings.Index(rest[len(profileHeading):], stop); j >= 0 {
				end = min(end, len(profileHeading)+j+1)
			}
		}
		p.Profile = strings.TrimRight(rest[:end], "\n") + "\n"
	}
	i := strings.LastIndex(s, dataStart)
	if i < 0 {
		return p, nil
	}
	body := s[i+len(dataStart):]
	j := strings.Index(body, dataEnd)
	if j < 0 {
		return p, errors.New("bench-data block is not closed with -->")
	}
	var r benchResults
	if err := json.Unmarshal([]byte(body[:j]), &r); err != nil {
		return p, fmt.Errorf("bench-data block: %w", err)
	}
	p.Results = &r
	return p, nil
}

// render writes BENCHMARKS.md.
func render(w io.Writer, r *benchResults, prev previousFile) error {
	var b bytes.Buffer
	var old *benchResults
	if prev.Results != nil {
		old = prev.Results
	}
	fmt.Fprintf(&b, "# Benchmarks\n\n")
	fmt.Fprintf(&b, "Written by `make bench` (`audit-loadgen bench`) on %s", r.Date.UTC().Format("2006-01-02 15:04 UTC"))
	if r.Revision != "" {
		fmt.Fprintf(&b, " at revision `%s`", r.Revision)
	}
	fmt.Fprintf(&b, ". Everything but the section \"Profile findings\" is rewritten by the next run; ")
	fmt.Fprintf(&b, "the figures of this run are kept as JSON at the end of the file and shown as the previous ones then.\n\n")
	if busy, why := machineBusy(r); busy {
		fmt.Fprintf(&b, "> **Warning: the machine was busy** (%s). Other work competed for the CPUs: the figures are lower than an idle machine gives, and the ratios less reliable.\n\n", why)
	}

	b.WriteString("## Machine\n\n| | |\n|---|---|\n")
	fmt.Fprintf(&b, "| CPU | %s, %d logical cores |\n", mdEscape(r.Machine.Model), r.Machine.CPUs)
	fmt.Fprintf(&b, "| Memory | %.1f GiB |\n", float64(r.Machine.MemTotal)/(1<<30))
	if r.Machine.Kernel != "" {
		fmt.Fprintf(&b, "| Kernel | Linux %s |\n", mdEscape(r.Machine.Kernel))
	}
	fmt.Fprintf(&b, "| RabbitMQ | %s |\n| Redis | %s |\n| Go | %s |\n", mdEscape(r.RabbitMQ), mdEscape(r.Redis), mdEscape(r.GoVersion))
	fmt.Fprintf(&b, "| Load average (1, 5, 15 min) | at start %s; at end %s |\n\n", r.LoadStart, r.LoadEnd)

	b.WriteString("## Commands\n\n```\n")
	b.WriteString(r.Command + "\n")
	for _, c := range r.Commands {
		b.WriteString(c + "\n")
	}
	b.WriteString("```\n\n")
	fmt.Fprintf(&b, "%s; in each: the drain of a %s-event backlog by the service, then by the ack-only consumer; ", plural(r.Settings.Rounds, "round"), thousands(float64(r.Settings.DrainEvents)))
	fmt.Fprintf(&b, "event-to-alert latency at %s events/s for %s each; replay of %s events on one core and on all; ",
		joinLoads(r.Settings.Loads), r.Settings.Duration, thousands(float64(r.Settings.ReplayEvents)))
	fmt.Fprintf(&b, "Redis memory for %s one-event groups. Figures are the median of the rounds and the range (least – greatest).\n\n", thousands(float64(r.Settings.RedisGroups)))

	b.WriteString("## Targets\n\n| Target | Measured | Met |\n|---|---|---|\n")
	for _, t := range targets(r.Settings.TTLLimitSecs) {
		f, ok := r.figure(t.Key)
		v := f.Median
		which := "median"
		if t.UseMax {
			v, which = f.Max, "longest"
		}
		switch {
		case !ok || math.IsNaN(v):
			fmt.Fprintf(&b, "| %s | not measured | — |\n", t.Text)
		default:
			verdict := "**not met**"
			if t.met(v) {
				verdict = "met"
			}
			fmt.Fprintf(&b, "| %s | %s %s | %s |\n", t.Text, formatValue(v, f.Unit), which, verdict)
		}
	}
	b.WriteString("\n")

	b.WriteString("## Figures\n\n")
	if old != nil {
		fmt.Fprintf(&b, "| Measurement | Median | Range | Previous median (%s) |\n|---|---|---|---|\n", old.Date.UTC().Format("2006-01-02"))
	} else {
		b.WriteString("| Measurement | Median | Range | Previous median |\n|---|---|---|---|\n")
	}
	for _, f := range r.Figures {
		prevText := "—"
		if old != nil {
			if pf, ok := old.figure(f.Key); ok && !math.IsNaN(pf.Median) {
				prevText = formatValue(pf.Median, pf.Unit)
			}
		}
		rangeText := "—"
		if !math.IsNaN(f.Min) {
			rangeText = formatNumber(f.Min, f.Unit) + " – " + formatValue(f.Max, f.Unit)
		}
		med := "not measured"
		if !math.IsNaN(f.Median) {
			med = formatValue(f.Median, f.Unit)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", mdEscape(f.Label), med, rangeText, prevText)
	}
	b.WriteString("\n")
	if old != nil {
		fmt.Fprintf(&b, "The previous figures are those of %s", old.Date.UTC().Format("2006-01-02 15:04 UTC"))
		if old.Revision != "" {
			fmt.Fprintf(&b, " at revision `%s`", old.Revision)
		}
		fmt.Fprintf(&b, ": `%s`", old.Command)
		if busy, why := machineBusy(old); busy {
			fmt.Fprintf(&b, ", on a busy machine (%s)", why)
		}
		b.WriteString(".\n\n")
	}
	if len(r.Notes) > 0 {
		b.WriteString("How they were measured:\n\n")
		for _, n := range r.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
		b.WriteString("\n")
	}

	b.WriteString("## Go benchmarks\n\n")
	if len(r.GoBench) == 0 {
		b.WriteString("Not run this time (`-gobench=false`).\n\n")
	} else {
		fmt.Fprintf(&b, "`%s`\n\n", r.GoBenchCommand)
		b.WriteString("| Package | Benchmark | ns/op | B/op | allocs/op | Other | Previous ns/op |\n|---|---|---|---|---|---|---|\n")
		for _, g := range r.GoBench {
			prevText := "—"
			if old != nil {
				if pg, ok := findGoBench(old.GoBench, g.Package, g.Name); ok {
					prevText = thousands(pg.NsPerOp)
				}
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", g.Package, mdEscape(g.Name),
				thousands(g.NsPerOp), optional(g.BytesPerOp), optional(g.AllocsPerOp), mdEscape(g.otherMetrics()), prevText)
		}
		b.WriteString("\n")
	}

	if prev.Profile != "" {
		b.WriteString(prev.Profile)
	} else {
		b.WriteString(defaultProfileFindings)
	}
	b.WriteString("\n")

	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode the figures: %w", err)
	}
	// "--" cannot occur in JSON outside strings, and none of ours holds it
	// next to ">"; an HTML comment must not contain "-->".
	if bytes.Contains(data, []byte(dataEnd)) {
		return errors.New("the figures contain \"-->\"; they cannot go into an HTML comment")
	}
	fmt.Fprintf(&b, "%s\n%s\n%s\n", dataStart, data, dataEnd)
	_, err = w.Write(b.Bytes())
	return err
}

// machineBusy reports whether the load average says other work ran:
// more than half the cores busy at the start or the end of the run, beyond
// what the run itself causes at its end.
func machineBusy(r *benchResults) (bool, string) {
	cores := float64(max(r.Machine.CPUs, 1))
	switch {
	case r.LoadStart[0] > cores/2:
		return true, fmt.Sprintf("1-minute load average %.2f at the start, on %d cores", r.LoadStart[0], r.Machine.CPUs)
	case r.LoadEnd[0] > cores*1.5:
		return true, fmt.Sprintf("1-minute load average %.2f at the end, on %d cores", r.LoadEnd[0], r.Machine.CPUs)
	}
	return false, ""
}

// formatValue prints a figure in its unit, with the precision it merits.
func formatValue(v float64, unit string) string {
	if unit == "ratio" {
		return formatNumber(v, unit) + "×"
	}
	return formatNumber(v, unit) + " " + unit
}

// formatNumber is formatValue without the unit.
func formatNumber(v float64, unit string) string {
	switch unit {
	case "events/s", "B", "samples":
		return thousands(v)
	case "ratio":
		return strconv.FormatFloat(v, 'f', 3, 64)
	case "µs", "ms", "MiB", "keys", "s":
		if math.Abs(v) >= 1000 {
			return thousands(v)
		}
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}

// thousands rounds v and groups its digits in threes.
func thousands(v float64) string {
	s := strconv.FormatFloat(math.Round(v), 'f', 0, 64)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

func optional(v float64) string {
	if math.IsNaN(v) {
		return "—"
	}
	return thousands(v)
}

func joinLoads(loads []float64) string {
	parts := make([]string, len(loads))
	for i, l := range loads {
		parts[i] = thousands(l)
	}
	return strings.Join(parts, " and ")
}

// mdEscape keeps a value from breaking a table row.
func mdEscape(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}

// figureJSON is figureSummary as stored: JSON has no NaN, so a value not
// measured is null.
type figureJSON struct {
	Key    string     `json:"key"`
	Label  string     `json:"label"`
	Unit   string     `json:"unit"`
	Median *float64   `json:"median"`
	Min    *float64   `json:"min"`
	Max    *float64   `json:"max"`
	Values []*float64 `json:"values"`
}

func (f figureSummary) MarshalJSON() ([]byte, error) {
	j := figureJSON{Key: f.Key, Label: f.Label, Unit: f.Unit, Median: nullNaN(f.Median), Min: nullNaN(f.Min), Max: nullNaN(f.Max)}
	for _, v := range f.Values {
		j.Values = append(j.Values, nullNaN(v))
	}
	return json.Marshal(j)
}

func (f *figureSummary) UnmarshalJSON(b []byte) error {
	var j figureJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*f = figureSummary{Key: j.Key, Label: j.Label, Unit: j.Unit, Median: nanNull(j.Median), Min: nanNull(j.Min), Max: nanNull(j.Max)}
	for _, v := range j.Values {
		f.Values = append(f.Values, nanNull(v))
	}
	return nil
}

func nullNaN(v float64) *float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil
	}
	return &v
}

func nanNull(p *float64) float64 {
	if p == nil {
		return math.NaN()
	}
	return *p
}

// plural is "1 round", "3 rounds".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}
