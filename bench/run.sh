#!/usr/bin/env bash
# The benchmark: agentq and the seed's Celery stack, one after the other in the same run, with
# the same fake Anthropic server and the same load driver (../shared/bench: fake_llm.py,
# drive.py, run_baseline.sh). Scenarios as the baseline's: A = 0 ms model latency,
# B = 200 ms; 2 tool steps (3 model calls a task); TASKS tasks, DRIVE_CONCURRENCY submissions in
# flight, polled every POLL_INTERVAL s; WARMUP_TASKS first, not counted.
#
# agentq runs as `make up` runs it, with release builds of the functions under agentq-local's
# Lambda service (LOCAL_RUNTIME=agentq), LAMBDA_CONCURRENCY instances per function, against
# LocalStack and DynamoDB Local. Results: one JSON line per scenario and system in
# bench/results/<date>.jsonl, and a table on stdout for BENCHMARKS.md.
#
# Knobs: TASKS (200), DRIVE_CONCURRENCY (20), POLL_INTERVAL (0.5), WARMUP_TASKS (10),
# LAMBDA_CONCURRENCY (2 processes per function at start; more start while all are busy, up to
# LAMBDA_MAX_CONCURRENCY, 20), AGENTQ_POLLERS (17: the worker's event sources' MaximumConcurrency
# summed, as template.yaml's defaults give it), SCENARIOS ("A B"), BASELINES ("prefork threads":
# which Celery pools to run; "" for none), PROFILE (release), PERF (1: record the functions'
# CPU with perf during each scenario, into bench/results/<time>-<scenario>.perf; needs
# PROFILE=profiling for symbols), SHARED_BENCH (../shared/bench).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SHARED_BENCH="${SHARED_BENCH:-$ROOT/../shared/bench}"
[[ -f $SHARED_BENCH/drive.py ]] || { echo "no bench harness at $SHARED_BENCH (set SHARED_BENCH)" >&2; exit 1; }
SHARED_BENCH="$(cd "$SHARED_BENCH" && pwd)"

# agentq on its own ports and stack name, so a developer's `make up` is untouched.
export AGENTQ_RUN="$ROOT/.run/bench" AGENTQ_PORT=${BENCH_PORT:-3300} LAMBDA_PORT=${BENCH_LAMBDA_PORT:-9300}
export STACK_NAME=agentq-bench LOCAL_RUNTIME=agentq PROFILE=${PROFILE:-release}
# No table stream (so no webhooks): DynamoDB Local serializes writes to a table with one, at
# ~20 ms each, which deployed DynamoDB does not; the webhook path is measured by bench/watch.sh.
export AGENTQ_LOCAL_STREAMS=off
export LAMBDA_CONCURRENCY=${LAMBDA_CONCURRENCY:-2} LAMBDA_MAX_CONCURRENCY=${LAMBDA_MAX_CONCURRENCY:-20}
export AGENTQ_POLLERS=${AGENTQ_POLLERS:-17}
SCENARIOS=${SCENARIOS:-A B} PERF=${PERF:-}
TASKS=${TASKS:-200} DRIVE_CONCURRENCY=${DRIVE_CONCURRENCY:-20} POLL_INTERVAL=${POLL_INTERVAL:-0.5}
WARMUP_TASKS=${WARMUP_TASKS:-10} BASELINES=${BASELINES-prefork threads}
LLM_PORT=${BENCH_LLM_PORT:-8389}
source "$ROOT/scripts/common.sh"

# The harness's venv lives under ~/.cache, never in the handout folder (which may be read-only).
STATE="${BENCH_STATE:-$HOME/.cache/agentq-bench}"
mkdir -p "$STATE"
VENV="$STATE/.venv"
if [[ ! -x $VENV/bin/python ]]; then
  log "creating the bench venv in $VENV"
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r "$SHARED_BENCH/requirements.txt" -c "$SHARED_BENCH/constraints.txt"

results_dir="$ROOT/bench/results"
mkdir -p "$results_dir"
results="$results_dir/$(date -u +%Y-%m-%dT%H%M%SZ).jsonl"
: > "$results"

start_llm() { # start_llm LATENCY_MS
  start_bg fake-llm "$VENV/bin/python" "$SHARED_BENCH/fake_llm.py" --port "$LLM_PORT" --latency-ms "$1" --tool-steps 2
  wait_for fake-llm "http://127.0.0.1:$LLM_PORT/stats" 30
}
stop_agentq() { for name in gateway lambda fake-llm; do stop_bg "$name"; done; }
# The emulators stay up, as after `make test`; `make down` stops them.
trap stop_agentq EXIT

log "agentq: bringing the stack up (release functions, $LAMBDA_CONCURRENCY instances each)"
start_llm 0
ANTHROPIC_API_KEY=bench-dummy-key ANTHROPIC_BASE_URL="http://127.0.0.1:$LLM_PORT" \
  bash "$ROOT/scripts/up.sh" > "$RUN/up.out"
key=$(sed -n 's/^dev api key: //p' "$RUN/up.out")
[[ -n $key ]] || die "make up printed no key"
stop_bg fake-llm
# Each function's init: its process started to its first request for work (Lambda's Init
# phase less the sandbox), as the Lambda stand-in logs it; 2 processes of 9 functions start
# at once on the 2 cores, so this is an upper bound.
sleep 2
sed -n 's/\x1b\[[0-9;]*m//g; s/.*function process ready function=\([a-z]*\) instance=[0-9]* init_ms=\([0-9.]*\).*/\1 \2/p' \
  "$RUN/lambda.log" | sort -k1,1 -k2,2n | awk '{v[$1] = v[$1] " " int($2 + 0.5)} END {for (f in v) print "  init ms " f ":" v[f]}' |
  sort | tee "${results%.jsonl}-init.txt" >&2

# cpu NAME: CPU seconds used so far by the session of NAME's recorded process (start_bg runs
# each component in its own session, so this counts its children: the function processes,
# LocalStack's workers, the JVM's threads).
# cpu NAME [REGEX [EXCLUDE]]: only the processes whose command name matches REGEX (or, with
# EXCLUDE, does not).
cpu() {
  local f pid
  for f in "$RUN/$1.pid" "$ROOT/.run/$1.pid"; do [[ -f $f ]] && { pid=$(cat "$f"); break; }; done
  [[ -n ${pid:-} ]] || { echo 0; return; }
  # utime + stime of every process in the session, from /proc (clock ticks).
  ps -s "$pid" -o pid=,comm= 2>/dev/null | awk -v re="${2:-.}" -v ex="${3:-}" '(ex == "") == ($2 ~ re) {print $1}' |
    while read -r p; do cat "/proc/$p/stat" 2>/dev/null; done |
    sed 's/.*) //' | awk -v hz="$(getconf CLK_TCK)" '{s += $12 + $13} END {print s / hz}'
}
FUNCTIONS='^(submit|status|worker|dlq|reconciler|notifier|stream)$'
cpu_all() {
  printf 'functions=%s lambda_service=%s ' "$(cpu lambda "$FUNCTIONS")" "$(cpu lambda "$FUNCTIONS" exclude)"
  # The three a task's own path runs through, apart (the issue's "submit + worker + one status
  # read" is computed from these below).
  local f; for f in submit status worker; do printf 'fn_%s=%s ' "$f" "$(cpu lambda "^$f\$")"; done
  local c; for c in gateway localstack dynamodb fake-llm; do printf '%s=%s ' "$c" "$(cpu "$c")"; done
}

drive() { # drive LABEL TASKS
  (cd "$SHARED_BENCH" && "$VENV/bin/python" drive.py --base-url "http://127.0.0.1:$AGENTQ_PORT" \
    --header "Authorization: Bearer $key" --tasks "$2" --concurrency "$DRIVE_CONCURRENCY" \
    --poll-interval "$POLL_INTERVAL" --timeout 300 --label "$1")
}

rc=0
for scenario in "A_latency0ms 0" "B_latency200ms 200"; do
  set -- $scenario
  [[ " $SCENARIOS " == *" ${1%%_*} "* ]] || continue
  log "agentq: scenario $1 ($TASKS tasks, model latency $2 ms)"
  start_llm "$2"
  [[ $WARMUP_TASKS -gt 0 ]] && { drive warmup "$WARMUP_TASKS" >&2 || true; }
  curl -sf -X DELETE "http://127.0.0.1:$LLM_PORT/stats" > /dev/null
  before=$(cpu_all)
  log_from=$(($(stat -c %s "$RUN/lambda.log") + 1))
  perf_pid=
  if [[ -n $PERF ]]; then
    pids=$(ps -s "$(cat "$RUN/lambda.pid")" -o pid=,comm= | awk -v re="$FUNCTIONS" '$2 ~ re {print $1}' | paste -sd,)
    perf record -q -F 499 --call-graph dwarf,16384 -o "${results%.jsonl}-$1.perf" -p "$pids" 2> "$RUN/perf.log" &
    perf_pid=$!
  fi
  line=$(drive "agentq_$1" "$TASKS") || rc=1
  after=$(cpu_all)
  [[ -z $perf_pid ]] || { kill -INT "$perf_pid"; wait "$perf_pid" || true; }
  # The functions' own count of AWS requests (EMF `AwsRequests`, every attempt), this scenario.
  tail -c +"$log_from" "$RUN/lambda.log" > "$RUN/scenario.log"
  stats=$(curl -sf "http://127.0.0.1:$LLM_PORT/stats")
  echo "$line" | "$VENV/bin/python" -c '
import json, re, sys
d = json.loads(sys.stdin.read())
d["system"] = "agentq"
d["llm_stats"] = json.loads(sys.argv[1])
parse = lambda s: {k: float(v) for k, v in (p.split("=") for p in s.split())}
b, a = parse(sys.argv[2]), parse(sys.argv[3])
# CPU per task, ms, by component.
d["cpu_ms_per_task"] = {k: round((a[k] - b[k]) * 1000 / d["tasks"], 1) for k in a}
# AWS requests per task, by service and operation (warm-up excluded; polls included).
requests = {}
status_reads = 0
units = {"read": 0.0, "write": 0.0}
for line in open(sys.argv[4], errors="replace"):
    start = line.find("{")
    try:
        rec = json.loads(line[start:]) if start >= 0 else None
    except ValueError:
        continue
    if isinstance(rec, dict) and "DynamoDbWriteUnits" in rec:
        units["read"] += rec["DynamoDbReadUnits"]
        units["write"] += rec["DynamoDbWriteUnits"]
    if not isinstance(rec, dict) or "AwsRequests" not in rec:
        continue
    for op, n in rec.get("operations", {}).items():
        key = rec["service"] + "." + op
        requests[key] = requests.get(key, 0) + n
        if rec.get("function") == "status" and op == "GetItem":
            status_reads += n
d["aws_requests_per_task"] = {k: round(v / d["tasks"], 2) for k, v in sorted(requests.items())}
# CPU per task as the issue counts it: a submit, the worker, and one status read (a poll
# is one GetItem once the key is cached, so the status function CPU per GetItem is its CPU per poll).
cpu = d["cpu_ms_per_task"]
polls = status_reads / d["tasks"]
d["status_polls_per_task"] = round(polls, 2)
if polls:
    d["cpu_ms_submit_worker_one_poll"] = round(cpu["fn_submit"] + cpu["fn_worker"] + cpu["fn_status"] / polls, 2)
# DynamoDB capacity consumed per task (ReturnConsumedCapacity, as the functions counted it).
d["dynamodb_units_per_task"] = {k: round(v / d["tasks"], 2) for k, v in units.items()}
# The largest process of each function so far (the stand-in logs every new peak, as Lambda
# reports "Max Memory Used"), against the MemorySize the template gives it.
peaks = {}
for line in open(sys.argv[5], errors="replace"):
    if "function process memory peak" in line:
        f = dict(p.split("=", 1) for p in re.sub(r"\x1b\[[0-9;]*m", "", line).split() if "=" in p)
        name, used, size = f.get("function"), f.get("max_memory_used_mb"), f.get("memory_size_mb")
        if name and used and size:
            peaks[name] = {"max_memory_used_mb": max(int(used), peaks.get(name, {}).get("max_memory_used_mb", 0)), "memory_size_mb": int(size)}
d["memory"] = dict(sorted(peaks.items()))
print(json.dumps(d))' "$stats" "$before" "$after" "$RUN/scenario.log" "$RUN/lambda.log" >> "$results"
  log "  $line"
  stop_bg fake-llm
done
stop_agentq

# The Celery baseline, on ports clear of DynamoDB Local's 8000.
for pool in $BASELINES; do
  log "celery baseline ($pool pool)"
  concurrency=$([[ $pool == threads ]] && echo 20 || nproc)
  out=$(CELERY_POOL=$pool CELERY_CONCURRENCY=$concurrency API_PORT=8001 REDIS_PORT=6390 FAKE_LLM_PORT=$LLM_PORT \
    TASKS=$TASKS DRIVE_CONCURRENCY=$DRIVE_CONCURRENCY POLL_INTERVAL=$POLL_INTERVAL WARMUP_TASKS=$WARMUP_TASKS \
    BENCH_STATE="$STATE" bash "$SHARED_BENCH/run_baseline.sh" 2> "$RUN/baseline-$pool.log") || rc=1
  while IFS= read -r line; do
    [[ -n $line ]] || continue
    echo "$line" | "$VENV/bin/python" -c 'import json,sys; d=json.loads(sys.stdin.read()); d["system"]=sys.argv[1]; print(json.dumps(d))' "celery_$pool-$concurrency" >> "$results"
  done <<< "$out"
done

log "results: $results"
"$VENV/bin/python" - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| system | scenario | succeeded | lost | wrong | wall s | tasks/s | submit p50 / p99 ms | e2e p50 / p99 ms | model calls |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |")
cpu = [r for r in rows if "cpu_ms_per_task" in r]
for r in rows:
    scenario = r["label"].split("_", 1)[1] if r["label"].startswith("agentq_") else r["label"]
    calls = r.get("llm_stats", {}).get("total", "")
    print(f"| {r['system']} | {scenario} | {r['succeeded']}/{r['tasks']} | {r['lost']} | {r['wrong']} | {r['wall_s']} | "
          f"{r['throughput_tps']} | {r['submit_p50_ms']} / {r['submit_p99_ms']} | {r['e2e_p50_ms']} / {r['e2e_p99_ms']} | {calls} |")
for r in cpu:
    reqs = r.get("aws_requests_per_task", {})
    if reqs:
        print()
        print(f"{r['label']}: AWS requests per task (polls included): " + ", ".join(f"{k} {v}" for k, v in reqs.items()))
        print(f"{r['label']}: DynamoDB capacity units per task: {r.get('dynamodb_units_per_task')}")
if cpu:
    names = list(cpu[0]["cpu_ms_per_task"])
    print()
    print("| agentq scenario | CPU ms per task: " + " | ".join(names) + " |")
    print("| --- | " + " | ".join("---:" for _ in names) + " |")
    for r in cpu:
        print(f"| {r['label']} | " + " | ".join(str(r["cpu_ms_per_task"][n]) for n in names) + " |")
    print()
    for r in cpu:
        if "cpu_ms_submit_worker_one_poll" in r:
            print(f"{r['label']}: functions' CPU per task as the issue counts it (submit + worker + one poll of "
                  f"{r['status_polls_per_task']}): {r['cpu_ms_submit_worker_one_poll']} ms")
        if r.get("memory"):
            print(f"{r['label']}: largest process, MB used / MemorySize: "
                  + ", ".join(f"{f} {m['max_memory_used_mb']} / {m['memory_size_mb']}" for f, m in r["memory"].items()))
PY
exit $rc
