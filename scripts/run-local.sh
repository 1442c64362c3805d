#!/usr/bin/env bash
# Runs the whole pipeline on this machine with embedded defaults: a Kafka broker (Tansu), the
# schema registry, the Dataverse emulator and the three stages, then sends one signed Stripe
# webhook and shows the contact it becomes in Dataverse. Keeps running until Ctrl-C; with --once
# it stops after showing the contact (and exits non-zero if the contact never arrives).
#
#   bash scripts/run-local.sh [--once]
#
# Ports: gateway 8080, registry 8081, Dataverse emulator 8090, Kafka 9092, enricher ops 9101,
# sink ops 9102. State and logs go to .local/ in the checkout (delete it to start over).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ONCE=false
[ "${1:-}" = "--once" ] && ONCE=true

bash scripts/setup.sh
CACHE="${STRIPE_PIPELINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stripe-pipeline}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
echo "[run-local] building the pipeline" >&2
cargo build --workspace --bins --quiet
BIN="$CARGO_TARGET_DIR/debug"
TANSU="$CACHE/tansu-0.6.0/bin/tansu"

STATE="$ROOT/.local"
mkdir -p "$STATE/broker" "$STATE/registry" "$STATE/logs"

# Embedded defaults, shared by every process below.
export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092
export SCHEMA_REGISTRY_URL=http://127.0.0.1:8081
export RUST_LOG="${RUST_LOG:-info,rdkafka=warn}"
WEBHOOK_SECRET="${WEBHOOK_SECRET:-whsec_local_development_secret}"
EMULATOR=http://127.0.0.1:8090

pids=()
cleanup() {
  # Stages first, newest first, so they commit and leave their groups while the broker is up.
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "${pids[i]}" 2>/dev/null || break; sleep 0.2; done
    kill -9 "${pids[i]}" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() { # name, command...
  local name=$1; shift
  "$@" >"$STATE/logs/$name.log" 2>&1 &
  pids+=($!)
  echo "[run-local] $name started (log: .local/logs/$name.log)" >&2
}

wait_http() { # name, url
  for _ in $(seq 1 300); do
    if curl -fsS -o /dev/null "$2" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "[run-local] $1 did not become ready at $2; last log lines:" >&2
  tail -n 30 "$STATE/logs/$1.log" >&2
  exit 1
}

wait_port() { # name, port
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "[run-local] $1 did not listen on port $2; last log lines:" >&2
  tail -n 30 "$STATE/logs/$1.log" >&2
  exit 1
}

start broker env -C "$STATE/broker" -u OTEL_EXPORTER_OTLP_ENDPOINT "$TANSU" broker \
  --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
  --storage-engine sqlite://tansu.db
start schema-registry "$BIN/schema-registry" --listen 127.0.0.1:8081 --data-dir "$STATE/registry"
start dataverse-emulator "$BIN/dataverse-emulator" --listen 127.0.0.1:8090
wait_port broker 9092
wait_http schema-registry http://127.0.0.1:8081/
wait_http dataverse-emulator "$EMULATOR/healthz"

# One broker: topics the stages create get one replica (the default is the cluster's own).
GATEWAY_WEBHOOK__SECRETS="$WEBHOOK_SECRET" GATEWAY_TOPICS__REPLICATION_FACTOR=1 start gateway "$BIN/gateway"
ENRICHER_TOPICS__REPLICATION_FACTOR=1 start enricher "$BIN/enricher"
SINK_TOPICS__REPLICATION_FACTOR=1 \
SINK_DATAVERSE__ENVIRONMENT_URL="$EMULATOR" \
SINK_DATAVERSE__TOKEN_URL="$EMULATOR/local/oauth2/v2.0/token" \
SINK_DATAVERSE__TENANT_ID=local \
SINK_DATAVERSE__CLIENT_ID=sink-dataverse \
SINK_DATAVERSE__CLIENT_SECRET=local-secret \
  start sink-dataverse "$BIN/sink-dataverse"
wait_http gateway http://127.0.0.1:8080/readyz
wait_http enricher http://127.0.0.1:9101/readyz
wait_http sink-dataverse http://127.0.0.1:9102/readyz

# A customer.created event as Stripe sends it, signed as Stripe signs it:
# HMAC-SHA256("<timestamp>.<raw body>") with the endpoint secret, hex, in Stripe-Signature.
now=$(date +%s)
customer="cus_local$(date +%s%N | tail -c 9)"
body=$(cat <<JSON
{"id":"evt_local$now","object":"event","api_version":"2025-04-30.basil","created":$now,"livemode":false,"pending_webhooks":1,"request":{"id":null,"idempotency_key":null},"type":"customer.created","data":{"object":{"id":"$customer","object":"customer","name":"Ada  Lovelace","email":"  Ada.Lovelace@Example.COM ","phone":"020 7946 0958","description":"Signed sample from run-local","address":{"line1":"12 St James's Square","line2":"","city":"London","state":null,"postal_code":"SW1Y 4JH","country":"gb"},"metadata":{"source":"run-local"},"created":$now,"livemode":false}}}
JSON
)
signature=$(printf '%s.%s' "$now" "$body" | openssl dgst -sha256 -hmac "$WEBHOOK_SECRET" -r | cut -d' ' -f1)
echo "[run-local] POST /webhooks/stripe (customer $customer)" >&2
curl -sS -X POST http://127.0.0.1:8080/webhooks/stripe \
  -H 'Content-Type: application/json' \
  -H "Stripe-Signature: t=$now,v1=$signature" \
  --data-binary "$body"
echo

echo "[run-local] waiting for the contact in Dataverse" >&2
for _ in $(seq 1 300); do
  row=$(curl -fsS "$EMULATOR/_admin/tables/contacts" | python3 -c '
import json, sys
rows = json.load(sys.stdin)
rows = rows.get("rows", rows.get("value", rows)) if isinstance(rows, dict) else rows
for r in rows:
    if r.get("new_stripecustomerid") == sys.argv[1]:
        print(json.dumps(r, indent=2, sort_keys=True))
' "$customer" || true)
  if [ -n "$row" ]; then
    echo "[run-local] contact $customer in Dataverse:" >&2
    echo "$row"
    if $ONCE; then exit 0; fi
    echo "[run-local] pipeline running: gateway http://127.0.0.1:8080/webhooks/stripe (secret $WEBHOOK_SECRET), metrics on :8080 :9101 :9102 /metrics. Ctrl-C stops everything." >&2
    wait
    exit 0
  fi
  sleep 0.2
done
echo "[run-local] the contact did not arrive within a minute; see .local/logs/" >&2
exit 1
