// Package app is the composition root: it reads the configuration, builds
// the logger, metrics, state store, engine, broker clients and HTTP
// servers, starts them in order and stops them in reverse. It also runs the
// offline commands (replay, rules check, rules test, dead-letters).
package app

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/audit-platform/audit-log-analysis/internal/config"
)

// Env is what the program gets from its process: arguments, environment
// and standard streams. Tests pass their own.
type Env struct {
	Args   []string
	Getenv func(string) string
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	Build  Build
	// SetProcs sets GOMAXPROCS and returns the previous value
	// (runtime.GOMAXPROCS); serve calls it to run on one processor (see
	// oneProcessor). Nil leaves GOMAXPROCS alone, as tests that run
	// several services in one process need.
	SetProcs func(int) int
}

// Build describes the running binary.
type Build struct {
	// Version is the release ("v1.2.3", set at build time) or "dev".
	Version string
	// Module is the module version the go command recorded: a version
	// for "go install ...@v1.2.3", "(devel)" for a build from a checkout.
	Module string
	// Revision is the VCS commit built from ("" when unknown); Modified
	// says whether the checkout had uncommitted changes.
	Revision  string
	Modified  bool
	GoVersion string
}

// String is the version on one line: "v1.2.3 (abcdef012345)".
func (b Build) String() string {
	v := b.Version
	if v == "" {
		v = "dev"
	}
	if r := b.shortRevision(); r != "" {
		v += " (" + r + ")"
	}
	return v
}

func (b Build) shortRevision() string {
	r := b.Revision
	if len(r) > 12 {
		r = r[:12]
	}
	if r != "" && b.Modified {
		r += "-dirty"
	}
	return r
}

const usage = `usage: audit-log-analysis COMMAND [flags] [arguments]

commands:
  serve [--rules PATH]                   run the service (the default command)
  replay [--rules PATH] [FILE|- ...]     run the rules over JSON Lines; alerts to stdout
  rules check [PATH ...]                 validate rule files and the set they make with the built-ins
  rules test PATH ...                    run detection fixtures
  dead-letters list [--reason R]         show dead-lettered messages and why
  dead-letters redrive [--reason R]      publish dead-lettered messages to the event queue again
  version                                print the version

PATH is a rules file or a directory of *.yaml files; --rules may be repeated
or take a comma-separated list, and adds to the built-in rules.
Run "audit-log-analysis COMMAND -h" for a command's flags.
`

// Main runs the command the arguments name.
func Main(ctx context.Context, env Env) error {
	args := env.Args
	if len(args) > 0 {
		args = args[1:]
	}
	cmd := "serve"
	// Flags without a command are the service's: "--rules x" serves.
	if len(args) > 0 && (!isFlag(args[0]) || isHelp(args[0])) {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "serve":
		err = runServe(ctx, env, args)
	case "replay":
		err = runReplay(ctx, env, args)
	case "rules":
		err = runRules(ctx, env, args)
	case "dead-letters":
		err = runDeadLetters(ctx, env, args)
	case "version", "--version", "-version":
		err = runVersion(env, args)
	case "help", "-h", "--help", "-help":
		fmt.Fprint(env.Stdout, usage)
	default:
		fmt.Fprint(env.Stderr, usage)
		err = fmt.Errorf("unknown command %q: %w", cmd, errUsage)
	}
	if errors.Is(err, errHelp) {
		return nil
	}
	return err
}

// modulePath is the service's Go module.
const modulePath = "github.com/audit-platform/audit-log-analysis"

func orDev(v string) string {
	if v == "" {
		return "dev"
	}
	return v
}

func isFlag(arg string) bool { return len(arg) > 1 && arg[0] == '-' }

func runServe(ctx context.Context, env Env, args []string) error {
	c := newCommand("serve", "serve [--rules PATH]...",
		"Run the service: consume events, run the rules, publish alerts. The\n"+
			"configuration comes from the environment (and a .env file).")
	var paths listFlag
	c.fs.Var(&paths, "rules", "rules file or directory, added to the built-in rules (repeatable, comma-separated; default RULES_FILE)")
	rest, err := c.parse(env, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return c.usageError(env, "serve takes no arguments, got %q", rest[0])
	}
	return Serve(ctx, env, paths)
}

func runVersion(env Env, args []string) error {
	c := newCommand("version", "version", "Print the version: the module version and the VCS revision built.")
	rest, err := c.parse(env, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return c.usageError(env, "version takes no arguments")
	}
	b := env.Build
	rev := b.Revision
	switch {
	case rev == "":
		rev = "unknown (built without VCS information)"
	case b.Modified:
		rev += " (with uncommitted changes)"
	}
	fmt.Fprintf(env.Stdout, "audit-log-analysis %s\nmodule %s %s\nrevision %s\n", orDev(b.Version), modulePath, orDash(b.Module), rev)
	if b.GoVersion != "" {
		fmt.Fprintf(env.Stdout, "built with %s\n", b.GoVersion)
	}
	return nil
}

// loadConfig reads the environment, with a .env file in the working
// directory filling what the environment leaves unset. envFile names the
// .env file when there was one.
func loadConfig(getenv func(string) string) (cfg config.Config, envFile string, err error) {
	getenv, envFile, err = withDotEnv(getenv)
	if err != nil {
		return config.Config{}, "", err
	}
	cfg, err = config.Load(getenv)
	if err != nil {
		return config.Config{}, envFile, fmt.Errorf("invalid configuration:\n%w", err)
	}
	return cfg, envFile, nil
}

// dotEnvFile is the .env file read from the working directory.
const dotEnvFile = ".env"

func withDotEnv(getenv func(string) string) (func(string) string, string, error) {
	getenv, loaded, err := config.LoadDotEnv(dotEnvFile, getenv)
	if err != nil || !loaded {
		return getenv, "", err
	}
	return getenv, dotEnvFile, nil
}

// reportedError is an error the command has already logged, in the
// configured format: main must not print it again.
type reportedError struct{ err error }

func (e reportedError) Error() string { return e.err.Error() }
func (e reportedError) Unwrap() error { return e.err }

// Reported reports whether err has already been written to the log.
func Reported(err error) bool {
	var r reportedError
	return errors.As(err, &r)
}
