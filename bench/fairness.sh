#!/usr/bin/env bash
# Fair dispatch, measured: one tenant queues NOISY tasks (2,000), then three quiet tenants
# queue QUIET tasks each (10); how long each tenant's tasks take from submit to their end,
# p50 and p99, with the local event source first in, first out (as before fair queues,
# AGENTQ_LOCAL_FAIR=off) and then fair (round-robin across tenants, as SQS fair queues).
# The stack runs as `make up` runs it (debug functions, the fake model at MODEL_LATENCY_MS,
# one model call a task). Prints a table for BENCHMARKS.md and writes
# bench/results/fairness-<date>.jsonl.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export AGENTQ_RUN="$ROOT/.run/bench-fair" AGENTQ_PORT=${BENCH_PORT:-3400} LAMBDA_PORT=${BENCH_LAMBDA_PORT:-9400}
export FAKE_MODEL_PORT=${BENCH_MODEL_PORT:-8489} STACK_NAME=agentq-fair AGENTQ_LOCAL_STREAMS=off
export LAMBDA_WATCH_FLAGS="--ignore-changes"
unset ANTHROPIC_API_KEY ANTHROPIC_BASE_URL
NOISY=${NOISY:-2000} QUIET=${QUIET:-10} MODEL_LATENCY_MS=${MODEL_LATENCY_MS:-50}
source "$ROOT/scripts/common.sh"
cleanup() { for name in gateway lambda fake-model; do stop_bg "$name"; done; }
trap cleanup EXIT
mkdir -p "$ROOT/bench/results"
results="$ROOT/bench/results/fairness-$(date -u +%Y-%m-%dT%H%M%SZ).jsonl"
cli="$ROOT/target/debug/agentq"

for mode in off on; do
  log "fairness: event source fair=$mode, $NOISY noisy tasks then 3 x $QUIET quiet ones"
  AGENTQ_LOCAL_FAIR=$mode bash "$ROOT/scripts/up.sh" > "$RUN/up.out"
  table=$(sed -n 's/^AGENTQ_TABLE="\(.*\)"$/\1/p' "$RUN/cli.env")
  curl -sf -X POST "http://127.0.0.1:$FAKE_MODEL_PORT/control" -H "content-type: application/json" -d "{\"latency_ms\": $MODEL_LATENCY_MS}" > /dev/null
  keys=()
  # Fresh tenants each run: the local table outlives the stack.
  run_id=$(date +%s)
  for tenant in "noisy-$mode-$run_id" "quiet-a-$mode-$run_id" "quiet-b-$mode-$run_id" "quiet-c-$mode-$run_id"; do
    keys+=("$tenant=$(AGENTQ_TABLE="$table" "$cli" keys create --tenant "$tenant" --rate 10000 --burst 10000 \
      --max-running 10000 | tail -n 1)")
  done
  python3 "$ROOT/bench/fairness.py" --url "http://127.0.0.1:$AGENTQ_PORT" --noisy "$NOISY" --quiet "$QUIET" \
    --mode "$mode" "${keys[@]}" | tee -a "$results"
  cleanup
done
log "results in $results"
