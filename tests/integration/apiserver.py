"""Drives `paddock serve` for the API integration tests.

ApiServer starts the real binary on a free port of 127.0.0.1 with a pdk.Paddock's data directory,
keeps every stderr line (for log assertions), and can be killed and restarted on the same data
directory. Http is a small client on http.client that sends paths exactly as given (no
normalisation), so traversal and malformed requests reach the server untouched.

The fixtures at the bottom are imported by the test modules with `from apiserver import *`:
`api` (a fresh data dir + server per test) and `mapi` (one per module). Their teardown stops the
server (SIGTERM, then SIGKILL), checks that a sanitized build reported nothing, and then the
Paddock teardown of conftest runs its leak checks.
"""

import http.client
import json
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.parse

import pytest

import pdk
from pdk import MiB, SLOWDOWN

LISTEN_RE = re.compile(r"listening on http://([0-9.]+):(\d+)")
ENV_ID_RE = re.compile(r"^env_[0-9A-Za-z]{26}$")
VERSIONS = ("v1", "v1beta", "v1alpha")
CHUNK = 8 * MiB  # what the SDK sends per upload POST

# A syntactically valid id that no environment has.
MISSING_ID = "env_" + "0" * 26


class Resp:
    """One HTTP answer: status, lower-cased headers, raw body."""

    def __init__(self, method, path, status, reason, headers, body):
        self.method, self.path = method, path
        self.status, self.reason, self.headers, self.body = status, reason, headers, body

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            raise AssertionError(f"not JSON: {self!r}") from None

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def header(self, name, default=None):
        return self.headers.get(name.lower(), default)

    def error(self):
        """The {"error":{...}} object, checked for the documented shape."""
        assert_error_shape(self)
        return self.json()["error"]

    def __repr__(self):
        b = self.text
        if len(b) > 1500:
            b = b[:1000] + f"...[{len(self.body)} bytes]..." + b[-300:]
        return f"<{self.method} {self.path[:200]} -> {self.status} {self.reason} {self.headers!r:.400} {b!r}>"


# docs/API.md: 400 is INVALID_ARGUMENT, or FAILED_PRECONDITION for an existing file with
# overwrite=false; 413 is RESOURCE_EXHAUSTED.
STATUS_NAMES = {400: ("INVALID_ARGUMENT", "FAILED_PRECONDITION"), 401: ("UNAUTHENTICATED",),
                403: ("PERMISSION_DENIED",), 404: ("NOT_FOUND",), 413: ("RESOURCE_EXHAUSTED",),
                500: ("INTERNAL",)}


def assert_error_shape(r, status=None):
    """Checks the documented error shape: {"error":{"code":N,"message":"…","status":"…"}},
    Content-Type application/json, code equal to the HTTP status."""
    if status is not None:
        assert r.status == status, r
    assert r.status >= 400, r
    ctype = (r.header("content-type") or "").split(";")[0].strip().lower()
    assert ctype == "application/json", f"error content-type {ctype!r}: {r!r}"
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"error"}, r
    err = body["error"]
    assert isinstance(err, dict), r
    assert {"code", "message", "status"} <= set(err), r
    assert err["code"] == r.status, r
    assert isinstance(err["message"], str) and err["message"].strip(), r
    assert isinstance(err["status"], str) and re.match(r"^[A-Z_]+$", err["status"]), r
    want = STATUS_NAMES.get(r.status)
    if want:
        assert err["status"] in want, r
    return err


def assert_names(r, *needles, status=400):
    """Asserts r is an error of `status` whose message mentions one of needles (case-insensitive)."""
    err = assert_error_shape(r, status) if not isinstance(status, tuple) else None
    if isinstance(status, tuple):
        assert r.status in status, r
        err = assert_error_shape(r)
    msg = err["message"].lower()

    def named(n):
        n = n.lower()
        if n in msg:
            return True
        # "sources[0].content" is also named by "sources[0]: ... content ..."
        m = re.match(r"^(.*\])\.([a-z_]+)$", n)
        return bool(m) and m.group(1) in msg and m.group(2) in msg[msg.index(m.group(1)):]
    assert any(named(n) for n in needles), \
        f"error message should name one of {needles}: {err['message']!r} ({r!r})"
    return err


class Http:
    """A minimal HTTP/1.1 client: one connection per request, paths sent verbatim."""

    def __init__(self, host, port, key=None, auth="x-goog-api-key"):
        self.host, self.port, self.key, self.auth = host, port, key, auth

    def with_key(self, key, auth="x-goog-api-key"):
        return Http(self.host, self.port, key, auth)

    @property
    def base(self):
        return f"http://{self.host}:{self.port}"

    def request(self, method, path, body=None, headers=None, timeout=60, json_body=None):
        hdrs = {}
        if self.key is not None:
            if self.auth == "bearer":
                hdrs["Authorization"] = f"Bearer {self.key}"
            else:
                hdrs["x-goog-api-key"] = self.key
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs["Content-Type"] = "application/json"
        if isinstance(body, str):
            body = body.encode()
        hdrs.update(headers or {})
        hdrs = {k: v for k, v in hdrs.items() if v is not None}
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout * SLOWDOWN)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            if body is not None and not any(k.lower() == "content-length" for k in hdrs):
                hdrs["Content-Length"] = str(len(body))
            elif body is None and method in ("POST", "PUT", "PATCH") and \
                    not any(k.lower() == "content-length" for k in hdrs):
                hdrs["Content-Length"] = "0"
            for k, v in hdrs.items():
                conn.putheader(k, v)
            conn.endheaders()
            if body:
                conn.send(body)
            r = conn.getresponse()
            data = r.read()
            return Resp(method, path, r.status, r.reason,
                        {k.lower(): v for k, v in r.getheaders()}, data)
        finally:
            conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, json_body=None, **kw):
        return self.request("POST", path, json_body=json_body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    # ---- environments ----

    def create(self, body=None, v="v1beta", ok=True, timeout=120):
        r = self.post(f"/{v}/environments", json_body=body if body is not None else {},
                      timeout=timeout)
        if ok:
            assert r.status == 200, r
            e = r.json()
            assert ENV_ID_RE.match(e.get("id", "")), r
            return e
        return r

    def get_env(self, env_id, v="v1beta"):
        return self.get(f"/{v}/environments/{env_id}")

    def list_all(self, page_size=None, v="v1beta"):
        """Follows next_page_token to the end; returns every environment, in order."""
        return self.pages("environments", page_size, v)[0]

    def pages(self, collection, page_size=None, v="v1beta"):
        """Follows next_page_token through /{v}/{collection} to the end: (every item in
        order, the number of pages). Each page holds at most page_size items."""
        out, token, pages = [], None, 0
        while True:
            q = {}
            if page_size:
                q["page_size"] = page_size
            if token:
                q["page_token"] = token
            path = f"/{v}/{collection}" + (("?" + urllib.parse.urlencode(q)) if q else "")
            r = self.get(path)
            assert r.status == 200, r
            body = r.json()
            items = body.get(collection, [])
            if page_size:
                assert len(items) <= page_size, r
            out += items
            token = body.get("next_page_token")
            pages += 1
            assert pages < 10000, "pagination does not end"
            if not token:
                return out, pages

    def ids(self):
        return [e["id"] for e in self.list_all()]

    def files(self, env_id, path="", v="v1beta", query=""):
        return self.get(f"/{v}/environments/{env_id}/files/{path}" + (f"?{query}" if query else ""))

    def download(self, env_id, path, v="v1beta"):
        return self.get(f"/{v}/environments/{env_id}/files/{path}?alt=media")

    def snapshot(self, env_id, v="v1beta"):
        return self.get(f"/{v}/files/environment-{env_id}:download?alt=media", timeout=300)

    # ---- resumable upload ----

    def upload_start(self, env_id, path, total, v="v1beta", query="", extra_headers=None):
        hdrs = {"X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start",
                "X-Goog-Upload-Header-Content-Length": str(total),
                "X-Goog-Upload-Header-Content-Type": "application/octet-stream"}
        hdrs.update(extra_headers or {})
        return self.request("PUT", f"/upload/{v}/environments/{env_id}/files/{path}"
                            + (f"?{query}" if query else ""), headers=hdrs)

    def session_path(self, start_resp):
        """The path+query of the absolute X-Goog-Upload-URL a start answered; checks it names
        this server."""
        assert start_resp.status == 200, start_resp
        url = start_resp.header("x-goog-upload-url")
        assert url, f"no X-Goog-Upload-URL: {start_resp!r}"
        u = urllib.parse.urlsplit(url)
        assert u.scheme in ("http", "https") and u.netloc, f"upload URL not absolute: {url!r}"
        assert u.netloc == f"{self.host}:{self.port}", f"upload URL {url!r} is not this server"
        return u.path + (f"?{u.query}" if u.query else "")

    def upload_chunk(self, session, data, offset, finalize=False, command=None, timeout=120):
        cmd = command or ("upload, finalize" if finalize else "upload")
        return self.request("POST", session, body=data, timeout=timeout,
                            headers={"X-Goog-Upload-Command": cmd,
                                     "X-Goog-Upload-Offset": str(offset),
                                     "Content-Type": "application/json"})

    def upload(self, env_id, path, data, v="v1beta", query="", chunk=CHUNK):
        """The SDK's upload: start, 8 MiB chunks, finalize. Returns the finalize Resp."""
        session = self.session_path(self.upload_start(env_id, path, len(data), v=v, query=query))
        off = 0
        while True:
            piece = data[off:off + chunk]
            last = off + len(piece) >= len(data)
            r = self.upload_chunk(session, piece, off, finalize=last)
            if last:
                return r
            assert 200 <= r.status < 300, r
            off += len(piece)


class ApiServer:
    """`paddock serve` on 127.0.0.1:<free port> over a pdk.Paddock's data directory."""

    def __init__(self, pd, args=(), log_format=None, env=None, global_args=()):
        self.pd, self.args, self.log_format = pd, list(args), log_format
        self.global_args = [str(x) for x in global_args]
        self.env = dict(env or pd.env)
        self.proc = None
        self.lines = []          # every stderr line of every run, in order
        self.run_start = 0       # index in lines where the current run began
        self.port = None
        self.exits = []          # exit statuses of earlier runs
        self._cv = threading.Condition()
        self._reader = None

    # ---- lifecycle ----

    def argv(self):
        a = [str(pdk.paddock_bin()), "--data-dir", str(self.pd.data), *self.global_args,
             "serve", "--listen", "127.0.0.1:0"]
        if self.log_format:
            a += ["--log-format", self.log_format]
        return a + [str(x) for x in self.args]

    def _drain(self, proc):
        for raw in iter(proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cv:
                self.lines.append(line)
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def start(self, timeout=30):
        assert self.proc is None or self.proc.poll() is not None, "server already running"
        with self._cv:
            self.run_start = len(self.lines)
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=self.env)
        self._reader = threading.Thread(target=self._drain, args=(self.proc,), daemon=True)
        self._reader.start()
        end = time.monotonic() + timeout * SLOWDOWN
        with self._cv:
            while True:
                for line in self.lines[self.run_start:]:
                    m = LISTEN_RE.search(line)
                    if m:
                        self.host, self.port = m.group(1), int(m.group(2))
                        assert self.port != 0, line
                        break
                else:
                    m = None
                if m:
                    break
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(f"paddock serve exited ({self.proc.returncode}) before "
                                         f"listening:\n" + "\n".join(self.lines[self.run_start:]))
                left = end - time.monotonic()
                if left <= 0:
                    self.proc.kill()
                    raise AssertionError(f"paddock serve did not log 'listening on' within "
                                         f"{timeout * SLOWDOWN}s:\n"
                                         + "\n".join(self.lines[self.run_start:]))
                self._cv.wait(min(left, 0.2))
        self.wait_ready()
        return self

    def wait_ready(self, timeout=30):
        end = time.monotonic() + timeout * SLOWDOWN
        last = None
        while time.monotonic() < end:
            try:
                last = self.http().get("/readyz", timeout=5)
                if last.status == 200:
                    return
            except OSError as e:
                last = e
            time.sleep(0.05)
        raise AssertionError(f"/readyz never answered 200: {last!r}")

    def kill(self, sig=signal.SIGKILL):
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(10 * SLOWDOWN)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(10)
        self._reader.join(10)
        self.exits.append(rc)
        return rc

    def restart(self, timeout=30):
        if self.proc and self.proc.poll() is None:
            self.kill(signal.SIGKILL)
        return self.start(timeout)

    def stop(self):
        """SIGTERM, then SIGKILL after a few seconds. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            self._reader.join(10)
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(5 * SLOWDOWN)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(10)
        self._reader.join(10)
        self.exits.append(rc)
        return rc

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def sanitizer_reports(self):
        return [l for l in self.lines
                if "AddressSanitizer" in l or "LeakSanitizer" in l or "runtime error:" in l
                or "UndefinedBehaviorSanitizer" in l]

    # ---- logs ----

    def log_lines(self, since=0):
        with self._cv:
            return list(self.lines[since:])

    def wait_log(self, pred, since=0, timeout=10):
        end = time.monotonic() + timeout * SLOWDOWN
        with self._cv:
            while True:
                hits = [l for l in self.lines[since:] if pred(l)]
                if hits:
                    return hits
                left = end - time.monotonic()
                if left <= 0:
                    return []
                self._cv.wait(min(left, 0.2))

    # ---- clients and keys ----

    def http(self, key=None, auth="x-goog-api-key"):
        return Http(self.host, self.port, key, auth)

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    def make_key(self, name, scopes=("environments",), project=None):
        args = ["keys", "create", "--name", name]
        if project:
            args += ["--project", project]
        for s in scopes:
            args += ["--scope", s]
        r = self.pd.run(*args, timeout=30)
        assert r.rc == 0, r
        lines = [l.strip() for l in r.text.splitlines() if l.strip()]
        assert lines, r
        return lines[-1]

    def revoke_key(self, name):
        r = self.pd.run("keys", "revoke", name, timeout=30)
        assert r.rc == 0, r
        return r


def cli_envs(pd):
    """Every environment the CLI sees in the data dir: id -> its `env ls --json` entry."""
    return {e["id"]: e for e in pd.ls()}


def serve(pd, args=(), log_format=None):
    """Starts a server for pd and returns it; the caller stops it."""
    return ApiServer(pd, args=args, log_format=log_format).start()


def finish(server):
    """The fixtures' teardown of a server: stop it, fail on sanitizer reports."""
    server.stop()
    reports = server.sanitizer_reports()
    if reports:
        raise AssertionError("sanitizer reports from paddock serve:\n" + "\n".join(reports[:40]))


class Api:
    """What the fixtures hand a test: the server, its Paddock, a read-write key and a client."""

    def __init__(self, server, key_name="rw", scopes=("environments",)):
        self.server, self.pd = server, server.pd
        self.key = server.make_key(key_name, scopes=scopes)
        self.key_name = key_name

    @property
    def http(self):
        return self.server.http(self.key)


@pytest.fixture
def api(pd):
    server = ApiServer(pd).start()
    try:
        yield Api(server)
    finally:
        finish(server)


@pytest.fixture(scope="module")
def mapi(mpd):
    server = ApiServer(mpd).start()
    try:
        yield Api(server)
    finally:
        finish(server)


def raw_exchange(host, port, data, timeout=10):
    """Sends raw bytes on a fresh connection; returns everything the server answered before
    closing (or until timeout)."""
    s = socket.create_connection((host, port), timeout=timeout * SLOWDOWN)
    try:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out:
                head, _, rest = out.partition(b"\r\n\r\n")
                m = re.search(rb"(?i)content-length:\s*(\d+)", head)
                if m and len(rest) >= int(m.group(1)):
                    break
        return out
    finally:
        s.close()


__all__ = ["ApiServer", "Api", "Http", "Resp", "api", "mapi", "assert_error_shape",
           "assert_names", "cli_envs", "serve", "finish", "raw_exchange", "VERSIONS",
           "MISSING_ID", "ENV_ID_RE", "CHUNK", "MiB", "SLOWDOWN"]
