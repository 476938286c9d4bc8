package app

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/config"
	"github.com/audit-platform/audit-log-analysis/internal/rules"
)

// reloadPoll is how often the rule files are checked for changes. Polling
// their content, rather than watching inodes, also follows the symlink
// swaps Kubernetes uses to update a mounted ConfigMap.
const reloadPoll = 2 * time.Second

// reloader reloads the rules on SIGHUP or when the content of the rule
// paths changes (a file edited, added to or removed from a directory). A
// reload that fails validation, or would leave no rule enabled, is logged
// and counted; the running rules stay.
type reloader struct {
	engine    *rules.Engine
	detection config.Detection
	paths     []string
	metrics   *metrics
	logger    *slog.Logger
	// seen is the fingerprint of the rule paths last loaded or refused.
	seen string
}

func (r *reloader) run(ctx context.Context) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var tick <-chan time.Time
	if len(r.paths) > 0 {
		t := time.NewTicker(reloadPoll)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			r.reload("SIGHUP")
		case <-tick:
			if fingerprint(r.paths) != r.seen {
				r.reload("files changed")
			}
		}
	}
}

// reload loads the rules again and swaps them in when they are valid.
func (r *reloader) reload(trigger string) {
	r.seen = fingerprint(r.paths)
	set, err := loadRules(r.detection, r.paths, r.logger)
	if err != nil {
		r.metrics.rulesReload.WithLabelValues("failure").Inc()
		r.logger.Error("rules reload failed; the running rules stay", "trigger", trigger, "error", err)
		return
	}
	change := rules.Diff(r.engine.Rules(), set)
	r.metrics.rulesReload.WithLabelValues("success").Inc()
	r.publish(set)
	r.logger.Info("rules reloaded", "trigger", trigger, "sha256", set.Hash, "rules_enabled", set.Enabled(),
		"added", change.Added, "removed", change.Removed, "changed", change.Changed)
	for _, w := range set.Warnings {
		r.logger.Warn("rules warning", "warning", w)
	}
}

// publish makes set the running rules and exposes it.
func (r *reloader) publish(set *rules.Set) {
	r.engine.SetRules(set)
	if r.seen == "" {
		r.seen = fingerprint(r.paths)
	}
	r.metrics.rulesLoaded.Set(float64(set.Enabled()))
	r.metrics.rulesInfo.Reset()
	r.metrics.rulesInfo.WithLabelValues(set.Source, set.Hash).Set(1)
}

// logRules logs a rule set: where it comes from, what runs, and the
// warnings about its files.
func logRules(logger *slog.Logger, msg string, set *rules.Set) {
	logger.Info(msg, "sources", set.Source, "sha256", set.Hash, "rules_enabled", set.Enabled(), "rules", enabledIDs(set))
	for _, w := range set.Warnings {
		logger.Warn("rules warning", "warning", w)
	}
}

// fingerprint hashes the rule files the paths stand for, names and
// contents, so that an edit, a new file in a directory and a removed one
// all change it. An unreadable path is part of the fingerprint too: its
// error is reported by the reload it triggers.
func fingerprint(paths []string) string {
	if len(paths) == 0 {
		return "none"
	}
	h := sha256.New()
	files, err := rules.ExpandPaths(paths)
	if err != nil {
		fmt.Fprintf(h, "error:%v\n", err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			fmt.Fprintf(h, "%s: error:%v\n", f, err)
			continue
		}
		sum := sha256.Sum256(data)
		fmt.Fprintf(h, "%s: %x\n", f, sum)
	}
	return hex.EncodeToString(h.Sum(nil))
}
