#!/usr/bin/python3
"""The agent loop benchmark of issue 5, in one run (bench/README.md):

  1. loop overhead, with a scripted model (tests/fakes/fake_model.py) that answers at once: N
     interactions one after another, each 4 turns that call bash `true` and a last one that
     answers text. The server logs per interaction (see src/agent/run.c): the loop's own
     work per step, between a model answer and the next model request, less the tool's run
     time (recording steps and events, tool dispatch, budgets) -- the figure of issue 5;
     the model call as paddock makes it (encoding, HTTP to the fake, decoding), beside the
     same call made by this script with Python's http.client (the fake's own floor); and
     everything per model turn (setup, prompt building with its sandbox reads, model calls
     and the loop; tools excluded).
  2. C concurrent interactions (background: true) on --workers W: all must complete, 0 errors;
     the server's resident memory after a first and a second batch (flat means no leak per
     interaction).

Usage: bench/agent_bench.py [--paddock build/paddock] [--interactions N] [--concurrent C]
                            [--workers W] [--batches B]
It makes its own data directory under /tmp and tears it down at the end.
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AGENT = "antigravity-preview-05-2026"


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))]


class Fake:
    def __init__(self):
        self.proc = subprocess.Popen(["/usr/bin/python3", str(ROOT / "tests/fakes/fake_model.py"),
                                      "--port", "0"], stdout=subprocess.PIPE, text=True)
        m = re.search(r"http://127\.0\.0\.1:(\d+)", self.proc.stdout.readline())
        if not m:
            raise SystemExit("fake model did not start")
        self.port = int(m.group(1))

    def call(self, method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        c.request(method, path, body=json.dumps(body) if body is not None else None,
                  headers={"content-type": "application/json"})
        r = c.getresponse()
        data = r.read()
        c.close()
        return json.loads(data) if data else None

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Server:
    def __init__(self, binary, data, fake_port, workers):
        self.binary, self.data = binary, data
        self.env = dict(os.environ, PADDOCK_STORAGE_SIZE="4G",
                        OPENAI_BASE_URL=f"http://127.0.0.1:{fake_port}/v1")
        self.env.pop("PADDOCK_DATA_DIR", None)
        out = subprocess.run([binary, "--data-dir", data, "keys", "create", "--name", "bench",
                              "--scope", "environments", "--scope", "interactions"],
                             env=self.env, check=True, capture_output=True, text=True).stdout
        self.key = out.strip().splitlines()[-1]
        self.proc = subprocess.Popen([binary, "--data-dir", data, "--log-format", "json",
                                      "--log-level", "info", "serve", "--listen", "127.0.0.1:0",
                                      "--model", "openai:bench", "--workers", str(workers),
                                      "--max-per-key", "10000"],
                                     env=self.env, stderr=subprocess.PIPE, text=True)
        self.ended = {}  # interaction id -> its "interaction ended" log fields
        ready = threading.Event()

        def drain():
            for line in self.proc.stderr:
                m = re.search(r"listening on http://([\d.]+):(\d+)", line)
                if m:
                    self.host, self.port = m.group(1), int(m.group(2))
                    ready.set()
                    continue
                try:
                    j = json.loads(line)
                except ValueError:
                    continue
                if j.get("msg") == "interaction ended":
                    self.ended[j.get("id")] = j
        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(30):
            raise SystemExit("server did not start")

    def call(self, method, path, body=None):
        c = http.client.HTTPConnection(self.host, self.port, timeout=300)
        c.request(method, path, body=json.dumps(body) if body is not None else None,
                  headers={"x-goog-api-key": self.key, "content-type": "application/json"})
        r = c.getresponse()
        data = r.read()
        c.close()
        if r.status != 200:
            raise SystemExit(f"{method} {path}: {r.status} {data[:300]!r}")
        return json.loads(data) if data else None

    def rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait_logged(srv, ids, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(i not in srv.ended for i in ids):
        time.sleep(0.05)


def loop_overhead(srv, fake, env_id, n):
    turns = [{"calls": [{"name": "bash", "args": {"command": "true"}}]} for _ in range(4)]
    ids = []
    for _ in range(n):
        fake.call("POST", "/_script", {"steps": turns + [{"text": "done"}]})
        it = srv.call("POST", "/v1beta/interactions",
                      {"agent": AGENT, "input": "go", "environment": env_id})
        if it["status"] != "completed":
            raise SystemExit(f"interaction {it['id']} ended {it['status']}: {it.get('errors')}")
        ids.append(it["id"])
    wait_logged(srv, ids)
    per_turn = [float(srv.ended[i]["loop_us_per_turn"]) / 1000 for i in ids if i in srv.ended]
    model = [float(srv.ended[i]["model_us_per_turn"]) / 1000 for i in ids if i in srv.ended]
    step = [float(srv.ended[i]["loop_us_per_step"]) / 1000 for i in ids if i in srv.ended]
    # The floor: the same model call (a small chat completion) from Python, at once.
    fake.call("POST", "/_script", {"steps": [{"text": "done"}], "default": {"text": "done"}})
    body = {"model": "bench", "messages": [{"role": "user", "content": "go"}]}
    rtt = []
    for _ in range(n):
        # A connection per call, as paddock's model client makes them.
        t = time.perf_counter()
        c = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=30)
        c.request("POST", "/v1/chat/completions", body=json.dumps(body),
                  headers={"content-type": "application/json"})
        c.getresponse().read()
        c.close()
        rtt.append((time.perf_counter() - t) * 1000)
    return per_turn, model, step, rtt


def concurrent(srv, fake, envs, c):
    fake.call("POST", "/_script", {"steps": [{"calls": [{"name": "bash",
                                                         "args": {"command": "true"}}]}] * c,
                                   "default": {"text": "done"}})
    t0 = time.monotonic()
    ids = [srv.call("POST", "/v1beta/interactions",
                    {"agent": AGENT, "input": "go", "background": True,
                     "environment": envs[i % len(envs)]})["id"] for i in range(c)]
    status = {}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        for i in ids:
            if i not in status or status[i] in ("queued", "in_progress"):
                status[i] = srv.call("GET", f"/v1beta/interactions/{i}")["status"]
        if all(s not in ("queued", "in_progress") for s in status.values()):
            break
        time.sleep(0.2)
    secs = time.monotonic() - t0
    done = sum(1 for s in status.values() if s == "completed")
    return done, c - done, secs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--paddock", default=str(ROOT / "build/paddock"))
    ap.add_argument("--interactions", type=int, default=200)
    ap.add_argument("--concurrent", type=int, default=100)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--batches", type=int, default=3)
    a = ap.parse_args()
    data = tempfile.mkdtemp(prefix="paddock-agent-bench-")
    fake = Fake()
    srv = None
    try:
        srv = Server(a.paddock, data, fake.port, a.workers)
        envs = [srv.call("POST", "/v1beta/environments", {"network": "disabled"})["id"]
                for _ in range(4)]
        per_turn, model, step, rtt = loop_overhead(srv, fake, envs[0], a.interactions)
        print(f"loop overhead per step ({len(step)} interactions x 4 steps, bash `true` "
              f"excluded): p50 {statistics.median(step):.3f} ms, p99 {pct(step, 99):.3f} ms")
        print(f"model call by paddock: p50 {statistics.median(model):.3f} ms; the same call "
              f"from Python (http.client, a connection per call): p50 "
              f"{statistics.median(rtt):.3f} ms ({statistics.median(model) / statistics.median(rtt):.2f}x)")
        print(f"everything per model turn, tools excluded (setup, prompt, model, loop): "
              f"p50 {statistics.median(per_turn):.3f} ms, p99 {pct(per_turn, 99):.3f} ms")
        rss0 = srv.rss_mib()
        res = []
        for batch in range(1, a.batches + 1):
            done, failed, secs = concurrent(srv, fake, envs, a.concurrent)
            time.sleep(1)
            res.append((done, failed, secs, srv.rss_mib()))
            print(f"batch {batch}: {a.concurrent} concurrent interactions on {a.workers} "
                  f"workers: {done} completed, {failed} not, in {secs:.1f} s; server RSS "
                  f"{res[-1][3]:.1f} MiB (before the first batch {rss0:.1f} MiB)")
        print(f"RSS growth from batch 1 to batch {a.batches}: {res[-1][3] - res[0][3]:+.1f} MiB "
              f"over {(a.batches - 1) * a.concurrent} interactions")
    finally:
        if srv is not None:
            srv.stop()
        fake.stop()
        subprocess.run([a.paddock, "--data-dir", data, "system", "teardown"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
