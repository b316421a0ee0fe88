#!/usr/bin/python3
"""The API server benchmark of issue 3, in one run (bench/README.md):

  1. GET /v1beta/environments/ID with wrk on loopback: requests per second and p99;
  2. create -> ready through the API (POST /v1beta/environments answered 200, sandbox
     running): p50 and p99 over N creates, as a client sees them; twice: back to back (a
     burst: the server's warm pool of 2 is soon empty and most creates start a new sandbox)
     and paced 100 ms apart (each one claims a warm sandbox);
  3. snapshot tar throughput for a ~200 MB environment, beside GNU tar over the same files
     (the environment's own layer on the host), both read to the end through a pipe.

Usage: bench/api_bench.py [--paddock build/paddock] [--creates N] [--wrk-seconds S]
                          [--snapshot-mb MB]
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))]


class Server:
    def __init__(self, binary, data):
        self.binary, self.data = binary, data
        self.env = dict(os.environ, PADDOCK_STORAGE_SIZE="4G")
        self.env.pop("PADDOCK_DATA_DIR", None)
        out = subprocess.run([binary, "--data-dir", data, "keys", "create", "--name", "bench",
                              "--scope", "environments"], env=self.env, check=True,
                             capture_output=True, text=True).stdout
        self.key = out.strip().splitlines()[-1]
        # Request logs at info level would measure stderr, not the server: warn only.
        self.proc = subprocess.Popen([binary, "--data-dir", data, "--log-level", "warn", "serve",
                                      "--listen", "127.0.0.1:0"], env=self.env,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            m = re.search(r"listening on http://([\d.]+):(\d+)", line)
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
                break
        else:
            raise SystemExit("server did not start")
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)

    def call(self, method, path, body=None):
        hdrs = {"x-goog-api-key": self.key, "content-type": "application/json"}
        self.conn.request(method, path, body=json.dumps(body) if body is not None else None,
                          headers=hdrs)
        r = self.conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise SystemExit(f"{method} {path}: {r.status} {data[:300]!r}")
        return json.loads(data) if data else None

    def cli(self, *args, **kw):
        return subprocess.run([self.binary, "--data-dir", self.data, *args], env=self.env,
                              check=True, capture_output=True, **kw)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        subprocess.run([self.binary, "--data-dir", self.data, "system", "teardown"],
                       env=self.env, capture_output=True)


def bench_creates(s, n, pace_s=0.0):
    times = []
    ids = []
    for _ in range(n):
        time.sleep(pace_s)
        t0 = time.perf_counter()
        e = s.call("POST", "/v1beta/environments", {})
        times.append((time.perf_counter() - t0) * 1e3)
        assert e["state"] == "running", e
        ids.append(e["id"])
    for i in ids:
        s.call("DELETE", f"/v1beta/environments/{i}")
    return times


def bench_get(s, seconds):
    env = s.call("POST", "/v1beta/environments", {})
    url = f"http://{s.host}:{s.port}/v1beta/environments/{env['id']}"
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", "-H",
                          f"x-goog-api-key: {s.key}", url], check=True, capture_output=True,
                         text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99 = float(m.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3}[m.group(2)]
    m = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p50 = float(m.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3}[m.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rps, p50, p99, int(non2xx.group(1)) if non2xx else 0


def bench_snapshot(s, mb, rounds=3):
    env = s.call("POST", "/v1beta/environments", {})
    eid = env["id"]
    # ~mb MB in files of 1 MiB and 64 KiB, written inside the sandbox.
    s.cli("env", "exec", eid, "-c",
          f"mkdir -p /workspace/data && cd /workspace/data && "
          f"for i in $(seq {mb}); do head -c 1048576 /dev/urandom > big$i; done && "
          f"for i in $(seq 64); do head -c 65536 /dev/urandom > small$i; done")
    upper = Path(s.data) / "envs" / eid / "upper" / "root"
    size = sum(f.stat().st_size for f in upper.rglob("*") if f.is_file() and not f.is_symlink())
    ours, gnu = [], []
    for _ in range(rounds):
        # paddock: through HTTP, counted by curl, read to the end.
        t0 = time.perf_counter()
        r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}",
                            "-H", f"x-goog-api-key: {s.key}",
                            f"http://{s.host}:{s.port}/v1beta/files/environment-{eid}:download"
                            "?alt=media"], check=True, capture_output=True, text=True)
        ours.append((time.perf_counter() - t0, int(r.stdout)))
        # GNU tar over the same files, piped (tar skips reading data when writing to
        # /dev/null itself).
        t0 = time.perf_counter()
        p = subprocess.run(f"tar -C {upper} -cf - . | wc -c", shell=True, check=True,
                           capture_output=True, text=True)
        gnu.append((time.perf_counter() - t0, int(p.stdout)))
    o = statistics.median(b / t / 1e6 for t, b in ours)
    g = statistics.median(b / t / 1e6 for t, b in gnu)
    return size, o, g


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--paddock", default=str(ROOT / "build" / "paddock"))
    ap.add_argument("--creates", type=int, default=100)
    ap.add_argument("--wrk-seconds", type=int, default=10)
    ap.add_argument("--snapshot-mb", type=int, default=200)
    a = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing (apt-get install wrk; ./dev setup installs it)")
    data = tempfile.mkdtemp(prefix="paddock-apibench.")
    s = Server(a.paddock, data)
    try:
        s.call("POST", "/v1beta/environments", {})  # warm: storage image, base image
        creates = bench_creates(s, a.creates)
        paced = bench_creates(s, a.creates, 0.1)
        rps, g50, g99, bad = bench_get(s, a.wrk_seconds)
        size, ours, gnu = bench_snapshot(s, a.snapshot_mb)
    finally:
        s.stop()
        shutil.rmtree(data, ignore_errors=True)
    print(f"paddock api-bench: {os.cpu_count()} cores, data dir {data}")
    print(f"GET environment (wrk -t2 -c32 {a.wrk_seconds}s)  {rps:10.0f} req/s   "
          f"p50 {g50:.3f} ms   p99 {g99:.3f} ms   non-2xx {bad}")
    print(f"create -> ready via API ({a.creates}, burst) p50 {statistics.median(creates):.3f} ms   "
          f"p99 {pct(creates, 99):.3f} ms")
    print(f"create -> ready via API ({a.creates}, paced) p50 {statistics.median(paced):.3f} ms   "
          f"p99 {pct(paced, 99):.3f} ms   (warm pool)")
    print(f"snapshot tar of {size / 1e6:.0f} MB               paddock {ours:.0f} MB/s   "
          f"GNU tar {gnu:.0f} MB/s   ratio {ours / gnu:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
