package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/audit-platform/audit-log-analysis/internal/config"
	"github.com/audit-platform/audit-log-analysis/internal/httpapi"
	"github.com/audit-platform/audit-log-analysis/internal/replay"
	"github.com/audit-platform/audit-log-analysis/internal/rules"
	rulefiles "github.com/audit-platform/audit-log-analysis/rules"
)

// loadRules makes the running rule set, the same way for serve, reload,
// replay and rules check: the built-in rules (unless RULES_BUILTIN=false),
// tuned by the Python service's variables, with the rules of paths added.
// Zero enabled rules is an error.
func loadRules(d config.Detection, paths []string, logger *slog.Logger) (*rules.Set, error) {
	var builtin *rules.Set
	if d.RulesBuiltin {
		var err error
		if builtin, err = builtinRules(d, logger); err != nil {
			return nil, err
		}
	} else if d.Overrides.Any() {
		logger.Warn("FAILED_LOGIN_THRESHOLD, FAILED_LOGIN_WINDOW_SECONDS and SENSITIVE_FILES tune the built-in rules, which RULES_BUILTIN=false leaves out")
	}
	files, err := rules.LoadPaths(paths)
	if err != nil {
		return nil, err
	}
	set, replaced, err := rules.Compose(builtin, files)
	if err != nil {
		return nil, err
	}
	for _, r := range replaced {
		logger.Info("built-in rule replaced", "rule", r)
	}
	for id, tuned := range map[string]bool{
		rules.FailedLoginRuleID:   d.Overrides.FailedLoginThreshold || d.Overrides.FailedLoginWindow,
		rules.SensitiveFileRuleID: d.Overrides.SensitiveFiles,
	} {
		if r := set.Rule(id); tuned && r != nil && builtin != nil && r.File != builtin.Source {
			logger.Warn("a tuning variable is set for a built-in rule that a rules file replaces; the file's rule runs as written",
				"rule", id, "file", r.File)
		}
	}
	return set, nil
}

// builtinRules are rules/default.yaml, tuned by FAILED_LOGIN_THRESHOLD,
// FAILED_LOGIN_WINDOW_SECONDS and SENSITIVE_FILES when they are set.
func builtinRules(d config.Detection, logger *slog.Logger) (*rules.Set, error) {
	set, err := rules.ParseFile(rulefiles.DefaultName, rulefiles.Default)
	if err != nil {
		return nil, fmt.Errorf("built-in rules: %w", err)
	}
	var o rules.Overrides
	if d.Overrides.FailedLoginThreshold {
		o.FailedLoginThreshold = d.FailedLoginThreshold
	}
	if d.Overrides.FailedLoginWindow {
		o.FailedLoginWindow = d.FailedLoginWindow
	}
	if d.Overrides.SensitiveFiles {
		o.SensitiveFiles = d.SensitiveFiles
	}
	set, applied := set.WithOverrides(o)
	for _, a := range applied {
		logger.Debug("built-in rule tuned", "override", a)
	}
	return set, nil
}

// enabledIDs lists the ids of the enabled rules, in order.
func enabledIDs(set *rules.Set) []string {
	ids := make([]string, 0, len(set.Rules))
	for _, r := range set.Rules {
		if r.Enabled {
			ids = append(ids, r.ID())
		}
	}
	return ids
}

// describeRules is what GET /rules shows of a rule set.
func describeRules(set *rules.Set) httpapi.RuleSet {
	out := httpapi.RuleSet{
		SHA256:  set.Hash,
		Sources: strings.Split(set.Source, ","),
		Enabled: set.Enabled(),
		Rules:   make([]httpapi.RuleInfo, 0, len(set.Rules)),
	}
	for _, r := range set.Rules {
		out.Rules = append(out.Rules, httpapi.RuleInfo{
			ID: r.ID(), Name: r.Alert.Name, Kind: r.Kind(), Enabled: r.Enabled, File: r.File, Line: r.Line,
		})
	}
	return out
}

// ruleLister answers GET /rules from the engine's running rules.
type ruleLister struct {
	rules interface{ Rules() *rules.Set }
}

func (l ruleLister) Rules() httpapi.RuleSet { return describeRules(l.rules.Rules()) }

func runRules(ctx context.Context, env Env, args []string) error {
	c := newCommand("rules", "rules check [PATH ...] | rules test PATH ...",
		"Check rule files, or run detection fixtures. Run \"audit-log-analysis rules check -h\"\nor \"rules test -h\" for more.")
	if len(args) == 0 {
		return c.usageError(env, "rules: want check or test")
	}
	switch args[0] {
	case "check":
		return runRulesCheck(env, args[1:])
	case "test":
		return runRulesTest(ctx, env, args[1:])
	}
	if isHelp(args[0]) {
		c.writeUsage(env.Stdout)
		return nil
	}
	return c.usageError(env, "rules: unknown subcommand %q", args[0])
}

func runRulesCheck(env Env, args []string) error {
	c := newCommand("rules check", "rules check [--strict] [PATH ...]",
		"Validate rule files (PATH: a file, or a directory of *.yaml files; default\n"+
			"RULES_FILE) and the rule set they make with the built-in rules, as serve\n"+
			"would run it (RULES_BUILTIN=false leaves the built-ins out). Every problem\n"+
			"is reported by file, line and rule. Fails when no rule is enabled.\n"+
			"Warnings (such as a dotted path no documented field has) do not fail\n"+
			"the check unless --strict is given.")
	strict := c.fs.Bool("strict", false, "fail on warnings too")
	paths, err := c.parse(env, args)
	if err != nil {
		return err
	}
	getenv, _, err := withDotEnv(env.Getenv)
	if err != nil {
		return err
	}
	d, err := config.LoadDetection(getenv)
	if err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	if len(paths) == 0 {
		paths = d.RulesFiles
	}
	if len(paths) == 0 && !d.RulesBuiltin {
		return c.usageError(env, "rules check: no PATH, no RULES_FILE, and RULES_BUILTIN=false: nothing to check")
	}
	logger := slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	set, err := loadRules(d, paths, logger)
	if err != nil {
		return fmt.Errorf("rules check:\n%w", err)
	}
	for _, w := range set.Warnings {
		fmt.Fprintln(env.Stderr, "warning:", w)
	}
	fmt.Fprintf(env.Stdout, "%d rules OK (%d enabled) from %s: %s\nsha256 %s\n",
		len(set.Rules), set.Enabled(), strings.ReplaceAll(set.Source, ",", ", "), strings.Join(enabledIDs(set), ", "), set.Hash)
	if *strict && len(set.Warnings) > 0 {
		return fmt.Errorf("rules check: %d warnings with --strict", len(set.Warnings))
	}
	return nil
}

func runRulesTest(ctx context.Context, env Env, args []string) error {
	c := newCommand("rules test", "rules test PATH ...",
		"Run detection fixtures: every *.yaml file under each PATH (a directory,\n"+
			"searched recursively, or a fixture file) is a case with events and the\n"+
			"alerts expected. See docs/rules.md for the fixture keys.")
	paths, err := c.parse(env, args)
	if err != nil {
		return err
	}
	if len(paths) == 0 {
		return c.usageError(env, "rules test: want a fixture directory or file")
	}
	var errs []error
	for _, p := range paths {
		errs = append(errs, replay.RunFixtures(ctx, p, env.Stdout))
	}
	return errors.Join(errs...)
}
