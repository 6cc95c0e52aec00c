# syntax=docker/dockerfile:1
# Runnel broker image: `runneld` (the broker) and `runnel` (the CLI) on Debian slim.
#
#   docker build -t runnel .
#   docker run -p 7171:7171 -p 7172:7172 -v runnel-data:/var/lib/runnel runnel
#
# The build needs no protoc: runnel-proto compiles the .proto files with protox.

FROM rust:1-bookworm AS builder
# The commit the image is built from, for runnel_build_info:
#   docker build --build-arg RUNNEL_COMMIT=$(git rev-parse --short HEAD) -t runnel .
ARG RUNNEL_COMMIT=unknown
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    RUNNEL_COMMIT=$RUNNEL_COMMIT cargo build --release --locked --bin runneld --bin runnel \
    && install -D -m 0755 target/release/runneld target/release/runnel -t /out/

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 runnel \
    && useradd --system --uid 10001 --gid runnel --home-dir /var/lib/runnel --shell /usr/sbin/nologin runnel \
    && install -d -o runnel -g runnel -m 0750 /var/lib/runnel
COPY --from=builder /out/runneld /out/runnel /usr/local/bin/
COPY config/runneld.toml /etc/runnel/runneld.toml

# The config file is /etc/runnel/runneld.toml (mount your own over it); the RUNNEL_* variables
# of docs/configuration.md override it. Inside a container the broker listens on every
# interface, so that the published ports reach it. Its shutdown deadline, 8 s, fits within
# `docker stop`'s default 10 s before SIGKILL; with `docker stop -t N` (compose:
# stop_grace_period), raise RUNNEL_SHUTDOWN_DEADLINE_MS to about N - 2 s. The web console is
# off since the metrics port is not on loopback; to use it, publish that port on the host's
# loopback only (-p 127.0.0.1:7172:7172) and set RUNNEL_CONSOLE_ALLOW_REMOTE=true.
# Authentication is on (docs/security.md): the first start needs the administrator's password,
# -e RUNNEL_AUTH_BOOTSTRAP_PASSWORD=..., and refuses to start without it.
ENV RUNNEL_DATA_DIR=/var/lib/runnel \
    RUNNEL_LISTEN=0.0.0.0:7171 \
    RUNNEL_METRICS_LISTEN=0.0.0.0:7172 \
    RUNNEL_AUTH_ENABLED=true \
    RUNNEL_SHUTDOWN_DEADLINE_MS=8000

USER runnel:runnel
WORKDIR /var/lib/runnel
VOLUME ["/var/lib/runnel"]
EXPOSE 7171 7172
# Healthy once every partition is open and the broker serves (the gRPC health check); a start
# that recovers many partitions may take minutes, hence the start period.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5m --retries=3 \
    CMD ["/usr/local/bin/runnel", "--broker", "127.0.0.1:7171", "broker", "health"]
# runneld shuts down cleanly on SIGTERM (docker stop), within RUNNEL_SHUTDOWN_DEADLINE_MS.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/runneld", "--config", "/etc/runnel/runneld.toml"]
