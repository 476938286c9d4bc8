# Build, test and lint audit-log-analysis. Tool versions are pinned here.

# staticcheck v0.8.2 is release 2026.2.2, built with the Go toolchain in use.
STATICCHECK_VERSION := v0.8.2

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BINARY  := bin/audit-log-analysis
PKGS    ?= ./...

GO      ?= go

.DEFAULT_GOAL := build
.PHONY: build test lint run replay bench tidy-check chaos fuzz

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o $(BINARY) ./cmd/audit-log-analysis

test:
	$(GO) test -race -count=1 $(PKGS)

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

bench:
	$(GO) test -run='^$$' -bench=. -benchmem $(PKGS)

# Fails when go.mod or go.sum is not what go mod tidy makes of them.
tidy-check:
	$(GO) mod tidy
	git diff --exit-code go.mod go.sum
