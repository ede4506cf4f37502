#!/usr/bin/env bash
# What watching a task costs: polling every second, the event stream, and a webhook, against
# the whole stack as `make up` runs it (release builds under agentq-local's Lambda service), on
# its own ports and stack name, with the reference harness's fake Anthropic server answering
# after WATCH_MODEL_LATENCY_MS (3 model calls a task, so a task runs for a few seconds, as agent
# tasks do). Prints one JSON line per way and keeps them in bench/results/watch-<date>.jsonl
# (BENCHMARKS.md, "Watching a task").
#
# Knobs: WATCH_TASKS (20 per way), WATCH_POLL (1.0 s), WATCH_MODEL_LATENCY_MS (2000),
# SHARED_BENCH (../shared/bench).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export AGENTQ_RUN="$ROOT/.run/bench-watch" AGENTQ_PORT=${WATCH_PORT:-3400} LAMBDA_PORT=${WATCH_LAMBDA_PORT:-9400}
export STACK_NAME=agentq-watch LOCAL_RUNTIME=agentq PROFILE=release
LLM_PORT=${WATCH_LLM_PORT:-8489}
SHARED_BENCH="$(cd "${SHARED_BENCH:-$ROOT/../shared/bench}" && pwd)"
source "$ROOT/scripts/common.sh"
trap 'for name in gateway lambda fake-llm; do stop_bg "$name"; done' EXIT

# The harness's venv, as bench/run.sh makes it.
VENV="${BENCH_STATE:-$HOME/.cache/agentq-bench}/.venv"
[[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q -r "$SHARED_BENCH/requirements.txt" -c "$SHARED_BENCH/constraints.txt"
start_bg fake-llm "$VENV/bin/python" "$SHARED_BENCH/fake_llm.py" --port "$LLM_PORT" \
  --latency-ms "${WATCH_MODEL_LATENCY_MS:-2000}" --tool-steps 2
wait_for fake-llm "http://127.0.0.1:$LLM_PORT/stats" 30
ANTHROPIC_API_KEY=bench-dummy-key ANTHROPIC_BASE_URL="http://127.0.0.1:$LLM_PORT" \
  bash "$ROOT/scripts/up.sh" | tee "$RUN/up.out"
key=$(sed -n 's/^dev api key: //p' "$RUN/up.out")
mkdir -p "$ROOT/bench/results"
out="$ROOT/bench/results/watch-$(date -u +%Y-%m-%dT%H%M%SZ).jsonl"
python3 "$ROOT/bench/watch.py" --url "http://127.0.0.1:$AGENTQ_PORT" --key "$key" \
  --lambda-log "$RUN/lambda.log" --tasks "${WATCH_TASKS:-20}" --poll "${WATCH_POLL:-1.0}" | tee "$out"
log "results in $out"
