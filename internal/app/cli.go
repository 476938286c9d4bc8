package app

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// errUsage marks a command line that could not be understood.
var errUsage = errors.New("bad usage")

// errHelp is what a command's parse returns after printing its usage for
// -h or --help: the command then does nothing and succeeds.
var errHelp = errors.New("help requested")

// command is one subcommand's flags and usage text.
type command struct {
	// synopsis is the usage line(s) without the program name, e.g.
	// "replay [--rules PATH] [FILE|- ...]"; about says what it does.
	synopsis string
	about    string
	fs       *flag.FlagSet
}

func newCommand(name, synopsis, about string) *command {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	// The flag package prints usage on every error; parse prints it
	// itself, to stdout for -h and to stderr for a mistake.
	fs.SetOutput(io.Discard)
	return &command{synopsis: synopsis, about: about, fs: fs}
}

// writeUsage prints the command's usage and flags.
func (c *command) writeUsage(w io.Writer) {
	fmt.Fprintf(w, "usage: audit-log-analysis %s\n\n%s\n", c.synopsis, c.about)
	n := 0
	c.fs.VisitAll(func(*flag.Flag) { n++ })
	if n == 0 {
		return
	}
	fmt.Fprintln(w, "\nflags:")
	c.fs.SetOutput(w)
	c.fs.PrintDefaults()
	c.fs.SetOutput(io.Discard)
}

// parse reads flags wherever they are among the arguments ("replay FILE
// --quiet" as well as "replay --quiet FILE"); "--" ends the flags, and
// "-" is an argument (standard input). -h and --help print the usage to
// stdout and return errHelp; a bad flag prints it to stderr and returns an
// error wrapping errUsage.
func (c *command) parse(env Env, args []string) ([]string, error) {
	var rest []string
	for {
		err := c.fs.Parse(args)
		switch {
		case errors.Is(err, flag.ErrHelp):
			c.writeUsage(env.Stdout)
			return nil, errHelp
		case err != nil:
			fmt.Fprintf(env.Stderr, "%v\n\n", err)
			c.writeUsage(env.Stderr)
			return nil, fmt.Errorf("%s: %v: %w", c.fs.Name(), err, errUsage)
		}
		left := c.fs.Args()
		if len(left) == 0 {
			return rest, nil
		}
		// Parse stops at the first argument that is not a flag, or just
		// after "--", which ends the flags for good.
		if used := len(args) - len(left); used > 0 && args[used-1] == "--" {
			return append(rest, left...), nil
		}
		rest = append(rest, left[0])
		args = left[1:]
	}
}

// usageError prints the usage to stderr and returns an error about what was
// wrong with the arguments.
func (c *command) usageError(env Env, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	fmt.Fprintf(env.Stderr, "%s\n\n", msg)
	c.writeUsage(env.Stderr)
	return fmt.Errorf("%s: %s: %w", c.fs.Name(), msg, errUsage)
}

// listFlag is a flag that may be repeated and takes comma-separated
// values: --rules a.yaml --rules b.yaml,rules.d/.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for p := range strings.SplitSeq(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

// isHelp reports whether arg asks for help.
func isHelp(arg string) bool {
	switch arg {
	case "-h", "-help", "--help", "help":
		return true
	}
	return false
}
