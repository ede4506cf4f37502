# shellcheck shell=bash
# Shared settings for the local-stack scripts: where tools are installed, where run state
# lives, which ports the emulators use. Sourced, never run.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Installed tools outlive a checkout (a fresh clone reuses them); run state belongs to one.
TOOLS="${AGENTQ_TOOLS:-$HOME/.cache/agentq}"
RUN="${AGENTQ_RUN:-$ROOT/.run}"
mkdir -p "$TOOLS" "$RUN"

LOCALSTACK_PORT="${LOCALSTACK_PORT:-4566}"
DYNAMODB_PORT="${DYNAMODB_PORT:-8000}"
LAMBDA_PORT="${LAMBDA_PORT:-9000}"
FAKE_MODEL_PORT="${FAKE_MODEL_PORT:-8089}"
AGENTQ_PORT="${AGENTQ_PORT:-3000}"
STACK_NAME="${STACK_NAME:-agentq}"

LOCALSTACK_VENV="$TOOLS/localstack-venv"
TOOLS_VENV="$TOOLS/tools-venv"
DYNAMODB_DIR="$TOOLS/dynamodb-local"
# DynamoDB Local's JVM (scripts/emulators.sh says why these).
DYNAMODB_JAVA_OPTS="${DYNAMODB_JAVA_OPTS:--Xmx512m -XX:TieredStopAtLevel=1 -XX:+UseParallelGC}"

# The AWS SDK finds the emulators through its standard endpoint settings: no emulator
# branch exists in the code.
export AWS_REGION="${AWS_REGION:-us-east-1}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
export AWS_ENDPOINT_URL_SQS="${AWS_ENDPOINT_URL_SQS:-http://127.0.0.1:$LOCALSTACK_PORT}"
export AWS_ENDPOINT_URL_S3="${AWS_ENDPOINT_URL_S3:-http://127.0.0.1:$LOCALSTACK_PORT}"
export AWS_ENDPOINT_URL_SECRETS_MANAGER="${AWS_ENDPOINT_URL_SECRETS_MANAGER:-http://127.0.0.1:$LOCALSTACK_PORT}"
export AWS_ENDPOINT_URL_DYNAMODB="${AWS_ENDPOINT_URL_DYNAMODB:-http://127.0.0.1:$DYNAMODB_PORT}"
export PATH="$TOOLS_VENV/bin:$HOME/.cargo/bin:$PATH"

log() { printf '[agentq] %s\n' "$*" >&2; }
die() { printf '[agentq] error: %s\n' "$*" >&2; exit 1; }

# wait_for NAME URL SECONDS: poll URL until it answers.
wait_for() {
  local name=$1 url=$2 secs=${3:-60} i
  for ((i = 0; i < secs * 5; i++)); do
    if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  die "$name did not answer at $url within ${secs}s (log: $RUN/$name.log)"
}

# wait_listening NAME URL SECONDS: poll URL until it gives any HTTP answer.
wait_listening() {
  local name=$1 url=$2 secs=${3:-60} i
  for ((i = 0; i < secs * 5; i++)); do
    if curl -sS -o /dev/null --max-time 2 "$url" 2>/dev/null; then return 0; fi
    pid_alive "$name" || die "$name exited (log: $RUN/$name.log)"
    sleep 0.2
  done
  die "$name did not listen at $url within ${secs}s (log: $RUN/$name.log)"
}

# pid_alive NAME: the process recorded in $RUN/NAME.pid is running.
pid_alive() {
  local f="$RUN/$1.pid"
  [[ -f $f ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

# start_bg NAME CMD...: run CMD in its own process group, log and PID under $RUN.
start_bg() {
  local name=$1; shift
  if pid_alive "$name"; then log "$name already running (pid $(cat "$RUN/$name.pid"))"; return 0; fi
  setsid "$@" >"$RUN/$name.log" 2>&1 < /dev/null &
  echo $! >"$RUN/$name.pid"
}

# stop_bg NAME: TERM the process group, KILL it if it lingers.
stop_bg() {
  local name=$1 f="$RUN/$1.pid" pid i
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    log "stopped $name (pid $pid)"
  fi
  rm -f "$f"
}

# build_debug: the debug binaries `make up` runs. The functions as `cargo lambda watch` and
# `sam build` build them (the workspace's default members, their own features), so the watch
# finds them fresh; then the local stack's tools and the CLI, whose features (an HTTP server,
# an MCP server) stay out of the functions.
build_debug() {
  cargo build --quiet --bins
  cargo build --quiet -p agentq-local -p agentq-cli --bins
}
