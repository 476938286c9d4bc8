package rules

import (
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/audit-platform/audit-log-analysis/internal/event"
)

// Lint returns warnings about a valid rules file: things that load but are
// probably mistakes. Today that is a dotted path (details.comand) that no
// documented field or details key has: it would match nothing, silently.
// Each warning is "FILE:LINE: rule "ID": what", with a suggestion when a
// documented field is close.
func Lint(source string, data []byte) []string {
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil || len(doc.Content) == 0 {
		return nil
	}
	root := doc.Content[0]
	var warnings []string
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
			for _, ref := range fieldRefs(item) {
				if !strings.Contains(ref.name, ".") || event.IsKnownPath(ref.name) {
					continue
				}
				msg := fmt.Sprintf("%s:%d: rule %q: %s is not a documented field or details key (docs/rules.md)", source, ref.line, id, ref.name)
				if s := suggest(ref.name, event.KnownPaths()); s != "" {
					msg += fmt.Sprintf("; did you mean %s?", s)
				}
				warnings = append(warnings, msg)
			}
		}
	}
	return warnings
}

type fieldRef struct {
	name string
	line int
}

// fieldRefs finds the event fields a rule names: the keys of every match
// mapping (at any depth, so that conditions nested in other rule kinds are
// found too), the group_by and distinct fields, and {{placeholders}}.
func fieldRefs(n *yaml.Node) []fieldRef {
	var refs []fieldRef
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				switch k.Value {
				case "match":
					if v.Kind == yaml.MappingNode {
						for j := 0; j+1 < len(v.Content); j += 2 {
							refs = append(refs, fieldRef{v.Content[j].Value, v.Content[j].Line})
						}
					}
				case "group_by", "distinct":
					if v.Kind == yaml.ScalarNode {
						refs = append(refs, fieldRef{v.Value, v.Line})
					}
					for _, item := range v.Content {
						if item.Kind == yaml.ScalarNode {
							refs = append(refs, fieldRef{item.Value, item.Line})
						}
					}
				}
				walk(v)
			}
		case yaml.SequenceNode:
			for _, c := range n.Content {
				walk(c)
			}
		case yaml.ScalarNode:
			for _, name := range placeholders(n.Value) {
				refs = append(refs, fieldRef{name, n.Line})
			}
		}
	}
	walk(n)
	return refs
}

// placeholders returns the {{names}} of a text.
func placeholders(s string) []string {
	var names []string
	for {
		i := strings.Index(s, "{{")
		if i < 0 {
			return names
		}
		j := strings.Index(s[i:], "}}")
		if j < 0 {
			return names
		}
		names = append(names, strings.TrimSpace(s[i+2:i+j]))
		s = s[i+j+2:]
	}
}

// suggest returns the candidate closest to name when it is close enough
// to be a typo: at most two edits, and fewer than a third of the name.
func suggest(name string, candidates []string) string {
	best, bestDist := "", 3
	for _, c := range candidates {
		if d := editDistance(name, c); d < bestDist && d*3 < len(name) {
			best, bestDist = c, d
		}
	}
	return best
}

// editDistance is the optimal string alignment distance: insertions,
// deletions, substitutions and transpositions of neighbours ("detials")
// cost one each.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	d := make([][]int, len(ra)+1)
	for i := range d {
		d[i] = make([]int, len(rb)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(ra); i++ {
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(ra)][len(rb)]
}
