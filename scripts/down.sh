#!/usr/bin/env bash
# `make down`: stops everything `make up` started, by the PIDs it recorded.
set -euo pipefail
source "$(dirname "$0")/common.sh"
for name in gateway lambda fake-model; do stop_bg "$name"; done
bash "$(dirname "$0")/emulators.sh" stop
