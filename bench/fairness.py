"""Drives bench/fairness.sh: submits the noisy tenant's tasks, then the quiet tenants', waits
until every task has ended, and prints one JSON line: per tenant, seconds from submit to end
(p50, p99, max), and the quiet tenants' worst against the noisy backlog's makespan."""

import argparse
import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime


def call(url, key, method="GET", body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    if data:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def submit(base, key, n, label):
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: call(f"{base}/v1/tasks", key, "POST", {"prompt": f"{label} {i}"}), range(n)))


def tasks(base, key):
    out, cursor = [], None
    while True:
        q = "?limit=100" + (f"&cursor={cursor}" if cursor else "")
        page = call(f"{base}/v1/tasks{q}", key)
        out += page["tasks"]
        cursor = page.get("next_cursor")
        if not cursor:
            return out


def pct(xs, p):
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(p / 100 * len(xs)))], 2)


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--url")
    a.add_argument("--noisy", type=int)
    a.add_argument("--quiet", type=int)
    a.add_argument("--mode")
    a.add_argument("keys", nargs="+", help="TENANT=KEY, the noisy one first")
    args = a.parse_args()
    keys = [k.split("=", 1) for k in args.keys]
    started = time.time()
    submit(args.url, keys[0][1], args.noisy, "backlog")
    for tenant, key in keys[1:]:
        submit(args.url, key, args.quiet, tenant)
    submitted = time.time() - started
    while True:
        listed = {t: tasks(args.url, k) for t, k in keys}
        open_ = sum(1 for ts in listed.values() for t in ts if t["status"] in ("queued", "running"))
        if open_ == 0:
            break
        time.sleep(2)
    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    out = {"mode": args.mode, "noisy": args.noisy, "quiet": args.quiet, "submit_s": round(submitted, 1), "tenants": {}}
    for tenant, ts in listed.items():
        took = [parse(t["updated_at"]) - parse(t["created_at"]) for t in ts]
        ok = sum(1 for t in ts if t["status"] == "succeeded")
        out["tenants"][tenant] = {"tasks": len(ts), "succeeded": ok, "p50_s": pct(took, 50), "p99_s": pct(took, 99), "max_s": pct(took, 100)}
    print(json.dumps(out))


main()
