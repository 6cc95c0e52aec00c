#!/usr/bin/env bash
# Runnel beside Iggy and NATS JetStream: the same workloads, interleaved, on this machine
# (docs/benchmarks.md, "Beside Iggy and NATS JetStream"). Runs whichever peers are present:
#
#   IGGY_DIR=/path/to/iggy/target/release scripts/bench-peers.sh
#   ROUNDS=5 ONLY="produce1 consume1" scripts/bench-peers.sh
#
# Iggy: IGGY_DIR holds iggy-server and iggy-bench, built from Iggy's public source outside
# this repository; the server reads IGGY_CONFIG (default: core/server/config.toml of that
# checkout). NATS: nats-server on PATH (Debian's nats-server), and the JetStream bench in
# scripts/peers/jetstream-bench.go, built here with Debian's golang-go and
# golang-github-nats-io-go-nats-dev.
#
# Variables: ROUNDS (3), ONLY (workloads, default all: produce1 consume1 produce4 consume4
# produce1-100 produce4-100 durable1 durable16), MESSAGES (2000000 per workload), BATCH (1000
# messages per batch), DURABLE_MESSAGES (2000 per producer, one per request), BENCH_DIR
# (target/bench-peers: data directories, on the disk you care about), RUNNEL_PORT (37271),
# IGGY_PORT (37281, and the next one), NATS_PORT (37291), RUNNEL_DURABILITY (never: the
# topics' fsync policy, "interval" for Runnel's default), SETTLE_LOST (5) and
# SETTLE_MAX (30: before each run, wait up to this many seconds until two spinning threads
# lose less than SETTLE_LOST percent of their time), SKIP_BUILD=1.
#
# Results: one JSON object per run in $BENCH_DIR/results.jsonl, the tables on stdout.

set -euo pipefail
cd "$(dirname "$0")/.."

export BENCH_DIR=${BENCH_DIR:-target/bench-peers}
if [[ -z "${SKIP_BUILD:-}" ]]; then
  cargo build --release -p runnel-cli -p runnel-broker -p runnel-bench
fi
mkdir -p "$BENCH_DIR/bin"
# Copies, so that a build during the run cannot swap the binaries under it.
cp --remove-destination target/release/runnel target/release/runneld target/release/runnel-bench "$BENCH_DIR/bin/"
export RUNNEL_BIN=$BENCH_DIR/bin

if [[ -n "${IGGY_DIR:-}" && -x "$IGGY_DIR/iggy-server" && -x "$IGGY_DIR/iggy-bench" ]]; then
  export IGGY_BIN=$IGGY_DIR
  config=${IGGY_CONFIG:-$IGGY_DIR/../../core/server/config.toml}
  [[ -f "$config" ]] && export IGGY_CONFIG=$(realpath "$config")
else
  echo "no Iggy: set IGGY_DIR to a directory with iggy-server and iggy-bench" >&2
fi

if command -v nats-server >/dev/null && command -v go >/dev/null &&
  [[ -d /usr/share/gocode/src/github.com/nats-io/nats.go ]]; then
  GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=$(realpath "$BENCH_DIR")/go-cache \
    go build -o "$BENCH_DIR/bin/jetstream-bench" scripts/peers/jetstream-bench.go
  export NATS_SERVER=$(command -v nats-server) JETSTREAM_BENCH=$BENCH_DIR/bin/jetstream-bench
else
  echo "no NATS: apt install nats-server golang-go golang-github-nats-io-go-nats-dev" >&2
fi

exec python3 scripts/peers/bench_peers.py
