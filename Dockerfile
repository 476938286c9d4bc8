# syntax=docker/dockerfile:1
#
# docker build --build-arg VERSION=v1.0.0 --build-arg REVISION=$(git rev-parse HEAD) -t audit-log-analysis:1.0.0 .
#
# VERSION and REVISION are what `audit-log-analysis version`, the start-up
# log line and audit_analysis_build_info report (default: dev, unknown).

# Build a static binary on the build host's platform, cross-compiling for
# the target one.
FROM --platform=$BUILDPLATFORM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
ARG REVISION=
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION} -X main.revision=${REVISION}" \
        -o /out/audit-log-analysis ./cmd/audit-log-analysis

# The binary alone, on a distroless base with no shell, as a non-root user.
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
ARG REVISION=
LABEL org.opencontainers.image.title="audit-log-analysis" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/audit-log-analysis /audit-log-analysis

# Where the service listens and finds its peers, as the previous image had
# it. Credentials are never baked in: give them at run time.
ENV APP_PORT=5001 \
    PROMETHEUS_PORT=8001 \
    RABBITMQ_HOST=rabbitmq-service \
    RABBITMQ_PORT=5672 \
    RABBITMQ_QUEUE=audit_events \
    RABBITMQ_ALERT_QUEUE=audit_alerts \
    REDIS_HOST=redis-service \
    REDIS_PORT=6379

EXPOSE 5001 8001
USER 65532:65532
ENTRYPOINT ["/audit-log-analysis"]
CMD ["serve"]
