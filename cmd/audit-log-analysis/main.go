// Command audit-log-analysis is the real-time detection service of the
// audit platform: it consumes audit events from RabbitMQ, runs detection
// rules with shared state in Redis and publishes alerts back to RabbitMQ.
//
//	audit-log-analysis [serve]                       run the service
//	audit-log-analysis replay [--rules F] [FILE...]  run the rules over JSON Lines
//	audit-log-analysis rules check FILE              validate a rules file
//	audit-log-analysis rules test DIR                run detection fixtures
//	audit-log-analysis version                       print the version
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/audit-platform/audit-log-analysis/internal/app"
)

// version is set at build time with -ldflags "-X main.version=...";
// otherwise it is "dev" and the VCS revision the go command recorded.
var version = "dev"

func buildVersion() string {
	if version != "dev" {
		return version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return version
	}
	var rev, dirty string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev == "" {
		return version
	}
	return version + " (" + rev + dirty + ")"
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args, os.Getenv, os.Stdin, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "audit-log-analysis:", err)
		stop()
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	return app.Main(ctx, app.Env{
		Args:    args,
		Getenv:  getenv,
		Stdin:   stdin,
		Stdout:  stdout,
		Stderr:  stderr,
		Version: buildVersion(),
	})
}
