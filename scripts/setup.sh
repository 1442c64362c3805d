#!/usr/bin/env bash
# Installs what the build and the tests need and the repository cannot carry: Debian packages for
# native builds, and the pinned local Kafka broker (Tansu) in a version-keyed cache folder outside
# the checkout, reused when present. Safe to run again; it only installs what is missing.
set -euo pipefail

CACHE="${STRIPE_PIPELINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stripe-pipeline}"
TANSU_VERSION=0.6.0
TANSU_ROOT="$CACHE/tansu-$TANSU_VERSION"
mkdir -p "$CACHE"

log() { printf '[setup] %s\n' "$*" >&2; }

# Native build tools: librdkafka (built from source by rdkafka-sys) needs a C/C++ toolchain,
# make and pkg-config; the broker's SQLite and crypto dependencies need cmake. sqlite3 adds the
# indexes the broker's storage lacks (dev/tansu/indexes.sql).
# docker-compose (validates the compose files without an engine), python3-yaml and python3-venv
# serve the static container checks (scripts/check-compose.sh).
packages=(build-essential cmake pkg-config protobuf-compiler curl openssl sqlite3 python3 python3-yaml python3-venv docker-compose)
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

if ! command -v cargo >/dev/null 2>&1; then
  log "cargo not found: install the Rust toolchain (rustup) first"
  exit 1
fi

if [ -x "$TANSU_ROOT/bin/tansu" ]; then
  log "tansu $TANSU_VERSION: cached at $TANSU_ROOT"
else
  log "tansu $TANSU_VERSION: building from crates.io into $TANSU_ROOT (about ten minutes the first time)"
  # Its own target folder in the cache, so an interrupted build resumes where it stopped.
  CARGO_TARGET_DIR="$CACHE/tansu-build-$TANSU_VERSION" \
    cargo install tansu --locked --version "$TANSU_VERSION" --features libsql,dynostore \
    --root "$TANSU_ROOT.partial" --quiet
  rm -rf "$TANSU_ROOT"
  mv "$TANSU_ROOT.partial" "$TANSU_ROOT"
  rm -rf "$CACHE/tansu-build-$TANSU_VERSION"
fi
"$TANSU_ROOT/bin/tansu" --version >/dev/null 2>&1 || { log "tansu at $TANSU_ROOT does not run"; exit 1; }
