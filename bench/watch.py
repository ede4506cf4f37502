"""What watching a task costs, three ways, against a running agentq (bench/watch.sh starts one).

For each way, TASKS tasks are submitted one after another and watched to their end:

- poll:    GET /v1/tasks/{id} every POLL seconds until the task is terminal;
- stream:  GET /v1/tasks/{id}/stream, read until the terminal event;
- webhook: an endpoint registered for the terminal events; the receiver here waits for it.

Measured per task: the client's HTTP requests, the AWS requests the functions made while
watching (from their EMF lines in the Lambda log, by function and operation; the worker's and
submit's own are left out, being the same whichever way one watches), and the delay from the
terminal write (the terminal event's time) to the client knowing. Prints one JSON line per way.

stdlib only, so it runs on any python3.
"""

import argparse
import json
import re
import statistics
import threading
import time
import urllib.request
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WATCHERS = {"status", "stream", "notifier"}  # the functions whose work is the watching
TERMINAL = {"task.succeeded", "task.failed", "task.cancelled"}


def ts(iso):
    """Seconds since the epoch of an RFC 3339 time with any number of fraction digits."""
    m = re.match(r"(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", iso)
    base = datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    return base.timestamp() + float(m.group(2) or 0)


class Api:
    def __init__(self, url, key):
        self.url, self.key, self.requests = url.rstrip("/"), key, 0

    def call(self, method, path, body=None):
        self.requests += 1
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("authorization", f"Bearer {self.key}")
        if data is not None:
            req.add_header("content-type", "application/json")
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read() or b"null")

    def submit(self, prompt):
        self.requests -= 1  # submitting is not watching
        return self.call("POST", "/v1/tasks", {"prompt": prompt})["task_id"]


def aws_requests(log_path, start):
    """AWS requests by watching function and operation in the Lambda log after byte `start`."""
    counts = {}
    with open(log_path, "rb") as f:
        f.seek(start)
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if "AwsRequests" not in rec or rec.get("function") not in WATCHERS:
                continue
            for op, n in rec.get("operations", {}).items():
                key = f"{rec['function']}:{op}"
                counts[key] = counts.get(key, 0) + n
    return counts


def watch_poll(api, task_id, every):
    while True:
        task = api.call("GET", f"/v1/tasks/{task_id}")
        if task["status"] in ("succeeded", "failed", "cancelled"):
            return time.time(), ts(task["updated_at"])
        time.sleep(every)


def watch_stream(api, task_id):
    api.requests += 1
    req = urllib.request.Request(f"{api.url}/v1/tasks/{task_id}/stream")
    req.add_header("authorization", f"Bearer {api.key}")
    with urllib.request.urlopen(req, timeout=120) as r:
        kind = None
        for raw in r:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: ") and kind in TERMINAL:
                return time.time(), ts(json.loads(line[len("data: "):])["time"])
    raise RuntimeError(f"the stream of {task_id} ended without its terminal event")


class Receiver:
    """A webhook receiver: notes when each task's terminal event arrived."""

    def __init__(self):
        self.arrived, self.cond = {}, threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                now = time.time()
                with outer.cond:
                    if body["type"] in TERMINAL:
                        outer.arrived.setdefault(body["data"]["task_id"], (now, ts(body["timestamp"])))
                    outer.cond.notify_all()
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait(self, task_id, timeout=120):
        with self.cond:
            if not self.cond.wait_for(lambda: task_id in self.arrived, timeout):
                raise RuntimeError(f"no webhook for {task_id}")
            return self.arrived[task_id]


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--lambda-log", required=True)
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--poll", type=float, default=1.0)
    args = ap.parse_args()
    api = Api(args.url, args.key)
    receiver, endpoint = Receiver(), None
    try:
        for way in ("poll", "stream", "webhook"):
            if way == "webhook":
                endpoint = api.call("POST", "/v1/webhooks", {"url": receiver.url, "events": sorted(TERMINAL)})
            time.sleep(2)  # let the previous way's last records reach the log
            start = open(args.lambda_log, "rb").seek(0, 2)
            api.requests = 0
            delays, watched = [], 0.0
            for i in range(args.tasks):
                task_id = api.submit(f"What is {i} * 3?")
                began = time.time()
                if way == "poll":
                    seen, ended = watch_poll(api, task_id, args.poll)
                elif way == "stream":
                    seen, ended = watch_stream(api, task_id)
                else:
                    seen, ended = receiver.wait(task_id)
                delays.append((seen - ended) * 1000)
                watched += seen - began
            time.sleep(3)  # the watchers' last metrics flush
            aws = aws_requests(args.lambda_log, start)
            # The notifier reads every event whether or not anyone listens; it is the cost of
            # watching only where it delivers.
            if way != "webhook":
                aws = {k: v for k, v in aws.items() if not k.startswith("notifier:")}
            total_aws = sum(aws.values())
            print(json.dumps({
                "way": way,
                "tasks": args.tasks,
                "client_requests_per_task": round(api.requests / args.tasks, 2),
                "watch_seconds_per_task": round(watched / args.tasks, 2),
                "aws_requests_per_task": round(total_aws / args.tasks, 2),
                "aws_by_operation_per_task": {k: round(v / args.tasks, 2) for k, v in sorted(aws.items())},
                "delay_ms_p50": round(statistics.median(delays)),
                "delay_ms_p99": round(pct(delays, 99)),
            }), flush=True)
    finally:
        if endpoint:
            api.call("DELETE", f"/v1/webhooks/{endpoint['id']}")


if __name__ == "__main__":
    main()
