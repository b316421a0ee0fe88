"""Helpers for the egress proxy tests (tests/integration/test_egress_*.py).

Everything here stays on this machine: upstream test servers listen on 127.0.0.2/127.0.0.3
(loopback), `paddock serve` is told to resolve the test names to them (--egress-resolve) and to
dial only 127.0.0.2 (--egress-allow-cidr), and traffic is driven from inside a sandbox against
the proxy listener there (127.0.0.1:3128 in the sandbox's network namespace).

- Upstream: a threaded raw TCP server that records every connection's exact bytes (so a test can
  assert what reached an upstream, and that nothing did), answering HTTP requests with a JSON echo
  of what it parsed, or echoing raw bytes (mode="echo"), or speaking TLS with a test CA.
- StaticUpstream: http.server over a directory (a dumb-HTTP git repository, a pip simple index).
- Lab: one `paddock serve` with the egress flags, upstreams, a key, and helpers to create
  environments through the API and run the in-sandbox raw client (RAW_CLIENT).
- IsolatedLab: a `paddock serve` started in a network namespace of its own that has only
  loopback, for the cases whose target would be an address off this machine if the proxy got it
  wrong (169.254.169.254, NAT64/6to4/Teredo forms, ...): there, a wrong "allow" can only fail to
  connect; nothing can leave the machine.
"""

import base64
import functools
import hashlib
import http.server
import io
import json
import os
import re
import signal
import socket
import socketserver
import ssl
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pdk
from pdk import SLOWDOWN
from apiserver import ApiServer, Api, finish

PROXY = ("127.0.0.1", 3128)
UP_IP = "127.0.0.2"        # in --egress-allow-cidr
REFUSED_IP = "127.0.0.3"   # loopback but NOT in --egress-allow-cidr

# Names the main lab resolves (--egress-resolve); every one of them is loopback.
RESOLVE = {
    "allowed.test": UP_IP,
    "other.test": UP_IP,
    "a.allowed.test": UP_IP,
    "a.b.allowed.test": UP_IP,
    "evilallowed.test": UP_IP,
    "xn--xample-9ua.test": UP_IP,
    "private.test": REFUSED_IP,
}

# ------------------------------------------------------------------ upstream servers


class Conn:
    """What one upstream connection received."""

    def __init__(self):
        self.raw = b""
        self.eof = False  # the peer closed its sending side (not a timeout or an error)
        self.closed = threading.Event()

    def head(self):
        return self.raw.split(b"\r\n\r\n", 1)[0]

    def header_lines(self):
        return self.head().split(b"\r\n")[1:]

    def header(self, name):
        name = name.lower().encode()
        return [l.split(b":", 1)[1].strip().decode("latin-1") for l in self.header_lines()
                if l.split(b":", 1)[0].strip().lower() == name]

    def request_line(self):
        return self.head().split(b"\r\n", 1)[0]

    def __repr__(self):
        return f"<Conn {self.raw[:600]!r}{'...' if len(self.raw) > 600 else ''} ({len(self.raw)} B)>"


def parse_head(buf):
    """(request line, [(name, value)], body offset) of a raw HTTP request head, or None."""
    if b"\r\n\r\n" not in buf:
        return None
    head, _ = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    hdrs = []
    for l in lines[1:]:
        n, _, v = l.partition(b":")
        hdrs.append((n.decode("latin-1"), v.strip().decode("latin-1")))
    return lines[0].decode("latin-1"), hdrs, len(head) + 4


def echo_response(conn_raw):
    """The JSON answer of an HTTP upstream: what it parsed of the request."""
    p = parse_head(conn_raw)
    line, hdrs, off = p
    cl = [int(v) for n, v in hdrs if n.lower() == "content-length"]
    body = conn_raw[off:off + (cl[0] if cl else 0)]
    doc = {"line": line, "headers": hdrs, "body_len": len(body),
           "body_sha256": hashlib.sha256(body).hexdigest()}
    b = json.dumps(doc).encode()
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(b)).encode() + b"\r\n\r\n" + b)


class Acceptor:
    """Accepts on a listening socket in a thread of its own and hands each connection to
    take(), until stop(). stop() shuts the listener down first, which wakes the blocked
    accept() (EINVAL), and joins the thread before closing the socket. Closing alone leaves
    the thread in accept() with the socket's fd number, and a later listener that gets the
    number (the next test module's upstream) loses connections to it: the full suite saw a
    plain-HTTP upstream of an earlier module take the proxy's TLS connection to a later
    module's upstream and sit on its ClientHello for 10 s."""

    def __init__(self, sock, take):
        self.sock, self.take = sock, take
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            self.take(s)

    def stop(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join(10 * SLOWDOWN)
        assert not self.thread.is_alive(), f"accept thread of {self.sock} did not stop"
        self.sock.close()


def read_request(s, c):
    """Reads one request from s into c.raw: its head and a Content-Length body. True when a
    whole head arrived (the peer may have closed before its body did)."""
    while True:
        p = parse_head(c.raw)
        if p is not None:
            cl = [int(v) for n, v in p[1] if n.lower() == "content-length" and v.isdigit()]
            if len(c.raw) >= p[2] + (cl[0] if cl else 0):
                return True
        d = s.recv(65536)
        if not d:
            return parse_head(c.raw) is not None
        c.raw += d


def read_head(s, c):
    """Reads into c.raw until a whole request head is in (a body may follow). True when it is."""
    while parse_head(c.raw) is None:
        d = s.recv(65536)
        if not d:
            return False
        c.raw += d
    return True


def record_rest(s, c, linger):
    """Keeps reading s into c.raw until EOF or `linger` seconds of silence, so bytes a proxy
    forwards after the request are recorded too."""
    s.settimeout(linger)
    while True:
        d = s.recv(65536)
        if not d:
            return
        c.raw += d


class Upstream:
    """A threaded raw TCP server on (host, 0) that records every connection.

    mode "http": reads a request head (+ Content-Length body), answers a JSON echo and closes
    its sending side, then keeps reading (so bytes a proxy forwards after the request are still
    recorded) until EOF or `linger` seconds.
    mode "echo": echoes every byte back until EOF.
    tls: an ssl.SSLContext to wrap accepted sockets with (server side).
    """

    def __init__(self, host=UP_IP, mode="http", tls=None, linger=1.5, port=0):
        self.mode, self.tls, self.linger = mode, tls, linger
        self.conns = []
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(512)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.acceptor = Acceptor(self.sock, self._take)

    def _take(self, s):
        c = Conn()
        with self.lock:
            self.conns.append(c)
        threading.Thread(target=self._serve, args=(s, c), daemon=True).start()

    def _serve(self, s, c):
        try:
            s.settimeout(10 * SLOWDOWN)
            if self.tls is not None:
                s = self.tls.wrap_socket(s, server_side=True)
            if self.mode == "echo":
                got = bytearray()  # bytes += bytes would copy it all again per recv
                try:
                    while True:
                        d = s.recv(65536)
                        if not d:
                            c.eof = True
                            break
                        got += d
                        s.sendall(d)
                finally:
                    c.raw = bytes(got)
                return
            if read_request(s, c):
                s.sendall(echo_response(c.raw))
            if self.tls is None:
                s.shutdown(socket.SHUT_WR)
                record_rest(s, c, self.linger)
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            try:
                s.close()
            except OSError:
                pass
            c.closed.set()

    def count(self):
        with self.lock:
            return len(self.conns)

    def snapshot(self):
        with self.lock:
            return list(self.conns)

    def wait_count(self, n, timeout=5):
        return pdk.wait_until(lambda: self.count() >= n, timeout)

    def wait_closed(self, timeout=5):
        for c in self.snapshot():
            c.closed.wait(timeout * SLOWDOWN)

    def reset(self):
        with self.lock:
            self.conns = []

    def close(self):
        self.acceptor.stop()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


class StaticUpstream:
    """http.server serving a directory; records the paths asked for."""

    def __init__(self, root, host=UP_IP):
        paths = self.paths = []

        class H(_Quiet):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def do_GET(self):
                paths.append(self.path)
                super().do_GET()

        self.srv = socketserver.ThreadingTCPServer((host, 0), H)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


# ------------------------------------------------------------------ TLS


def make_ca(d, names=("allowed.test", "other.test")):
    """A test CA and a leaf for `names` (EC P-256), made with the openssl CLI into d.
    Returns (ca_pem_path, server SSLContext)."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)

    def ossl(*args):
        r = subprocess.run(["openssl", *args], cwd=d, capture_output=True, timeout=60)
        assert r.returncode == 0, r

    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=paddock egress test CA")
    ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", f"/CN={names[0]}")
    (d / "ext.cnf").write_text("subjectAltName=" + ",".join(f"DNS:{n}" for n in names) + "\n")
    ossl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "leaf.pem", "-days", "2", "-extfile", "ext.cnf")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "leaf.pem", d / "leaf.key")
    return d / "ca.pem", ctx


# ------------------------------------------------------------------ artefacts for tools


def make_git_repo(root):
    """A bare repository prepared for dumb HTTP under root/repo.git; returns its HEAD sha."""
    root = Path(root)
    work = root / "work"
    g = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]

    def run(*args, cwd=None):
        r = subprocess.run([*g, *args], cwd=cwd, capture_output=True, timeout=60)
        assert r.returncode == 0, r
        return r.stdout.decode()

    work.mkdir(parents=True)
    run("init", "-q", str(work))
    (work / "hello.txt").write_text("hello through the proxy\n")
    run("add", "hello.txt", cwd=work)
    run("commit", "-q", "-m", "first", cwd=work)
    run("clone", "-q", "--bare", str(work), str(root / "srv" / "repo.git"))
    run("--git-dir", str(root / "srv" / "repo.git"), "update-server-info")
    return run("rev-parse", "HEAD", cwd=work).strip()


def make_wheel_index(root, name="egkpkg", version="0.1"):
    """A PEP 503 simple index with one wheel under root/srv; returns (wheel name, sha256)."""
    root = Path(root) / "srv"
    files = root / "files"
    files.mkdir(parents=True)
    whl = f"{name}-{version}-py3-none-any.whl"
    di = f"{name}-{version}.dist-info"
    contents = {
        f"{name}/__init__.py": b"VALUE = 42\n",
        f"{di}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{di}/WHEEL": b"Wheel-Version: 1.0\nGenerator: egresskit\nRoot-Is-Purelib: true\n"
                       b"Tag: py3-none-any\n",
    }
    record = ""
    for p, b in contents.items():
        h = base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b"=").decode()
        record += f"{p},sha256={h},{len(b)}\n"
    record += f"{di}/RECORD,,\n"
    contents[f"{di}/RECORD"] = record.encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p, b in contents.items():
            z.writestr(p, b)
    data = buf.getvalue()
    (files / whl).write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    idx = root / "simple" / name
    idx.mkdir(parents=True)
    (root / "simple" / "index.html").write_text(
        f'<!DOCTYPE html><html><body><a href="{name}/">{name}</a></body></html>\n')
    (idx / "index.html").write_text(
        f'<!DOCTYPE html><html><body><a href="../../files/{whl}#sha256={sha}">{whl}</a>'
        f'</body></html>\n')
    return whl, sha


# ------------------------------------------------------------------ in-sandbox raw client

# Runs inside the sandbox. argv[1]: JSON list of connections, each
# {"parts": [[hex, seconds to sleep after], ...], "timeout": s, "addr": [host, port]}.
# Prints one JSON list: per connection {"resp": hex, "eof": bool, "err": str|null,
# "connect_err": errno|null}.
RAW_CLIENT = r'''
import json, socket, sys, time
out = []
arg = sys.argv[1]
specs = json.load(open(arg[1:])) if arg.startswith("@") else json.loads(arg)
for spec in specs:
    host, port = spec.get("addr", ["127.0.0.1", 3128])
    r = {"resp": "", "eof": False, "err": None, "connect_err": None}
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(spec.get("timeout", 3))
    try:
        s.connect((host, port))
    except OSError as e:
        r["connect_err"] = e.errno
        out.append(r)
        continue
    resp = b""
    try:
        for hx, pause in spec["parts"]:
            s.sendall(bytes.fromhex(hx))
            if pause:
                time.sleep(pause)
        if spec.get("shut"):
            s.shutdown(socket.SHUT_WR)
        while True:
            d = s.recv(65536)
            if not d:
                r["eof"] = True
                break
            resp += d
            stop = spec.get("until")
            if stop and bytes.fromhex(stop) in resp:
                break
    except socket.timeout:
        r["err"] = "timeout"
    except OSError as e:
        r["err"] = "errno %d" % e.errno
        r["eof"] = e.errno in (104, 32)
    r["resp"] = resp.hex()
    s.close()
    out.append(r)
print(json.dumps(out))
'''


class Reply:
    """What the in-sandbox client got back on one connection."""

    def __init__(self, d):
        self.raw = bytes.fromhex(d["resp"])
        self.eof, self.err, self.connect_err = d["eof"], d["err"], d["connect_err"]

    @property
    def status(self):
        m = re.match(rb"HTTP/1\.[01] (\d{3}) ", self.raw)
        return int(m.group(1)) if m else None

    @property
    def head(self):
        return self.raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")

    @property
    def body(self):
        return self.raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in self.raw else b""

    def header(self, name):
        for l in self.head.split("\r\n")[1:]:
            n, _, v = l.partition(":")
            if n.strip().lower() == name.lower():
                return v.strip()
        return None

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return (f"<Reply status={self.status} eof={self.eof} err={self.err} "
                f"connect_err={self.connect_err} raw={self.raw[:800]!r}>")


def conn_spec(data, timeout=3, pauses=None, addr=None, until=None, shut=False):
    if isinstance(data, str):
        data = data.encode("latin-1")
    parts = [[data.hex(), 0]] if not isinstance(data, list) else \
        [[(p.encode("latin-1") if isinstance(p, str) else p).hex(), t] for p, t in data]
    spec = {"parts": parts, "timeout": timeout * SLOWDOWN}
    if addr:
        spec["addr"] = list(addr)
    if until:
        spec["until"] = (until.encode() if isinstance(until, str) else until).hex()
    if shut:
        spec["shut"] = True
    return spec


# ------------------------------------------------------------------ labs


class SandboxEnv(pdk.Env):
    """A pdk.Env made through the API, with the raw client."""

    def __init__(self, pd, info):
        super().__init__(pd, info)
        self._client = False

    def _ensure_client(self):
        if not self._client:
            r = self.write("/workspace/egraw.py", RAW_CLIENT)
            assert r.rc == 0, r
            self._client = True

    def raw_many(self, specs, timeout=60):
        """Runs the raw client over a list of conn_spec()s; returns a list of Reply."""
        self._ensure_client()
        arg = json.dumps(specs)
        if len(arg) > 60000:  # one argv string is at most 128 KiB: big ones go by file
            w = self.write("/workspace/egspec.json", arg)
            assert w.rc == 0, w
            arg = "@/workspace/egspec.json"
        r = self.exec("python3", "/workspace/egraw.py", arg, timeout=timeout)
        assert r.rc == 0, r
        out = json.loads(r.text.strip().splitlines()[-1])
        assert len(out) == len(specs), r
        return [Reply(d) for d in out]

    def raw(self, data, **kw):
        """Sends data on one connection to the proxy; returns the Reply."""
        return self.raw_many([conn_spec(data, **kw)])[0]

    def py(self, code, timeout=60):
        """Runs a python3 snippet in the sandbox; returns the pdk.Result."""
        return self.exec("python3", "-c", code, timeout=timeout)


class DnsServer:
    """A UDP DNS server on 127.0.0.1 for the proxy's own lookups. answers maps a lower-case
    name to a list of addresses, or to a function of the query's number (0, 1, ...) returning
    one; A and AAAA records are drawn from them by family, with TTL 0. Any other name is
    NXDOMAIN. .queries lists (name, type) as asked."""

    def __init__(self, answers):
        self.answers, self.queries, self.lock = answers, [], threading.Lock()
        self.asked = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopping:
            try:
                q, peer = self.sock.recvfrom(4096)
                self.sock.sendto(self._answer(q), peer)
            except (OSError, ValueError, IndexError):
                continue

    def _answer(self, q):
        labels, i = [], 12
        while q[i]:
            labels.append(q[i + 1:i + 1 + q[i]].decode("ascii").lower())
            i += 1 + q[i]
        qtype = int.from_bytes(q[i + 1:i + 3], "big")
        question = q[12:i + 5]
        name = ".".join(labels)
        with self.lock:
            self.queries.append((name, qtype))
        a = self.answers.get(name)
        if a is None:
            return q[:2] + b"\x81\x83" + b"\x00\x01\x00\x00\x00\x00\x00\x00" + question
        if callable(a):
            with self.lock:
                n = self.asked[name, qtype] = self.asked.get((name, qtype), -1) + 1
            a = a(n)
        rrs = b""
        for addr in a:
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            if (qtype == 28) != (fam == socket.AF_INET6) or qtype not in (1, 28):
                continue
            data = socket.inet_pton(fam, addr)
            rrs += (b"\xc0\x0c" + qtype.to_bytes(2, "big") + b"\x00\x01" + b"\x00\x00\x00\x00"
                    + len(data).to_bytes(2, "big") + data)
        count = sum(1 for addr in a if (qtype == 28) == (":" in addr) and qtype in (1, 28))
        return (q[:2] + b"\x81\x80" + b"\x00\x01" + count.to_bytes(2, "big") + b"\x00\x00\x00\x00"
                + question + rrs)

    def names(self):
        with self.lock:
            return [n for n, _ in self.queries]

    def close(self):
        self.stopping = True
        self.sock.close()


class Lab:
    """`paddock serve` with egress flags over a Paddock, plus a key and an API client."""

    def __init__(self, pd, extra_args=(), resolve=None, allow=("127.0.0.2/32",), server_cls=None):
        args = []
        for c in allow:
            args += ["--egress-allow-cidr", c]
        for n, ip in (RESOLVE if resolve is None else resolve).items():
            args += ["--egress-resolve", f"{n}={ip}"]
        args += list(extra_args)
        self.pd = pd
        self.server = (server_cls or ApiServer)(pd, args=args).start()
        try:
            self.api = Api(self.server)
        except BaseException:
            # No Lab to close: stop the server here, or its warm pool outlives the test.
            self.server.stop()
            raise

    @property
    def http(self):
        """An API client with the lab's key, for the server's current port (restarts move it)."""
        return self.api.http

    def env(self, network=None, allowlist=None, ok=True, wait=True, body=None):
        """A new environment through the API: network "disabled", None (open), or an
        allowlist given as a list of domain strings. With wait, returns once the proxy
        listener answers in the sandbox (see test_listener_present_when_create_returns for why
        that is not always so the moment create returns)."""
        body = dict(body or {})
        if allowlist is not None:
            body["network"] = {"allowlist": [{"domain": d} for d in allowlist]}
        elif network is not None:
            body["network"] = network
        if not ok:
            return self.http.create(body, ok=False)
        e = self.http.create(body)
        self.pd.ids.add(e["id"])
        se = SandboxEnv(self.pd, e)
        if wait and body.get("network") != "disabled":
            probe = conn_spec("", timeout=1, shut=True)
            ok = pdk.wait_until(lambda: se.raw_many([probe])[0].connect_err is None, 5, 0.3)
            assert ok, f"no proxy listener in {se.id}"
        return se

    def records(self, env_id):
        """Every egress record of env_id through the API (follows the pages)."""
        out, tok = [], None
        for _ in range(1000):
            r = self.http.get(f"/v1beta/environments/{env_id}/egress"
                              + (f"?page_token={tok}" if tok else ""))
            assert r.status == 200, r
            b = r.json()
            out += b.get("records", [])
            tok = b.get("next_page_token")
            if not tok:
                return out
        raise AssertionError("egress pages never end")

    def wait_records(self, env_id, n, timeout=5):
        """Records are written when a connection ends: waits for at least n."""
        return pdk.wait_until(lambda: len(self.records(env_id)) >= n and self.records(env_id),
                              timeout) or self.records(env_id)

    def cli_records(self, env_id):
        r = self.pd.run("env", "egress", env_id, "--json", timeout=30)
        assert r.rc == 0, r
        return r.json()

    def close(self):
        died = not self.server.alive()
        code = self.server.proc.returncode if died else None
        finish(self.server)
        if died:
            raise AssertionError(f"paddock serve died during the tests (exit {code}):\n"
                                 + "\n".join(self.server.lines[-40:]))


class NetnsServer(ApiServer):
    """`paddock serve` in a fresh network namespace with only loopback up. Its HTTP API is not
    reachable from the tests (another namespace): drive it with the CLI."""

    def argv(self):
        return ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"] + \
            super().argv()

    def wait_ready(self, timeout=30):
        return


class IsolatedLab:
    """A proxy that cannot reach anything but its own loopback, with CLI-made open
    environments (`env create --network open`), which the server attaches within a second."""

    def __init__(self, pd):
        self.pd = pd
        self.server = NetnsServer(pd, args=[]).start()

    def env(self):
        e = self.pd.create("--network", "open")
        se = SandboxEnv(self.pd, e.info)
        # The server attaches to running environments within about a second.
        probe = conn_spec("", timeout=1, shut=True)
        ok = pdk.wait_until(lambda: se.raw_many([probe])[0].connect_err is None, 10, 0.2)
        assert ok, f"the proxy never attached to {se.id}"
        return se

    def records(self, env_id):
        r = self.pd.run("env", "egress", env_id, "--json", timeout=30)
        assert r.rc == 0, r
        return r.json()

    def close(self):
        finish(self.server)


def deny_body_ok(reply, host, port, env_id):
    """The documented 403: body `paddock egress: HOST:PORT denied for environment ID: REASON`,
    X-Paddock-Egress: deny, and the connection closed."""
    assert reply.status == 403, reply
    assert reply.header("x-paddock-egress") == "deny", reply
    body = reply.body.decode("utf-8", "replace")
    prefix = f"paddock egress: {host}:{port} denied for environment {env_id}: "
    assert body.startswith(prefix), f"{body!r} should start with {prefix!r}"
    assert body[len(prefix):].strip(), f"no reason in {body!r}"
    assert reply.eof, f"the proxy did not close after a denial: {reply!r}"
    return body[len(prefix):].strip()


def refused(reply, status, *needles):
    """A refusal of the proxy: `status`, X-Paddock-Egress: deny, connection closed, and a body
    that mentions one of needles (case-insensitive)."""
    assert reply.status == status, reply
    assert reply.header("x-paddock-egress") == "deny", reply
    assert reply.eof, f"the proxy did not close after refusing: {reply!r}"
    if needles:
        low = reply.body.decode("utf-8", "replace").lower()
        assert any(n.lower() in low for n in needles), f"body should name one of {needles}: {reply!r}"
    return reply


def tunnel(host, port, payload=b"ping-through-tunnel", pause=0.3):
    """A CONNECT followed (after a pause) by payload and a half-close."""
    return conn_spec([(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n", pause),
                      (payload, 0)], shut=True)


def get_abs(url, extra="", body=b""):
    """An absolute-form GET request's bytes."""
    return (f"GET {url} HTTP/1.1\r\n{extra}\r\n").encode("latin-1") + body


# ------------------------------------------------------------------ fixtures

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def lab(mpd):
    """One server for the module, with an HTTP upstream (lab.up), an echo upstream (lab.echo)
    on 127.0.0.2, and an HTTP upstream on 127.0.0.3 (lab.up3), which the proxy must refuse."""
    ups = [Upstream(), Upstream(mode="echo"), Upstream(host=REFUSED_IP)]
    lb = Lab(mpd)
    lb.up, lb.echo, lb.up3 = ups
    try:
        yield lb
    finally:
        lb.close()
        for u in ups:
            u.close()


__all__ = ["lab", "Lab", "IsolatedLab", "Acceptor", "Upstream", "StaticUpstream", "SandboxEnv",
           "read_request", "read_head", "record_rest", "DnsServer",
           "Reply", "conn_spec", "tunnel", "get_abs", "refused", "deny_body_ok", "make_ca",
           "make_git_repo", "make_wheel_index", "PROXY", "UP_IP", "REFUSED_IP", "RESOLVE"]
