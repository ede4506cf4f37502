#!/usr/bin/env bash
# Brings the whole stack up (as `make up` does) on its own ports and stack name, so it never
# touches a developer's running stack, sends tasks and bad requests with curl through the
# local API Gateway, and takes the stack down again.
set -euo pipefail
export AGENTQ_RUN="$(cd "$(dirname "$0")/.." && pwd)/.run/smoke"
export AGENTQ_PORT=${SMOKE_PORT:-3100} LAMBDA_PORT=${SMOKE_LAMBDA_PORT:-9100} FAKE_MODEL_PORT=${SMOKE_MODEL_PORT:-8189}
export STACK_NAME=agentq-smoke
# Nothing is being edited during the smoke test: no hot reloads.
export LAMBDA_WATCH_FLAGS="--ignore-changes"
unset ANTHROPIC_API_KEY ANTHROPIC_BASE_URL
source "$(dirname "$0")/common.sh"

cleanup() { for name in gateway lambda fake-model; do stop_bg "$name"; done; }
trap cleanup EXIT

log "smoke: a configuration no function can start with fails make up at once, in the function's words"
# Built first, so the time below is make up's own, not a compile's.
bash "$ROOT/scripts/install.sh" > /dev/null
build_debug
started=$SECONDS
if AGENTQ_MODELS=anthropic:mystery-1 bash "$ROOT/scripts/up.sh" > "$RUN/up-bad.out" 2>&1; then
  die "smoke: make up accepted a model with no price"
fi
grep -q 'AGENTQ_MODELS names "mystery-1", which has no price.*(no function was started)' "$RUN/up-bad.out" \
  || die "smoke: make up failed without the function's own error: $(tail -3 "$RUN/up-bad.out")"
((SECONDS - started < 60)) || die "smoke: make up took $((SECONDS - started)) s to fail"

bash "$ROOT/scripts/up.sh" | tee "$RUN/up.out"
url="http://127.0.0.1:$AGENTQ_PORT"
grep -q "^agentq ready at $url\$" "$RUN/up.out" || die "make up did not print its ready line"

fail() { die "smoke: $*"; }
key=$(sed -n 's/^dev api key: //p' "$RUN/up.out")
[[ -n $key ]] || fail "make up printed no dev api key"
auth=(-H "Authorization: Bearer $key")
expect() { # expect STATUS CURL-ARGS...: the request answers STATUS
  local want=$1; shift
  local got
  got=$(curl -sS -o "$RUN/body" -w '%{http_code}' "$@")
  [[ $got == "$want" ]] || fail "$* answered $got, wanted $want: $(cat "$RUN/body")"
}

log "smoke: a task submitted with curl succeeds"
expect 202 -D "$RUN/headers" -X POST "$url/v1/tasks" "${auth[@]}" -H 'content-type: application/json' -d '{"prompt":"What is 12 * 12?","priority":"high"}'
id=$(sed -E 's/.*"task_id":"([^"]+)".*/\1/' "$RUN/body")
trace=$(grep -i '^x-trace-id:' "$RUN/headers" | cut -d' ' -f2 | tr -d '\r')
[[ ${#trace} == 32 ]] || fail "the 202 carries no X-Trace-Id: $(cat "$RUN/headers")"
for _ in $(seq 1 120); do
  expect 200 "${auth[@]}" "$url/v1/tasks/$id"
  grep -q '"status":"\(succeeded\|failed\|cancelled\)"' "$RUN/body" && break
  sleep 0.5
done
grep -q '"status":"succeeded"' "$RUN/body" || fail "task $id did not succeed: $(cat "$RUN/body")"
grep -q '144' "$RUN/body" || fail "task $id's result lacks the calculator's answer: $(cat "$RUN/body")"

log "smoke: bad input gets problem+json 4xx"
expect 401 -X POST "$url/v1/tasks" -H 'content-type: application/json' -d '{"prompt":"hi"}'
grep -q '"code":"unauthorized"' "$RUN/body" || fail "the 401 is not problem+json"
expect 401 -H "Authorization: Bearer aq_wrong" "$url/v1/tasks"
expect 400 -X POST "$url/v1/tasks" "${auth[@]}" -H 'content-type: application/json' -d '{"prompt":""}'
grep -q '"field":"prompt"' "$RUN/body" || fail "the 400 does not name the field"
expect 400 -X POST "$url/v1/tasks" "${auth[@]}" -H 'content-type: application/json' -d '{not json'
expect 415 -X POST "$url/v1/tasks" "${auth[@]}" -H 'content-type: text/plain' -d 'hello'
head -c 1100000 /dev/zero | tr '\0' 'a' | sed 's/^/{"prompt":"/; s/$/"}/' > "$RUN/big.json"
expect 413 -X POST "$url/v1/tasks" "${auth[@]}" -H 'content-type: application/json' --data-binary @"$RUN/big.json"
expect 404 "${auth[@]}" "$url/v1/tasks/01KB3Z5Q9V1W7E6D8C4B2A0F9G"
expect 404 "${auth[@]}" "$url/v1/tasks/not-an-id"
expect 404 "$url/nowhere"
expect 200 "$url/health"
expect 200 "$url/ready"
expect 200 "$url/openapi.json"

log "smoke: the CLI lists, reads and cancels"
export AGENTQ_URL="$url" AGENTQ_API_KEY="$key"
cli="$ROOT/target/debug/agentq"
"$cli" list --limit 5 | grep -q "$id" || fail "agentq list does not show $id"
"$cli" get "$id" | grep -q succeeded || fail "agentq get does not show $id succeeded"
"$cli" --json watch "$id" > "$RUN/watch" || fail "agentq watch $id did not end in success"
[[ $(grep -o '"type":"[a-z.]*"' "$RUN/watch" | cut -d'"' -f4 | tr '\n' ' ') == "task.queued task.started task.step task.step task.succeeded " ]] \
  || fail "agentq watch $id followed an odd story: $(cat "$RUN/watch")"
"$cli" usage | grep -q total || fail "agentq usage printed no total"

log "smoke: a structured result: the CLI submits an output_schema and the result carries its JSON"
schema='{"type":"object","required":["answer","digest"],"properties":{"answer":{"type":"string"},"digest":{"type":"string"}}}'
structured=$("$cli" submit --output-schema "$schema" "What is 2 * 21?")
"$cli" watch "$structured" > /dev/null || fail "the structured task $structured did not succeed"
"$cli" --json get "$structured" > "$RUN/structured"
grep -q '"json":{"answer":"The answer is 42.","digest":"' "$RUN/structured" \
  || fail "the structured task's result has no json: $(cat "$RUN/structured")"
expect 400 -X POST "$url/v1/tasks" "${auth[@]}" -H 'content-type: application/json' -d '{"prompt":"hi","output_schema":{"type":"nope"}}'
grep -q '"field":"output_schema"' "$RUN/body" || fail "a bad output_schema's 400 does not name the field"

log "smoke: an approval: a task whose tool needs a decision waits; agentq pending shows it; approve runs it; it replays exactly"
guarded=$("$cli" submit --approve-tools calculator "What is 5 * 5?")
set +e
"$cli" watch "$guarded" > "$RUN/waiting"
code=$?
set -e
[[ $code == 5 ]] || fail "watching $guarded, which waits for a decision, exited $code: $(cat "$RUN/waiting")"
"$cli" pending > "$RUN/pending"
grep -q "^$guarded  calculator(" "$RUN/pending" || fail "agentq pending does not show $guarded: $(cat "$RUN/pending")"
"$cli" approve "$guarded" > /dev/null || fail "agentq approve $guarded failed"
"$cli" watch "$guarded" > "$RUN/approved" || fail "the approved task $guarded did not succeed"
grep -q "The answer is 25" "$RUN/approved" || fail "the approved task did not answer: $(cat "$RUN/approved")"
"$cli" replay "$guarded" > "$RUN/replay" || fail "replaying $guarded departed from its recording: $(cat "$RUN/replay")"
"$cli" replay --tools live "$guarded" > "$RUN/replay" || fail "replaying $guarded with live tools departed: $(cat "$RUN/replay")"

log "smoke: fork: a fork from step 1 with a corrected tool result answers with it; rerun --dry-run lists"
call=$(curl -sS "${auth[@]}" "$url/v1/tasks/$guarded/steps" | grep -o '"id":"toolu_[^"]*"' | head -1 | cut -d'"' -f4)
[[ -n $call ]] || fail "no tool call in the steps of $guarded"
forked=$("$cli" fork "$guarded" --from-step 1 --tool-result "$call=24")
"$cli" watch "$forked" > "$RUN/forked" || fail "the fork $forked did not succeed: $(cat "$RUN/forked")"
grep -q "The answer is 24" "$RUN/forked" || fail "the fork did not run on the corrected result: $(cat "$RUN/forked")"
"$cli" --json get "$guarded" > "$RUN/parent"
grep -o '"forks":\[[^]]*\]' "$RUN/parent" | grep -q "$forked" || fail "$guarded does not list its fork $forked: $(cat "$RUN/parent")"
"$cli" rerun --since 1h --dry-run > /dev/null || fail "agentq rerun --dry-run failed"

log "smoke: a batch: a JSONL file submitted with the CLI, followed to its end, its results written as JSONL"
printf '%s\n' '{"prompt": "What is 2 * 3?", "custom_id": "six"}' '{"prompt": "What is 4 * 5?", "custom_id": "twenty"}' > "$RUN/batch.jsonl"
batch=$("$cli" batch submit "$RUN/batch.jsonl" 2>/dev/null)
[[ $batch == bat_* ]] || fail "agentq batch submit did not answer a batch id: $batch"
"$cli" batch get "$batch" --wait --results "$RUN/batch-results.jsonl" || fail "the batch $batch did not succeed"
[[ $(wc -l < "$RUN/batch-results.jsonl") == 2 ]] || fail "the batch's results are not one line an item: $(cat "$RUN/batch-results.jsonl")"
grep -q '"custom_id":"twenty".*The answer is 20' "$RUN/batch-results.jsonl" || fail "the batch's results miss an answer: $(cat "$RUN/batch-results.jsonl")"

log "smoke: a task calls a tool of the demo MCP server (make up offers it as demo__add)"
"$cli" submit 'Please call demo__add with {"a": 2, "b": 40}' --wait > "$RUN/mcp" || fail "the MCP task did not succeed: $(cat "$RUN/mcp")"
grep -q 'The answer is 42' "$RUN/mcp" || fail "the MCP task's answer lacks the tool's sum: $(cat "$RUN/mcp")"

log "smoke: a schedule made with the CLI (its first tick is awaited further on)"
sched=$("$cli" --json schedules create 'cron(* * * * ? *)' "What is 7 * 6?" --description smoke | grep -o '"id":"sch_[^"]*"' | cut -d'"' -f4)
[[ $sched == sch_* ]] || fail "agentq schedules create did not answer a schedule id"
"$cli" schedules list | grep -q "$sched  active" || fail "agentq schedules list does not show $sched active"

log "smoke: tenant settings: agentq tenants set and get"
# Admin commands use the table itself; make up wrote its name beside the key.
table=$(sed -n 's/^AGENTQ_TABLE="\(.*\)"$/\1/p' "$RUN/cli.env")
[[ -n $table ]] || fail "make up wrote no AGENTQ_TABLE to $RUN/cli.env"
AGENTQ_TABLE="$table" "$cli" tenants set dev --over-cap hold > /dev/null || fail "agentq tenants set failed"
AGENTQ_TABLE="$table" "$cli" tenants get dev | grep -q "over the cap: hold" || fail "agentq tenants get does not show the new setting"
AGENTQ_TABLE="$table" "$cli" tenants set dev --weight 2 > /dev/null || fail "agentq tenants set --weight failed"
AGENTQ_TABLE="$table" "$cli" tenants get dev | grep -q "weight 2" || fail "agentq tenants get does not show the weight"
AGENTQ_TABLE="$table" "$cli" tenants set dev --weight 1 > /dev/null || fail "agentq tenants set --weight failed"
AGENTQ_TABLE="$table" "$cli" tenants set dev --over-cap reject > /dev/null || fail "agentq tenants set failed"

log "smoke: the event stream through the gateway: live to the task's end, resumed with Last-Event-ID"
live=$("$cli" submit "What is 9 * 9?")
curl -sSN --max-time 60 "${auth[@]}" "$url/v1/tasks/$live/stream" > "$RUN/stream" || fail "the stream of $live failed"
[[ $(grep '^event:' "$RUN/stream" | cut -d' ' -f2 | tr '\n' ' ') == "task.queued task.started task.step task.step task.succeeded " ]] \
  || fail "the stream of $live told an odd story: $(cat "$RUN/stream")"
curl -sSN --max-time 30 "${auth[@]}" -H 'Last-Event-ID: 3' "$url/v1/tasks/$live/stream" > "$RUN/stream-resumed"
[[ $(grep '^id:' "$RUN/stream-resumed" | cut -d' ' -f2 | tr '\n' ' ') == "4 5 " ]] \
  || fail "the stream resumed after 3 did not give 4 and 5: $(cat "$RUN/stream-resumed")"
expect 401 "$url/v1/tasks/$live/stream"
set +e; "$cli" cancel "$id" >/dev/null 2>&1; rc=$?; set -e
[[ $rc == 3 ]] || fail "cancelling a finished task exited $rc, not 3"

log "smoke: webhooks: an endpoint added with the CLI gets a task's end, signed for the reference library"
# The tests' receiver verifies with `standardwebhooks` (PyPI); it serves until its stdin closes,
# which happens when this script exits.
mkfifo "$RUN/receiver.in" 2>/dev/null || true
"$TOOLS_VENV/bin/python" "$ROOT/tests/receivers/webhook_receiver.py" < "$RUN/receiver.in" > "$RUN/receiver.out" &
exec 7> "$RUN/receiver.in"
for _ in $(seq 1 100); do grep -q '^listening ' "$RUN/receiver.out" && break; sleep 0.1; done
hook="http://127.0.0.1:$(sed -n 's/^listening //p' "$RUN/receiver.out")"
[[ $hook != "http://127.0.0.1:" ]] || fail "the webhook receiver did not start"
"$cli" --json webhooks add "$hook/hooks/smoke" --event task.succeeded > "$RUN/endpoint" || fail "agentq webhooks add failed"
field() { grep -o "\"$1\":\"[^\"]*\"" "$2" | head -1 | cut -d'"' -f4; }
endpoint=$(field id "$RUN/endpoint") secret=$(field secret "$RUN/endpoint")
[[ $secret == whsec_* ]] || fail "the new endpoint's secret is not shown: $(cat "$RUN/endpoint")"
curl -sS -o /dev/null -X PUT "$hook/control/smoke" -d "{\"secrets\":[\"$secret\"]}"
"$cli" webhooks list | grep -q "$endpoint" || fail "agentq webhooks list does not show $endpoint"
"$cli" webhooks test "$endpoint" | grep -q '^delivered' || fail "agentq webhooks test $endpoint was not delivered"
hooked=$("$cli" submit "What is 3 * 4?")
for _ in $(seq 1 120); do
  curl -sS "$hook/control/smoke" > "$RUN/received"
  grep -q "\"task_id\": \"$hooked\"" "$RUN/received" && break
  sleep 0.5
done
grep -q "\"task_id\": \"$hooked\"" "$RUN/received" || fail "no webhook arrived for $hooked: $(cat "$RUN/received")"
grep -q '"verified": false' "$RUN/received" && fail "a delivery did not verify: $(cat "$RUN/received")"
grep -q '"type": "task.succeeded"' "$RUN/received" || fail "the delivery is not task.succeeded: $(cat "$RUN/received")"
"$cli" webhooks deliveries "$hooked" | grep -q 'HTTP 204' || fail "agentq webhooks deliveries $hooked shows no 204"
"$cli" webhooks remove "$endpoint" >/dev/null || fail "agentq webhooks remove failed"
"$cli" webhooks list | grep -q "$endpoint" && fail "$endpoint is still listed after removal"

log "smoke: the schedule's first tick made a task that succeeded; pause, resume and delete"
for _ in $(seq 1 90); do
  "$cli" schedules get "$sched" > "$RUN/schedule"
  grep -q 'succeeded' "$RUN/schedule" && break
  sleep 1
done
grep -q '  ran   .*  succeeded' "$RUN/schedule" || fail "schedule $sched made no task that succeeded: $(cat "$RUN/schedule")"
"$cli" schedules pause "$sched" | grep -q "$sched  paused" || fail "agentq schedules pause did not pause $sched"
"$cli" schedules resume "$sched" | grep -q "$sched  active" || fail "agentq schedules resume did not resume $sched"
"$cli" schedules delete "$sched" > /dev/null || fail "agentq schedules delete failed"
set +e; "$cli" schedules get "$sched" >/dev/null 2>&1; rc=$?; set -e
[[ $rc == 3 ]] || fail "a deleted schedule's get exited $rc, not 3"

log "smoke: the console in headless Chromium: sign in, submit, timeline, approval, cancel, usage"
AGENTQ_CLI="$cli" AGENTQ_TABLE="$table" AGENTQ_FAKE_MODEL="http://127.0.0.1:$FAKE_MODEL_PORT" \
  "$TOOLS_VENV/bin/python" "$ROOT/tests/browser/console.py" "$url" "$key" "$RUN/console" \
  || fail "the console's browser test failed (screenshots in $RUN/console)"

log "smoke: the task's story in the logs, under its trace id, with its metrics"
"$cli" logs "$id" --dir "$RUN" > "$RUN/story" || fail "agentq logs found nothing for $id"
for line in "trace $trace" "task accepted" "task claimed" "model call" "tool ran" "task finished" "TasksFinished=1.0"; do
  grep -q "$line" "$RUN/story" || { cat "$RUN/story"; fail "agentq logs $id lacks \"$line\""; }
done
grep -q "What is 12" "$RUN/lambda.log" && fail "a prompt reached the logs"
log "smoke: schemathesis against openapi.json (no 5xx; every answer as documented)"
# Positive data: every response must have a documented status, content type, headers and
# schema. Negative data: whatever is thrown at it, never a 5xx.
# No example database: it would be written into the checkout, and cargo lambda watch
# restarts the functions on any change there.
st=(schemathesis run "$ROOT/openapi.json" --url "$url" -H "Authorization: Bearer $key" --seed 20261129
    --workers 2 --request-timeout 30 --phases examples,coverage,fuzzing --no-color --generation-database none)
cd "$RUN"
"${st[@]}" --mode positive --max-examples "${SCHEMATHESIS_EXAMPLES:-100}" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
  > "$RUN/schemathesis-positive.log" 2>&1 || { tail -60 "$RUN/schemathesis-positive.log"; fail "schemathesis (positive) found problems"; }
# Negative generation trips schemathesis's own health checks on path parameters; those are
# its limits, not ours. A 5xx is ours.
"${st[@]}" --mode negative --max-examples "${SCHEMATHESIS_EXAMPLES:-100}" --checks not_a_server_error \
  --suppress-health-check all > "$RUN/schemathesis-negative.log" 2>&1 || true
if grep -q "Server error" "$RUN/schemathesis-negative.log"; then
  tail -60 "$RUN/schemathesis-negative.log"; fail "schemathesis (negative) found a 5xx"
fi
for mode in positive negative; do
  log "  schemathesis $mode: $(grep -h -A1 '^Test cases:' "$RUN/schemathesis-$mode.log" | tail -n 1 | cut -c1-120)"
done

log "smoke: passed"
