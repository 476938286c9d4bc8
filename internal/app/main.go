// Package app is the composition root: it reads the configuration, builds
// the logger, metrics, state store, engine, broker clients and HTTP
// servers, starts them in order and stops them in reverse. It also runs the
// offline commands (replay, rules check, rules test).
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/audit-platform/audit-log-analysis/internal/config"
	"github.com/audit-platform/audit-log-analysis/internal/replay"
	"github.com/audit-platform/audit-log-analysis/internal/rules"
	rulefiles "github.com/audit-platform/audit-log-analysis/rules"
)

// Env is what the program gets from its process: arguments, environment
// and standard streams. Tests pass their own.
type Env struct {
	Args    []string
	Getenv  func(string) string
	Stdin   io.Reader
	Stdout  io.Writer
	Stderr  io.Writer
	Version string
}

const usage = `usage:
  audit-log-analysis [serve] [--rules FILE]           run the service
  audit-log-analysis replay [--rules FILE] [FILE...]  run the rules over JSON Lines (stdin without FILE)
  audit-log-analysis rules check FILE                 validate a rules file
  audit-log-analysis rules test DIR                   run detection fixtures
  audit-log-analysis version                          print the version
`

// errUsage marks a command line that could not be understood.
var errUsage = errors.New("bad usage")

// Main runs the command the arguments name.
func Main(ctx context.Context, env Env) error {
	args := env.Args
	if len(args) > 0 {
		args = args[1:]
	}
	cmd := "serve"
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		fs.SetOutput(env.Stderr)
		rulesFile := fs.String("rules", "", "rules file (default: RULES_FILE, else the built-in rules)")
		if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
			return fmt.Errorf("serve takes only --rules FILE: %w", errUsage)
		}
		return Serve(ctx, env, *rulesFile)
	case "replay":
		return runReplay(ctx, env, args)
	case "rules":
		return runRules(ctx, env, args)
	case "version", "--version", "-version":
		fmt.Fprintln(env.Stdout, "audit-log-analysis", env.Version)
		return nil
	case "help", "-h", "--help", "-help":
		fmt.Fprint(env.Stdout, usage)
		return nil
	}
	fmt.Fprint(env.Stderr, usage)
	return fmt.Errorf("unknown command %q: %w", cmd, errUsage)
}

// loadConfig reads the environment, with a .env file in the working
// directory filling what the environment leaves unset.
func loadConfig(getenv func(string) string) (config.Config, error) {
	getenv, err := config.WithDotEnv(".env", getenv)
	if err != nil {
		return config.Config{}, err
	}
	cfg, err := config.Load(getenv)
	if err != nil {
		return config.Config{}, fmt.Errorf("invalid configuration:\n%w", err)
	}
	return cfg, nil
}

// loadRules reads the rules file, or the built-in rules tuned by the Python
// service's variables when there is none.
func loadRules(cfg config.Config, file string, logger *slog.Logger) (*rules.Set, error) {
	if file != "" {
		set, err := rules.LoadFile(file)
		if err != nil {
			return nil, err
		}
		if cfg.Overrides.FailedLoginThreshold || cfg.Overrides.FailedLoginWindow || cfg.Overrides.SensitiveFiles {
			logger.Warn("FAILED_LOGIN_THRESHOLD, FAILED_LOGIN_WINDOW_SECONDS and SENSITIVE_FILES tune the built-in rules only; the rules file is used as written", "rules_file", file)
		}
		return set, nil
	}
	set, err := rules.Parse(rulefiles.DefaultName, rulefiles.Default)
	if err != nil {
		return nil, fmt.Errorf("built-in rules: %w", err)
	}
	var o rules.Overrides
	if cfg.Overrides.FailedLoginThreshold {
		o.FailedLoginThreshold = cfg.FailedLoginThreshold
	}
	if cfg.Overrides.FailedLoginWindow {
		o.FailedLoginWindow = cfg.FailedLoginWindow
	}
	if cfg.Overrides.SensitiveFiles {
		o.SensitiveFiles = cfg.SensitiveFiles
	}
	set, applied := set.WithOverrides(o)
	for _, a := range applied {
		logger.Info("built-in rule tuned", "override", a)
	}
	return set, nil
}

func runReplay(ctx context.Context, env Env, args []string) error {
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	rulesFile := fs.String("rules", "", "rules file (default: RULES_FILE, else the built-in rules)")
	quiet := fs.Bool("quiet", false, "do not list skipped lines")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("replay: %w", errUsage)
	}
	cfg, err := loadConfig(env.Getenv)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	file := *rulesFile
	if file == "" {
		file = cfg.RulesFile
	}
	set, err := loadRules(cfg, file, logger)
	if err != nil {
		return err
	}
	var inputs []replay.Input
	if fs.NArg() == 0 {
		inputs = append(inputs, replay.Input{Name: "stdin", Reader: env.Stdin})
	}
	for _, name := range fs.Args() {
		f, err := os.Open(name)
		if err != nil {
			return fmt.Errorf("replay: %w", err)
		}
		defer f.Close()
		inputs = append(inputs, replay.Input{Name: name, Reader: f})
	}
	opts := replay.Options{Rules: set, Environment: cfg.Environment, MaxClockSkew: cfg.MaxClockSkew, Report: env.Stderr}
	if *quiet {
		opts.Report = nil
	}
	sum, err := replay.Run(ctx, inputs, env.Stdout, opts)
	if err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	sum.WriteSummary(env.Stderr)
	return nil
}

func runRules(ctx context.Context, env Env, args []string) error {
	if len(args) != 2 {
		fmt.Fprint(env.Stderr, usage)
		return fmt.Errorf("rules: want check FILE or test DIR: %w", errUsage)
	}
	switch args[0] {
	case "check":
		set, err := rules.LoadFile(args[1])
		if err != nil {
			return fmt.Errorf("rules check:\n%w", err)
		}
		ids := make([]string, 0, len(set.Rules))
		for _, r := range set.Rules {
			ids = append(ids, r.ID())
		}
		fmt.Fprintf(env.Stdout, "%s: %d rules OK (%d enabled): %s\nsha256 %s\n",
			args[1], len(set.Rules), set.Enabled(), strings.Join(ids, ", "), set.Hash)
		return nil
	case "test":
		return replay.RunFixtures(ctx, args[1], env.Stdout)
	}
	return fmt.Errorf("rules: unknown subcommand %q: %w", args[0], errUsage)
}
