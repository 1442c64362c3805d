#!/usr/bin/env bash
# Load test: the gateway (release build) against a local Tansu broker and the workspace's schema
# registry, beside a bare axum handler, both driven by the same load generator on 127.0.0.1.
# Starts everything on free-looking ports, stops exactly the processes it started.
#
#   bash gateway/scripts/loadtest.sh [EVENTS] [CONCURRENCY]
#
# Needs: the Tansu binary (bash scripts/setup.sh), `cargo build --release -p gateway --bins
# --examples` and `cargo build -p schema-registry --bins` (the script runs both builds).
set -euo pipefail

EVENTS="${1:-20000}"
CONCURRENCY="${2:-32}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
CACHE="${STRIPE_PIPELINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stripe-pipeline}"
TANSU="${TANSU_BIN:-$CACHE/tansu-0.6.0/bin/tansu}"
SECRET="whsec_loadtest_$(date +%s)"
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

wait_tcp() { # URL, seconds: any HTTP answer will do
  for _ in $(seq 1 $(( $2 * 10 ))); do curl -sS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "no answer from $1" >&2; return 1
}

(cd "$ROOT" && cargo build -q --release -p gateway --bins --examples && cargo build -q -p schema-registry --bins)

BROKER_PORT=$(free_port); REGISTRY_PORT=$(free_port); GATEWAY_PORT=$(free_port); BARE_PORT=$(free_port)

bash "$ROOT/dev/tansu/apply-indexes.sh" "$WORK/tansu.db"
(cd "$WORK" && RUST_LOG=warn exec "$TANSU" broker --listener-url "tcp://127.0.0.1:$BROKER_PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$BROKER_PORT" --storage-engine sqlite://tansu.db) \
  > "$WORK/broker.log" 2>&1 &
PIDS+=($!)
"$TARGET/debug/schema-registry" --listen "127.0.0.1:$REGISTRY_PORT" --data-dir "$WORK/registry" \
  > "$WORK/registry.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$REGISTRY_PORT/subjects" 30

KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$BROKER_PORT" SCHEMA_REGISTRY_URL="http://127.0.0.1:$REGISTRY_PORT" \
  STRIPE_WEBHOOK_SECRET="$SECRET" GATEWAY_TOPICS__REPLICATION_FACTOR=1 GATEWAY_LISTEN="127.0.0.1:$GATEWAY_PORT" \
  GATEWAY_LIMITS__MAX_IN_FLIGHT=1024 RUST_LOG="${GATEWAY_LOG:-info}" \
  "$TARGET/release/gateway" > "$WORK/gateway.log" 2>&1 &
PIDS+=($!)
"$TARGET/release/examples/bare" --listen "127.0.0.1:$BARE_PORT" > "$WORK/bare.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$GATEWAY_PORT/readyz" 60
wait_tcp "http://127.0.0.1:$BARE_PORT/" 10

echo "machine: $(nproc) cores; $(free -h | awk '/Mem:/ {print $2 " RAM"}')"
echo "== bare axum handler"
"$TARGET/release/examples/loadgen" --url "http://127.0.0.1:$BARE_PORT/webhooks/stripe" \
  --secret "$SECRET" --events "$EVENTS" --concurrency "$CONCURRENCY" --max-seconds 120
echo "== gateway (verify, Avro, idempotent acks=all produce, await delivery)"
"$TARGET/release/examples/loadgen" --url "http://127.0.0.1:$GATEWAY_PORT/webhooks/stripe" \
  --secret "$SECRET" --events "$EVENTS" --concurrency "$CONCURRENCY" --max-seconds 120
echo "== gateway metrics"
curl -fsS "http://127.0.0.1:$GATEWAY_PORT/metrics" | grep -E '^gateway_(requests_total|produce_duration_seconds_(sum|count)|producer_resets_total|duplicates_total)' || true
