"""TLS interception and credential injection by the egress proxy, attacked from inside a sandbox
(docs/EGRESS.md "Interception and credentials", docs/API.md "Credentials"; cases 19-25 and
35-41 of /work/shared/security/egress-attacks.md).

Everything stays on this machine: the upstreams are TLS servers on 127.0.0.2 with certificates of
a test CA (`--egress-upstream-ca`), the test names are resolved by `--egress-resolve`, and the
traffic is driven from inside one sandbox by a small python client (TLS_CLIENT) that speaks
CONNECT and then TLS with whatever SNI a case needs. Each upstream records the exact bytes of
every request it decrypted, so "nothing reached the upstream" and "the header arrived once" are
checked on the wire, not inferred.

The server runs with `--log-level debug` for the whole module, so the log scan at the end
(case 40) sees every error path the other tests went through.
"""

import base64
import json
import os
import re
import socket
import ssl
import subprocess
import threading
import time
import http.server
from pathlib import Path

import pytest

import pdk
from pdk import SLOWDOWN
from apiserver import Api, ApiServer, finish
from egresskit import (Acceptor, Conn, SandboxEnv, Upstream, conn_spec, echo_response,
                       make_git_repo, read_head, read_request, record_rest)

UP_IP = "127.0.0.2"
# The proxy's --egress-connect-timeout here: generous for a loopback handshake, short for a test.
CONNECT_TIMEOUT = 3 * SLOWDOWN
SECRET = "tls-bearer-SECRET-9137"          # bearer_token "gh" (allowlist credential)
SECRET_ENV = "tls-envvar-SECRET-2203"      # environment_variable "ek" (api.test only)
SECRET_ENV2 = "tls-envvar2-SECRET-5521"    # environment_variable "ek2" (other.test only)
SECRET_GIT = "tls-git-SECRET-7788"         # bearer_token "gitb" (git.test)
SECRETS = (SECRET, SECRET_ENV, SECRET_ENV2, SECRET_GIT)
N_MANY = 300                               # > the proxy's 256-entry leaf cache
NAMES = ["api.test", "other.test", "api.test.evil.test", "git.test"] + \
    [f"h{i}.many.test" for i in range(N_MANY)]


# ------------------------------------------------------------------ certificates


def ossl(cwd, *args):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, timeout=60)
    assert r.returncode == 0, r
    return r.stdout


def make_ca(d, cn):
    d.mkdir(parents=True, exist_ok=True)
    ossl(d, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", f"/CN={cn}")
    return d


def make_leaf(ca_dir, name, sans):
    """A server certificate signed by the CA in ca_dir for the DNS names sans; returns an
    SSLContext (server side) presenting it."""
    ossl(ca_dir, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={sans[0]}")
    (ca_dir / f"{name}.ext").write_text("subjectAltName=" + ",".join(f"DNS:{s}" for s in sans)
                                        + "\n")
    ossl(ca_dir, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(ca_dir / f"{name}.pem", ca_dir / f"{name}.key")
    return ctx


# ------------------------------------------------------------------ upstreams


class TlsUp:
    """A TLS upstream on 127.0.0.2 that records every connection (egresskit.Conn) and answers a
    request with respond(raw) (default: the JSON echo of egresskit: request line, exact header
    list, body hash). The handshake runs on the connection's own thread, so a failed or stalled
    handshake blocks nothing; .tls_failed counts handshakes that failed."""

    def __init__(self, ctx, respond=None, linger=0.5):
        self.ctx, self.respond, self.linger = ctx, respond or echo_response, linger
        # respond may return a list of bytes to send and seconds to wait in between; early:
        # answer as soon as the head is in, without waiting for a body.
        self.early = False
        self.conns, self.tls_failed = [], 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((UP_IP, 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.acceptor = Acceptor(self.sock, self._start)

    def _start(self, s):
        try:
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()
        except RuntimeError as e:  # say so rather than die and leave a dead listener
            print(f"TlsUp {self.port}: cannot start a thread: {e}", flush=True)
            s.close()

    def _serve(self, s):
        c = Conn()
        with self.lock:
            self.conns.append(c)
        try:
            s.settimeout(10 * SLOWDOWN)
            try:
                s = self.ctx.wrap_socket(s, server_side=True)
            except (ssl.SSLError, OSError):
                with self.lock:
                    self.tls_failed += 1
                return
            if (read_head(s, c) if self.early else read_request(s, c)):
                out = self.respond(c.raw)
                if callable(out):  # writes to the socket itself (a stream)
                    out(s)
                    out = []
                for part in out if isinstance(out, list) else [out]:
                    if isinstance(part, float):
                        time.sleep(part)
                    else:
                        s.sendall(part)
            if self.linger:
                record_rest(s, c, self.linger)
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            try:
                s.close()
            except OSError:
                pass
            c.closed.set()

    def requests(self):
        """The connections that carried (decrypted) request bytes."""
        with self.lock:
            return [c for c in self.conns if c.raw]

    def count(self):
        with self.lock:
            return len(self.conns)

    def all_bytes(self):
        return b"".join(c.raw for c in self.requests())

    def close(self):
        self.acceptor.stop()


def redirect_to(location):
    def respond(raw):
        return (b"HTTP/1.1 302 Found\r\nLocation: " + location.encode() +
                b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    return respond


class GitUp:
    """http.server over a directory (a dumb-HTTP git repository) wrapped in TLS, recording each
    request's path and Authorization. The handshake happens on the handler's thread."""

    def __init__(self, root, ctx):
        seen = self.seen = []

        class H(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def log_message(self, *a):
                pass

            def do_GET(self):
                seen.append((self.path, self.headers.get_all("Authorization") or []))
                super().do_GET()

        self.srv = http.server.ThreadingHTTPServer((UP_IP, 0), H)
        self.srv.daemon_threads = True
        self.srv.socket = ctx.wrap_socket(self.srv.socket, server_side=True,
                                          do_handshake_on_connect=False)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


# ------------------------------------------------------------------ the in-sandbox client

# argv[1]: @file with a JSON list of specs: {"host", "port", "sni" (absent: the host; null: no
# SNI), "cafile", "check_hostname", "req" (hex, sent after the handshake), "plain" (hex, sent
# instead of a handshake), "timeout"}. Prints a JSON list: per connection {"connect": the
# CONNECT answer head, "tls_err", "resp" (hex), "cert" (hex DER of the leaf), "peer" (the
# verified peer certificate's fields)}.
TLS_CLIENT = r'''
import json, socket, ssl, sys, time
specs = json.load(open(sys.argv[1][1:]))
out = []
for sp in specs:
    r = {"connect": None, "tls_err": None, "resp": "", "cert": None, "peer": None}
    out.append(r)
    h, p, to = sp["host"], sp["port"], sp.get("timeout", 20)
    s = socket.create_connection(("127.0.0.1", 3128), timeout=to)
    try:
        s.sendall(("CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (h, p, h, p)).encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = s.recv(4096)
            if not d:
                break
            buf += d
        head, _, rest = buf.partition(b"\r\n\r\n")
        r["connect"] = head.decode("latin-1")
        if not head.startswith(b"HTTP/1.1 200"):
            r["resp"] = rest.hex()
            continue
        if sp.get("plain") is not None:
            s.sendall(bytes.fromhex(sp["plain"]))
            conn = s
        else:
            ctx = ssl.create_default_context(cafile=sp.get("cafile", "/etc/paddock/ca.pem"))
            ctx.check_hostname = sp.get("check_hostname", True)
            if sp.get("alpn"):
                ctx.set_alpn_protocols(sp["alpn"])
            sni = sp.get("sni", h)
            try:
                conn = ctx.wrap_socket(s, server_hostname=sni)
            except (ssl.SSLError, OSError) as e:
                r["tls_err"] = "%s: %s" % (type(e).__name__, e)
                continue
            r["cert"] = conn.getpeercert(True).hex()
            r["peer"] = conn.getpeercert()
            r["alpn"] = conn.selected_alpn_protocol()
            conn.sendall(bytes.fromhex(sp["req"]))
            if sp.get("later") is not None:
                time.sleep(sp.get("later_s", 1))
                conn.sendall(bytes.fromhex(sp["later"]))
        resp = b""
        try:
            while True:
                d = conn.recv(65536)
                if not d:
                    break
                resp += d
        except (socket.timeout, ssl.SSLError, OSError) as e:
            r["read_err"] = str(e)
        r["resp"] = resp.hex()
    except (socket.timeout, OSError) as e:
        r["err"] = str(e)
    finally:
        s.close()
print(json.dumps(out))
'''


class Got:
    """One connection of the in-sandbox client."""

    def __init__(self, d):
        self.d = d
        self.connect, self.tls_err, self.peer = d["connect"], d["tls_err"], d["peer"]
        self.raw = bytes.fromhex(d["resp"])
        self.cert = bytes.fromhex(d["cert"]) if d["cert"] else None

    @property
    def status(self):
        m = re.match(rb"HTTP/1\.[01] (\d{3}) ", self.raw)
        return int(m.group(1)) if m else None

    @property
    def head(self):
        return self.raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")

    def header(self, name):
        for l in self.head.split("\r\n")[1:]:
            n, _, v = l.partition(":")
            if n.strip().lower() == name.lower():
                return v.strip()
        return None

    @property
    def body(self):
        return self.raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in self.raw else b""

    def json(self):
        return json.loads(self.body)

    def headers(self):
        """The upstream's echo: the exact header list it received, as (name, value) pairs."""
        return [tuple(x) for x in self.json()["headers"]]

    def __repr__(self):
        return (f"<Got connect={self.connect!r} tls_err={self.tls_err!r} status={self.status} "
                f"raw={self.raw[:700]!r} read_err={self.d.get('read_err')!r} "
                f"err={self.d.get('err')!r}>")


def req(host, port, path="/", headers=(), method="GET", body=b""):
    """An origin-form request head (Host first, then headers in order) as hex."""
    lines = [f"{method} {path} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}" + (f":{port}" if port else ""))
    lines += [f"{n}: {v}" for n, v in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def spec(host, port, request=None, **kw):
    s = {"host": host, "port": port, "timeout": 10 * SLOWDOWN, **kw}
    if request is not None:
        s["req"] = request.hex()
    if "plain" in kw and isinstance(kw["plain"], bytes):
        s["plain"] = kw["plain"].hex()
    if isinstance(kw.get("later"), bytes):
        s["later"] = kw["later"].hex()
    return s


class TlsEnv(SandboxEnv):
    def tls_many(self, specs, timeout=120):
        if not getattr(self, "_tls_client", False):
            r = self.write("/workspace/tlscli.py", TLS_CLIENT)
            assert r.rc == 0, r
            self._tls_client = True
        w = self.write("/workspace/tlsspec.json", json.dumps(specs))
        assert w.rc == 0, w
        r = self.exec("python3", "/workspace/tlscli.py", "@/workspace/tlsspec.json",
                      timeout=timeout)
        assert r.rc == 0, r
        out = json.loads(r.text.strip().splitlines()[-1])
        assert len(out) == len(specs), r
        return [Got(d) for d in out]

    def tls(self, host, port, request=None, **kw):
        return self.tls_many([spec(host, port, request, **kw)])[0]


class StalledUp:
    """An upstream on 127.0.0.2 that never answers. accept=True: it takes the TCP connection
    and never sends a byte (a TLS handshake stalls). accept=False: its accept queue is kept
    full (listen backlog 0, two connections queued and never accepted), so a SYN gets no
    answer and a TCP connect stalls."""

    def __init__(self, accept):
        self.held, self.acceptor = [], None
        self.sock = socket.socket()
        self.sock.bind((UP_IP, 0))
        self.port = self.sock.getsockname()[1]
        if accept:
            self.sock.listen(64)
            self.acceptor = Acceptor(self.sock, self.held.append)  # held, never read or written
            return
        self.sock.listen(0)
        for _ in range(2):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((UP_IP, self.port))
            self.held.append(s)

    def close(self):
        if self.acceptor is not None:
            self.acceptor.stop()
        self.sock.close()
        for s in self.held:
            s.close()


# ------------------------------------------------------------------ the lab


class TlsLab:
    pass


@pytest.fixture(scope="module")
def tl(mpd, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("egress-tls")
    ca = make_ca(tmp / "ca", "paddock tls test CA")
    rogue = make_ca(tmp / "rogue", "rogue CA the proxy does not trust")
    good = make_leaf(ca, "good", ["api.test", "other.test", "api.test.evil.test", "git.test",
                                  "*.many.test"])
    t = TlsLab()
    t.good = good
    t.ca_pem = ca / "ca.pem"
    t.api, t.other, t.evil = (TlsUp(good) for _ in range(3))
    t.many = TlsUp(good, linger=0)
    t.rogue = TlsUp(make_leaf(rogue, "rogue", ["api.test"]))          # untrusted CA
    t.wrong = TlsUp(make_leaf(ca, "wrong", ["someone-else.test"]))    # trusted CA, wrong name
    t.redir = TlsUp(good)
    t.hostile = TlsUp(good)   # each test of a misbehaving upstream sets .respond and .early
    t.plain = Upstream()                                              # plain HTTP
    t.mute = StalledUp(accept=True)                                   # never handshakes
    t.full = StalledUp(accept=False)                                  # never accepts
    t.git_head = make_git_repo(tmp / "git")
    t.git = GitUp(tmp / "git" / "srv", good)
    t.redir.respond = redirect_to(f"https://other.test:{t.other.port}/landing")
    ups = [t.api, t.other, t.evil, t.many, t.rogue, t.wrong, t.redir, t.plain, t.mute, t.full,
           t.hostile]
    args = ["--log-level", "debug", "--egress-allow-cidr", f"{UP_IP}/32",
            "--egress-upstream-ca", str(t.ca_pem),
            "--egress-connect-timeout", f"{CONNECT_TIMEOUT}s"]
    for n in NAMES:
        args += ["--egress-resolve", f"{n}={UP_IP}"]
    t.server = ApiServer(mpd, args=args).start()
    try:
        t.pd = mpd
        # Environments that bind credentials to destinations: a key that may write both.
        t.a = Api(t.server, scopes=("environments", "credentials.write"))
        t.creds = t.server.http(t.server.make_key("creds", scopes=("credentials",)))
        for body in (
                {"type": "bearer_token", "id": "gh", "token": SECRET},
                {"type": "bearer_token", "id": "gitb", "token": SECRET_GIT},
                {"type": "environment_variable", "id": "ek", "value": SECRET_ENV,
                 "injection_location": "header", "trusted_domains": [f"api.test:{t.api.port}"]},
                {"type": "environment_variable", "id": "ek2", "value": SECRET_ENV2,
                 "injection_location": "header",
                 "trusted_domains": [f"other.test:{t.other.port}"]}):
            r = t.creds.post("/v1beta/credentials", json_body=body)
            assert r.status == 200, r
        t.allow = [
            {"domain": f"api.test:{t.api.port}", "credential": "gh"},
            {"domain": f"other.test:{t.other.port}", "transform": {"X-Other-Rule": "1"}},
            {"domain": f"other.test:{t.api.port}"},                  # a plain tunnel
            {"domain": f"api.test:{t.other.port}", "transform": {"X-Port-Rule": "1"}},
            {"domain": f"*.evil.test:{t.evil.port}", "transform": {"X-Evil-Rule": "1"}},
            {"domain": f"api.test:{t.plain.port}", "credential": "gh"},   # plain HTTP
            {"domain": f"api.test:{t.rogue.port}", "credential": "gh"},
            {"domain": f"api.test:{t.wrong.port}", "credential": "gh"},
            {"domain": f"api.test:{t.redir.port}", "credential": "gh"},
            {"domain": f"*.many.test:{t.many.port}", "transform": {"X-Many": "1"}},
            {"domain": f"git.test:{t.git.port}", "credential": "gitb"},
            {"domain": f"api.test:{t.mute.port}", "credential": "gh"},
            {"domain": f"api.test:{t.full.port}", "credential": "gh"},
            {"domain": f"other.test:{t.full.port}"},                 # a plain tunnel
            {"domain": f"api.test:{t.hostile.port}", "credential": "gh"},
        ]
        t.e = make_env(t, {"env": {"API_KEY": {"credential": "ek"},
                                   "OTHER_KEY": {"credential": "ek2"}},
                           "network": {"allowlist": t.allow}})
        r = t.e.write("/workspace/test-ca.pem", t.ca_pem.read_bytes())
        assert r.rc == 0, r
        t.ph = t.e.sh_ok("printf %s \"$API_KEY\"").text
        t.ph2 = t.e.sh_ok("printf %s \"$OTHER_KEY\"").text
        assert t.ph.startswith("paddock-credential-") and t.ph2.startswith("paddock-credential-")
        assert t.ph != t.ph2
        yield t
    finally:
        died = not t.server.alive()
        finish(t.server)
        for u in ups:
            u.close()
        t.git.close()
        if died:
            raise AssertionError("paddock serve died during the tests:\n"
                                 + "\n".join(t.server.lines[-40:]))


def make_env(t, body):
    e = t.a.http.create(body)
    t.pd.ids.add(e["id"])
    se = TlsEnv(t.pd, e)
    probe = conn_spec("", timeout=1, shut=True)
    assert pdk.wait_until(lambda: se.raw_many([probe])[0].connect_err is None, 5, 0.3), \
        f"no proxy listener in {se.id}"
    return se


def records(t, env_id):
    out, tok = [], None
    for _ in range(1000):
        r = t.a.http.get(f"/v1beta/environments/{env_id}/egress?page_size=1000"
                         + (f"&page_token={tok}" if tok else ""))
        assert r.status == 200, r
        b = r.json()
        out += b.get("records", [])
        tok = b.get("next_page_token")
        if not tok:
            return out
    raise AssertionError("egress pages never end")


def new_records(t, env_id, before, pred, timeout=5):
    """Waits (records are written when a connection ends) for a record after the first
    `before` that satisfies pred; returns the new records."""
    recs = pdk.wait_until(lambda: (lambda rs: rs if any(pred(x) for x in rs) else None)(
        records(t, env_id)[before:]), timeout)
    return recs or records(t, env_id)[before:]


def no_secret(data, *extra):
    if isinstance(data, str):
        data = data.encode("latin-1", "replace")
    for s in SECRETS + extra:
        assert s.encode() not in data, f"secret {s!r} found in {data[:600]!r}"


def settle():
    time.sleep(0.3 * SLOWDOWN)


# ------------------------------------------------------------------ 19, 22: SNI


def test_injection_works_and_leaf_is_per_host(tl):
    """Positive control for everything below: a verified handshake with the paddock CA, a leaf
    for exactly the host (one day), and the bearer token in the request the upstream gets."""
    n = len(tl.api.requests())
    g = tl.e.tls("api.test", tl.api.port, req("api.test", tl.api.port,
                                               headers=[("X-Key", tl.ph)]))
    assert g.status == 200, g
    hdrs = g.headers()
    assert ("Authorization", f"Bearer {SECRET}") in hdrs, hdrs
    assert ("X-Key", SECRET_ENV) in hdrs, hdrs
    assert len(tl.api.requests()) == n + 1
    assert g.peer["subjectAltName"] == [["DNS", "api.test"]], g.peer
    issuer = dict(x[0] for x in g.peer["issuer"])
    assert "paddock egress CA" in issuer.get("commonName", ""), g.peer
    life = ssl.cert_time_to_seconds(g.peer["notAfter"]) - \
        ssl.cert_time_to_seconds(g.peer["notBefore"])
    assert life <= 26 * 3600, g.peer


@pytest.mark.parametrize("sni", ["evil.test", "other.test", "api.test.evil.test", "api.test2",
                                 None, "evil\x1b[2J.test"],
                         ids=["evil", "other-allowed", "suffix", "prefix", "no-sni", "escape"])
def test_sni_must_name_the_connect_destination(tl, sni):
    """Cases 19/22: CONNECT api.test (intercepted) with a ClientHello naming something else, or
    nothing: the handshake is refused, the upstream is never dialled, the record says why."""
    before = len(records(tl, tl.e.id))
    n = tl.api.count()
    g = tl.e.tls("api.test", tl.api.port,
                 req("api.test", tl.api.port, headers=[("X-Key", tl.ph)]),
                 sni=sni, check_hostname=False)
    assert g.connect.startswith("HTTP/1.1 200"), g
    assert g.tls_err is not None and g.status is None, g
    settle()
    assert tl.api.count() == n, "the proxy dialled the upstream after a refused handshake"
    want = "no SNI" if sni is None else "SNI"
    recs = new_records(tl, tl.e.id, before, lambda x: x["decision"] == "deny")
    hit = [x for x in recs if x["decision"] == "deny" and x["host"] == "api.test"]
    assert hit and want in hit[-1]["reason"], recs
    if sni is not None and sni.isprintable():
        assert sni in hit[-1]["reason"], hit
    elif sni is not None:
        # The client's bytes are quoted escaped: a record is safe to print and to send as JSON.
        assert "\x1b" not in hit[-1]["reason"] and "evil\\x1b[2J.test" in hit[-1]["reason"], hit
        r = tl.pd.run("env", "egress", tl.e.id, timeout=30)
        assert r.rc == 0 and "\x1b" not in r.text, r


def test_sni_case_and_trailing_dot_are_the_same_name(tl):
    """The SNI is compared canonically: API.Test is api.test (not a refusal)."""
    g = tl.e.tls("api.test", tl.api.port, req("api.test", tl.api.port), sni="API.Test",
                 check_hostname=False)
    assert g.status == 200, g
    assert ("Authorization", f"Bearer {SECRET}") in g.headers()


def test_ca_key_stays_with_the_proxy(tl):
    """The sandbox gets the CA certificate (and a bundle), never a private key."""
    key = tl.pd.data / "ca" / "ca.key"
    assert key.stat().st_mode & 0o777 == 0o600
    r = tl.e.sh_ok("ls /etc/paddock; cat /etc/paddock/* | grep -c 'PRIVATE KEY' || true")
    assert "ca.pem" in r.text.split() and r.text.split()[-1] == "0", r
    ca = tl.e.read("/etc/paddock/ca.pem")
    assert ca.rc == 0 and ca.out == (tl.pd.data / "ca" / "ca.pem").read_bytes(), ca


# ------------------------------------------------------------------ 20, 21: inner Host


@pytest.mark.parametrize("host", [
    "other.test:{api}",          # an allowed name on the same address and port (fronting)
    "other.test:{other}",        # an allowed, intercepted destination of its own
    "api.test:{other}",          # right name, another port
    "api.test.evil.test:{api}",  # allowed by *.evil.test (on its port)
    "evil.test",
], ids=["front-same-port", "other-allowed", "other-port", "suffix", "unlisted"])
def test_inner_host_must_name_the_tunnel_destination(tl, host):
    """Cases 20/21: SNI api.test, Host naming anything else: 421, nothing injected, nothing
    reaches any upstream, the tunnel is closed."""
    host = host.format(api=tl.api.port, other=tl.other.port)
    ups = (tl.api, tl.other, tl.evil)
    counts = [u.count() for u in ups]
    before = len(records(tl, tl.e.id))
    g = tl.e.tls("api.test", tl.api.port,
                 req(host, None, headers=[("Authorization", "Bearer mine"), ("X-Key", tl.ph)]))
    assert g.status == 421, g
    assert g.header("x-paddock-egress") == "deny", g
    no_secret(g.raw)
    settle()
    assert [u.count() for u in ups] == counts, "an upstream was dialled"
    recs = new_records(tl, tl.e.id, before, lambda x: x["decision"] == "deny")
    assert any(x["decision"] == "deny" and "Host" in x["reason"] for x in recs), recs


@pytest.mark.parametrize("request_bytes,status", [
    (b"GET / HTTP/1.1\r\nHost: api.test:{api}\r\nHost: other.test:{api}\r\n\r\n", 421),
    (b"GET / HTTP/1.1\r\nX-Key: {ph}\r\n\r\n", 400),
    (b"GET https://other.test:{api}/ HTTP/1.1\r\nHost: api.test:{api}\r\n\r\n", 400),
    (b"CONNECT other.test:{api} HTTP/1.1\r\nHost: api.test:{api}\r\n\r\n", 400),
    (b"CONNECT /x HTTP/1.1\r\nHost: api.test:{api}\r\n\r\n", 400),
], ids=["two-hosts", "no-host", "absolute-form", "nested-connect", "nested-connect-path"])
def test_inner_request_shapes_that_could_name_another_host(tl, request_bytes, status):
    n = tl.api.count()
    data = request_bytes.replace(b"{api}", str(tl.api.port).encode()) \
        .replace(b"{ph}", tl.ph.encode())
    g = tl.e.tls("api.test", tl.api.port, data)
    assert g.status == status, g
    no_secret(g.raw)
    settle()
    assert tl.api.count() == n


def test_h2_cannot_carry_another_authority(tl):
    """A client offering only h2 (where :authority, not Host, names the site) gets no h2 from
    the proxy, and an h2 preface inside the tunnel is refused, never forwarded."""
    n = tl.api.count()
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    g = tl.e.tls("api.test", tl.api.port, preface, alpn=["h2"])
    assert g.d.get("alpn") != "h2", g.d
    assert g.status == 400, g
    settle()
    assert tl.api.count() == n


class KeepAliveUp:
    """A TLS upstream on 127.0.0.2 that answers any number of GETs on one connection, each
    with its path as the body; .seen lists (connection number, request head) in order."""

    def __init__(self, ctx):
        self.ctx, self.seen, self.n = ctx, [], 0
        self.sock = socket.socket()
        self.sock.bind((UP_IP, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.acceptor = Acceptor(self.sock, lambda s: threading.Thread(
            target=self._serve, args=(s,), daemon=True).start())

    def _serve(self, s):
        self.n += 1
        k, buf = self.n, b""
        try:
            s.settimeout(10 * SLOWDOWN)
            s = self.ctx.wrap_socket(s, server_side=True)
            while True:
                while b"\r\n\r\n" not in buf:
                    d = s.recv(65536)
                    if not d:
                        return
                    buf += d
                head, _, buf = buf.partition(b"\r\n\r\n")
                self.seen.append((k, head))
                path = head.split(b" ")[1]
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path))
        except (OSError, ssl.SSLError):
            pass
        finally:
            s.close()

    def close(self):
        self.acceptor.stop()


def test_pipelined_requests_in_an_intercepted_tunnel_are_each_answered(tl):
    """Three GETs sent in one write, before any answer: each is decided and injected on its
    own, reaches the upstream in order over the one kept-alive connection, and gets its own
    answer. The bytes behind the first request used to be thrown away, so the second and
    third were never answered and the client waited for the header timeout."""
    up = KeepAliveUp(tl.good)
    try:
        e = make_env(tl, {"network": {"allowlist": [
            {"domain": f"api.test:{up.port}", "credential": "gh"}]}})
        reqs = (req("api.test", up.port, path="/one") + req("api.test", up.port, path="/two") +
                req("api.test", up.port, path="/three", headers=[("Connection", "close")]))
        g = e.tls("api.test", up.port, reqs)
        bodies = re.findall(rb"HTTP/1\.1 200 OK\r\n(?:[^\r]+\r\n)*\r\n(/[a-z]+)", g.raw)
        assert bodies == [b"/one", b"/two", b"/three"], g
        assert [h.split(b" ")[1] for _, h in up.seen] == [b"/one", b"/two", b"/three"], up.seen
        assert len({k for k, _ in up.seen}) == 1, up.seen
        for _, h in up.seen:
            assert h.count(f"Authorization: Bearer {SECRET}".encode()) == 1, h
    finally:
        up.close()


def test_injected_secrets_leave_no_copies_behind(tl):
    """Every intercepted request carries a credential (a rule's bearer token, and a placeholder
    replaced in a header); once its connection is gone, the server holds no more copies of
    either than before: the lines that carried them are wiped when libevent lets them go. They
    were written into ordinary buffer memory and freed unwiped, one more copy per request (a
    core dump, or any later read of freed memory, would find them)."""
    tok, val = "wipe-bearer-SECRET-6161", "wipe-envvar-SECRET-7272"
    up = KeepAliveUp(tl.good)
    try:
        for body in ({"type": "bearer_token", "id": "wipeb", "token": tok},
                     {"type": "environment_variable", "id": "wipev", "value": val,
                      "injection_location": "header",
                      "trusted_domains": [f"api.test:{up.port}"]}):
            r = tl.creds.post("/v1beta/credentials", json_body=body)
            assert r.status == 200, r
        e = make_env(tl, {"env": {"WK": {"credential": "wipev"}}, "network": {"allowlist": [
            {"domain": f"api.test:{up.port}", "credential": "wipeb"}]}})
        ph = e.sh_ok("printf %s \"$WK\"").text
        one = spec("api.test", up.port, req("api.test", up.port, headers=[
            ("X-K", ph), ("Connection", "close")]))
        assert e.tls_many([one])[0].status == 200
        settle()
        pid = tl.server.proc.pid
        before = {s: pdk.memory_count(pid, s.encode()) for s in (tok, val)}
        got = e.tls_many([one] * 40)
        assert [g.status for g in got] == [200] * 40, got[:2]
        seen = [h for _, h in up.seen]
        assert len(seen) == 41 and all(tok.encode() in h and val.encode() in h for h in seen)
        settle()
        after = {s: pdk.memory_count(pid, s.encode()) for s in (tok, val)}
        for s in (tok, val):
            assert after[s] <= before[s], (s, before, after)
    finally:
        up.close()


def test_second_request_in_an_intercepted_tunnel_is_not_forwarded(tl):
    """A valid request with a second one (Host other.test) pipelined behind it in the same TLS
    stream: the upstream gets exactly the first; the second is never injected or forwarded."""
    n = len(tl.api.requests())
    first = req("api.test", tl.api.port, path="/first")
    second = req("other.test", tl.api.port, path="/second", headers=[("X-Key", tl.ph)])
    g = tl.e.tls("api.test", tl.api.port, first + second)
    assert g.status == 200, g
    settle()
    new = tl.api.requests()[n:]
    assert len(new) == 1, new
    assert b"/second" not in new[0].raw and new[0].raw.count(b"HTTP/1.1\r\n") == 1, new[0]
    assert b"/second" not in g.raw


# ------------------------------------------------- a misbehaving upstream inside interception

OK_RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
FORGED = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nforged"


def hostile(tl, respond, early=False, linger=0.5):
    tl.hostile.respond, tl.hostile.early = (lambda raw: respond), early
    tl.hostile.linger = linger
    return len(tl.hostile.requests())


@pytest.mark.parametrize("size", ["+5", "0x5", " 5", "-1", "5x", "ffffffffffffffffff",
                                  "10000000000000005"])
def test_malformed_chunk_size_ends_the_response(tl, size):
    """A chunk size two parsers could read differently (a sign, 0x, a leading space, junk, or
    one that overflows) is never passed on: the proxy closes there, and says why."""
    hostile(tl, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" +
            size.encode() + b"\r\nhello\r\n0\r\n\r\n")
    before = len(records(tl, tl.e.id))
    g = tl.e.tls("api.test", tl.hostile.port, req("api.test", tl.hostile.port))
    assert g.status == 200, g
    assert b"hello" not in g.raw and size.encode() not in g.body, g
    recs = new_records(tl, tl.e.id, before, lambda x: "malformed chunk size" in x["reason"])
    assert any("malformed chunk size" in x["reason"] for x in recs), recs


def test_chunk_data_must_end_where_its_size_says(tl):
    hostile(tl, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n")
    before = len(records(tl, tl.e.id))
    g = tl.e.tls("api.test", tl.hostile.port, req("api.test", tl.hostile.port))
    assert g.status == 200 and g.body == b"3\r\nhel", g
    recs = new_records(tl, tl.e.id, before, lambda x: "did not end where" in x["reason"])
    assert any("did not end where" in x["reason"] for x in recs), recs


@pytest.mark.parametrize("te", ["chunked", "chunked,", " , chunked ,, "])
def test_chunked_response_keeps_the_tunnel(tl, te):
    """A chunked response is the ordinary case: the tunnel stays open for the next request, and
    the client is not told otherwise. Empty list members are ignored (RFC 9110 §5.6.1)."""
    hostile(tl, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + te.encode() +
            b"\r\n\r\n2\r\nok\r\n0\r\n\r\n", linger=0)
    g = tl.e.tls("api.test", tl.hostile.port, req("api.test", tl.hostile.port),
                 timeout=2 * SLOWDOWN)
    assert g.status == 200 and g.body == b"2\r\nok\r\n0\r\n\r\n", g
    assert g.header("Connection") is None, g
    assert "timed out" in (g.d.get("read_err") or ""), g   # still open when the client gave up


@pytest.mark.parametrize("size", ["5", "5;ext=1", "5 ;ext", "0005", "5\t"])
def test_chunk_sizes_that_are_fine(tl, size):
    hostile(tl, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            + size.encode() + b"\r\nhello\r\n0\r\n\r\n")
    g = tl.e.tls("api.test", tl.hostile.port, req("api.test", tl.hostile.port))
    assert g.status == 200 and g.body.endswith(b"hello\r\n0\r\n\r\n"), g


def test_long_content_length_is_read_whole(tl):
    """A Content-Length longer than any buffer (130 leading zeros) is still 5."""
    hostile(tl, b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: " + b"0" * 130 +
            b"5\r\n\r\nhello")
    g = tl.e.tls("api.test", tl.hostile.port, req("api.test", tl.hostile.port))
    assert g.status == 200 and g.body == b"hello", g


@pytest.mark.parametrize("te", ["chunked, gzip", "xchunked", "gzip"])
def test_transfer_coding_not_ending_in_chunked_runs_to_the_close(tl, te):
    """Only a final "chunked" frames a body; anything else is read until the upstream closes,
    and nothing after it is taken for the next response."""
    hostile(tl, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + te.encode() +
            b"\r\n\r\n0\r\n\r\n" + FORGED)
    g = tl.e.tls("api.test", tl.hostile.port, req("api.test", tl.hostile.port))
    assert g.status == 200 and g.body == b"0\r\n\r\n" + FORGED, g


@pytest.mark.parametrize("respond,linger,later_s", [
    (OK_RESP + FORGED, 0.5, 0.3),            # behind the answer, in the same write
    ([OK_RESP, 0.3, FORGED], 2.5 + SLOWDOWN, 1.0 * SLOWDOWN),  # later, between requests
], ids=["behind", "between"])
def test_bytes_past_a_response_are_no_answer(tl, respond, linger, later_s):
    """An upstream that sends a second response behind the first, or later while the tunnel
    waits for the client's next request: that request is answered by a new connection, never
    by bytes sent before it was asked, and such bytes are not buffered (without bound) for it.
    (This request follows the first answer; one pipelined behind it is decided only once
    that answer is out, test_pipelined_requests_in_an_intercepted_tunnel_are_each_answered.)"""
    n = hostile(tl, respond, linger=linger)
    g = tl.e.tls("api.test", tl.hostile.port, req("api.test", tl.hostile.port, path="/one"),
                 later=req("api.test", tl.hostile.port, path="/two",
                           headers=[("Connection", "close")]), later_s=later_s)
    assert g.raw.count(b"\r\n\r\nok") == 2 and b"forged" not in g.raw, g
    settle()
    assert [r.raw.split(b" ")[1] for r in tl.hostile.requests()[n:]] == [b"/one", b"/two"]


# Inside a sandbox: an intercepted GET of an endless download, whose head is read and then
# nothing for argv[3] seconds; then argv[4] bytes more are read, to show the download resumes.
STALL_READER = r'''
import json, socket, ssl, sys, time
host, port, stall, more = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
s = socket.create_connection(("127.0.0.1", 3128), timeout=30)
s.sendall(("CONNECT %s:%d HTTP/1.1\r\n\r\n" % (host, port)).encode())
d = b""
while b"\r\n\r\n" not in d:
    d += s.recv(1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
c = ssl.create_default_context(cafile="/etc/paddock/ca.pem").wrap_socket(s, server_hostname=host)
c.sendall(("GET /endless HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (host, port)).encode())
got = b""
while b"\r\n\r\n" not in got:
    got += c.recv(65536)
status = got.split(b" ")[1].decode()
print("stalled", flush=True)
time.sleep(stall)
n = 0
while n < more:
    x = c.recv(1 << 20)
    if not x:
        break
    n += len(x)
print(json.dumps({"status": status, "more": n}))
'''


def test_client_that_stops_reading_an_intercepted_download_holds_it_back(tl):
    """An endless intercepted download whose client stops reading: the proxy stops reading the
    upstream once about a megabyte waits for the client, so the upstream's TCP window pushes
    back; the server's memory stays flat; and once the client reads again, the download goes
    on. The client side's TLS filter used to pass every encrypted byte straight on to its
    socket's buffer, unbounded, so the check on the filter's own output never fired: the
    daemon took in the upstream at full speed (gigabytes in seconds) while the client slept."""
    sent = [0]
    chunk = b"x" * (256 << 10)

    def stream(s):
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\n\r\n")
        end = time.monotonic() + 60 * SLOWDOWN
        while time.monotonic() < end and sent[0] < (4 << 30):
            s.sendall(chunk)
            sent[0] += len(chunk)

    hostile(tl, stream)
    pid = tl.server.proc.pid

    def rss():
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
    r0 = rss()
    stall = 6 * SLOWDOWN
    done = {}
    t = threading.Thread(target=lambda: done.update(r=tl.e.exec(
        "python3", "-c", STALL_READER, "api.test", str(tl.hostile.port), str(stall),
        str(64 << 20), timeout=stall + 60 * SLOWDOWN)))
    t.start()
    try:
        assert pdk.wait_until(lambda: sent[0] > 0, 15), "the upstream was never asked"
        time.sleep(stall / 2)
        held, grown = sent[0], rss() - r0
        time.sleep(stall / 4)
        assert sent[0] - held < (4 << 20), \
            f"the upstream kept sending while the client read nothing: {held} then {sent[0]}"
        assert held < (64 << 20), f"{held} bytes taken in while the client read nothing"
        assert grown < (48 << 20), f"the server grew by {grown} bytes"
    finally:
        t.join()
    r = done["r"]
    assert r.rc == 0, r
    got = json.loads(r.text.strip().splitlines()[-1])
    assert got == {"status": "200", "more": 64 << 20}, got


def test_early_response_ends_the_tunnel(tl):
    """An upstream that answers before a request's body is all in (an early 413): what the
    client sends next is the rest of that body, never a new request to inject a credential
    into. The tunnel ends with the response."""
    n = hostile(tl, b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n", early=True)
    post = (f"POST /big HTTP/1.1\r\nHost: api.test:{tl.hostile.port}\r\n"
            f"Content-Length: 100000\r\n\r\n").encode() + b"x" * 10
    g = tl.e.tls("api.test", tl.hostile.port, post,
                 later=req("api.test", tl.hostile.port, path="/smuggled"), later_s=1.0 * SLOWDOWN)
    assert g.status == 413 and b"HTTP/1.1" not in g.body, g
    assert g.header("Connection") == "close", g   # the client is told, not left to race it
    settle()
    got = b"".join(r.raw for r in tl.hostile.requests()[n:])
    assert b"/smuggled" not in got and got.count(SECRET.encode()) == 1, got[:400]


def test_rotated_credential_is_not_injected_on_a_kept_alive_tunnel(tl):
    """An intercepted tunnel kept alive across a credential change: the proxy closes it between
    requests once the environment's policy changes, so the old token never goes out again; a
    new connection gets the new one."""
    old, new = "rot-OLD-4242", "rot-NEW-4343"
    r = tl.creds.post("/v1beta/credentials", json_body={"type": "bearer_token", "id": "rot",
                                                        "token": old})
    assert r.status == 200, r
    e = make_env(tl, {"network": {"allowlist": [
        {"domain": f"api.test:{tl.hostile.port}", "credential": "rot"}]}})
    n = hostile(tl, OK_RESP, linger=10.0)

    def rotate():
        # Once /one has reached the upstream with the old token (the tunnel is then kept alive
        # waiting for /two, sent 4 s after /one).
        assert pdk.wait_until(lambda: len(tl.hostile.requests()) > n, 10), "no /one"
        r = tl.creds.request("PATCH", "/v1beta/credentials/rot?update_mask=token",
                             json_body={"type": "bearer_token", "token": new})
        assert r.status == 200, r
    t = threading.Thread(target=rotate)
    t.start()
    try:
        g = e.tls("api.test", tl.hostile.port, req("api.test", tl.hostile.port, path="/one"),
                  later=req("api.test", tl.hostile.port, path="/two"),
                  later_s=4.0 * SLOWDOWN, timeout=15 * SLOWDOWN)
    finally:
        t.join()
    assert g.raw.count(b"\r\n\r\nok") == 1, g
    settle()
    got = tl.hostile.requests()[n:]
    assert len(got) == 1 and b"/one" in got[0].raw and old.encode() in got[0].raw, got
    assert b"/two" not in got[0].raw, got[0].raw
    g = e.tls("api.test", tl.hostile.port, req("api.test", tl.hostile.port, path="/three",
                                               headers=[("Connection", "close")]))
    assert g.raw.count(b"\r\n\r\nok") == 1, g
    settle()
    last = tl.hostile.requests()[-1].raw
    assert b"/three" in last and new.encode() in last and old.encode() not in last, last
    recs = records(tl, e.id)
    assert any("policy changed" in x["reason"] for x in recs), recs


def test_inner_requests_lose_hop_by_hop_and_proxy_headers(tl):
    """Case 32/34 inside interception: what the forwarder strips is stripped from a request in
    an intercepted tunnel too, and an Upgrade cannot get through."""
    n = hostile(tl, OK_RESP)
    hdrs = [("Proxy-Authorization", "Basic c2VjcmV0OnNlY3JldA=="), ("X-Forwarded-For", "10.0.0.1"),
            ("Forwarded", "for=10.0.0.1"), ("Via", "1.1 evil"), ("Connection", "Upgrade, X-Hop"),
            ("Upgrade", "websocket"), ("X-Hop", "1"), ("X-Paddock-Egress", "deny"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZQ=="), ("X-Keep", "k")]
    g = tl.e.tls("api.test", tl.hostile.port,
                 req("api.test", tl.hostile.port, path="/h", headers=hdrs + [("Connection", "close")]))
    assert g.status == 200, g
    settle()
    (got,) = tl.hostile.requests()[n:]
    names = [l.split(b":", 1)[0].lower() for l in got.raw.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]]
    for gone in (b"proxy-authorization", b"x-forwarded-for", b"forwarded", b"via", b"upgrade",
                 b"x-hop", b"x-paddock-egress"):
        assert gone not in names, (gone, got.raw)
    assert b"x-keep" in names and b"c2VjcmV0" not in got.raw, got.raw


def test_inner_chunked_request_is_refused(tl):
    n = hostile(tl, OK_RESP)
    body = b"5\r\nhello\r\n0\r\n\r\n"
    g = tl.e.tls("api.test", tl.hostile.port,
                 req("api.test", tl.hostile.port, method="POST",
                     headers=[("Transfer-Encoding", "chunked")]) + body)
    assert g.status == 400 and b"Transfer-Encoding" in g.body, g
    settle()
    assert tl.hostile.requests()[n:] == []


def test_next_request_on_a_kept_alive_tunnel_must_name_its_host(tl):
    """A second request on an intercepted tunnel is held to the tunnel's destination like the
    first: another Host is a 421, nothing injected, nothing forwarded."""
    n = hostile(tl, OK_RESP, linger=3.0)
    g = tl.e.tls("api.test", tl.hostile.port, req("api.test", tl.hostile.port, path="/one"),
                 later=req("other.test", tl.hostile.port, path="/two"), later_s=0.5 * SLOWDOWN)
    assert g.raw.count(b"\r\n\r\nok") == 1 and b"HTTP/1.1 421 " in g.raw, g
    settle()
    got = tl.hostile.requests()[n:]
    assert len(got) == 1 and b"/two" not in got[0].raw and got[0].raw.count(SECRET.encode()) == 1


def test_connection_close_is_a_list_member_not_a_substring(tl):
    """A request whose Connection header names a field that merely contains "close" keeps its
    tunnel open: the next request on it is forwarded too. One that lists close (among others)
    ends the tunnel after its answer, and the next request goes nowhere."""
    for conn, kept in (("x-closed-caption", True), ("x-a ,CLOSE", False)):
        n = hostile(tl, OK_RESP, linger=2.0 * SLOWDOWN)
        g = tl.e.tls("api.test", tl.hostile.port,
                     req("api.test", tl.hostile.port, path="/one",
                         headers=[("Connection", conn), (conn.split(" ")[0], "1")]),
                     later=req("api.test", tl.hostile.port, path="/two"), later_s=0.5 * SLOWDOWN,
                     timeout=1.5 * SLOWDOWN)
        assert g.raw.count(b"\r\n\r\nok") == 1, (conn, g)
        settle()
        got = b"".join(c.raw for c in tl.hostile.requests()[n:])
        assert b"GET /one " in got and (b"GET /two " in got) == kept, (conn, got)
        assert b"x-closed-caption:" not in got.lower() and b"x-a:" not in got.lower(), got


def test_plain_tunnel_fronting_carries_no_credential(tl):
    """Case 21 on a destination that is not intercepted: CONNECT other.test on the api
    upstream's port, SNI and Host api.test. The proxy cannot see inside (documented fronting
    risk), so the request reaches the upstream — but with nothing injected."""
    n = len(tl.api.requests())
    g = tl.e.tls("other.test", tl.api.port,
                 req("api.test", tl.api.port, headers=[("X-Key", tl.ph)]),
                 sni="api.test", cafile="/workspace/test-ca.pem")
    assert g.status == 200, g
    hdrs = g.headers()
    assert not any(k.lower() == "authorization" for k, _ in hdrs), hdrs
    assert ("X-Key", tl.ph) in hdrs, hdrs
    assert len(tl.api.requests()) == n + 1
    no_secret(tl.api.requests()[-1].raw)


# The ClientHello in the same write as the CONNECT (a client that does not wait for the 200).
PIPELINED_CLIENT = r"""
import json, socket, ssl, sys, time
h, p, reqhex, to = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
inc, outg = ssl.MemoryBIO(), ssl.MemoryBIO()
obj = ssl.create_default_context(cafile="/etc/paddock/ca.pem").wrap_bio(inc, outg,
                                                                        server_hostname=h)
try:
    obj.do_handshake()
except ssl.SSLWantReadError:
    pass
s = socket.create_connection(("127.0.0.1", 3128), timeout=to)
s.sendall(("CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (h, p, h, p)).encode() + outg.read())
r = {"connect": None, "err": None, "resp": ""}
buf = b""
try:
    while b"\r\n\r\n" not in buf:
        d = s.recv(4096)
        if not d:
            raise EOFError("closed before the CONNECT answer")
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    r["connect"] = head.decode("latin-1")
    inc.write(rest)
    sent = False
    resp = b""
    while True:
        try:
            if not sent:
                obj.do_handshake()
                obj.write(bytes.fromhex(reqhex))
                sent = True
            resp += obj.read(65536)
            continue
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            break
        o = outg.read()
        if o:
            s.sendall(o)
        d = s.recv(65536)
        if not d:
            break
        inc.write(d)
    r["resp"] = resp.hex()
except Exception as e:
    r["err"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(r))
"""


def test_client_hello_pipelined_behind_the_connect(tl):
    """A client that sends its ClientHello in the same write as the CONNECT (no wait for the
    200) on an intercepted destination: the proxy must still handshake (or refuse), not stall
    until the header timeout with the hello stuck in its buffer."""
    w = tl.e.write("/workspace/pipelined.py", PIPELINED_CLIENT)
    assert w.rc == 0, w
    t0 = time.monotonic()
    r = tl.e.exec("python3", "/workspace/pipelined.py", "api.test", str(tl.api.port),
                  req("api.test", tl.api.port).hex(), str(8 * SLOWDOWN), timeout=60)
    took = time.monotonic() - t0
    assert r.rc == 0, r
    out = json.loads(r.text.strip().splitlines()[-1])
    assert out["connect"] and out["connect"].startswith("HTTP/1.1 200"), out
    assert out["err"] is None, (out, f"{took:.1f}s")
    g = Got({"connect": out["connect"], "tls_err": None, "resp": out["resp"], "cert": None,
             "peer": None})
    assert g.status == 200, g
    assert ("Authorization", f"Bearer {SECRET}") in g.headers()


# ------------------------------------------------------------------ 23: non-TLS bytes


@pytest.mark.parametrize("payload", [
    b"GET / HTTP/1.1\r\nHost: api.test:{api}\r\nX-Key: {ph}\r\n\r\n",
    b"SSH-2.0-OpenSSH_9.2\r\n",
    b"\x16\x03\x01\x00\x05hello",          # a TLS record header over garbage
], ids=["http", "ssh", "junk-record"])
def test_non_tls_bytes_on_an_intercepted_tunnel(tl, payload):
    n = tl.api.count()
    before = len(records(tl, tl.e.id))
    data = payload.replace(b"{api}", str(tl.api.port).encode()).replace(b"{ph}", tl.ph.encode())
    g = tl.e.tls("api.test", tl.api.port, plain=data, timeout=5 * SLOWDOWN)
    assert g.connect.startswith("HTTP/1.1 200"), g
    assert b"HTTP/" not in g.raw, g          # no answer from anything but the TLS layer
    no_secret(g.raw)
    settle()
    assert tl.api.count() == n, "bytes of a failed handshake reached the upstream"
    recs = new_records(tl, tl.e.id, before, lambda x: "TLS" in x["reason"])
    assert any(x["host"] == "api.test" and "TLS" in x["reason"] for x in recs), recs


# ------------------------------------------------------------------ 24: upstream verification


@pytest.mark.parametrize("which", ["rogue", "wrong"], ids=["untrusted-ca", "wrong-name"])
def test_upstream_certificate_is_verified(tl, which):
    """Case 24: the intercepted upstream presents a certificate of a CA the proxy does not trust,
    or one of the trusted CA for another name: 502 inside the tunnel, and the upstream never
    decrypts a byte (so never sees the token)."""
    up = getattr(tl, which)
    n, failed = up.count(), up.tls_failed
    before = len(records(tl, tl.e.id))
    g = tl.e.tls("api.test", up.port, req("api.test", up.port, headers=[("X-Key", tl.ph)]))
    assert g.tls_err is None, g                # the client's side is the proxy's leaf
    assert g.status == 502, g
    no_secret(g.raw)
    pdk.wait_until(lambda: up.tls_failed > failed, 5)
    assert up.count() == n + 1 and up.tls_failed == failed + 1, (up.count(), up.tls_failed)
    assert up.requests() == [], up.requests()
    recs = new_records(tl, tl.e.id, before, lambda x: "verif" in x["reason"])
    assert any("not verified" in x["reason"] for x in recs), recs


# ------------------------------------------------------------------ stalled upstreams


@pytest.mark.parametrize("which,step", [("mute", "TLS handshake"), ("full", "TCP connect")],
                         ids=["handshake-stalls", "connect-stalls"])
def test_stalled_intercepted_upstream_gets_a_504(tl, which, step):
    """An intercepted upstream that accepts and never handshakes, or never accepts at all:
    after --egress-connect-timeout the client gets a 504 naming the upstream and the step that
    stalled (not silence until it gives up), and the record says the same."""
    port = getattr(tl, which).port
    before = len(records(tl, tl.e.id))
    g = tl.e.tls("api.test", port, req("api.test", port, headers=[("X-Key", tl.ph)]),
                 timeout=CONNECT_TIMEOUT + 15 * SLOWDOWN)
    assert g.tls_err is None and g.status == 504, g
    assert g.header("X-Paddock-Egress") == "allow", g
    want = f"api.test:{port} did not answer within {CONNECT_TIMEOUT:g} s ({step})"
    assert want in g.body.decode(), g
    no_secret(g.raw)
    recs = new_records(tl, tl.e.id, before, lambda x: "did not answer" in x["reason"])
    assert any(want in x["reason"] and x["port"] == port for x in recs), recs


def test_stalled_tunnel_upstream_gets_a_504(tl):
    """A plain tunnel to an upstream that never accepts: the CONNECT is answered 504 after the
    connect timeout, never 200 and never left hanging."""
    port = tl.full.port
    r = tl.e.raw(f"CONNECT other.test:{port} HTTP/1.1\r\nHost: other.test:{port}\r\n\r\n",
                 timeout=CONNECT_TIMEOUT + 15)
    assert r.status == 504, r
    assert f"other.test:{port} did not answer within {CONNECT_TIMEOUT:g} s (TCP connect)" in \
        r.body.decode(), r


@pytest.mark.parametrize("bad", ["0", "50ms", "soon", "2h"])
def test_connect_timeout_out_of_range_is_refused(pd, bad):
    r = pd.run("serve", "--egress-connect-timeout", bad)
    assert r.rc != 0
    pdk.one_line_error(r, "--egress-connect-timeout")


# ------------------------------------------------------------------ 25: many names


@pytest.mark.slow
def test_many_intercepted_names_leaf_cache_stays_bounded(tl):
    """Case 25: 300 distinct intercepted names (more than the 256-entry leaf cache), twice
    over: every one verifies (a leaf per name, one shared leaf key), the proxy stays up, and
    its memory does not grow with the number of names."""
    pid = tl.server.proc.pid

    def rss():
        m = re.search(r"VmRSS:\s+(\d+) kB", pdk.read_text(f"/proc/{pid}/status"))
        return int(m.group(1)) * 1024

    def round_():
        specs = [spec(f"h{i}.many.test", tl.many.port, req(f"h{i}.many.test", tl.many.port))
                 for i in range(N_MANY)]
        return tl.e.tls_many(specs, timeout=300)

    n = len(tl.many.requests())
    r0 = rss()
    got = round_()
    r1 = rss()
    assert [g.status for g in got] == [200] * N_MANY, [g for g in got if g.status != 200][:3]
    for i in (0, 137, N_MANY - 1):
        assert got[i].peer["subjectAltName"] == [["DNS", f"h{i}.many.test"]], got[i].peer
        assert ("X-Many", "1") in got[i].headers()
    keys = set()
    for i in (0, N_MANY - 1):
        p = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-pubkey"],
                           input=got[i].cert, capture_output=True, check=True)
        keys.add(p.stdout)
    assert len(keys) == 1, "leaves should share one key"
    got = round_()                  # every name evicted once already
    r2 = rss()
    assert [g.status for g in got] == [200] * N_MANY
    assert len(tl.many.requests()) == n + 2 * N_MANY
    assert tl.server.alive()
    limit = (400 if pdk.SANITIZED else 50) * pdk.MiB
    assert r1 - r0 < limit and r2 - r0 < limit, (r0, r1, r2)
    if not pdk.SANITIZED:
        assert r2 - r1 < 16 * pdk.MiB, ("grows per name after the cache is full", r0, r1, r2)


# ------------------------------------------------------------------ 35, 36: where secrets go


def test_credential_is_injected_only_at_its_exact_destination(tl):
    """Case 35: the bearer credential is on api.test:<api> only."""
    cases = [
        ("other.test", tl.other.port, tl.other, ("X-Other-Rule", "1")),
        ("api.test", tl.other.port, tl.other, ("X-Port-Rule", "1")),   # same name, other port
        ("api.test.evil.test", tl.evil.port, tl.evil, ("X-Evil-Rule", "1")),
    ]
    for host, port, up, marker in cases:
        n = len(up.requests())
        g = tl.e.tls(host, port, req(host, port, headers=[("X-Key", tl.ph)]))
        assert g.status == 200, (host, g)
        hdrs = g.headers()
        assert marker in hdrs, (host, hdrs)          # it was intercepted: a rule applied
        assert not any(k.lower() == "authorization" for k, _ in hdrs), (host, hdrs)
        assert ("X-Key", tl.ph) in hdrs, (host, hdrs)
        assert len(up.requests()) == n + 1
        no_secret(up.requests()[-1].raw)
    # Plain HTTP to the credential's own entry: never injected, placeholders never replaced.
    n = tl.plain.count()
    r = tl.e.sh(f"curl -sS -m 10 -H \"X-Key: $API_KEY\" -H 'Authorization: Bearer mine' "
                f"http://api.test:{tl.plain.port}/plain")
    assert r.rc == 0, r
    got = json.loads(r.text)
    assert ["Authorization", "Bearer mine"] in got["headers"], got
    assert ["X-Key", tl.ph] in got["headers"], got
    assert tl.plain.count() == n + 1
    no_secret(tl.plain.snapshot()[-1].raw)


def test_placeholders_are_not_laundered_across_credentials_or_environments(tl):
    """Case 36: credential A's placeholder sent to B's trusted domain (and B's to A's) arrives
    as the useless placeholder; so does one environment's placeholder used in another
    environment that has the same credential."""
    g1, g2 = tl.e.tls_many([
        spec("other.test", tl.other.port, req("other.test", tl.other.port,
                                              headers=[("X-A", tl.ph), ("X-B", tl.ph2)])),
        spec("api.test", tl.api.port, req("api.test", tl.api.port,
                                          headers=[("X-A", tl.ph), ("X-B", tl.ph2)]))])
    assert ("X-A", tl.ph) in g1.headers() and ("X-B", SECRET_ENV2) in g1.headers(), g1
    assert ("X-A", SECRET_ENV) in g2.headers() and ("X-B", tl.ph2) in g2.headers(), g2
    assert SECRET_ENV.encode() not in g1.raw and SECRET_ENV2.encode() not in g2.raw
    e2 = make_env(tl, {"env": {"API_KEY": {"credential": "ek"}},
                       "network": {"allowlist": [{"domain": f"api.test:{tl.api.port}"}]}})
    ph_e2 = e2.sh_ok("printf %s \"$API_KEY\"").text
    assert ph_e2.startswith("paddock-credential-") and ph_e2 != tl.ph
    g = e2.tls("api.test", tl.api.port, req("api.test", tl.api.port,
                                            headers=[("X-Mine", ph_e2), ("X-Theirs", tl.ph)]))
    hdrs = g.headers()
    assert ("X-Mine", SECRET_ENV) in hdrs and ("X-Theirs", tl.ph) in hdrs, hdrs


# ------------------------------------------------------------------ 37: redirects


def test_redirect_is_passed_to_the_client_not_followed(tl):
    n_other = tl.other.count()
    n = len(tl.redir.requests())
    g = tl.e.tls("api.test", tl.redir.port, req("api.test", tl.redir.port))
    assert g.status == 302, g
    assert g.header("location") == f"https://other.test:{tl.other.port}/landing", g
    assert len(tl.redir.requests()) == n + 1
    assert f"Bearer {SECRET}".encode() in tl.redir.requests()[-1].raw   # it was injected there
    time.sleep(1)
    assert tl.other.count() == n_other, "the proxy followed the redirect"
    # A client that follows it (curl -L) makes its own request to other.test: the credential
    # of api.test does not travel with it.
    r = tl.e.sh(f"curl -sS -m 10 -L https://api.test:{tl.redir.port}/")
    assert r.rc == 0, r
    assert json.loads(r.text)["line"] == "GET /landing HTTP/1.1", r
    assert tl.other.count() == n_other + 1
    no_secret(tl.other.requests()[-1].raw)


# ------------------------------------------------------------------ 38: header CR/LF, duplicates


@pytest.mark.parametrize("transform", [
    {"X-A": "a\r\nX-Evil: 1"}, {"X-A": "a\nX-Evil: 1"}, {"X-A": "a\rb"}, {"X-A": "a\u0000b"},
    {"X-A: b": "v"}, {"X A": "v"}, {"": "v"}, {"X-A\r\nX-Evil": "v"}, {"X-A": 5},
    [{"X-A": "ok"}, {"X-B": "x\r\n"}], {"X-A": "a\u000bb"}, {"X-A": "a\u007fb"},
    {"X-\u0001": "v"},
], ids=["crlf", "lf", "cr", "nul", "colon-name", "space-name", "empty-name", "crlf-name",
        "number", "list-crlf", "vt", "del", "ctl-name"])
def test_transform_with_cr_lf_is_refused_at_create(tl, transform):
    r = tl.a.http.create({"network": {"allowlist": [
        {"domain": f"api.test:{tl.api.port}", "transform": transform}]}}, ok=False)
    assert r.status == 400, r
    msg = r.json()["error"]["message"]
    assert "transform" in msg or "\\u0000" in msg, r      # NUL: refused by the JSON parser


@pytest.mark.parametrize("body", [
    {"type": "bearer_token", "id": "crlf1", "token": "t\r\nX-Evil: 1"},
    {"type": "bearer_token", "id": "crlf2", "token": "t", "prefix": "Bearer\nX-Evil:"},
    {"type": "bearer_token", "id": "crlf3", "token": "t", "header_name": "X\r\nEvil"},
    {"type": "environment_variable", "id": "crlf4", "value": "v\r\nX-Evil: 1",
     "injection_location": "header", "trusted_domains": ["api.test"]},
    {"type": "bearer_token", "id": "ctl1", "token": "t\u0001"},
    {"type": "bearer_token", "id": "ctl2", "token": "t", "prefix": "Bearer\u007f"},
    {"type": "bearer_token", "id": "ctl3", "token": "t", "header_name": "X-\u0001"},
    {"type": "environment_variable", "id": "ctl4", "value": "v\u000b",
     "injection_location": "header", "trusted_domains": ["api.test"]},
], ids=["token", "prefix", "header-name", "env-value", "ctl-token", "del-prefix", "ctl-name",
        "vt-env-value"])
def test_credential_fields_with_cr_lf_are_refused(tl, body):
    r = tl.creds.post("/v1beta/credentials", json_body=body)
    assert r.status == 400, r
    assert "control characters" in r.json()["error"]["message"] or \
        "header_name" in r.json()["error"]["message"], r


@pytest.mark.parametrize("name", ["Content-Length", "transfer-encoding", "Host", "Connection",
                                  "Proxy-Authorization", "Upgrade", "TE"])
def test_framing_headers_cannot_be_injected(tl, name):
    """A credential's header_name or a transform naming a field that frames, routes or belongs
    to one hop is refused, naming it: set by the proxy, a Content-Length or Transfer-Encoding
    would disagree with the body the client frames, and a second Host with the one the
    destination was checked against."""
    r = tl.creds.post("/v1beta/credentials", json_body={
        "type": "bearer_token", "id": "framing", "token": "t", "header_name": name})
    assert r.status == 400 and name in r.json()["error"]["message"], r
    r = tl.a.http.create({"network": {"allowlist": [
        {"domain": f"api.test:{tl.api.port}", "transform": {name: "1"}}]}}, ok=False)
    assert r.status == 400 and f"transform.{name}" in r.json()["error"]["message"], r


def test_injected_header_replaces_every_client_copy(tl):
    """Case 38: client copies of an injected header in any case are dropped; exactly one
    arrives, the rule's."""
    g1, g2 = tl.e.tls_many([
        spec("api.test", tl.api.port, req("api.test", tl.api.port, headers=[
            ("Authorization", "Bearer mine"), ("authorization", "two"),
            ("AUTHORIZATION", f"Bearer {tl.ph}"), ("X-Keep", "k")])),
        spec("other.test", tl.other.port, req("other.test", tl.other.port, headers=[
            ("X-Other-Rule", "client"), ("x-other-rule", "2"), ("X-Keep", "k")]))])
    h1 = [(k.lower(), v) for k, v in g1.headers()]
    h2 = [(k.lower(), v) for k, v in g2.headers()]
    assert [v for k, v in h1 if k == "authorization"] == [f"Bearer {SECRET}"], h1
    assert [v for k, v in h2 if k == "x-other-rule"] == ["1"], h2
    assert ("x-keep", "k") in h1 and ("x-keep", "k") in h2
    # Exactly one Host and one Connection, too.
    for h in (h1, h2):
        assert [k for k, _ in h].count("host") == 1, h
        assert [k for k, _ in h].count("connection") <= 1, h


# ------------------------------------------------------------------ 39: encoded placeholders


def test_encoded_placeholders_are_not_decoded(tl):
    """Case 39 (documented limitation): only the literal placeholder in a header value is
    replaced; inside base64 (Basic auth), in the path or query, or in a body it arrives as
    sent."""
    basic = base64.b64encode(f"user:{tl.ph}".encode()).decode()
    body = f'{{"key": "{tl.ph}"}}'.encode()
    n = len(tl.api.requests())
    g = tl.e.tls("api.test", tl.api.port, req(
        "api.test", tl.api.port, method="POST", path=f"/p/{tl.ph}?k={tl.ph}", body=body,
        headers=[("X-Basic", f"Basic {basic}"), ("X-Plain", tl.ph)]))
    assert g.status == 200, g
    hdrs = g.headers()
    assert ("X-Basic", f"Basic {basic}") in hdrs, hdrs
    assert ("X-Plain", SECRET_ENV) in hdrs, hdrs                       # the control
    assert g.json()["line"] == f"POST /p/{tl.ph}?k={tl.ph} HTTP/1.1", g
    raw = tl.api.requests()[n].raw
    assert raw.endswith(body), raw
    assert raw.count(SECRET_ENV.encode()) == 1, raw                  # X-Plain only


LONG_SECRET = "tls-long-SECRET-" + "L" * 284           # 300 bytes: a JWT-sized secret


@pytest.fixture(scope="module")
def long_env(tl):
    r = tl.creds.post("/v1beta/credentials", json_body={
        "type": "environment_variable", "id": "long", "value": LONG_SECRET,
        "injection_location": "header", "trusted_domains": [f"api.test:{tl.api.port}"]})
    assert r.status == 200, r
    e = make_env(tl, {"env": {"LONG": {"credential": "long"}}, "network": {"allowlist": [
        {"domain": f"api.test:{tl.api.port}", "credential": "gh"}]}})
    e.ph = e.sh_ok("printf %s \"$LONG\"").text
    assert len(e.ph) < len(LONG_SECRET)
    return e


@pytest.mark.parametrize("forged", ["Authorization: Bearer attacker", "Host: evil.test",
                                    "Transfer-Encoding: chunked"],
                         ids=["authorization", "host", "transfer-encoding"])
def test_placeholder_expansion_past_64k_cannot_forge_a_header(tl, long_env, forged):
    """One header line whose placeholders expand past 64 KiB (219 x a 300-byte secret; the
    line itself is 10 KiB, well under the 32 KiB head limit), followed by text that looks like
    a header. Expected: the line arrives whole (secrets and all) or the request is refused;
    never a header the client could not send directly (a second Authorization next to the
    injected one, or a second Host)."""
    line_value = long_env.ph * 219 + forged
    n = len(tl.api.requests())
    g = long_env.tls("api.test", tl.api.port, req("api.test", tl.api.port,
                                                 headers=[("X-Pad", line_value)]))
    settle()
    new = tl.api.requests()[n:]
    if g.status != 200:                    # refused: fine, if nothing was forwarded
        assert not new, new
        return
    hdrs = [(k.lower(), v) for k, v in g.headers()]
    assert [v for k, v in hdrs if k == "authorization"] == [f"Bearer {SECRET}"], \
        [h for h in hdrs if h[0] != "x-pad"]
    assert [v for k, v in hdrs if k == "host"] == [f"api.test:{tl.api.port}"], \
        [h for h in hdrs if h[0] != "x-pad"]
    assert "transfer-encoding" not in [k for k, _ in hdrs], [h for h in hdrs if h[0] != "x-pad"]
    pad = [v for k, v in hdrs if k == "x-pad"]
    assert pad == [LONG_SECRET * 219 + forged], [len(v) for v in pad]


# ------------------------------------------------------------------ 41: reflection


def test_reflection_only_trusted_destinations_can_echo_a_secret(tl):
    """Case 41 (inherent): an upstream that echoes request headers hands the injected secret
    back into the sandbox — so a secret must be scoped to hosts trusted with it. The echo on
    the trusted destination does show it; an echo anywhere else cannot."""
    r = tl.e.sh(f"curl -sS -m 10 -H \"X-Key: $API_KEY\" https://api.test:{tl.api.port}/")
    assert r.rc == 0, r
    assert SECRET in r.text and SECRET_ENV in r.text, "the trusted echo reflects the secrets"
    for host, port in (("other.test", tl.other.port), ("api.test", tl.other.port),
                       ("api.test.evil.test", tl.evil.port)):
        r = tl.e.sh(f"curl -sS -m 10 -H \"X-Key: $API_KEY\" -H 'Authorization: x' "
                    f"https://{host}:{port}/")
        assert r.rc == 0, r
        assert tl.ph in r.text, r
        no_secret(r.text)


# ------------------------------------------------------------------ tools


def test_git_clone_over_intercepted_https_with_a_bearer_token(tl):
    """git clone https://... works unmodified inside (GIT_SSL_CAINFO trusts the paddock CA) and
    every request of the clone carries the token; the sandbox never had it."""
    n = len(tl.git.seen)
    r = tl.e.sh(f"rm -rf /workspace/clone && git clone -q https://git.test:{tl.git.port}/repo.git "
                f"/workspace/clone && git -C /workspace/clone rev-parse HEAD && "
                f"cat /workspace/clone/hello.txt", timeout=120)
    assert r.rc == 0, r
    lines = r.text.split()
    assert lines[0] == tl.git_head, r
    assert "hello through the proxy" in r.text
    seen = tl.git.seen[n:]
    assert seen and any(p.endswith("/info/refs?service=git-upload-pack") or
                        p.endswith("/info/refs") for p, _ in seen), seen
    assert all(a == [f"Bearer {SECRET_GIT}"] for _, a in seen), seen
    g = tl.e.sh("env | grep -c SECRET; grep -rl tls-git-SECRET /workspace/clone /etc/paddock "
                "2>/dev/null; true")
    no_secret(g.text)


# ------------------------------------------------------------------ 40: logs (keep last)


def test_secrets_never_in_logs_or_data_files(tl):
    """Case 40: with --log-level debug, after injections, refusals (421, SNI, 502, non-TLS) and
    the other tests of this module, no secret is in the server's log, the audit records, or
    any file of the data directory (the database holds them sealed)."""
    # Exercise the main paths once more, in case this test runs alone.
    tl.e.tls_many([
        spec("api.test", tl.api.port, req("api.test", tl.api.port, headers=[("X-K", tl.ph)])),
        spec("api.test", tl.api.port, req("other.test", tl.api.port, headers=[("X-K", tl.ph)])),
        spec("api.test", tl.api.port, req("api.test", tl.api.port), sni="x.test",
             check_hostname=False),
        spec("api.test", tl.rogue.port, req("api.test", tl.rogue.port)),
        spec("api.test", tl.api.port, plain=b"GET / HTTP/1.1\r\n\r\n", timeout=3 * SLOWDOWN),
    ])
    assert tl.server.alive()
    lines = tl.server.log_lines()
    assert lines and any("request method=" in l for l in lines), lines[-5:]
    for l in lines:
        no_secret(l)
    no_secret(json.dumps(records(tl, tl.e.id)))
    skipped, scanned = [], 0
    for root, _, files in os.walk(tl.pd.data):
        for f in files:
            p = Path(root) / f
            try:
                if p.is_symlink() or not p.is_file():
                    continue
                st = p.stat()
                # The sandboxes' storage images (sparse, GBs) are not the server's writing.
                if st.st_size > 64 * pdk.MiB:
                    skipped.append(str(p))
                    continue
                data = p.read_bytes()
            except OSError:
                continue
            scanned += 1
            for s in SECRETS:
                assert s.encode() not in data, f"secret {s!r} in {p}"
    assert scanned > 3, (scanned, skipped)


COALESCED_CLIENT = r'''
import socket, ssl, sys
host, port, req = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
s.sendall(("CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (host, port, host, port)).encode())
buf = b""
while b"\r\n\r\n" not in buf:
    buf += s.recv(4096)
ctx = ssl.create_default_context(cafile="/etc/paddock/ca.pem")
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
t = ctx.wrap_bio(inc, out, server_hostname=host)
while True:
    try:
        t.do_handshake()
        break
    except ssl.SSLWantReadError:
        if out.pending:
            s.sendall(out.read())
        d = s.recv(65536)
        if not d:
            sys.exit("eof in handshake")
        inc.write(d)
t.write(req)
s.sendall(out.read())   # the client's Finished and the request in one segment
resp = b""
try:
    while True:
        try:
            resp += t.read(65536)
            continue
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            break
        d = s.recv(65536)
        if not d:
            break
        inc.write(d)
except socket.timeout:
    print("TIMEOUT")
print(resp[:40])
'''


def test_request_coalesced_with_the_handshake(tl):
    """The client's last handshake flight and its request may arrive in one read."""
    w = tl.e.write("/workspace/coal.py", COALESCED_CLIENT)
    assert w.rc == 0, w
    r = tl.e.exec("python3", "/workspace/coal.py", "api.test", str(tl.api.port),
                  req("api.test", tl.api.port).hex(), timeout=60)
    assert "TIMEOUT" not in r.text and "200" in r.text, r


@pytest.mark.parametrize("first", ["gone-without-close-notify", "refused-sni", "no-sni"])
def test_a_torn_down_tls_connection_leaves_nothing_for_the_next(tl, first):
    """A TLS connection torn down badly (an upstream gone without close_notify, a handshake
    the proxy refused) leaves nothing behind that fails the next one: a fresh intercepted
    connection right after must succeed, five times over."""
    for _ in range(5):
        if first != "gone-without-close-notify":
            a = spec("api.test", tl.api.port, req("api.test", tl.api.port),
                     sni="evil.test" if first == "refused-sni" else None, check_hostname=False)
        else:
            a = spec("x.many.test", tl.many.port, req("x.many.test", tl.many.port), timeout=1)
        b = spec("api.test", tl.api.port, req("api.test", tl.api.port))
        got = tl.e.tls_many([a, b])
        assert got[1].status == 200, got[1]
