#!/usr/bin/env bash
# The benchmark kit: each stage beside a baseline measured in the same run, on the same broker.
#
#   bash scripts/bench.sh [gateway|enricher|sink|e2e|drain|all]     (default all)
#
# gateway   the release gateway under the load generator (closed loop at concurrency 32, 64 and
#           256; open loop at 1,000 events/s) beside a plain rdkafka producer writing the same
#           records with the same settings and the same number in flight
#           (gateway/examples/producer_baseline.rs). Targets: ≥ 0.8 of the producer; open-loop
#           p99 < 50 ms.
# enricher  a backlog in stripe.events (through the gateway), drained by a plain
#           consume-decode-produce loop (tests/examples/consume_baseline.rs), then by the release
#           enricher; a plain consumer group's read is shown for reference. Target: ≥ 0.7.
# sink      2,000 new customers then 2,000 updates (through the gateway and the enricher) against
#           an emulator with tight limits (10 s window, 200 requests, 40 s execution, 52
#           concurrent, 30 ms per operation): the seed's writer (one PATCH per change,
#           sequential; tests/examples/seed_writer.rs), then the release sink, beside the ceiling
#           those limits allow. Targets: ≥ 0.9 of the ceiling, ≥ 6× the seed writer.
# e2e       gateway → enricher → sink into an emulator without limits (5 ms per operation), the
#           load generator in open loop at 500 events/s for 60 s timing each event from its 2xx
#           to its contact. Targets: p99 < 1 s, each stage's peak RSS < 100 MiB.
# drain     scripts/bench-drain.sh (the consuming stages through a backlog).
#
# Sizes and knobs: BENCH_EVENTS (gateway and enricher, default 20000), BENCH_SINK_CUSTOMERS (2000),
# BENCH_SEED_SECONDS (how long the seed writer runs, 30), BENCH_E2E_RATE (500),
# BENCH_E2E_SECONDS (60), BENCH_LOG (the stages' RUST_LOG, default warn), BENCH_SINK_ENV
# (NAME=value settings, space-separated, for the sink scenario's sink; default
# SINK_THROTTLE__WINDOW=10s, the emulator's window; passed only when the sink's print-config shows
# `window` under [throttle]). Any stage setting can be varied through its environment variables
# as usual, e.g. `env SINK_KAFKA__PROPERTIES__FETCH.WAIT.MAX.MS=50 bash scripts/bench.sh e2e`.
#
# Everything runs on free ports on 127.0.0.1 and is stopped by PID at the end (or on error);
# logs and the raw results stay in the temporary directory printed last. Peak RSS is VmHWM from
# /proc/PID/status, read just before a process is stopped.
set -euo pipefail

SCENARIO="${1:-all}"
case "$SCENARIO" in gateway|enricher|sink|e2e|drain|all) ;; *)
  echo "usage: bash scripts/bench.sh [gateway|enricher|sink|e2e|drain|all]" >&2; exit 2 ;;
esac
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
CACHE="${STRIPE_PIPELINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stripe-pipeline}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
BIN="$CARGO_TARGET_DIR/release"
TANSU="${TANSU_BIN:-$CACHE/tansu-0.6.0/bin/tansu}"
EVENTS="${BENCH_EVENTS:-20000}"
WORK="$(mktemp -d)"
RESULTS="$WORK/results.jsonl"
: > "$RESULTS"
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"/*/tansu.db* "$WORK"/*/registry
  echo "logs and raw results kept in $WORK"
}
trap cleanup EXIT

log() { printf '[bench] %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # URL, seconds
  for _ in $(seq 1 $(( $2 * 10 ))); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "no answer from $1" >&2; return 1
}
# Appends one JSON object (given as NAME=VALUE pairs; values that parse as JSON stay JSON) to the
# results, with the scenario.
result() {
  python3 - "$RESULTS" "$SCENARIO_NOW" "$@" <<'PY'
import json, sys
path, scenario, *pairs = sys.argv[1:]
row = {"scenario": scenario}
for pair in pairs:
    k, v = pair.split("=", 1)
    try:
        row[k] = json.loads(v)
    except ValueError:
        row[k] = v
with open(path, "a") as f:
    f.write(json.dumps(row) + "\n")
PY
}
# The BENCH line of a tool's output, with the row name added.
bench_line() { # ROW OUTPUT-FILE
  local line
  line=$(grep '^BENCH ' "$2" | tail -n 1 | cut -d' ' -f2-)
  [ -n "$line" ] || { echo "no BENCH line in $2" >&2; return 1; }
  python3 - "$RESULTS" "$SCENARIO_NOW" "$1" "$line" <<'PY'
import json, sys
path, scenario, row, line = sys.argv[1:]
value = json.loads(line)
value.update(scenario=scenario, row=row)
with open(path, "a") as f:
    f.write(json.dumps(value) + "\n")
PY
}
# Stops PID after recording its peak RSS as NAME.
stop() { # NAME PID
  local hwm
  hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$2/status" 2>/dev/null || true)
  [ -n "$hwm" ] && result row=rss process="$1" kib="$hwm"
  kill -TERM "$2" 2>/dev/null || true
  wait "$2" 2>/dev/null || true
}
# `drain` prints `<n> records in <s> s = <rate> records/s`.
drain_result() { # ROW OUTPUT
  python3 - "$RESULTS" "$SCENARIO_NOW" "$1" "$2" <<'PY'
import json, re, sys
path, scenario, row, text = sys.argv[1:]
m = re.search(r"(\d+) records in ([\d.]+) s = (\d+) records/s", text)
value = {"scenario": scenario, "row": row, "done": int(m[1]), "elapsed_s": float(m[2]), "throughput": float(m[3])}
with open(path, "a") as f:
    f.write(json.dumps(value) + "\n")
PY
}

log "building (release)"
cargo build -q --release -p gateway -p enricher -p sink-dataverse -p dataverse-emulator -p schema-registry --bins
cargo build -q --release -p gateway --example loadgen --example producer_baseline
cargo build -q --release -p harness --example drain --example consume_baseline --example seed_writer

MACHINE="$(nproc) cores; $(free -h | awk '/Mem:/ {print $2 " RAM"}'); load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "machine: $MACHINE"
export RUST_LOG="${BENCH_LOG:-warn}"

# Starts a fresh broker (indexes applied first) and registry in $WORK/$1, setting BOOTSTRAP,
# REGISTRY and the standard variables the stages read.
start_infra() { # DIR
  local dir="$WORK/$1" broker_port registry_port
  mkdir -p "$dir"
  broker_port=$(free_port); registry_port=$(free_port)
  BOOTSTRAP="127.0.0.1:$broker_port"
  REGISTRY="http://127.0.0.1:$registry_port"
  export KAFKA_BOOTSTRAP_SERVERS="$BOOTSTRAP" SCHEMA_REGISTRY_URL="$REGISTRY"
  bash "$ROOT/dev/tansu/apply-indexes.sh" "$dir/tansu.db"
  (cd "$dir" && RUST_LOG=warn exec "$TANSU" broker --listener-url "tcp://$BOOTSTRAP" \
    --advertised-listener-url "tcp://$BOOTSTRAP" --storage-engine sqlite://tansu.db) \
    > "$dir/broker.log" 2>&1 &
  BROKER_PID=$!
  PIDS+=("$BROKER_PID")
  RUST_LOG=warn "$BIN/schema-registry" --listen "127.0.0.1:$registry_port" --data-dir "$dir/registry" \
    > "$dir/registry.log" 2>&1 &
  REGISTRY_PID=$!
  PIDS+=("$REGISTRY_PID")
  wait_http "$REGISTRY/subjects" 30
  DIR="$dir"
}
stop_infra() {
  stop broker "$BROKER_PID"
  stop schema-registry "$REGISTRY_PID"
}

start_gateway() {
  local port
  port=$(free_port)
  GATEWAY_SECRET="whsec_bench_$(date +%s%N)"
  STRIPE_WEBHOOK_SECRET="$GATEWAY_SECRET" GATEWAY_TOPICS__REPLICATION_FACTOR=1 \
    GATEWAY_LISTEN="127.0.0.1:$port" GATEWAY_LIMITS__MAX_IN_FLIGHT=1024 \
    "$BIN/gateway" > "$DIR/gateway.log" 2>&1 &
  GATEWAY_PID=$!
  PIDS+=("$GATEWAY_PID")
  GATEWAY_URL="http://127.0.0.1:$port"
  wait_http "$GATEWAY_URL/readyz" 60
}
loadgen() { # ROW ARGS… (the output is kept as $DIR/<row>.txt)
  local row="$1" out
  shift
  out="$DIR/$(tr -c 'A-Za-z0-9=.\n-' _ <<<"$row").txt"
  "$BIN/examples/loadgen" --url "$GATEWAY_URL/webhooks/stripe" --secret "$GATEWAY_SECRET" \
    --label "$row" "$@" > "$out"
  grep -v '^BENCH ' "$out" | sed 's/^/    /' >&2
  bench_line "$row" "$out"
}

start_enricher() {
  local port
  port=$(free_port)
  ENRICHER_LISTEN="127.0.0.1:$port" ENRICHER_GROUP="$1" ENRICHER_TOPICS__REPLICATION_FACTOR=1 \
    "$BIN/enricher" > "$DIR/enricher.log" 2>&1 &
  ENRICHER_PID=$!
  PIDS+=("$ENRICHER_PID")
  ENRICHER_URL="http://127.0.0.1:$port"
}

# Starts the emulator with the given flags; sets EMULATOR.
start_emulator() { # FLAGS…
  local port
  port=$(free_port)
  "$BIN/dataverse-emulator" --listen "127.0.0.1:$port" "$@" > "$DIR/emulator.log" 2>&1 &
  EMULATOR_PID=$!
  PIDS+=("$EMULATOR_PID")
  EMULATOR="http://127.0.0.1:$port"
  wait_http "$EMULATOR/healthz" 30
}

# The sink's settings for $EMULATOR, one NAME=value a line.
sink_env() { # GROUP
  printf '%s\n' "SINK_LISTEN=127.0.0.1:$SINK_PORT" "SINK_GROUP=$1" SINK_TOPICS__REPLICATION_FACTOR=1 \
    "SINK_DATAVERSE__ENVIRONMENT_URL=$EMULATOR" "SINK_DATAVERSE__TOKEN_URL=$EMULATOR/local/oauth2/v2.0/token" \
    SINK_DATAVERSE__TENANT_ID=local SINK_DATAVERSE__CLIENT_ID=sink-dataverse SINK_DATAVERSE__CLIENT_SECRET=local-secret
}
# Starts the sink. With `limited`, BENCH_SINK_ENV (default SINK_THROTTLE__WINDOW=10s: the
# emulator's window) is added, but only when this sink's print-config shows `window` under
# [throttle]: a sink without that setting refuses the unknown key.
start_sink() { # GROUP [limited]
  local -a settings
  SINK_PORT=$(free_port)
  mapfile -t settings < <(sink_env "$1")
  if [ "${2:-}" = limited ]; then
    if env "${settings[@]}" "$BIN/sink-dataverse" print-config 2>/dev/null \
        | awk '/^\[throttle\]/ {t=1; next} /^\[/ {t=0} t && /^window *=/ {found=1} END {exit !found}'; then
      for kv in ${BENCH_SINK_ENV-SINK_THROTTLE__WINDOW=10s}; do settings+=("$kv"); done
      log "sink: with ${BENCH_SINK_ENV-SINK_THROTTLE__WINDOW=10s}"
    else
      log "sink: no throttle.window setting in this build; BENCH_SINK_ENV not passed"
    fi
  fi
  SINK_PRINT_CONFIG="$(env "${settings[@]}" "$BIN/sink-dataverse" print-config 2>&1 || true)"
  env "${settings[@]}" "$BIN/sink-dataverse" > "$DIR/sink.log" 2>&1 &
  SINK_PID=$!
  PIDS+=("$SINK_PID")
  SINK_URL="http://127.0.0.1:$SINK_PORT"
}
# One value of the sink's configuration as print-config shows it (`key = value` under [section]).
sink_setting() { # SECTION KEY DEFAULT
  awk -v s="[$1]" -v k="$2" -v d="$3" '
    $0 == s {t=1; next} /^\[/ {t=0}
    (t || s == "[]") && $1 == k {gsub(/"/, "", $3); print $3; found=1; exit}
    END {if (!found) print d}' <<<"$SINK_PRINT_CONFIG"
}
metric() { # URL NAME: the sum of a metric's samples (0 when absent)
  curl -fsS "$1/metrics" 2>/dev/null | awk -v n="$2" '$1 == n || index($1, n "{") == 1 {s += $2} END {print s + 0}'
}

# ---------------------------------------------------------------------------------------------
scenario_gateway() {
  SCENARIO_NOW=gateway
  echo "== gateway: the release gateway beside a plain rdkafka producer (same records, same settings)"
  start_infra gateway
  start_gateway
  # Warm-up (not recorded): the topic's partitions, the registry's cache, the connections.
  "$BIN/examples/loadgen" --url "$GATEWAY_URL/webhooks/stripe" --secret "$GATEWAY_SECRET" \
    --events 2000 --concurrency 32 > /dev/null
  "$BIN/examples/producer_baseline" --bootstrap "$BOOTSTRAP" --registry "$REGISTRY" \
    --events 2000 --concurrency 32 > /dev/null 2>&1
  for c in 32 64 256; do
    log "producer, concurrency $c"
    "$BIN/examples/producer_baseline" --bootstrap "$BOOTSTRAP" --registry "$REGISTRY" \
      --events "$EVENTS" --concurrency "$c" --label "producer c=$c" > "$DIR/producer_$c.txt" 2>"$DIR/producer_$c.err"
    grep -v '^BENCH ' "$DIR/producer_$c.txt" | sed 's/^/    /' >&2
    bench_line "producer c=$c" "$DIR/producer_$c.txt"
    log "gateway, concurrency $c"
    loadgen "gateway c=$c" --events "$EVENTS" --concurrency "$c"
  done
  log "gateway, open loop 1000/s"
  loadgen "gateway open 1000/s" --mode open --rate 1000 --events "$EVENTS" --max-seconds 60
  curl -fsS "$GATEWAY_URL/metrics" | grep -E '^gateway_(requests_total|produce_duration_seconds_(sum|count)|producer_resets_total)' \
    | sed 's/^/    /' >&2 || true
  stop gateway "$GATEWAY_PID"
  stop_infra
}

scenario_enricher() {
  SCENARIO_NOW=enricher
  echo "== enricher: a backlog of $EVENTS events, the plain consume-decode-produce loop, then the enricher"
  start_infra enricher
  start_gateway
  loadgen "fill stripe.events" --events "$EVENTS" --concurrency 64 --max-seconds 250
  stop gateway "$GATEWAY_PID"
  local out
  out=$("$BIN/examples/drain" plain "$BOOTSTRAP" stripe.events bench-plain)
  log "plain consumer group (read only): $out"
  drain_result "plain consumer group (read only)" "$out"

  "$BIN/examples/consume_baseline" --bootstrap "$BOOTSTRAP" --registry "$REGISTRY" \
    --group bench-baseline --output bench.baseline.out > "$DIR/baseline.log" 2>&1 &
  local baseline=$!
  PIDS+=("$baseline")
  out=$("$BIN/examples/drain" wait "$BOOTSTRAP" stripe.events bench-baseline)
  log "consume-decode-produce baseline: $out"
  drain_result "consume-decode-produce baseline" "$out"
  stop consume_baseline "$baseline"

  start_enricher bench-enricher
  out=$("$BIN/examples/drain" wait "$BOOTSTRAP" stripe.events bench-enricher)
  log "enricher: $out"
  drain_result "enricher" "$out"
  curl -fsS "$ENRICHER_URL/metrics" | grep -E '^enricher_(consumer_rebalances_total|records_out_total|producer_resets_total)' \
    | sed 's/^/    /' >&2 || true
  stop enricher "$ENRICHER_PID"
  stop_infra
}

scenario_sink() {
  SCENARIO_NOW=sink
  local customers="${BENCH_SINK_CUSTOMERS:-2000}" window_ms=10000 max_requests=200 exec_ms=40000 \
    concurrent=52 latency_ms=30 out
  echo "== sink: $customers new customers then $customers updates, emulator limits ${window_ms} ms window," \
    "$max_requests requests, $exec_ms ms execution, $concurrent concurrent, $latency_ms ms per operation"
  start_infra sink
  start_emulator --window-ms "$window_ms" --max-requests "$max_requests" \
    --max-execution-time-ms "$exec_ms" --max-concurrent "$concurrent" --latency-ms "$latency_ms"
  start_gateway
  loadgen "fill stripe.events" --events $(( customers * 2 )) --customers "$customers" --concurrency 64
  stop gateway "$GATEWAY_PID"
  start_enricher bench-enricher
  out=$("$BIN/examples/drain" wait "$BOOTSTRAP" stripe.events bench-enricher)
  log "enricher filled customers.normalized: $out"
  stop enricher "$ENRICHER_PID"

  log "seed writer (one PATCH per change, sequential) for ${BENCH_SEED_SECONDS:-30} s"
  "$BIN/examples/seed_writer" --bootstrap "$BOOTSTRAP" --registry "$REGISTRY" --emulator "$EMULATOR" \
    --group bench-seed --max-seconds "${BENCH_SEED_SECONDS:-30}" --label "seed writer" > "$DIR/seed.txt" 2>"$DIR/seed.err"
  grep -v '^BENCH ' "$DIR/seed.txt" | sed 's/^/    /' >&2
  bench_line "seed writer" "$DIR/seed.txt"
  # The sink starts on an empty table with fresh limits, as the seed writer did.
  curl -fsS -X POST -H 'content-type: application/json' \
    -d '{"rows":true,"stats":true,"limits":true,"faults":true,"tokens":false}' "$EMULATOR/_admin/reset" > /dev/null

  start_sink bench-sink limited
  local batch first_write finished
  batch=$(sink_setting "" batch_size 50)
  # Two clocks: from the sink's start (process start-up, Dataverse checks and the group join
  # included), and from its first finished change (the rate it writes at).
  (
    for _ in $(seq 1 1200); do
      [ "$(metric "$SINK_URL" sink_dataverse_writes_total)" != 0 ] && { date +%s.%N; exit 0; }
      sleep 0.05
    done
  ) > "$DIR/sink-first-write" &
  local watcher=$!
  out=$("$BIN/examples/drain" wait "$BOOTSTRAP" customers.normalized bench-sink)
  finished=$(date +%s.%N)
  wait "$watcher" || true
  first_write=$(cat "$DIR/sink-first-write")
  log "sink: $out"
  python3 - "$RESULTS" "$out" "$first_write" "$finished" <<'PY'
import json, re, sys
path, text, first, end = sys.argv[1:]
done = int(re.search(r"(\d+) records in", text)[1])
elapsed = float(end) - float(first)
with open(path, "a") as f:
    f.write(json.dumps({"scenario": "sink", "row": "sink-dataverse (writing)", "done": done,
                        "elapsed_s": round(elapsed, 2), "throughput": round(done / elapsed, 1)}) + "\n")
PY
  local throttled throttled_s ops requests
  throttled=$(metric "$SINK_URL" sink_dataverse_throttled_total)
  throttled_s=$(metric "$SINK_URL" sink_dataverse_throttled_seconds_total)
  curl -fsS "$SINK_URL/metrics" | grep -E '^sink_dataverse_(writes_total|throttled|batch_size_(sum|count)|requests?_)' \
    | sed 's/^/    /' >&2 || true
  curl -fsS "$EMULATOR/_admin/stats" > "$DIR/emulator-stats.json" || true
  stop sink-dataverse "$SINK_PID"
  drain_result "sink-dataverse" "$out"
  result row=sink-metrics throttled="$throttled" throttled_seconds="$throttled_s" batch_size="$batch"
  result row=ceiling window_ms="$window_ms" max_requests="$max_requests" max_execution_time_ms="$exec_ms" \
    max_concurrent="$concurrent" latency_ms="$latency_ms" batch_size="$batch"
  python3 - "$DIR/emulator-stats.json" >&2 <<'PY' || true
import json, sys
s = json.load(open(sys.argv[1]))
print("    emulator: requests", s.get("requests_total"), "by status", s.get("requests_by_status"),
      "operations", s.get("operations"), "throttled", s.get("throttled"))
PY
  stop dataverse-emulator "$EMULATOR_PID"
  stop_infra
}

scenario_e2e() {
  SCENARIO_NOW=e2e
  local rate="${BENCH_E2E_RATE:-500}" seconds="${BENCH_E2E_SECONDS:-60}"
  echo "== e2e: gateway → enricher → sink → emulator (no limits, 5 ms per operation), open loop $rate/s for $seconds s"
  start_infra e2e
  start_emulator --no-limits --latency-ms 5
  start_gateway
  start_enricher bench-enricher
  start_sink bench-sink
  wait_http "$ENRICHER_URL/readyz" 60
  wait_http "$SINK_URL/readyz" 60
  loadgen "e2e open ${rate}/s" --mode open --rate "$rate" --events $(( rate * seconds )) \
    --max-seconds $(( seconds + 10 )) --e2e-emulator "$EMULATOR" --e2e-deadline-seconds 60
  curl -fsS "$SINK_URL/metrics" | grep -E '^sink_dataverse_(writes_total\{outcome="(created|updated)"|batch_size_(sum|count)|request_seconds_(sum|count)\{kind="batch"|concurrency_limit)' \
    | sed 's/^/    /' >&2 || true
  curl -fsS "$EMULATOR/_admin/stats" > "$DIR/emulator-stats.json" || true
  python3 - "$DIR/emulator-stats.json" >&2 <<'PY' || true
import json, sys
s = json.load(open(sys.argv[1]))
print("    emulator: requests", s.get("requests_total"), "by status", s.get("requests_by_status"),
      "operations", s.get("operations"), "batches", s.get("batches"))
PY
  stop gateway "$GATEWAY_PID"
  stop enricher "$ENRICHER_PID"
  stop sink-dataverse "$SINK_PID"
  stop dataverse-emulator "$EMULATOR_PID"
  stop_infra
}

scenario_drain() {
  SCENARIO_NOW=drain
  echo "== drain: scripts/bench-drain.sh $EVENTS"
  bash "$ROOT/scripts/bench-drain.sh" "$EVENTS" | tee "$WORK/drain.txt"
}

case "$SCENARIO" in
  all) for s in gateway enricher sink e2e drain; do "scenario_$s"; done ;;
  *) "scenario_$SCENARIO" ;;
esac

echo
echo "== results (machine: $MACHINE)"
python3 "$ROOT/scripts/bench-table.py" "$RESULTS"
