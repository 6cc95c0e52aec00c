# syntax=docker/dockerfile:1
# Runnel broker image: `runneld` (the broker) and `runnel` (the CLI) on Debian slim.
#
#   docker build -t runnel .
#   docker run -p 7171:7171 -p 7172:7172 -v runnel-data:/var/lib/runnel runnel
#
# The build needs no protoc: runnel-proto compiles the .proto files with protox.

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin runneld --bin runnel \
    && install -D -m 0755 target/release/runneld target/release/runnel -t /out/

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 runnel \
    && useradd --system --uid 10001 --gid runnel --home-dir /var/lib/runnel --shell /usr/sbin/nologin runnel \
    && install -d -o runnel -g runnel -m 0750 /var/lib/runnel
COPY --from=builder /out/runneld /out/runnel /usr/local/bin/
COPY config/runneld.toml /etc/runnel/runneld.toml

# Config follows the RUNNEL_* environment mapping of the config keys (docs, issue 3): inside a
# container the broker must listen on every interface for the published ports to reach it.
ENV RUNNEL_DATA_DIR=/var/lib/runnel \
    RUNNEL_LISTEN=0.0.0.0:7171 \
    RUNNEL_METRICS_LISTEN=0.0.0.0:7172

USER runnel:runnel
WORKDIR /var/lib/runnel
VOLUME ["/var/lib/runnel"]
EXPOSE 7171 7172
# runneld shuts down cleanly on SIGTERM (docker stop); give it time with --stop-timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/runneld"]
