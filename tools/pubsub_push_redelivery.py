"""Pub/Sub emulator push redelivery after a short outage, with and without a retry policy.

Endpoints: 'down' is not listening for the first OUTAGE s (connection refused, like a
killed function process); 'err' answers 503 for the first OUTAGE s. Each endpoint has two
subscriptions: with retryPolicy (1s..10s) and without. Publish N messages at t0, then count
successful (200) deliveries per subscription for RUN s.
"""
import json, os, socket, subprocess, sys, threading, time, urllib.request, base64
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OUTAGE, RUN, N = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
def free():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
EP, DOWN, ERR = free(), free(), free()
proc = subprocess.Popen(["gcloud", "beta", "emulators", "pubsub", "start", "--project=p",
                         f"--host-port=127.0.0.1:{EP}", "--quiet"],
                        stdout=open("/tmp/i12-exp/emu.log", "w"), stderr=subprocess.STDOUT)
base = f"http://127.0.0.1:{EP}/v1/projects/p"
def call(method, path, body=None):
    req = urllib.request.Request(base + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=10).read() or b"{}")
for _ in range(120):
    try: call("GET", "/topics"); break
    except Exception: time.sleep(0.5)
t0 = None
events = []  # (t, sub, status)
lock = threading.Lock()
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        sub = self.path.strip("/")
        status = 503 if (self.server.mode == "err" and time.monotonic() - t0 < OUTAGE) else 200
        with lock: events.append((round(time.monotonic() - t0, 1), sub, status))
        self.send_response(status); self.end_headers()
    def log_message(self, *a): pass
def serve(port, mode):
    srv = ThreadingHTTPServer(("127.0.0.1", port), H); srv.mode = mode
    threading.Thread(target=srv.serve_forever, daemon=True).start()
subs = {}
for ep_name, port in (("down", DOWN), ("err", ERR)):
    call("PUT", f"/topics/{ep_name}", {})
    for variant in ("retry", "noretry"):
        name = f"{ep_name}-{variant}"
        body = {"topic": f"projects/p/topics/{ep_name}", "ackDeadlineSeconds": 30,
                "pushConfig": {"pushEndpoint": f"http://127.0.0.1:{port}/{name}"}}
        if variant == "retry":
            body["retryPolicy"] = {"minimumBackoff": "1s", "maximumBackoff": "10s"}
        call("PUT", f"/subscriptions/{name}", body)
serve(ERR, "err")
t0 = time.monotonic()
for ep_name in ("down", "err"):
    call("POST", f"/topics/{ep_name}:publish",
         {"messages": [{"data": base64.b64encode(f"m{i}".encode()).decode()} for i in range(N)]})
time.sleep(OUTAGE); serve(DOWN, "down")
time.sleep(RUN - OUTAGE)
proc.terminate()
summary = {}
for t, sub, status in events:
    s = summary.setdefault(sub, {"attempts": 0, "ok": 0, "first_ok": None, "last": None})
    s["attempts"] += 1; s["last"] = t
    if status == 200:
        s["ok"] += 1; s["first_ok"] = s["first_ok"] if s["first_ok"] is not None else t
print(json.dumps({"outage_s": OUTAGE, "run_s": RUN, "messages": N, "by_subscription": summary}, indent=1))
