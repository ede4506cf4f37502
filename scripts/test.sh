#!/usr/bin/env bash
# `make test`: everything CI runs. Lint the template, check format and lints, run the unit,
# handler and integration tests against the emulators, then bring the whole stack up on its
# own ports and push tasks through it over HTTP.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"

bash scripts/install.sh

log "cfn-lint template.yaml"
cfn-lint template.yaml

log "cargo fmt --check"
cargo fmt --all --check

log "cargo clippy"
cargo clippy --quiet --workspace --all-targets -- -D warnings

bash scripts/emulators.sh start
cargo build --quiet -p agentq-local
"$ROOT/target/debug/agentq-local" clean-tests

log "unit, handler and integration tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

log "smoke test: the whole stack over HTTP"
bash scripts/smoke.sh

log "fault suite: kills, duplicates, flaky dependencies, poison, dead letters"
bash scripts/faults.sh
log "all tests passed"
