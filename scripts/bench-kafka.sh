#!/usr/bin/env bash
# Produce and consume over the Kafka listener with a librdkafka-based client (kcat) next to
# the gRPC path (runnel-bench, through runnel-client), on one broker, 1 KiB records, one
# partition each, ROUNDS interleaved rounds (docs/benchmarks.md, "Kafka listener").
#
#   scripts/bench-kafka.sh                    # builds release binaries
#   RECORDS=500000 ROUNDS=3 scripts/bench-kafka.sh
#
# Variables: RECORDS (500000), ROUNDS (3), BENCH_DIR (target/bench-kafka), PORT (37191; +1
# metrics, +2 Kafka), SKIP_BUILD=1. Needs kcat (Debian: apt-get install kcat) and python3.
#
# kcat produces the records of a file, one per line, with librdkafka's batching
# (batch.size 1 MiB, linger.ms 5, acks 1: Runnel's ACKS_WRITTEN, as runnel-bench's default)
# and reads them back to /dev/null; `runnel-bench kafka-fetch`, a minimal Kafka client (one
# 1 MiB fetch at a time), reads them too, the yardstick of the listener's reads;
# runnel-bench produces in batches of 1,000 records and reads with its consumer. Each time is the whole command's, process start included (kcat
# starts in milliseconds).

set -euo pipefail
cd "$(dirname "$0")/.."

RECORDS=${RECORDS:-500000}
ROUNDS=${ROUNDS:-3}
BENCH_DIR=${BENCH_DIR:-target/bench-kafka}
PORT=${PORT:-37191}
BROKER=127.0.0.1:$PORT
KAFKA=127.0.0.1:$((PORT + 2))

if [[ -z "${SKIP_BUILD:-}" ]]; then
  cargo build --release -p runnel-cli -p runnel-broker -p runnel-bench
fi
mkdir -p "$BENCH_DIR/bin"
cp target/release/runnel target/release/runneld target/release/runnel-bench "$BENCH_DIR/bin/"
RUNNEL=$BENCH_DIR/bin/runnel
RUNNEL_BENCH=$BENCH_DIR/bin/runnel-bench

rm -rf "$BENCH_DIR/data"
"$BENCH_DIR/bin/runneld" --data-dir "$BENCH_DIR/data" --listen "$BROKER" \
  --metrics-listen "127.0.0.1:$((PORT + 1))" --set kafka.listen="$KAFKA" \
  >"$BENCH_DIR/runneld.log" 2>&1 &
BROKER_PID=$!
trap 'kill $BROKER_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do "$RUNNEL" --broker "$BROKER" topic list >/dev/null 2>&1 && break; sleep 0.1; done

# The records: RECORDS lines of 1,023 characters and a newline.
INPUT=$BENCH_DIR/records.txt
python3 -c "
import sys
line = ('x' * 1023 + '\n').encode()
with open(sys.argv[1], 'wb') as f:
    for _ in range(int(sys.argv[2])):
        f.write(line)
" "$INPUT" "$RECORDS"

seconds() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N); python3 -c "print($t1 - $t0)"; }
rate() { python3 -c "print('%.0f' % ($RECORDS / $1))"; }

printf '%-32s %14s\n' run "records/s"
for round in $(seq 1 "$ROUNDS"); do
  "$RUNNEL" --broker "$BROKER" topic create "k$round" --retention 0 >/dev/null
  "$RUNNEL" --broker "$BROKER" topic create "g$round" --retention 0 >/dev/null
  s=$(seconds kcat -b "$KAFKA" -P -t "k$round" -p 0 -l \
    -X batch.size=1048576 -X linger.ms=5 -X acks=1 -X queue.buffering.max.messages=1000000 "$INPUT")
  printf '%-32s %14s\n' "Kafka produce, kcat ($round)" "$(rate "$s")"
  s=$(seconds "$RUNNEL_BENCH" produce --broker "$BROKER" --topic "g$round" --records "$RECORDS" \
    --record-size 1024 --batch-size 1000)
  printf '%-32s %14s\n' "gRPC produce, runnel-bench ($round)" "$(rate "$s")"
  s=$(seconds kcat -b "$KAFKA" -C -t "k$round" -p 0 -o beginning -e -q -f '%o\n')
  printf '%-32s %14s\n' "Kafka consume, kcat ($round)" "$(rate "$s")"
  s=$(seconds "$RUNNEL_BENCH" kafka-fetch --kafka "$KAFKA" --topic "k$round" --records "$RECORDS")
  printf '%-32s %14s\n' "Kafka consume, minimal ($round)" "$(rate "$s")"
  s=$(seconds "$RUNNEL_BENCH" consume --broker "$BROKER" --topic "g$round" --records "$RECORDS" \
    --record-size 1024)
  printf '%-32s %14s\n' "gRPC consume, runnel-bench ($round)" "$(rate "$s")"
done
