#!/usr/bin/env bash
# Starts (or stops) the local AWS emulators: LocalStack for SQS, S3 and Secrets Manager, DynamoDB Local for
# DynamoDB. Safe to run twice: a running emulator is left alone.
#   scripts/emulators.sh start | stop
set -euo pipefail
source "$(dirname "$0")/common.sh"

start() {
  if ! curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$LOCALSTACK_PORT/_localstack/health" 2>/dev/null; then
    [[ -x $LOCALSTACK_VENV/bin/python ]] || die "LocalStack is not installed: run scripts/install.sh"
    log "starting LocalStack (SQS, S3, Secrets Manager) on :$LOCALSTACK_PORT"
    mkdir -p "$RUN/localstack"
    # Host mode: without OVERRIDE_IN_DOCKER=0 it believes it runs in a container.
    OVERRIDE_IN_DOCKER=0 GATEWAY_LISTEN="127.0.0.1:$LOCALSTACK_PORT" SERVICES=sqs,s3,secretsmanager \
      LOCALSTACK_HOST="127.0.0.1:$LOCALSTACK_PORT" SQS_ENDPOINT_STRATEGY=path \
      FILESYSTEM_ROOT="$RUN/localstack" DISABLE_EVENTS=1 \
      start_bg localstack "$LOCALSTACK_VENV/bin/python" -m localstack.runtime.main
  fi
  if ! curl -sS -o /dev/null --max-time 2 "http://127.0.0.1:$DYNAMODB_PORT" 2>/dev/null; then
    local dir
    dir=$(compgen -G "$DYNAMODB_DIR/package/lib/dynamodb_local_*" | head -n1) \
      || die "DynamoDB Local is not installed: run scripts/install.sh"
    log "starting DynamoDB Local on :$DYNAMODB_PORT"
    # The JIT's first tier only, and the throughput collector: a test run or a bench is
    # over before the optimizing tier pays back what it burns compiling, on two shared cores
    # (bench/dynamodb_local.sh: about half the emulator's CPU a task, BENCHMARKS.md).
    # shellcheck disable=SC2086 # a list of JVM options
    (cd "$dir" && start_bg dynamodb java $DYNAMODB_JAVA_OPTS -Djava.library.path=./DynamoDBLocal_lib \
      -jar DynamoDBLocal.jar -inMemory -disableTelemetry -port "$DYNAMODB_PORT")
  fi
  wait_for localstack "http://127.0.0.1:$LOCALSTACK_PORT/_localstack/health" 90
  # DynamoDB Local answers a bare GET with 400, which is enough to know it listens.
  wait_listening dynamodb "http://127.0.0.1:$DYNAMODB_PORT" 60
  local i
  # LocalStack reports healthy before SQS answers its first call.
  for ((i = 0; i < 150; i++)); do
    curl -fsS --max-time 2 "http://127.0.0.1:$LOCALSTACK_PORT/_localstack/health" 2>/dev/null \
      | grep -q '"sqs": "\(available\|running\)"' && break
    sleep 0.2
  done
  log "emulators ready"
}

stop() {
  stop_bg localstack
  stop_bg dynamodb
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) die "usage: $0 start|stop" ;;
esac
