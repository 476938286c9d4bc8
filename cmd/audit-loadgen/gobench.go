package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// goBenchResult is one line of `go test -bench -benchmem` output.
type goBenchResult struct {
	Package     string
	Name        string
	Iterations  int64
	NsPerOp     float64
	BytesPerOp  float64 // NaN without -benchmem
	AllocsPerOp float64 // NaN without -benchmem
	// Other holds the benchmark's own metrics (events/s, MB/s), by unit.
	Other map[string]float64
}

type goBenchJSON struct {
	Package     string             `json:"package"`
	Name        string             `json:"name"`
	Iterations  int64              `json:"iterations"`
	NsPerOp     float64            `json:"ns_per_op"`
	BytesPerOp  *float64           `json:"bytes_per_op"`
	AllocsPerOp *float64           `json:"allocs_per_op"`
	Other       map[string]float64 `json:"other,omitempty"`
}

func (g goBenchResult) MarshalJSON() ([]byte, error) {
	return json.Marshal(goBenchJSON{g.Package, g.Name, g.Iterations, g.NsPerOp, nullNaN(g.BytesPerOp), nullNaN(g.AllocsPerOp), g.Other})
}

func (g *goBenchResult) UnmarshalJSON(b []byte) error {
	var j goBenchJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*g = goBenchResult{j.Package, j.Name, j.Iterations, j.NsPerOp, nanNull(j.BytesPerOp), nanNull(j.AllocsPerOp), j.Other}
	return nil
}

func (g goBenchResult) otherMetrics() string {
	var parts []string
	for _, unit := range slices.Sorted(maps.Keys(g.Other)) {
		parts = append(parts, thousands(g.Other[unit])+" "+unit)
	}
	if len(parts) == 0 {
		return "—"
	}
	return strings.Join(parts, ", ")
}

func findGoBench(list []goBenchResult, pkg, name string) (goBenchResult, bool) {
	for _, g := range list {
		if g.Package == pkg && g.Name == name {
			return g, true
		}
	}
	return goBenchResult{}, false
}

// benchLine matches "BenchmarkName-2   123   456 ns/op   7 B/op ...".
var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+(\d+)\s+(.*)$`)

// parseGoBench reads the output of go test -bench for several packages:
// result lines follow a "pkg: PATH" line, and "ok PATH" ends a package.
func parseGoBench(r io.Reader) ([]goBenchResult, error) {
	var out []goBenchResult
	pkg := ""
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimSpace(p)
			continue
		}
		m := benchLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		res := goBenchResult{Package: pkg, Name: m[1], BytesPerOp: math.NaN(), AllocsPerOp: math.NaN()}
		res.Iterations, _ = strconv.ParseInt(m[2], 10, 64)
		f := strings.Fields(m[3])
		if len(f)%2 != 0 {
			return nil, fmt.Errorf("benchmark line %q: metrics do not pair up", line)
		}
		for i := 0; i < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("benchmark line %q: %q is not a number", line, f[i])
			}
			switch unit := f[i+1]; unit {
			case "ns/op":
				res.NsPerOp = v
			case "B/op":
				res.BytesPerOp = v
			case "allocs/op":
				res.AllocsPerOp = v
			default:
				if res.Other == nil {
					res.Other = map[string]float64{}
				}
				res.Other[unit] = v
			}
		}
		out = append(out, res)
	}
	return out, sc.Err()
}

// notHotPath are packages whose benchmarks run the whole service on
// private servers (internal/scale: minutes each, figures of the README's
// Scaling section), not the hot path's code.
var notHotPath = []string{"internal/scale"}

// benchmarkPackages lists the packages under dir whose tests hold a
// Benchmark function, as go test arguments (./internal/x), but for those of
// notHotPath.
func benchmarkPackages(dir string) ([]string, error) {
	var pkgs []string
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != dir && (strings.HasPrefix(name, ".") || name == "testdata" || name == "vendor" || name == "bin") {
				return filepath.SkipDir
			}
			if rel, err := filepath.Rel(dir, path); err == nil && slices.Contains(notHotPath, filepath.ToSlash(rel)) {
				return filepath.SkipDir
			}
			// Another module (deploy/) is not part of this one.
			if path != dir {
				if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil {
					return filepath.SkipDir
				}
			}
			return nil
		}
		if !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte("\nfunc Benchmark")) {
			rel, err := filepath.Rel(dir, filepath.Dir(path))
			if err != nil {
				return err
			}
			pkg := "./" + filepath.ToSlash(rel)
			if !slices.Contains(pkgs, pkg) {
				pkgs = append(pkgs, pkg)
			}
		}
		return nil
	})
	slices.Sort(pkgs)
	return pkgs, err
}

// runGoBench runs the module's benchmarks and parses their results. env
// is added to the environment (the test servers' addresses).
func runGoBench(ctx context.Context, dir, benchtime string, env []string, log io.Writer) ([]goBenchResult, string, error) {
	pkgs, err := benchmarkPackages(dir)
	if err != nil {
		return nil, "", fmt.Errorf("find benchmarks: %w", err)
	}
	if len(pkgs) == 0 {
		return nil, "", fmt.Errorf("no package under %s has a benchmark", dir)
	}
	args := append([]string{"test", "-run", "^$", "-bench", ".", "-benchmem", "-benchtime", benchtime}, pkgs...)
	display := "go " + strings.Join(quoteArgs(args), " ")
	fmt.Fprintf(log, "bench: %s\n", display)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return nil, display, fmt.Errorf("%s: %w\n%s", display, err, tailLines(out.String(), 30))
	}
	res, err := parseGoBench(&out)
	if mod := modulePath(dir); mod != "" {
		for i := range res {
			res[i].Package = strings.TrimPrefix(res[i].Package, mod+"/")
		}
	}
	return res, display, err
}

// modulePath reads the module line of dir/go.mod ("" when there is none).
func modulePath(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return ""
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if m, ok := strings.CutPrefix(strings.TrimSpace(line), "module "); ok {
			return strings.Trim(strings.TrimSpace(m), `"`)
		}
	}
	return ""
}

// quoteArgs quotes the arguments a shell would split or expand.
func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t'\"$^*?[]{}()|&;<>\\`") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out[i] = a
	}
	return out
}

// tailLines returns the last n lines of s.
func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
