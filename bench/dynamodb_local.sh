#!/usr/bin/env bash
# DynamoDB Local's own CPU per task under JVM command lines, side by side on this box: the
# JVM's defaults against the options scripts/emulators.sh starts it with
# (DYNAMODB_JAVA_OPTS). Each line starts a private DynamoDB Local on PORT (8123), sends it
# WARM tasks' requests (300) and then measures TASKS more (600): the length of a test run or
# a bench scenario, where a JIT's warm-up counts. REPEAT (2) runs of each.
#   bash bench/dynamodb_local.sh
set -euo pipefail
source "$(dirname "$0")/../scripts/common.sh"
JAR_DIR=$(compgen -G "$DYNAMODB_DIR/package/lib/dynamodb_local_*" | head -n1) \
  || die "DynamoDB Local is not installed: run scripts/install.sh"
export JAR_DIR
for _ in $(seq "${REPEAT:-2}"); do
  # shellcheck disable=SC2086 # each is a list of JVM options
  for opts in "-Xmx512m" "$DYNAMODB_JAVA_OPTS"; do
    "$LOCALSTACK_VENV/bin/python" "$ROOT/bench/dynamodb_local.py" $opts
  done
done
