#!/usr/bin/env bash
# The fault suite: brings up the stack on its own ports and stack name, with agentq-local's
# Lambda service (so worker processes can be SIGKILLed and come back) and short timeouts, runs
# the scenarios of `agentq-local faults`, and writes the report to .run/faults/RELIABILITY.md
# (and to RELIABILITY.md with FAULTS_WRITE=1). Fails if a task was lost, run twice or charged
# twice.
set -euo pipefail
export AGENTQ_RUN="$(cd "$(dirname "$0")/.." && pwd)/.run/faults"
export AGENTQ_PORT=${FAULTS_PORT:-3200} LAMBDA_PORT=${FAULTS_LAMBDA_PORT:-9200} FAKE_MODEL_PORT=${FAULTS_MODEL_PORT:-8289}
export STACK_NAME=agentq-faults LOCAL_RUNTIME=agentq LAMBDA_CONCURRENCY=2
# An 8 s worker timeout, so a killed worker's lease runs out soon; the rest in proportion.
export LAMBDA_TIMEOUTS="worker=8" AGENTQ_LOCAL_VISIBILITY_SECS=20 AGENTQ_SCHEDULE_SECS=2
# A 5 s grace period, so the reconciler finds stranded tasks within the scenario.
export AGENTQ_RECONCILE_AFTER_SECS=5
export AGENTQ_DEADLINE_MARGIN_SECS=2 AGENTQ_VISIBILITY_SLACK_SECS=2 AGENTQ_RETRY_DELAY_SECS=1 \
  AGENTQ_RETRY_MAX_DELAY_SECS=2 AGENTQ_MODEL_MAX_ATTEMPTS=2 AGENTQ_MODEL_MAX_BACKOFF_SECS=1
export AGENTQ_HTTP_TOOLS="[{\"name\":\"lookup\",\"description\":\"Looks a thing up.\",\"input_schema\":{\"type\":\"object\"},\"url\":\"http://127.0.0.1:$FAKE_MODEL_PORT/tool\",\"timeout_secs\":1,\"max_attempts\":2}]"
export AGENTQ_TOOL_SIGNING_SECRET="faults-$RANDOM-$RANDOM"
unset ANTHROPIC_API_KEY ANTHROPIC_BASE_URL
source "$(dirname "$0")/common.sh"

cleanup() { for name in gateway lambda fake-model; do stop_bg "$name"; done; }
trap cleanup EXIT

bash "$ROOT/scripts/up.sh" > "$RUN/up.out"
set -a; source "$RUN/cli.env"; set +a
export FAKE_MODEL_URL="http://127.0.0.1:$FAKE_MODEL_PORT"
log "faults: running the scenarios (a few minutes)"
"$ROOT/target/debug/agentq-local" --stack "$STACK_NAME" faults --report "$RUN/RELIABILITY.md" > "$RUN/faults.out" 2> "$RUN/faults.log" \
  || { cat "$RUN/faults.out"; tail -20 "$RUN/faults.log"; die "faults: a scenario lost, duplicated or double-counted a task"; }
grep '^|' "$RUN/RELIABILITY.md" | sed 's/^/[agentq]   /' >&2
if [[ ${FAULTS_WRITE:-0} == 1 ]]; then cp "$RUN/RELIABILITY.md" "$ROOT/RELIABILITY.md"; fi
log "faults: passed"
