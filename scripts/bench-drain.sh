#!/usr/bin/env bash
# Drain benchmark: how fast each consuming stage works through a backlog (a replay from the
# earliest offset, a restart after a long outage), beside a plain consumer group reading the same
# topic from the same broker in the same run.
#
#   bash scripts/bench-drain.sh [EVENTS]
#   BENCH_STAGES=enricher bash scripts/bench-drain.sh   # only the enricher half
#
# Stage settings can be varied through their environment variables as usual, e.g.
# ENRICHER_CONSUMER__MAX_BATCH=500, or librdkafka properties through env (dots kept):
#   env ENRICHER_KAFKA__PROPERTIES__FETCH.MAX.BYTES=4194304 bash scripts/bench-drain.sh
#
# 1. Tansu (SQLite), the schema registry and the release gateway start on free ports; the load
#    generator posts EVENTS signed customer.updated webhooks (default 20000) to fill stripe.events.
# 2. A plain consumer group reads stripe.events; then the release enricher drains it (fresh group,
#    from the earliest offset) until its commits reach the end.
# 3. A plain consumer group reads customers.normalized; then the release sink drains it the same
#    way twice, each time with a fresh group into its own Dataverse emulator (release): once with
#    the service protection limits off (what the consuming loop and the sink can do when Dataverse
#    is not the bound) and once under Dataverse's default limits (where the budget sets the pace).
# Everything it starts is stopped at the end; logs stay in a temporary directory it prints.
set -euo pipefail

EVENTS="${1:-20000}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
CACHE="${STRIPE_PIPELINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stripe-pipeline}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
TARGET="$CARGO_TARGET_DIR"
TANSU="${TANSU_BIN:-$CACHE/tansu-0.6.0/bin/tansu}"
SECRET="whsec_bench_$(date +%s)"
WORK="$(mktemp -d)"
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK/tansu.db"* "$WORK/registry"
  echo "logs kept in $WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # URL, seconds
  for _ in $(seq 1 $(( $2 * 10 ))); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "no answer from $1" >&2; return 1
}
cpu_seconds() { # pid: user + system CPU time so far, in seconds
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0
}
stop() { # pid: SIGTERM, wait
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

echo "building (release)" >&2
cargo build -q --release -p gateway -p enricher -p sink-dataverse -p dataverse-emulator --bins
cargo build -q --release -p gateway --example loadgen
cargo build -q --release -p harness --example drain
cargo build -q --release -p schema-registry --bins
DRAIN="$TARGET/release/examples/drain"

BROKER_PORT=$(free_port); REGISTRY_PORT=$(free_port); GATEWAY_PORT=$(free_port)
EMULATOR_PORT=$(free_port); ENRICHER_PORT=$(free_port); SINK_PORT=$(free_port)
FREE_EMULATOR_PORT=$(free_port)
BOOTSTRAP="127.0.0.1:$BROKER_PORT"
export KAFKA_BOOTSTRAP_SERVERS="$BOOTSTRAP" SCHEMA_REGISTRY_URL="http://127.0.0.1:$REGISTRY_PORT"
export RUST_LOG="${BENCH_LOG:-warn}"

bash "$ROOT/dev/tansu/apply-indexes.sh" "$WORK/tansu.db"
(cd "$WORK" && RUST_LOG=warn exec "$TANSU" broker --listener-url "tcp://$BOOTSTRAP" \
  --advertised-listener-url "tcp://$BOOTSTRAP" --storage-engine sqlite://tansu.db) \
  > "$WORK/broker.log" 2>&1 &
PIDS+=($!)
"$TARGET/release/schema-registry" --listen "127.0.0.1:$REGISTRY_PORT" --data-dir "$WORK/registry" \
  > "$WORK/registry.log" 2>&1 &
PIDS+=($!)
"$TARGET/release/dataverse-emulator" --listen "127.0.0.1:$EMULATOR_PORT" > "$WORK/emulator.log" 2>&1 &
EMULATOR_PID=$!
PIDS+=($!)
"$TARGET/release/dataverse-emulator" --listen "127.0.0.1:$FREE_EMULATOR_PORT" --no-limits \
  > "$WORK/emulator-no-limits.log" 2>&1 &
FREE_EMULATOR_PID=$!
PIDS+=($!)
wait_http "http://127.0.0.1:$REGISTRY_PORT/subjects" 30
wait_http "http://127.0.0.1:$EMULATOR_PORT/healthz" 30
wait_http "http://127.0.0.1:$FREE_EMULATOR_PORT/healthz" 30

echo "machine: $(nproc) cores; $(free -h | awk '/Mem:/ {print $2 " RAM"}'); load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== filling stripe.events with $EVENTS signed webhooks through the gateway"
STRIPE_WEBHOOK_SECRET="$SECRET" GATEWAY_TOPICS__REPLICATION_FACTOR=1 GATEWAY_LISTEN="127.0.0.1:$GATEWAY_PORT" GATEWAY_LIMITS__MAX_IN_FLIGHT=1024 \
  "$TARGET/release/gateway" > "$WORK/gateway.log" 2>&1 &
GATEWAY=$!
PIDS+=("$GATEWAY")
wait_http "http://127.0.0.1:$GATEWAY_PORT/readyz" 60
"$TARGET/release/examples/loadgen" --url "http://127.0.0.1:$GATEWAY_PORT/webhooks/stripe" \
  --secret "$SECRET" --events "$EVENTS" --concurrency 64 --max-seconds 250 | tail -n 3
stop "$GATEWAY"

echo "== stripe.events: plain consumer group"
plain_in=$("$DRAIN" plain "$BOOTSTRAP" stripe.events bench-plain-in)
echo "$plain_in"
echo "== stripe.events: enricher"
ENRICHER_LISTEN="127.0.0.1:$ENRICHER_PORT" ENRICHER_GROUP=bench-enricher ENRICHER_TOPICS__REPLICATION_FACTOR=1 \
  "$TARGET/release/enricher" > "$WORK/enricher.log" 2>&1 &
ENRICHER=$!
PIDS+=("$ENRICHER")
enricher=$("$DRAIN" wait "$BOOTSTRAP" stripe.events bench-enricher)
echo "$enricher"
echo "CPU seconds in the drain: enricher $(cpu_seconds "$ENRICHER")"
curl -fsS "http://127.0.0.1:$ENRICHER_PORT/metrics" | grep -E '^enricher_(consumer_rebalances_total|records_out_total|producer_resets_total)' || true
stop "$ENRICHER"
if [ "${BENCH_STAGES:-all}" = enricher ]; then
  python3 -c 'import sys; p, e = (float(x.split("= ")[1].split()[0]) for x in sys.argv[1:]); print(f"== summary: enricher {e:.0f} records/s, plain {p:.0f} records/s, ratio {e / p:.2f}")' "$plain_in" "$enricher"
  exit 0
fi

echo "== customers.normalized: plain consumer group"
plain_out=$("$DRAIN" plain "$BOOTSTRAP" customers.normalized bench-plain-out)
echo "$plain_out"
# Drains customers.normalized with a fresh sink group into the emulator at $1; prints the rate line.
drain_sink() { # EMULATOR_URL GROUP LABEL EMULATOR_PID
  echo "== customers.normalized: sink-dataverse, $3" >&2
  SINK_LISTEN="127.0.0.1:$SINK_PORT" SINK_GROUP="$2" SINK_TOPICS__REPLICATION_FACTOR=1 \
  SINK_DATAVERSE__ENVIRONMENT_URL="$1" SINK_DATAVERSE__TOKEN_URL="$1/local/oauth2/v2.0/token" \
  SINK_DATAVERSE__TENANT_ID=local SINK_DATAVERSE__CLIENT_ID=sink-dataverse SINK_DATAVERSE__CLIENT_SECRET=local-secret \
    "$TARGET/release/sink-dataverse" > "$WORK/$2.log" 2>&1 &
  local pid=$! out emulator_before
  PIDS+=("$pid")
  emulator_before=$(cpu_seconds "$4")
  out=$("$DRAIN" wait "$BOOTSTRAP" customers.normalized "$2")
  echo "$out" >&2
  echo "CPU seconds in the drain: sink $(cpu_seconds "$pid"), emulator $(python3 -c "print(f'{$(cpu_seconds "$4") - $emulator_before:.2f}')")" >&2
  curl -fsS "http://127.0.0.1:$SINK_PORT/metrics" | grep -E '^sink_dataverse_(consumer_rebalances_total|writes_total|throttled_total|batch_size_(sum|count)|concurrency_limit)' >&2 || true
  stop "$pid"
  echo "$out"
}
sink_free=$(drain_sink "http://127.0.0.1:$FREE_EMULATOR_PORT" bench-sink-free "service protection limits off" "$FREE_EMULATOR_PID")
sink=$(drain_sink "http://127.0.0.1:$EMULATOR_PORT" bench-sink "Dataverse's default service protection limits" "$EMULATOR_PID")

rate() { sed -E 's/.*= ([0-9]+) records\/s.*/\1/' <<<"$1"; }
echo "== summary (records/s; ratio to the plain consumer group on the same topic)"
python3 - "$(rate "$plain_in")" "$(rate "$enricher")" "$(rate "$plain_out")" "$(rate "$sink_free")" "$(rate "$sink")" <<'PY'
import sys
pi, e, po, sf, s = map(float, sys.argv[1:])
print(f"enricher                        {e:8.0f}   plain {pi:8.0f}   ratio {e / pi:.2f}")
print(f"sink-dataverse (limits off)     {sf:8.0f}   plain {po:8.0f}   ratio {sf / po:.2f}")
print(f"sink-dataverse (default limits) {s:8.0f}   plain {po:8.0f}   ratio {s / po:.2f}")
PY
