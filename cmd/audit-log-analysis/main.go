// Command audit-log-analysis is the real-time detection service of the
// audit platform: it consumes audit events from RabbitMQ, runs detection
// rules with shared state in Redis and publishes alerts back to RabbitMQ.
//
//	audit-log-analysis [serve] [--rules PATH]          run the service
//	audit-log-analysis replay [--rules PATH] [FILE...] run the rules over JSON Lines
//	audit-log-analysis rules check [PATH...]           validate rule files
//	audit-log-analysis rules test PATH...              run detection fixtures
//	audit-log-analysis dead-letters list|redrive       look into the dead-letter queue
//	audit-log-analysis version                         print the version
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"

	"github.com/audit-platform/audit-log-analysis/internal/app"
)

// version and revision are set at build time with
// -ldflags "-X main.version=v1.2.3 -X main.revision=<commit>" (the Makefile
// and the Dockerfile do). Otherwise version is "dev" and the revision is
// the one the go command recorded, when it recorded one.
var (
	version  = "dev"
	revision = ""
)

// build describes the binary: its version, the module version the go
// command recorded ("(devel)" for a local build) and the VCS revision.
func build() app.Build {
	b := app.Build{Version: version, Module: "(devel)", Revision: revision}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return b
	}
	b.GoVersion = info.GoVersion
	if info.Main.Version != "" {
		b.Module = info.Main.Version
	}
	if b.Revision != "" {
		return b
	}
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Revision = s.Value
		case "vcs.modified":
			b.Modified = s.Value == "true"
		}
	}
	return b
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args, os.Getenv, os.Stdin, os.Stdout, os.Stderr); err != nil {
		// An error the service already logged, in the configured format,
		// is not printed again as plain text.
		if !app.Reported(err) {
			fmt.Fprintln(os.Stderr, "audit-log-analysis:", err)
		}
		stop()
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	return app.Main(ctx, app.Env{
		Args:   args,
		Getenv: getenv,
		Stdin:  stdin,
		Stdout: stdout,
		Stderr: stderr,
		Build:  build(),
		// serve runs on one processor unless GOMAXPROCS is set.
		SetProcs: runtime.GOMAXPROCS,
	})
}
