#!/usr/bin/env bash
# Sets up everything and runs every check and test: formatting, lints, the unit tests and the
# component tests against a real broker and registry started by the test harness.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

CACHE="${STRIPE_PIPELINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stripe-pipeline}"
# The build is slow on small machines: keep it outside the checkout so fresh clones reuse it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n== %s\n' "$*" >&2; }

step "cargo fmt --check"
cargo fmt --all --check

# Cargo.lock pins every version; cargo only adds or prunes entries when a manifest changed.
step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "build the binaries the tests start"
cargo build --workspace --bins

step "container setup: docker-compose config, hadolint, each stage's compose environment"
bash scripts/check-compose.sh

step "cargo test"
cargo test --workspace

step "the README's second command, non-interactive: scripts/run-local.sh --once"
bash scripts/run-local.sh --once
