#!/usr/bin/env bash
# Each function's init time and package size.
#
# Init: the process started to its first request for work from the Runtime API (Lambda's
# Init phase, less the sandbox's own start). The Runtime API address given refuses
# connections, so each process exits right after that first request: its wall time is
# init plus exit. RUNS runs each, one at a time, on an otherwise idle machine; min and median.
# Size: the binary stripped, and zipped as `bootstrap` (what `sam deploy` uploads).
#
# Needs the functions built (PROFILE, default release) and an env file as `make up` writes it
# (ENV_FILE, default .run/bench/functions.env from bench/run.sh, else .run/functions.env).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PROFILE=${PROFILE:-release} RUNS=${RUNS:-20}
ENV_FILE=${ENV_FILE:-$ROOT/.run/bench/functions.env}
[[ -f $ENV_FILE ]] || ENV_FILE=$ROOT/.run/functions.env
[[ -f $ENV_FILE ]] || { echo "no functions.env: run make up (or bench/run.sh) first" >&2; exit 1; }
BIN="$ROOT/target/$PROFILE"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

python3 - "$ENV_FILE" "$BIN" "$RUNS" "$tmp" <<'PY'
import os, statistics, subprocess, sys, time, zipfile
env_file, bin_dir, runs, tmp = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
env = dict(os.environ)
for line in open(env_file):
    if "=" in line:
        k, v = line.rstrip("\n").split("=", 1)
        v = v.strip()
        # Double-quoted as `make up` writes them, with `\"` inside (a JSON value).
        if len(v) >= 2 and v[0] == v[-1] == '"':
            v = v[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        env[k] = v
env.update(AWS_LAMBDA_RUNTIME_API="127.0.0.1:1", AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
           AWS_LAMBDA_FUNCTION_MEMORY_SIZE="512", AWS_LAMBDA_LOG_FORMAT="json")
print("| function | init ms, min / median | binary, stripped | zip |")
print("| --- | ---: | ---: | ---: |")
for f in ["submit", "status", "worker", "stream", "dlq", "reconciler", "notifier", "scheduler"]:
    path = os.path.join(bin_dir, f)
    env["AWS_LAMBDA_FUNCTION_NAME"] = f
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([path], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append((time.perf_counter() - start) * 1000)
    stripped = os.path.join(tmp, f)
    subprocess.run(["objcopy", "--strip-all", path, stripped], check=True)
    archive = os.path.join(tmp, f + ".zip")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.write(stripped, "bootstrap")
    mb = lambda p: os.path.getsize(p) / 1e6
    print(f"| {f} | {min(times):.1f} / {statistics.median(times):.1f} | {mb(stripped):.1f} MB | {mb(archive):.1f} MB |")
PY
