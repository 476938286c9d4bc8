// Package rulefiles embeds the rule files shipped with the service, so the
// binary runs with its built-in rules and nothing else installed.
package rulefiles

import _ "embed"

// Default is rules/default.yaml: the built-in rules.
//
//go:embed default.yaml
var Default []byte

// DefaultName is how the built-in file is named in messages.
const DefaultName = "built-in:rules/default.yaml"
