#!/usr/bin/env bash
# DynamoDB write units per task, request by request: where a task's bill goes.
#
# Brings agentq up on its own ports (as bench/run.sh does, the dev build unless PROFILE says
# otherwise) with each DynamoDB request's consumed capacity logged (`agentq::runtime::aws` at
# DEBUG: units by table and index; a transaction at least two per action, as DynamoDB bills),
# then runs the bench's task (the fake model answers `tool_use` twice, then `end_turn`: three
# model calls, two tool steps) one at a time, RUNS times with a short prompt and RUNS times with
# a 3 KB one, and prints each task's writes in order. Tasks run one after another, so each
# task's requests are those from its submit's first to the next submit's.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SHARED_BENCH="${SHARED_BENCH:-$ROOT/../shared/bench}"
[[ -f $SHARED_BENCH/fake_llm.py ]] || { echo "no bench harness at $SHARED_BENCH (set SHARED_BENCH)" >&2; exit 1; }
export AGENTQ_RUN="$ROOT/.run/units" AGENTQ_PORT=${UNITS_PORT:-3400} LAMBDA_PORT=${UNITS_LAMBDA_PORT:-9400}
export STACK_NAME=agentq-units LOCAL_RUNTIME=agentq PROFILE=${PROFILE:-dev}
export AWS_LAMBDA_LOG_LEVEL="info,agentq::runtime::aws=debug"
RUNS=${RUNS:-3} LLM_PORT=${UNITS_LLM_PORT:-8489}
source "$ROOT/scripts/common.sh"
VENV="${BENCH_STATE:-$HOME/.cache/agentq-bench}/.venv"
[[ -x $VENV/bin/python ]] || die "no bench venv at $VENV: run bench/run.sh once first"

stop_all() { for name in gateway lambda fake-llm; do stop_bg "$name"; done; }
trap stop_all EXIT
start_bg fake-llm "$VENV/bin/python" "$SHARED_BENCH/fake_llm.py" --port "$LLM_PORT" --latency-ms 0 --tool-steps 2
wait_for fake-llm "http://127.0.0.1:$LLM_PORT/stats" 30
ANTHROPIC_API_KEY=bench-dummy-key ANTHROPIC_BASE_URL="http://127.0.0.1:$LLM_PORT" \
  bash "$ROOT/scripts/up.sh" > "$RUN/up.out"
key=$(sed -n 's/^dev api key: //p' "$RUN/up.out")
[[ -n $key ]] || die "make up printed no key"
from=$(($(stat -c %s "$RUN/lambda.log") + 1))

python3 - "http://127.0.0.1:$AGENTQ_PORT" "$key" "$RUNS" <<'PY'
import json, sys, time, urllib.request
base, key, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
def call(method, path, body=None):
    req = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())
long = "Background. " + "The quarterly report lists revenue by region and product line. " * 50
for prompt in ["What is 6 * 7?"] * runs + [long + "What is 6 * 7?"] * runs:
    tid = call("POST", "/v1/tasks", {"prompt": prompt})["task_id"]
    while call("GET", "/v1/tasks/" + tid)["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.3)
PY
sleep 1
tail -c +"$from" "$RUN/lambda.log" | python3 -c '
import json, sys
tasks, short = [], lambda op: op.replace("TransactWriteItems", "Tx").replace("UpdateItem", "Update").replace("PutItem", "Put")
for line in sys.stdin:
    if "dynamodb capacity" not in line:
        continue
    d = json.loads(line[line.find("{"):])
    op = d["operation"].removesuffix("Output")
    if op.startswith(("Get", "Query", "BatchGet")):
        continue
    # A task starts with the first write of its submit (rate limit, running slot, the task):
    # a submit write after writes of the worker belongs to the next task.
    if d.get("function") == "submit" and (not tasks or any(w[0] == "worker" for w in tasks[-1])):
        tasks.append([])
    if tasks:
        tasks[-1].append((d["function"], short(op), d["total"], d["total"] - d["table"]))
print("| task | write units | of which indexes | writes in order (function: request = units) |")
print("| --- | ---: | ---: | --- |")
for i, writes in enumerate(tasks):
    kind = "short prompt" if i < len(tasks) // 2 else "3 KB prompt"
    print("| %d, %s | %g | %g | %s |" % (i + 1, kind, sum(w[2] for w in writes), sum(w[3] for w in writes),
          ", ".join("%s: %s = %g" % (f, o, u) for f, o, u, _ in writes)))
'
