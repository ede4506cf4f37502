"""A webhook receiver for the integration tests, verifying every delivery with the Standard
Webhooks reference library (`standardwebhooks`, PyPI), not with agentq's own code.

    python webhook_receiver.py        # prints "listening <port>", then serves on 127.0.0.1

POST /hooks/<name>   a delivery: verified against the secrets registered for <name>, recorded,
                     answered with the status set for <name> (default 204).
PUT  /control/<name> {"secrets": [...], "status": 204}: the secrets <name> verifies with and
                     the status it answers (503 plays a receiver that is down).
GET  /control/<name> every delivery <name> received: id, timestamp, verified, body.
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

LOCK = threading.Lock()
STATE = {}  # name -> {"secrets": [...], "status": int, "received": [...]}


def state(name):
    return STATE.setdefault(name, {"secrets": [], "status": 204, "received": []})


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body=None):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        return self.rfile.read(int(self.headers.get("content-length", 0)))

    def do_POST(self):
        if not self.path.startswith("/hooks/"):
            return self.reply(404)
        name, data = self.path[len("/hooks/"):], self.body()
        headers = {k: v for k, v in self.headers.items()}
        with LOCK:
            s = state(name)
            secrets, status = list(s["secrets"]), s["status"]
        verified = False
        for secret in secrets:
            try:
                Webhook(secret).verify(data, headers)
                verified = True
                break
            except Exception:
                pass
        record = {
            "id": headers.get("webhook-id") or headers.get("Webhook-Id"),
            "timestamp": headers.get("webhook-timestamp") or headers.get("Webhook-Timestamp"),
            "verified": verified,
            "answered": status,
            "body": json.loads(data or b"null"),
        }
        with LOCK:
            state(name)["received"].append(record)
        self.reply(status)

    def do_PUT(self):
        name = self.path[len("/control/"):]
        settings = json.loads(self.body() or b"{}")
        with LOCK:
            s = state(name)
            s["secrets"] = settings.get("secrets", s["secrets"])
            s["status"] = settings.get("status", s["status"])
        self.reply(200, {"ok": True})

    def do_GET(self):
        name = self.path[len("/control/"):]
        with LOCK:
            received = list(state(name)["received"])
        self.reply(200, {"received": received})


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening {server.server_address[1]}", flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # Serve until the test that started us closes our stdin (or dies).
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    main()
