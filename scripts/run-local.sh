#!/usr/bin/env bash
# Runs the whole pipeline on this machine with embedded defaults: a Kafka broker (Tansu), the
# schema registry, the Dataverse emulator and the three stages, then sends one signed Stripe
# webhook (with `gateway send`) and shows the contact it becomes in Dataverse. Keeps running until
# Ctrl-C, with a status line read from the stages' /metrics; with --once it stops after showing the
# contact (and exits non-zero if the contact never arrives).
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
names=()
sleeper=""       # the status loop's sleep, so a signal need not wait for it
on_line=false    # the status line is drawn on the terminal (end it before other output)
cleanup() {
  $on_line && echo
  [ -n "$sleeper" ] && kill "$sleeper" 2>/dev/null
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
  names+=("$name")
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

# The sum of a metric's series in Prometheus text, optionally only series whose labels match a
# regular expression; `-` when the text has no such series (a stage down, or nothing measured yet).
# `absent` is what a stage that answered but has no such series shows: 0 for counters whose series
# appear with the first event (dead letters), `-` for what is not measured yet (lag).
metric_sum() { # metrics text, metric name, [label regex], [absent]
  if [ -z "$1" ]; then printf -- -; return; fi
  awk -v name="$2" -v want="${3:-}" -v absent="${4:--}" '
    /^#/ { next }
    {
      series = $1; base = series; sub(/\{.*/, "", base)
      if (base == name && (want == "" || series ~ want)) { sum += $2; found = 1 }
    }
    END { if (found) printf "%.0f", sum; else printf "%s", absent }' <<<"$1"
}

metrics() { curl -fsS --max-time 1 "http://127.0.0.1:$1/metrics" 2>/dev/null || true; }

status_line() {
  local gw en sk
  gw=$(metrics 8080); en=$(metrics 9101); sk=$(metrics 9102)
  printf 'accepted %s | normalised %s | contacts written %s | dead letters %s enricher, %s sink | lag %s enricher, %s sink' \
    "$(metric_sum "$gw" gateway_requests_total 'outcome="accepted"')" \
    "$(metric_sum "$en" enricher_records_out_total)" \
    "$(metric_sum "$sk" sink_dataverse_writes_total 'outcome="(created|updated|deactivated|tombstoned|deleted)"')" \
    "$(metric_sum "$en" enricher_dead_lettered_total '' 0)" \
    "$(metric_sum "$sk" sink_dataverse_dead_lettered_total '' 0)" \
    "$(metric_sum "$en" enricher_consumer_lag)" \
    "$(metric_sum "$sk" sink_dataverse_consumer_lag)"
}

# Until Ctrl-C: the status line, redrawn every second on a terminal, a plain line every 10 s
# otherwise. Stops (non-zero) when a process it started has exited.
watch_status() {
  local tty=false every=10 i
  [ -t 1 ] && tty=true && every=1
  while true; do
    for i in "${!pids[@]}"; do
      if ! kill -0 "${pids[i]}" 2>/dev/null; then
        $on_line && echo && on_line=false
        echo "[run-local] ${names[i]} exited; last log lines:" >&2
        tail -n 30 "$STATE/logs/${names[i]}.log" >&2
        exit 1
      fi
    done
    if $tty; then
      printf '\r[run-local] %s\033[K' "$(status_line)"
      on_line=true
    else
      echo "[run-local] $(status_line)"
    fi
    # In the background, so Ctrl-C or SIGTERM is handled at once rather than after the sleep.
    sleep "$every" &
    sleeper=$!
    wait "$sleeper" || true
    sleeper=""
  done
}

bash "$ROOT/dev/tansu/apply-indexes.sh" "$STATE/broker/tansu.db"
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

# A generated customer.created event (messy fields as real accounts hold them), signed as Stripe
# signs it: HMAC-SHA256("<timestamp>.<raw body>") with the endpoint secret, in Stripe-Signature.
# `gateway send` prints the gateway's answer and fails unless it is 2xx.
customer="cus_local$(date +%s%N | tail -c 9)"
echo "[run-local] gateway send --type customer.created --customer $customer" >&2
"$BIN/gateway" send --url http://127.0.0.1:8080/webhooks/stripe --secret "$WEBHOOK_SECRET" \
  --type customer.created --customer "$customer"

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
    echo "[run-local] send more: $BIN/gateway send --count 20 --rate 5   (see gateway/README.md)" >&2
    watch_status
  fi
  sleep 0.2
done
echo "[run-local] the contact did not arrive within a minute; see .local/logs/" >&2
exit 1
