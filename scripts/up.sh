#!/usr/bin/env bash
# `make up`: installs what is missing, builds, starts the emulators, creates the queues and
# table from template.yaml, runs the functions under `cargo lambda watch`, the local API
# Gateway and SQS event source, and (without ANTHROPIC_API_KEY) a scripted fake model. Then it
# runs one sample task through the system and returns with everything in the background.
# Safe to run twice. `make down` stops it all.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"

bash scripts/install.sh
BIN_DIR="$ROOT/target/debug"
log "building (debug)"
build_debug
if [[ ${PROFILE:-dev} != dev ]]; then
  log "building the functions ($PROFILE profile)"
  # agentq-local too: it stands in for API Gateway and Lambda, whose CPU a benchmark on
  # this machine must not inflate with a debug build.
  # Apart, as in build_debug: the functions with their own features, as deployed.
  cargo build --quiet --profile "$PROFILE" --bins
  cargo build --quiet --profile "$PROFILE" -p agentq-local
  BIN_DIR="$ROOT/target/$PROFILE"
fi
bash scripts/emulators.sh start

log "creating queues and table from template.yaml (stack $STACK_NAME)"
declare -A env=()
while IFS='=' read -r k v; do env[$k]=$v; done < <("$ROOT/target/debug/agentq-local" --stack "$STACK_NAME" provision)

if [[ -n ${ANTHROPIC_API_KEY:-} ]]; then
  env[ANTHROPIC_API_KEY]=$ANTHROPIC_API_KEY
  env[ANTHROPIC_BASE_URL]=${ANTHROPIC_BASE_URL:-https://api.anthropic.com}
  log "model: ${env[ANTHROPIC_BASE_URL]} (ANTHROPIC_API_KEY is set)"
else
  start_bg fake-model "$ROOT/target/debug/agentq-local" fake-model --listen "127.0.0.1:$FAKE_MODEL_PORT"
  wait_listening fake-model "http://127.0.0.1:$FAKE_MODEL_PORT/v1/messages" 30
  env[ANTHROPIC_API_KEY]=local-fake-key
  env[ANTHROPIC_BASE_URL]=${ANTHROPIC_BASE_URL:-http://127.0.0.1:$FAKE_MODEL_PORT}
  # The fake model also serves a demo MCP server: its tools are offered as demo__add, … .
  env[AGENTQ_MCP_SERVERS]="[{\"name\": \"demo\", \"url\": \"http://127.0.0.1:$FAKE_MODEL_PORT/mcp\"}]"
  cat >&2 <<BANNER

  ************************************************************************
  *  ANTHROPIC_API_KEY is not set: agentq is using the SCRIPTED FAKE      *
  *  MODEL at ${env[ANTHROPIC_BASE_URL]}. Answers are canned, not real.
  *  For a real model: make down && ANTHROPIC_API_KEY=sk-... make up      *
  ************************************************************************

BANNER
fi
# Settings from the caller's environment override the template's (README, Configuration).
local_only=" AGENTQ_PORT AGENTQ_RUN AGENTQ_TOOLS AGENTQ_POLLERS AGENTQ_URL AGENTQ_LOCAL_VISIBILITY_SECS AGENTQ_SCHEDULE_SECS "
for k in $(compgen -e | grep -E '^(AGENTQ_|OPENAI_)'); do
  [[ $local_only == *" $k "* ]] || env[$k]=${!k}
done
if [[ -n ${AGENTQ_MODEL:-} && -z ${AGENTQ_MODELS:-} ]]; then env[AGENTQ_MODELS]="anthropic:$AGENTQ_MODEL"; fi
for k in AWS_REGION AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_ENDPOINT_URL_SQS AWS_ENDPOINT_URL_S3 AWS_ENDPOINT_URL_DYNAMODB; do
  env[$k]=${!k}
done
# LocalStack's S3 wants path-style addressing.
env[AGENTQ_S3_PATH_STYLE]=true
# Webhook receivers on this machine (http://127.0.0.1:…) are allowed locally, never deployed.
[[ -n ${env[AGENTQ_WEBHOOKS_ALLOW_LOCAL]:-} ]] || env[AGENTQ_WEBHOOKS_ALLOW_LOCAL]=true
# The log shape functions have in AWS (LoggingConfig LogFormat: JSON).
env[AWS_LAMBDA_LOG_FORMAT]=JSON
env[AWS_LAMBDA_LOG_LEVEL]=${AWS_LAMBDA_LOG_LEVEL:-INFO}

env_file="$RUN/functions.env"
# Values are double-quoted for cargo-lambda's dotenv parser; empty ones mean "unset".
( umask 077; for k in "${!env[@]}"; do
    v=${env[$k]}
    if [[ -n $v ]]; then v=${v//\\/\\\\}; v=${v//\"/\\\"}; v=${v//\$/\\\$}; printf '%s="%s"\n' "$k" "$v"; fi
  done | sort > "$env_file" )

# A setting no function can start with fails here, in seconds, in the function's own words.
if ! preflight=$(RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0 "$ROOT/target/debug/agentq-local" preflight --env-file "$env_file" 2>&1); then
  stop_bg fake-model
  die "${preflight#Error: } (no function was started)"
fi

if [[ ${LOCAL_RUNTIME:-cargo-lambda} == agentq ]]; then
  # agentq-local's own Lambda service: prebuilt binaries, template timeouts, dead processes
  # restarted (the fault suite and the benchmarks use it).
  log "starting the functions under agentq-local lambdas on :$LAMBDA_PORT ($BIN_DIR)"
  timeouts=()
  for t in ${LAMBDA_TIMEOUTS:-}; do timeouts+=(--timeout "$t"); done
  start_bg lambda "$BIN_DIR/agentq-local" --stack "$STACK_NAME" lambdas --listen "127.0.0.1:$LAMBDA_PORT" \
    --bin-dir "$BIN_DIR" --env-file "$env_file" --instances "${LAMBDA_CONCURRENCY:-4}" \
    --max-instances "${LAMBDA_MAX_CONCURRENCY:-${LAMBDA_CONCURRENCY:-4}}" "${timeouts[@]}"
else
  log "starting the functions under cargo lambda watch on :$LAMBDA_PORT"
  # shellcheck disable=SC2086 # LAMBDA_WATCH_FLAGS is a list of flags.
  start_bg lambda cargo lambda watch --quiet ${LAMBDA_WATCH_FLAGS:-} --env-file "$env_file" \
    --invoke-address 127.0.0.1 --invoke-port "$LAMBDA_PORT" --concurrency "${LAMBDA_CONCURRENCY:-4}"
fi
log "starting the gateway and the SQS event source on :$AGENTQ_PORT"
start_bg gateway "$BIN_DIR/agentq-local" --stack "$STACK_NAME" serve \
  --listen "127.0.0.1:$AGENTQ_PORT" --lambda "http://127.0.0.1:$LAMBDA_PORT" --pollers "${AGENTQ_POLLERS:-2}"

url="http://127.0.0.1:$AGENTQ_PORT"
# The first invocation of each function starts it under cargo lambda: allow for that.
wait_listening lambda "http://127.0.0.1:$LAMBDA_PORT" 60
wait_for gateway "$url/health" 300
wait_for gateway "$url/ready" 120

# A dev tenant and its key, kept across `make up`s while the key still works.
cli="$ROOT/target/debug/agentq"
cli_env="$RUN/cli.env"
key=""
[[ -f $cli_env ]] && key=$(sed -n 's/^AGENTQ_API_KEY="\(.*\)"$/\1/p' "$cli_env")
if [[ -z $key || $(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $key" "$url/v1/usage") != 200 ]]; then
  key=$(AGENTQ_TABLE="${env[AGENTQ_TABLE]}" "$cli" keys create --tenant dev --rate 100 --burst 500 --max-running 1000 | tail -n 1)
fi
( umask 077; cat > "$cli_env" <<ENV
AGENTQ_URL="$url"
AGENTQ_API_KEY="$key"
AGENTQ_TABLE="${env[AGENTQ_TABLE]}"
AGENTQ_QUEUE_URL="${env[AGENTQ_QUEUE_URL]}"
AGENTQ_QUEUE_URL_HIGH="${env[AGENTQ_QUEUE_URL_HIGH]}"
AGENTQ_QUEUE_URL_LOW="${env[AGENTQ_QUEUE_URL_LOW]}"
AGENTQ_DLQ_URLS="${env[AGENTQ_DLQ_URLS]}"
AGENTQ_WEBHOOK_QUEUE_URL="${env[AGENTQ_WEBHOOK_QUEUE_URL]}"
AGENTQ_WEBHOOK_DLQ_URL="${env[AGENTQ_WEBHOOK_DLQ_URL]}"
AGENTQ_BUCKET="${env[AGENTQ_BUCKET]}"
AGENTQ_S3_PATH_STYLE="true"
AWS_ENDPOINT_URL_S3="$AWS_ENDPOINT_URL_S3"
AWS_REGION="$AWS_REGION"
AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID"
AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY"
AWS_ENDPOINT_URL_DYNAMODB="$AWS_ENDPOINT_URL_DYNAMODB"
AWS_ENDPOINT_URL_SQS="$AWS_ENDPOINT_URL_SQS"
ENV
)
echo "dev api key: $key"

log "running a sample task: \"What is 6 * 7?\""
AGENTQ_URL="$url" AGENTQ_API_KEY="$key" "$cli" submit --wait "What is 6 * 7?"
echo "console: $url/console (sign in with the dev api key)"
echo "agentq ready at $url"
