#!/usr/bin/python3
"""The egress proxy benchmark of issue 4, in one run (bench/README.md):

  1. tunnel throughput: one client program (CLIENT below, Debian's /usr/bin/python3, raw
     sockets, recv_into a 1 MiB buffer) downloads --bulk-mib MiB from a TCP source on
     127.0.0.2, (a) directly on the host (a sandbox has no route, so "direct" can only be
     measured there), (b) from INSIDE a sandbox through paddock's proxy (CONNECT to
     127.0.0.1:3128 in the sandbox's network namespace) and (c) on the host through Debian's
     tinyproxy (CONNECT); and (d) the host's client run in the sandbox's network namespace
     (nsenter) against paddock's listener there, so every proxy is also compared with the
     client outside any sandbox; (e) when HAProxy is installed, the host's client through an
     HAProxy TCP relay that splices (`option splice-request`/`splice-response`): another
     relay built on splice(2), the peer for what any relay costs on this machine; --runs
     rounds, the modes interleaved in every round; the CPU each proxy process spends per GB
     is reported beside, and where every mode's CPU goes (upstream, proxy, client, softirq,
     idle: from /proc);
  2. HTTPS request latency from INSIDE a sandbox, one request per connection (CONNECT, TLS,
     GET, response, close) to an HTTPS upstream for up.test on 127.0.0.2: through a plain
     tunnel (TLS end to end, the client trusts the test CA) and through interception (an
     allowlist entry with a `transform`: the proxy terminates TLS with the installation's CA,
     sets X-Bench: 1 and re-originates TLS to the upstream, verified against
     --egress-upstream-ca). The difference of the medians is the latency interception adds.
     Measured both one request per connection and keep-alive (many requests on one tunnel),
     through a plain tunnel and through interception; the target is judged on keep-alive.
     The same client on the host straight to the upstream (no proxy) is the floor under both.
     Requests over 15 ms are counted: a bimodal tail there is Nagle's algorithm on the proxy's
     sockets meeting the client's delayed ACK (bench/README.md).
  3. HTTPS download throughput from INSIDE a sandbox: one GET of --https-bulk-mib MiB per run,
     TLS end to end through a plain tunnel against interception (the proxy decrypts and
     encrypts every byte), interleaved, with the proxy's CPU per GB; the same client on the
     host straight to the upstream is the floor.

The upstreams (a TCP source that streams the byte count a client asks for, and a small HTTPS
responder on pre-started threads with a test CA made by the openssl CLI) run in a process of
their own on 127.0.0.2; paddock serve gets --egress-allow-cidr 127.0.0.2/32, --egress-resolve
up.test=127.0.0.2 and --egress-upstream-ca with that CA.

Usage: bench/egress_bench.py [--paddock build/paddock] [--bulk-mib MIB] [--runs N]
                             [--requests N] [--blocks N] [--https-bulk-mib MIB]
Needs openssl and tinyproxy (apt-get install tinyproxy); uses haproxy when it is installed.
Everything stays on loopback. It
makes its own data directory and files under /tmp and removes them, stops what it started and
tears the sandboxes down at the end.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = "/usr/bin/python3"  # the same interpreter as inside a sandbox (Debian's)
UP_IP = "127.0.0.2"
UP_NAME = "up.test"

# The client: the same file runs on the host and inside the sandboxes.
CLIENT = r'''
import json, socket, ssl, struct, sys, time

def dial(proxy, target, addr=None):
    """A connected socket to target (host:port), through an HTTP CONNECT proxy if given;
    without one, to addr (host:port) if given."""
    if proxy is None:
        h, p = (addr or target).rsplit(":", 1)
        s = socket.create_connection((h, int(p)))
    else:
        h, p = proxy.rsplit(":", 1)
        s = socket.create_connection((h, int(p)))
        s.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target.encode(), target.encode()))
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = s.recv(4096)
            if not d:
                raise SystemExit("proxy closed during CONNECT: %r" % buf)
            buf += d
        if not buf.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
            raise SystemExit("CONNECT refused: %r" % buf[:300])
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s

def read_rest(s, buf, t0, got, nbytes):
    """Reads s through buf until nbytes in all (got so far), closes it; the time since t0."""
    while got < nbytes:
        n = s.recv_into(buf)
        if n == 0:
            break
        got += n
    dt = time.perf_counter() - t0
    s.close()
    if got != nbytes:
        raise SystemExit("short read: %d of %d" % (got, nbytes))
    return {"bytes": got, "seconds": dt}

def bulk(proxy, target, nbytes):
    s = dial(proxy, target)
    buf = bytearray(1 << 20)
    t0 = time.perf_counter()
    s.sendall(struct.pack("!Q", nbytes))
    return read_rest(s, buf, t0, 0, nbytes)

def read_response(ss, rest=b""):
    buf = rest
    while b"\r\n\r\n" not in buf:
        d = ss.recv(65536)
        if not d:
            raise SystemExit("connection closed before a response: %r" % buf[:300])
        buf += d
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1.1 200"):
        raise SystemExit("bad response: %r" % buf[:400])
    hdrs = {}
    for l in lines[1:]:
        k, _, v = l.partition(b":")
        hdrs[k.strip().lower()] = v.strip()
    n = int(hdrs[b"content-length"])
    while len(body) < n:
        d = ss.recv(65536)
        if not d:
            raise SystemExit("short body")
        body += d
    return hdrs, body[n:]

def https(proxy, target, cafile, n, keepalive, addr=None):
    host = target.rsplit(":", 1)[0]
    ctx = ssl.create_default_context(cafile=cafile)
    req = ("GET / HTTP/1.1\r\nHost: %s\r\nUser-Agent: egress-bench\r\n%s\r\n" %
           (target, "" if keepalive else "Connection: close\r\n")).encode()
    lat, marked, issuers = [], 0, set()
    t_all = time.perf_counter()
    if keepalive:
        ss = ctx.wrap_socket(dial(proxy, target, addr), server_hostname=host)
        issuers.add(dict(x[0] for x in ss.getpeercert()["issuer"]).get("commonName"))
        t_all = time.perf_counter()  # the rate counts requests, not the one handshake
        rest = b""
        for _ in range(n):
            t0 = time.perf_counter()
            ss.sendall(req)
            hdrs, rest = read_response(ss, rest)
            lat.append(time.perf_counter() - t0)
            marked += hdrs.get(b"x-saw-bench") == b"1"
        ss.close()
    else:
        for _ in range(n):
            t0 = time.perf_counter()
            ss = ctx.wrap_socket(dial(proxy, target, addr), server_hostname=host)
            ss.sendall(req)
            hdrs, _ = read_response(ss)
            lat.append(time.perf_counter() - t0)
            marked += hdrs.get(b"x-saw-bench") == b"1"
            if len(issuers) == 0:
                issuers.add(dict(x[0] for x in ss.getpeercert()["issuer"]).get("commonName"))
            ss.close()
    total = time.perf_counter() - t_all
    return {"lat": lat, "total": total, "marked": marked, "issuers": sorted(issuers)}

def https_bulk(proxy, target, cafile, nbytes, addr=None):
    """One GET of nbytes over TLS; the time from the request to the last byte."""
    host = target.rsplit(":", 1)[0]
    ctx = ssl.create_default_context(cafile=cafile)
    ss = ctx.wrap_socket(dial(proxy, target, addr), server_hostname=host)
    buf = bytearray(1 << 20)
    t0 = time.perf_counter()
    ss.sendall(("GET /bulk/%d HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" %
                (nbytes, target)).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        n = ss.recv_into(buf)
        if n == 0:
            raise SystemExit("connection closed before a response: %r" % head[:300])
        head += bytes(buf[:n])
    first, _, body = head.partition(b"\r\n\r\n")
    if not first.startswith(b"HTTP/1.1 200"):
        raise SystemExit("bad response: %r" % first[:300])
    return read_rest(ss, buf, t0, len(body), nbytes)

a = sys.argv[1:]
proxy = None if a[1] == "-" else a[1]
if a[0] == "bulk":
    out = bulk(proxy, a[2], int(a[3]))
elif a[0] == "https-bulk":
    out = https_bulk(proxy, a[2], a[3], int(a[4]), a[5] if len(a) > 5 else None)
else:
    out = https(proxy, a[2], a[3], int(a[4]), a[0] == "https-keepalive",
                a[5] if len(a) > 5 else None)
print(json.dumps(out))
'''


# ------------------------------------------------------------------ upstream servers
# They run in a process of their own (this file with --upstream) so that nothing in the
# measuring process competes with them, and a profiler can attach to them alone.

RESP = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
        b"X-Saw-Bench: %d\r\n%s\r\nok\n")


def upstream_main(workdir, https_workers):
    import ssl
    import struct

    def bulk_conn(s):
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            hdr = b""
            while len(hdr) < 8:
                d = s.recv(8 - len(hdr))
                if not d:
                    return
                hdr += d
            left = struct.unpack("!Q", hdr)[0]
            chunk = memoryview(bytearray(1 << 20))
            while left > 0:
                k = min(left, len(chunk))
                s.sendall(chunk[:k])
                left -= k
            s.shutdown(socket.SHUT_WR)
            s.settimeout(5)
            while s.recv(65536):
                pass
        except OSError:
            pass
        finally:
            s.close()

    def bulk_accept(ls):
        while True:
            s, _ = ls.accept()
            threading.Thread(target=bulk_conn, args=(s,), daemon=True).start()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(f"{workdir}/up.pem", f"{workdir}/up.key")

    def https_worker(ls):
        # Pre-started workers all blocked in accept(): no thread start per connection.
        while True:
            try:
                raw, _ = ls.accept()
            except OSError:
                return
            try:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                raw.settimeout(30)
                s = ctx.wrap_socket(raw, server_side=True)
                buf = b""
                while True:
                    while b"\r\n\r\n" not in buf:
                        d = s.recv(65536)
                        if not d:
                            raise EOFError
                        buf += d
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    h = head.lower()
                    if h.startswith(b"get /bulk/"):  # a download of the size asked for
                        left = int(h.split()[1][6:])
                        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream"
                                  b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                                  % left)
                        chunk = memoryview(bytearray(1 << 20))
                        while left > 0:
                            k = min(left, len(chunk))
                            s.sendall(chunk[:k])
                            left -= k
                        break
                    close = b"\r\nconnection: close" in h
                    saw = b"\r\nx-bench: 1" in h
                    s.sendall(RESP % (int(saw), b"Connection: close\r\n" if close else b""))
                    if close:
                        break
                s.close()
            except (OSError, EOFError, ValueError):
                raw.close()

    bl = socket.socket()
    bl.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    bl.bind((UP_IP, 0))
    bl.listen(128)
    hl = socket.socket()
    hl.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    hl.bind((UP_IP, 0))
    hl.listen(512)
    threading.Thread(target=bulk_accept, args=(bl,), daemon=True).start()
    for _ in range(https_workers):
        threading.Thread(target=https_worker, args=(hl,), daemon=True).start()
    print(f"ports {bl.getsockname()[1]} {hl.getsockname()[1]}", flush=True)
    # Ends with its parent: stdin is a pipe the parent holds.
    sys.stdin.read()


# ------------------------------------------------------------------ helpers


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))]


def run_paddock(cmd, **kw):
    """subprocess.run of the paddock binary, retried while it is being rebuilt (others keep
    build/ fresh: the file can be missing or not yet executable for a moment)."""
    for _ in range(30):
        try:
            r = subprocess.run(cmd, **kw)
        except (PermissionError, FileNotFoundError, OSError):
            time.sleep(1)
            continue
        if r.returncode not in (126, 127):
            return r
        time.sleep(1)
    return subprocess.run(cmd, **kw)


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def make_certs(d):
    """A test CA and a leaf for up.test signed by it (EC P-256, like paddock's own)."""
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
       "-nodes", "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem", "-days", "2",
       "-subj", "/CN=egress-bench test CA")
    sh("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
       "-keyout", f"{d}/up.key", "-out", f"{d}/up.csr", "-subj", f"/CN={UP_NAME}")
    Path(f"{d}/up.ext").write_text(f"subjectAltName=DNS:{UP_NAME}\nbasicConstraints=CA:FALSE\n"
                                   "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    sh("openssl", "x509", "-req", "-in", f"{d}/up.csr", "-CA", f"{d}/ca.pem", "-CAkey",
       f"{d}/ca.key", "-CAcreateserial", "-out", f"{d}/up.pem", "-days", "2", "-extfile",
       f"{d}/up.ext")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(host, port, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {host}:{port}")


class Server:
    def __init__(self, binary, data, upstream_ca):
        import http.client
        self.binary, self.data = binary, data
        self.env = dict(os.environ, PADDOCK_STORAGE_SIZE="4G")
        self.env.pop("PADDOCK_DATA_DIR", None)
        out = self.cli("keys", "create", "--name", "bench", "--scope", "environments",
                       text=True).stdout
        self.key = out.strip().splitlines()[-1]
        self.proc = subprocess.Popen(
            [binary, "--data-dir", data, "--log-level", "warn", "serve", "--listen",
             "127.0.0.1:0", "--egress-allow-cidr", f"{UP_IP}/32", "--egress-resolve",
             f"{UP_NAME}={UP_IP}", "--egress-upstream-ca", upstream_ca,
             # The bench measures the proxy, not the per-environment rate of new connections
             # (its one-request-per-connection rows open hundreds a second).
             "--egress-conn-rate", "100000"],
            env=self.env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                raise SystemExit("paddock serve exited")
            m = re.search(r"listening on http://([\d.]+):(\d+)", line)
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
                break
        else:
            raise SystemExit("server did not start")
        # Keep reading its stderr so a chatty log can never block it.
        self.log = []
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()
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

    def cli(self, *args, text=False):
        r = run_paddock([self.binary, "--data-dir", self.data, *args], env=self.env,
                        capture_output=True, text=text)
        if r.returncode != 0:
            raise SystemExit(f"paddock {' '.join(args)}: {r.stderr}")
        return r

    def run_client(self, eid, *args):
        r = run_paddock([self.binary, "--data-dir", self.data, "env", "exec", eid, "--",
                         "python3", "/bench/client.py", *args], env=self.env,
                        capture_output=True, text=True)
        if r.returncode != 0:
            if self.proc.poll() is not None:
                raise SystemExit(f"paddock serve exited (status {self.proc.returncode}; 0 is "
                                 "a SIGTERM/SIGINT from elsewhere) during the run")
            raise SystemExit(f"client in {eid} failed ({r.returncode}): {r.stdout[-500:]} "
                             f"{r.stderr[-1000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        run_paddock([self.binary, "--data-dir", self.data, "system", "teardown"],
                    env=self.env, capture_output=True)


def host_client(work, *args, netns=None):
    pre = ["nsenter", f"--net={netns}"] if netns else []
    r = subprocess.run([*pre, PY, f"{work}/client.py", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"host client failed: {r.stdout[-500:]} {r.stderr[-1000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def start_tinyproxy(work, ports):
    port = free_port()
    conf = Path(f"{work}/tinyproxy.conf")
    conf.write_text("\n".join([
        "User nobody", "Group nogroup", f"Port {port}", "Listen 127.0.0.1", "Timeout 600",
        "MaxClients 100", "LogLevel Critical", "DisableViaHeader Yes", "Allow 127.0.0.1",
        *[f"ConnectPort {p}" for p in ports], ""]))
    # -d: stays in the foreground (so it is this process's child and ends with it).
    p = subprocess.Popen(["tinyproxy", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    wait_port("127.0.0.1", port)
    return p, port


def mbps(r):
    return r["bytes"] / r["seconds"] / 1e6


TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    """User + system CPU seconds of a process, all its threads."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


class CpuMeter:
    """Accumulates the CPU one process spends inside `with` blocks."""

    def __init__(self, pid):
        self.pid, self.total = pid, 0.0

    def __enter__(self):
        self.t0 = cpu_s(self.pid)

    def __exit__(self, *exc):
        self.total += cpu_s(self.pid) - self.t0


def proc_stat():
    """Whole-machine CPU ticks from /proc/stat: total, idle (+iowait), irq + softirq."""
    v = list(map(int, Path("/proc/stat").read_text().splitlines()[0].split()[1:]))
    return sum(v), v[3] + v[4], v[5] + v[6]


class Split:
    """Where one mode's CPU goes: per GB moved, the upstream process, the proxy process and
    the client (with its nsenter); and the machine's idle and irq+softirq shares."""

    def __init__(self, up_pid, proxy_pid):
        self.up, self.proxy, self.n = up_pid, proxy_pid, 0
        self.acc = [0.0] * 5

    def measure(self, f):
        import resource
        t0, i0, q0 = proc_stat()
        u0, p0 = cpu_s(self.up), (cpu_s(self.proxy) if self.proxy else 0.0)
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = f()
        t1, i1, q1 = proc_stat()
        u1, p1 = cpu_s(self.up), (cpu_s(self.proxy) if self.proxy else 0.0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        gb = r["bytes"] / 1e9
        c = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
        for k, x in enumerate(((u1 - u0) / gb, (p1 - p0) / gb, c / gb,
                               (q1 - q0) / max(1, t1 - t0), (i1 - i0) / max(1, t1 - t0))):
            self.acc[k] += x
        self.n += 1
        return r

    def line(self):
        a = [x / max(1, self.n) for x in self.acc]
        return (f"upstream {a[0]:.2f}  proxy {a[1]:.2f}  client {a[2]:.2f} s/GB   "
                f"irq+softirq {a[3] * 100:4.1f} %  idle {a[4] * 100:4.1f} %")


def start_haproxy(work, target):
    """HAProxy as a plain TCP relay to target that splices both ways, or None."""
    if shutil.which("haproxy") is None:
        return None, None
    port = free_port()
    Path(f"{work}/haproxy.cfg").write_text(
        "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n"
        "  timeout client 600s\n  timeout server 600s\n  option splice-request\n"
        f"  option splice-response\nlisten relay\n  bind 127.0.0.1:{port}\n"
        f"  server up {target}\n")
    p = subprocess.Popen(["haproxy", "-db", "-f", f"{work}/haproxy.cfg"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port("127.0.0.1", port)
    return p, port


def netns_pid(inode_link):
    """A host pid whose network namespace is inode_link ("net:[...]")."""
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.readlink(d / "ns" / "net") == inode_link:
                    return int(d.name)
            except OSError:
                pass
    raise SystemExit(f"no process in {inode_link}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--paddock", default=str(ROOT / "build" / "paddock"))
    ap.add_argument("--bulk-mib", type=int, default=1024, help="MiB per throughput run")
    ap.add_argument("--runs", type=int, default=5, help="throughput rounds (each mode once)")
    ap.add_argument("--requests", type=int, default=500,
                    help="HTTPS requests per mode (one connection each)")
    ap.add_argument("--blocks", type=int, default=5,
                    help="the HTTPS requests are made in this many interleaved blocks")
    ap.add_argument("--https-bulk-mib", type=int, default=256,
                    help="MiB per HTTPS download (tunnel vs interception)")
    ap.add_argument("--https-workers", type=int, default=8)
    ap.add_argument("--only", help="comma-separated starts of tunnel modes (e.g. "
                    "'direct,paddock (client'): run just those, report their tunnel lines "
                    "and CPU, and skip the HTTPS sections (bench/egress_upstream_profile.sh)")
    ap.add_argument("--upstream", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.upstream:
        return upstream_main(a.upstream, a.https_workers)
    for tool in ("openssl", "tinyproxy", "nsenter"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing (apt-get install {tool})")
    if not os.access(a.paddock, os.X_OK):
        raise SystemExit(f"{a.paddock} is missing: build it first")

    work = tempfile.mkdtemp(prefix="paddock-egressbench.")
    data = f"{work}/data"
    procs, s = [], None
    try:
        make_certs(work)
        Path(f"{work}/client.py").write_text(CLIENT)
        up = subprocess.Popen([PY, __file__, "--upstream", work, "--https-workers",
                               str(a.https_workers)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
        procs.append(up)
        bulk_port, https_port = map(int, up.stdout.readline().split()[1:3])
        tp, tp_port = start_tinyproxy(work, [bulk_port, https_port])
        procs.append(tp)
        s = Server(a.paddock, data, f"{work}/ca.pem")

        sources = [{"type": "inline", "target": "/bench/client.py", "content": CLIENT},
                   {"type": "inline", "target": "/bench/test-ca.pem",
                    "content": Path(f"{work}/ca.pem").read_text()}]
        https_target = f"{UP_NAME}:{https_port}"
        plain = s.call("POST", "/v1beta/environments", {
            "sources": sources,
            "network": {"allowlist": [{"domain": f"{UP_NAME}:{bulk_port}"},
                                      {"domain": https_target}]}})["id"]
        mitm = s.call("POST", "/v1beta/environments", {
            "sources": sources,
            "network": {"allowlist": [{"domain": https_target,
                                       "transform": {"X-Bench": "1"}}]}})["id"]

        # ---- 1. tunnel throughput, the modes interleaved in every round
        nbytes = a.bulk_mib << 20
        direct_t = f"{UP_IP}:{bulk_port}"
        # The sandbox's network namespace, to run the host's client against paddock's
        # listener there too (same client, same CPU accounting as the host rows).
        link = s.cli("env", "exec", plain, "--", "readlink", "/proc/self/ns/net",
                     text=True).stdout.strip()
        ns = f"/proc/{netns_pid(link)}/ns/net"
        hp, hp_port = start_haproxy(work, direct_t)
        if hp is not None:
            procs.append(hp)
        pcpu, tcpu = CpuMeter(s.proc.pid), CpuMeter(tp.pid)
        modes = {
            "direct (host)": (None, lambda: host_client(work, "bulk", "-", direct_t,
                                                        str(nbytes))),
            "paddock (client in sandbox)": (pcpu, lambda: s.run_client(
                plain, "bulk", "127.0.0.1:3128", f"{UP_NAME}:{bulk_port}", str(nbytes))),
            "paddock (host client in netns)": (pcpu, lambda: host_client(
                work, "bulk", "127.0.0.1:3128", f"{UP_NAME}:{bulk_port}", str(nbytes),
                netns=ns)),
            "tinyproxy (host)": (tcpu, lambda: host_client(
                work, "bulk", f"127.0.0.1:{tp_port}", direct_t, str(nbytes))),
        }
        if hp is not None:
            modes["haproxy splice relay (host)"] = (None, lambda: host_client(
                work, "bulk", "-", f"127.0.0.1:{hp_port}", str(nbytes)))
        if a.only:
            modes = {k: v for k, v in modes.items() if k.startswith(tuple(a.only.split(",")))}
            if not modes:
                raise SystemExit(f"--only {a.only!r} names no tunnel mode")
        splits = {k: Split(up.pid, {"tinyproxy (host)": tp.pid,
                                    "haproxy splice relay (host)": hp.pid if hp else 0}.get(
                                        k, 0 if k.startswith("direct") else s.proc.pid))
                  for k in modes}
        for _, f in modes.values():  # warm: page cache, first exec
            f()
        tput = {k: [] for k in modes}
        pcpu.total = tcpu.total = 0.0
        for _ in range(a.runs):
            for k, (meter, f) in modes.items():
                if meter is None:
                    tput[k].append(mbps(splits[k].measure(f)))
                else:
                    with meter:
                        tput[k].append(mbps(splits[k].measure(f)))
        moved_gb = a.runs * nbytes / 1e9
        proxy_cpu = {"paddock": pcpu.total / (2 * moved_gb), "tinyproxy": tcpu.total / moved_gb}
        if a.only:
            print(f"Tunnel throughput (CONNECT), {a.bulk_mib} MiB per run, median of {a.runs} "
                  f"rounds, only {a.only}:")
            for k, v in tput.items():
                print(f"  {k:31s} {statistics.median(v):7.0f} MB/s   {splits[k].line()}")
            return 0

        # ---- 2. HTTPS, one request per connection, tunnel and interception interleaved
        per = max(1, a.requests // a.blocks)
        spec = {"tunnel": (plain, "/bench/test-ca.pem"),
                "intercepted": (mitm, "/etc/paddock/ca.pem")}
        lat = {k: [] for k in spec}
        wall = {k: 0.0 for k in spec}
        marked = {k: 0 for k in spec}
        issuers = {k: set() for k in spec}
        reqcpu = {k: CpuMeter(s.proc.pid) for k in spec}
        for k, (eid, ca) in spec.items():  # warm: leaf certificate minted, page cache
            s.run_client(eid, "https", "127.0.0.1:3128", https_target, ca, "5")
        for _ in range(a.blocks):
            for k, (eid, ca) in spec.items():
                with reqcpu[k]:
                    r = s.run_client(eid, "https", "127.0.0.1:3128", https_target, ca, str(per))
                lat[k] += [x * 1e3 for x in r["lat"]]
                wall[k] += r["total"]
                marked[k] += r["marked"]
                issuers[k].update(r["issuers"])
        # The same client on the host straight to the upstream: what the client and the
        # upstream cost by themselves (the floor under both rows above).
        floor = host_client(work, "https", "-", https_target, f"{work}/ca.pem",
                            str(per * a.blocks), f"{UP_IP}:{https_port}")
        # Keep-alive through a plain tunnel, for reference.
        s.run_client(plain, "https-keepalive", "127.0.0.1:3128", https_target,
                     "/bench/test-ca.pem", "50")
        ka = s.run_client(plain, "https-keepalive", "127.0.0.1:3128", https_target,
                          "/bench/test-ca.pem", str(per * a.blocks))
        # Keep-alive through interception: the requests after the first reuse both TLS
        # connections, so this is what interception itself adds per request.
        ieid, ica = spec["intercepted"]
        s.run_client(ieid, "https-keepalive", "127.0.0.1:3128", https_target, ica, "50")
        kai = s.run_client(ieid, "https-keepalive", "127.0.0.1:3128", https_target, ica,
                           str(per * a.blocks))

        # ---- 3. HTTPS download throughput: TLS end to end through a tunnel, and through
        # interception (the proxy decrypts and encrypts every byte), interleaved; the same
        # client on the host straight to the upstream is the floor.
        hbytes = a.https_bulk_mib << 20
        dl_modes = {
            "no proxy (host)": (None, lambda: host_client(
                work, "https-bulk", "-", https_target, f"{work}/ca.pem", str(hbytes),
                f"{UP_IP}:{https_port}")),
            "tunnel": (CpuMeter(s.proc.pid), lambda: s.run_client(
                plain, "https-bulk", "127.0.0.1:3128", https_target, "/bench/test-ca.pem",
                str(hbytes))),
            "intercepted": (CpuMeter(s.proc.pid), lambda: s.run_client(
                mitm, "https-bulk", "127.0.0.1:3128", https_target, "/etc/paddock/ca.pem",
                str(hbytes))),
        }
        for _, f in dl_modes.values():
            f()
        dl = {k: [] for k in dl_modes}
        for _ in range(a.runs):
            for k, (meter, f) in dl_modes.items():
                if meter is None:
                    dl[k].append(mbps(f()))
                else:
                    with meter:
                        dl[k].append(mbps(f()))
    finally:
        if s is not None:
            s.stop()
        for p in procs:
            try:
                p.terminate()
                p.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                p.kill()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)

    # ---- report
    med = statistics.median
    print(f"paddock egress-bench {time.strftime('%Y-%m-%d %H:%M')}: {os.cpu_count()} cores, "
          f"load average at the end {os.getloadavg()[0]:.2f}")
    print(f"\nTunnel throughput (CONNECT), {a.bulk_mib} MiB per run, median of {a.runs} "
          f"interleaved rounds (MB/s = 1e6 B/s); the client is the same program everywhere:")
    for k, v in tput.items():
        print(f"  {k:31s} {med(v):7.0f} MB/s   (min {min(v):.0f}, max {max(v):.0f})")
    d = med(tput["direct (host)"])
    pd = med(tput["paddock (client in sandbox)"])
    ph = med(tput["paddock (host client in netns)"])
    tp = med(tput["tinyproxy (host)"])
    print(f"  paddock/direct {pd / d:.2f} (host client {ph / d:.2f})   paddock/tinyproxy "
          f"{pd / tp:.2f} (host client {ph / tp:.2f})   tinyproxy/direct {tp / d:.2f}")
    if "haproxy splice relay (host)" in tput:
        print(f"  haproxy/direct {med(tput['haproxy splice relay (host)']) / d:.2f}   "
              f"paddock/haproxy {pd / med(tput['haproxy splice relay (host)']):.2f} "
              f"(host client {ph / med(tput['haproxy splice relay (host)']):.2f})")
    else:
        print("  haproxy: not installed, no splice-relay peer (apt-get install haproxy)")
    print(f"  proxy CPU: paddock {proxy_cpu['paddock']:.2f} s/GB, "
          f"tinyproxy {proxy_cpu['tinyproxy']:.2f} s/GB")
    print("  where the CPU goes, per GB moved (the machine's shares over the runs):")
    for k, sp in splits.items():
        print(f"    {k:31s} {sp.line()}")
    n = per * a.blocks
    print(f"\nHTTPS from a sandbox, one request per connection (CONNECT + TLS 1.3 + GET + "
          f"response), {n} each in {a.blocks} interleaved blocks:")
    fl = [x * 1e3 for x in floor["lat"]]
    print(f"  {'no proxy (host)':16s} p50 {med(fl):6.3f} ms   p99 {pct(fl, 99):6.3f} ms   "
          f"{len(fl) / floor['total']:6.0f} req/s")
    for k in lat:
        v = lat[k]
        print(f"  {k:16s} p50 {med(v):6.3f} ms   p99 {pct(v, 99):6.3f} ms   "
              f"{len(v) / wall[k]:6.0f} req/s   >15 ms: {sum(x > 15 for x in v):3d}   "
              f"proxy CPU {reqcpu[k].total / len(v) * 1e3:.2f} ms/req   "
              f"X-Bench upstream {marked[k]}/{len(v)}   issuer: {', '.join(sorted(issuers[k]))}")
    added = med(lat["intercepted"]) - med(lat["tunnel"])
    print(f"  interception adds {added:.3f} ms at p50, "
          f"{pct(lat['intercepted'], 99) - pct(lat['tunnel'], 99):.3f} ms at p99")
    kl = [x * 1e3 for x in ka["lat"]]
    kil = [x * 1e3 for x in kai["lat"]]
    print(f"  keep-alive, one plain tunnel:        {len(kl) / ka['total']:6.0f} req/s, "
          f"p50 {med(kl):.3f} ms, p99 {pct(kl, 99):.3f} ms")
    print(f"  keep-alive, one intercepted tunnel:  {len(kil) / kai['total']:6.0f} req/s, "
          f"p50 {med(kil):.3f} ms, p99 {pct(kil, 99):.3f} ms   X-Bench upstream "
          f"{kai['marked']}/{len(kil)}")
    kadded = med(kil) - med(kl)
    print(f"  interception adds {kadded:.3f} ms at p50 per keep-alive request")
    print(f"\nHTTPS download, {a.https_bulk_mib} MiB per GET, median of {a.runs} interleaved "
          f"rounds (the client decrypts in every row):")
    for k, v in dl.items():
        meter = dl_modes[k][0]
        cpu = (f"   proxy CPU {meter.total / (a.runs * hbytes / 1e9):.2f} s/GB"
               if meter is not None else "")
        print(f"  {k:16s} {med(v):7.0f} MB/s   (min {min(v):.0f}, max {max(v):.0f}){cpu}")
    print(f"  intercepted/tunnel {med(dl['intercepted']) / med(dl['tunnel']):.2f}   "
          f"tunnel/no proxy {med(dl['tunnel']) / med(dl['no proxy (host)']):.2f}")
    print(f"\nTargets: tunnel >= 80% of direct: {'met' if pd / d >= 0.8 else 'NOT met'} "
          f"({pd / d:.0%});  interception adds <= 1 ms p50 (keep-alive requests): "
          f"{'met' if kadded <= 1.0 else 'NOT met'} ({kadded:.2f} ms; {added:.2f} ms with a new "
          f"connection per request)")
    if marked["intercepted"] != len(lat["intercepted"]) or marked["tunnel"] != 0:
        print("WARNING: interception did not happen as configured (see the X-Bench counts)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
