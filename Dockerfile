# syntax=docker/dockerfile:1
#
# ssetrack container image: one static binary, run as a non-root user.
#
#   docker build -t ssetrack .
#   docker run --rm -p 9001:9001 -p 9090:9090 -v ssetrack-data:/data ssetrack
#
# The default command is `ssetrack serve` with every listener on 0.0.0.0 (set through the
# SSETRACK_* environment twins of its flags, so a `docker run ... ssetrack serve --flag`
# still starts from the same defaults). Without SSETRACK_NATS_URL, serve starts its embedded
# NATS JetStream server with the store in /data (a volume) and its client port on 4222;
# that embedded server has no authentication, so publish 4222 only to trusted networks.
# docker-compose.yml instead points ssetrack at a separate NATS container.
#
# The same image runs the other subcommands: `ssetrack tail ...`, `ssetrack demo-upstream`.

ARG GO_VERSION=1.26
ARG ALPINE_VERSION=3.22

FROM golang:${GO_VERSION}-alpine AS build
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
# CGO off: a static binary that needs no libc. -buildvcs=false: the builder has no git.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -buildvcs=false -trimpath \
        -ldflags="-s -w -X main.version=${VERSION}" \
        -o /out/ssetrack ./cmd/ssetrack

# Alpine rather than distroless/static: its busybox wget is what the health checks run
# (ssetrack serves /readyz over HTTP, and distroless has no HTTP client). The binary itself
# needs nothing from the image.
FROM alpine:${ALPINE_VERSION}
RUN addgroup -S -g 10001 ssetrack \
    && adduser -S -D -H -u 10001 -G ssetrack -h /data ssetrack \
    && mkdir -p /data \
    && chown ssetrack:ssetrack /data
COPY --from=build /out/ssetrack /usr/local/bin/ssetrack

ENV SSETRACK_LISTEN=0.0.0.0:9001 \
    SSETRACK_METRICS_LISTEN=0.0.0.0:9090 \
    SSETRACK_NATS_LISTEN=0.0.0.0:4222 \
    SSETRACK_DATA_DIR=/data

USER 10001:10001
WORKDIR /data
# The embedded JetStream store. A named volume created here inherits the ownership above.
VOLUME ["/data"]
# 9001: ext_proc gRPC (and gRPC health); 9090: /metrics, /healthz, /readyz;
# 4222: the embedded NATS server's client port.
EXPOSE 9001 9090 4222

# Ready means ssetrack can reach NATS. For the serve command only: override or disable it
# for tail and demo-upstream (docker-compose.yml does).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:9090/readyz"]

ENTRYPOINT ["/usr/local/bin/ssetrack"]
CMD ["serve"]
