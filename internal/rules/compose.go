package rules

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// ErrNoEnabledRules is returned by Compose when the rules it is given
// enable none: detection would be off without anyone noticing.
var ErrNoEnabledRules = errors.New("no enabled rules")

// ExpandPaths turns rule paths into rule files: a file stays as it is, a
// directory stands for its *.yaml and *.yml files in name order (not its
// subdirectories, nor hidden files such as the ..data links of a mounted
// Kubernetes ConfigMap). A directory without rule files is not an error; a
// path that does not exist is.
func ExpandPaths(paths []string) ([]string, error) {
	var files []string
	var errs []error
	for _, p := range paths {
		info, err := os.Stat(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("rules path: %w", err))
			continue
		}
		if !info.IsDir() {
			files = append(files, p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("rules directory: %w", err))
			continue
		}
		for _, e := range entries {
			name := e.Name()
			if strings.HasPrefix(name, ".") || !(strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml")) {
				continue
			}
			full := filepath.Join(p, name)
			// A ConfigMap key is a symbolic link to a file; follow it.
			if st, err := os.Stat(full); err != nil || st.IsDir() {
				if err != nil && !errors.Is(err, fs.ErrNotExist) {
					errs = append(errs, fmt.Errorf("rules file: %w", err))
				}
				continue
			}
			files = append(files, full)
		}
	}
	return files, errors.Join(errs...)
}

// LoadPaths reads and validates the rule files of paths (see ExpandPaths),
// one Set per file, reporting the problems of every file together. A file
// that defines no rules at all is an error: it is a mistake, such as a
// template that rendered empty, more often than a choice.
func LoadPaths(paths []string) ([]*Set, error) {
	files, err := ExpandPaths(paths)
	errs := []error{err}
	var sets []*Set
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, fmt.Errorf("read rules file: %w", err))
			continue
		}
		set, err := ParseFile(f, data)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if len(set.Rules) == 0 {
			errs = append(errs, fmt.Errorf("%s: the file defines no rules (to turn a built-in rule off, give its id with enabled: false)", f))
			continue
		}
		sets = append(sets, set)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return sets, nil
}

// ParseFile is Parse that also records, in each rule, the file it comes
// from and a digest of its definition, so that a reload can say which
// rules changed, and the file's Lint warnings.
func ParseFile(source string, data []byte) (*Set, error) {
	set, err := Parse(source, data)
	if err != nil {
		return nil, err
	}
	set.Warnings = Lint(source, data)
	digests := ruleDigests(data)
	for _, r := range set.Rules {
		r.File = source
		r.Digest = digests[r.ID()]
	}
	return set, nil
}

// Compose makes the running rule set: the built-in rules (nil for none)
// with the rules of each user file added in order. A user rule with a
// built-in rule's id replaces it in place; the same id in two user files is
// an error. It returns the replacements made, for the log, and
// ErrNoEnabledRules (wrapped) when no rule is enabled.
func Compose(builtin *Set, files []*Set) (*Set, []string, error) {
	out := &Set{}
	var sources []string
	index := map[string]int{}
	if builtin != nil {
		for _, r := range builtin.Rules {
			if r.File == "" {
				c := *r
				c.File = builtin.Source
				r = &c
			}
			index[r.ID()] = len(out.Rules)
			out.Rules = append(out.Rules, r)
		}
		sources = append(sources, builtin.Source)
	}
	var replaced []string
	var errs []error
	defined := map[string]*Rule{}
	for _, f := range files {
		sources = append(sources, f.Source)
		if err := checkHasEffect(f, index); err != nil {
			errs = append(errs, err)
		}
		for _, r := range f.Rules {
			if r.File == "" {
				c := *r
				c.File = f.Source
				r = &c
			}
			if prev, dup := defined[r.ID()]; dup {
				errs = append(errs, fmt.Errorf("%s:%d: rule %q: also defined at %s:%d", r.File, r.Line, r.ID(), prev.File, prev.Line))
				continue
			}
			defined[r.ID()] = r
			if i, ok := index[r.ID()]; ok {
				replaced = append(replaced, fmt.Sprintf("%s (%s) replaced by %s:%d", r.ID(), out.Rules[i].File, r.File, r.Line))
				out.Rules[i] = r
				continue
			}
			index[r.ID()] = len(out.Rules)
			out.Rules = append(out.Rules, r)
		}
	}
	if builtin != nil {
		out.Warnings = append(out.Warnings, builtin.Warnings...)
	}
	for _, f := range files {
		out.Warnings = append(out.Warnings, f.Warnings...)
	}
	out.Source = strings.Join(sources, ",")
	out.Hash = composedHash(builtin, files)
	if out.Enabled() == 0 {
		what := "no rules"
		if len(out.Rules) > 0 {
			what = fmt.Sprintf("all %d rules disabled", len(out.Rules))
		}
		if len(sources) == 0 {
			sources = []string{"nothing: no built-in rules and no rule files"}
		}
		errs = append([]error{fmt.Errorf("%w (%s in %s): detection would be off", ErrNoEnabledRules, what, strings.Join(sources, ", "))}, errs...)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, nil, err
	}
	return out, replaced, nil
}

// checkHasEffect refuses a file whose rules are all disabled and replace
// no built-in rule: it changes nothing, which is more likely a mistake (a
// rule switched off and forgotten, a wrong file) than a wish. Disabling a
// built-in rule is an effect.
func checkHasEffect(f *Set, builtin map[string]int) error {
	for _, r := range f.Rules {
		if _, replaces := builtin[r.ID()]; r.Enabled || replaces {
			return nil
		}
	}
	return fmt.Errorf("%s: every rule in the file is disabled and none replaces a built-in rule: the file changes nothing (remove it, or enable a rule)", f.Source)
}

// composedHash identifies a composition: the same files with the same
// content in the same order give the same hash. A single built-in set
// keeps its own hash.
func composedHash(builtin *Set, files []*Set) string {
	if len(files) == 0 && builtin != nil {
		return builtin.Hash
	}
	h := sha256.New()
	parts := slices.Clone(files)
	if builtin != nil {
		parts = append([]*Set{builtin}, parts...)
	}
	for _, s := range parts {
		fmt.Fprintf(h, "%d:%s%d:%s", len(s.Source), s.Source, len(s.Hash), s.Hash)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// ruleDigests hashes each rule's definition, by id, ignoring comments and
// layout. The file is valid: Parse accepted it.
func ruleDigests(data []byte) map[string]string {
	out := map[string]string{}
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil || len(doc.Content) == 0 {
		return out
	}
	root := doc.Content[0]
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value != "rules" {
			continue
		}
		for _, item := range root.Content[i+1].Content {
			id := ""
			for j := 0; j+1 < len(item.Content); j += 2 {
				if item.Content[j].Value == "id" {
					id = strings.TrimSpace(item.Content[j+1].Value)
				}
			}
			stripComments(item)
			b, err := yaml.Marshal(item)
			if err != nil || id == "" {
				continue
			}
			sum := sha256.Sum256(b)
			out[id] = hex.EncodeToString(sum[:])
		}
	}
	return out
}

func stripComments(n *yaml.Node) {
	n.HeadComment, n.LineComment, n.FootComment = "", "", ""
	for _, c := range n.Content {
		stripComments(c)
	}
}

// Change is what a reload did to the running rules, by rule id.
type Change struct {
	Added, Removed, Changed []string
}

// Empty reports whether nothing changed.
func (c Change) Empty() bool { return len(c.Added)+len(c.Removed)+len(c.Changed) == 0 }

// Diff compares two rule sets by rule id: a rule is changed when its
// definition, its file or its enabled state differs.
func Diff(old, cur *Set) Change {
	// Empty lists rather than nil, so that logs show [] and not null.
	c := Change{Added: []string{}, Removed: []string{}, Changed: []string{}}
	before := map[string]*Rule{}
	if old != nil {
		for _, r := range old.Rules {
			before[r.ID()] = r
		}
	}
	for _, r := range cur.Rules {
		prev, ok := before[r.ID()]
		switch {
		case !ok:
			c.Added = append(c.Added, r.ID())
		case prev.Digest != r.Digest || prev.File != r.File || prev.Enabled != r.Enabled:
			c.Changed = append(c.Changed, r.ID())
		}
		delete(before, r.ID())
	}
	if old != nil {
		for _, r := range old.Rules {
			if _, gone := before[r.ID()]; gone {
				c.Removed = append(c.Removed, r.ID())
			}
		}
	}
	return c
}

// Kind names what a rule does with its matches: "threshold" counts them
// per group over a window, "sequence" looks for its steps in order,
// "new_value" for values a group has not seen, "match" alerts on every one.
func (r *Rule) Kind() string {
	switch {
	case r.Threshold != nil:
		return "threshold"
	case r.Sequence != nil:
		return "sequence"
	case r.NewValue != nil:
		return "new_value"
	}
	return "match"
}
