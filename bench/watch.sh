#!/usr/bin/env bash
# What watching a task costs: polling every second, the event stream, and a webhook, against
# the whole stack as `make up` runs it (release builds under agentq-local's Lambda service, the
# local fake model), on its own ports and stack name. Prints one JSON line per way and keeps
# them in bench/results/watch-<date>.jsonl (BENCHMARKS.md, "Watching a task").
#
# Knobs: WATCH_TASKS (20 per way), WATCH_POLL (1.0 s).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export AGENTQ_RUN="$ROOT/.run/bench-watch" AGENTQ_PORT=${WATCH_PORT:-3400} LAMBDA_PORT=${WATCH_LAMBDA_PORT:-9400}
export FAKE_MODEL_PORT=${WATCH_MODEL_PORT:-8489} STACK_NAME=agentq-watch LOCAL_RUNTIME=agentq PROFILE=release
unset ANTHROPIC_API_KEY ANTHROPIC_BASE_URL
source "$ROOT/scripts/common.sh"
trap 'for name in gateway lambda fake-model; do stop_bg "$name"; done' EXIT

bash "$ROOT/scripts/up.sh" | tee "$RUN/up.out"
key=$(sed -n 's/^dev api key: //p' "$RUN/up.out")
mkdir -p "$ROOT/bench/results"
out="$ROOT/bench/results/watch-$(date -u +%Y-%m-%dT%H%M%SZ).jsonl"
python3 "$ROOT/bench/watch.py" --url "http://127.0.0.1:$AGENTQ_PORT" --key "$key" \
  --lambda-log "$RUN/lambda.log" --tasks "${WATCH_TASKS:-20}" --poll "${WATCH_POLL:-1.0}" | tee "$out"
log "results in $out"
