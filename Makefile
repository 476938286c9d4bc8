# Build, test and lint audit-log-analysis. Tool versions are pinned here.

# staticcheck v0.8.2 is release 2026.2.2, built with the Go toolchain in use.
STATICCHECK_VERSION := v0.8.2

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BINARY  := bin/audit-log-analysis
PKGS    ?= ./...

REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)
GO      ?= go

# Recipes run with bash and pipefail, so that a failing command on the
# left of a pipe fails the target.
SHELL       := bash
.SHELLFLAGS := -o pipefail -c

.DEFAULT_GOAL := build
.PHONY: build test unit lint run replay bench tidy-check deploy-check chaos fuzz

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION) -X main.revision=$(REVISION)" -o $(BINARY) ./cmd/audit-log-analysis

# The whole suite against real servers (TEST_RABBITMQ_URL, TEST_REDIS_ADDR,
# TEST_POSTGRES_DSN; see README). It ends with a line counting the skipped
# tests and naming the servers they missed.
test:
	$(GO) test -race -count=1 -json $(PKGS) | $(GO) run ./internal/testenv/testsummary

# The tests that need no server: every test that would connect to one is
# skipped (-short).
unit:
	$(GO) test -race -count=1 -short -json $(PKGS) | $(GO) run ./internal/testenv/testsummary

# gofmt -l lists files that need formatting; any output fails the target.
# vet and staticcheck also read the files behind the chaos build tag.
lint:
	@unformatted="$$(gofmt -l $(patsubst %/...,%,$(patsubst ./...,.,$(PKGS))))"; \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet -tags chaos $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) -tags chaos $(PKGS)

# The fault-injection suite: private rabbitmq-server and redis-server
# processes on free ports, the service binary run against them while they
# fail (internal/chaos). Services are required: a missing one fails it.
chaos:
	REQUIRE_SERVICES=1 $(GO) test -tags chaos -count=1 -v -timeout 20m ./internal/chaos/

# Every fuzz target of the module, FUZZTIME each (go test fuzzes one
# target of one package at a time).
FUZZTIME ?= 5s
fuzz:
	@set -e; for dir in $$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do \
		for target in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go | cut -d' ' -f2); do \
			echo "fuzz $$target in $$dir for $(FUZZTIME)"; \
			$(GO) test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) $$dir; \
		done; \
	done

run:
	RABBITMQ_HOST=127.0.0.1 REDIS_HOST=127.0.0.1 $(GO) run ./cmd/audit-log-analysis serve

replay:
	$(GO) run ./cmd/audit-log-analysis replay testdata/sample-events.jsonl

# The benchmark of issue 9 against the local broker and Redis
# (TEST_RABBITMQ_URL, TEST_REDIS_ADDR): drain rate and CPU per event beside
# an ack-only consumer, peak RSS, event-to-alert latency at fixed loads,
# replay, Redis memory per group, in alternating rounds, then the Go
# benchmarks; it rewrites BENCHMARKS.md. About 12 minutes on 2 cores;
# BENCH_FLAGS changes the sizes (e.g. BENCH_FLAGS="-rounds 1 -n 10000
# -duration 10s -gobench=false"; audit-loadgen bench -h lists them).
BENCH_FLAGS ?=
bench: build
	$(GO) build -o bin/audit-loadgen ./cmd/audit-loadgen
	bin/audit-loadgen bench -service $(BINARY) -o BENCHMARKS.md $(BENCH_FLAGS)

# Fails when go.mod or go.sum is not what go mod tidy makes of them.
tidy-check:
	$(GO) mod tidy
	git diff --exit-code go.mod go.sum

# The deployment files: the kustomizations render, their output decodes
# strictly into the Kubernetes API types (a Go test in the deploy module,
# which also checks every PromQL expression against the service's
# metrics), the compose file is valid, and the alert rules pass their unit
# tests. Needs kubectl, promtool and docker-compose (.ci/run installs them).
KUSTOMIZATIONS := deploy/kustomize/base $(wildcard deploy/kustomize/overlays/*)
# kubectl's own kustomize when it is v5 (the manifests use its labels and
# replicas fields), else kustomize v5 itself, pinned, through the Go
# module proxy (Debian's kubectl is older).
KUSTOMIZE_VERSION := v5.5.0
KUSTOMIZE ?= $(shell kubectl version --client 2>/dev/null | grep -q 'Kustomize Version: v5' && echo "kubectl kustomize" || echo "$(GO) run sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION) build")

deploy-check:
	@for k in $(KUSTOMIZATIONS); do echo "$(KUSTOMIZE) $$k"; $(KUSTOMIZE) $$k >/dev/null || exit 1; done
	@if command -v yamllint >/dev/null; then echo "yamllint deploy"; yamllint -d relaxed --no-warnings deploy; else echo "yamllint not installed: skipped"; fi
	docker-compose -f deploy/compose/compose.yaml config -q
	promtool check rules deploy/prometheus/alerts.yaml
	promtool test rules deploy/prometheus/alerts_test.yaml
	cd deploy && $(GO) mod tidy && git diff --exit-code go.mod go.sum
	cd deploy && $(GO) vet ./... && $(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	cd deploy && KUSTOMIZE="$(KUSTOMIZE)" $(GO) test -count=1 ./...
