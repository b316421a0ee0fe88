"""Helpers for the interactions and agents tests: a scripted fake model, `paddock serve` pointed
at it, an SSE reader, and small waits.

Fixtures (import with `from agentkit import *`):
  fake    a FakeModel (tests/integration/fakemodel.py) for the test, reset between tests
  ag      a fresh data dir + `paddock serve --model openai:fake` whose three model clients point
          at `fake`; a key with the interactions, agents and environments scopes
  mag     the same, shared by a module (the fake is reset before each test using it)
`AgentServer(pd, fake, args=...)` starts one with other serve options (e.g. --workers).
"""

import json
import socket
import time

import pytest

from apiserver import ApiServer, Http, finish, SLOWDOWN
from fakemodel import FakeModel, system_text, tool_results, tool_names, all_text  # noqa: F401

V = "v1beta"
FINAL = ("completed", "failed", "cancelled", "incomplete", "budget_exceeded", "requires_action")
SCOPES = ("interactions", "agents", "environments")
WIRE = {"gemini": "gemini-x", "openai": "openai:fake", "anthropic": "anthropic:fake"}


class SSE:
    """A streaming answer read event by event from a raw socket (so a test can stop reading or
    drop the connection at any point)."""

    def __init__(self, host, port, method, path, key, body=None, timeout=30):
        self.sock = socket.create_connection((host, port), timeout=timeout * SLOWDOWN)
        data = json.dumps(body).encode() if body is not None else b""
        head = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"x-goog-api-key: {key}\r\nAccept: text/event-stream\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
        self.sock.sendall(head.encode() + data)
        self.f = self.sock.makefile("rb")
        status = self.f.readline().decode()
        self.status = int(status.split()[1])
        self.headers = {}
        while True:
            line = self.f.readline().decode().rstrip("\r\n")
            if not line:
                break
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        self._buf = b""
        self.done = False      # saw data: [DONE]
        self.raw = []          # every event block as text
        self.body = b""
        if self.status != 200 or "event-stream" not in self.headers.get("content-type", ""):
            n = self.headers.get("content-length")
            self.body = self.f.read(int(n)) if n is not None else self._read_all()

    def _read_all(self):
        out = b""
        try:
            while True:
                c = self._more()
                if not c:
                    return out
                out += c
        except OSError:
            return out

    def _more(self):
        if not self.chunked:
            return self.f.read1(65536) if hasattr(self.f, "read1") else self.f.read(1)
        line = self.f.readline()
        if not line:
            return b""
        n = int(line.split(b";")[0].strip() or b"0", 16)
        if n == 0:
            self.f.readline()
            return b""
        data = self.f.read(n)
        self.f.readline()
        return data

    def events(self):
        """Yields each JSON event (dict), with "_id" set from the `id:` line when present. Stops
        after data: [DONE] or at the end of the stream."""
        while True:
            while b"\n\n" not in self._buf.replace(b"\r\n", b"\n"):
                c = self._more()
                if not c:
                    return
                self._buf += c
            norm = self._buf.replace(b"\r\n", b"\n")
            block, _, rest = norm.partition(b"\n\n")
            self._buf = rest
            text = block.decode("utf-8", "replace")
            self.raw.append(text)
            data, eid = [], None
            for line in text.split("\n"):
                if line.startswith("data:"):
                    data.append(line[5:].lstrip(" ") if line[5:6] == " " else line[5:])
                elif line.startswith("id:"):
                    eid = line[3:].strip()
            if not data:
                continue
            payload = "\n".join(data)
            if payload == "[DONE]":
                self.done = True
                return
            ev = json.loads(payload)
            if eid is not None:
                ev["_id"] = eid
            yield ev

    def all(self):
        out = list(self.events())
        self.close()
        return out

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class AgentServer:
    """`paddock serve` with the model clients pointed at a FakeModel, plus a key."""

    def __init__(self, pd, fake, args=(), model="openai:fake", extra_env=None):
        env = dict(pd.env)
        env.update(fake.env())
        env.update(extra_env or {})
        a = list(args)
        if model and "--model" not in a:
            a = ["--model", model] + a
        self.pd, self.fake = pd, fake
        self.server = ApiServer(pd, args=a, env=env)

    def start(self):
        self.server.start()
        self.key = self.server.make_key("agent-tests", scopes=SCOPES)
        return self

    @property
    def http(self):
        return self.server.http(self.key)

    # ---- interactions ----

    def post(self, body, headers=None, timeout=60, v=V, key=None):
        h = self.http if key is None else self.server.http(key)
        return h.post(f"/{v}/interactions", json_body=body, headers=headers, timeout=timeout)

    def create(self, body, status=200, **kw):
        r = self.post(body, **kw)
        assert r.status == status, r
        return r.json() if status == 200 else r

    def get(self, iid, query="", v=V):
        r = self.http.get(f"/{v}/interactions/{iid}" + (f"?{query}" if query else ""))
        assert r.status == 200, r
        return r.json()

    def wait(self, iid, statuses=FINAL, timeout=30):
        end = time.monotonic() + timeout * SLOWDOWN
        while True:
            it = self.get(iid)
            if it.get("status") in statuses:
                return it
            if time.monotonic() > end:
                raise AssertionError(f"interaction {iid} never reached {statuses}: {it}")
            time.sleep(0.05)

    def cancel(self, iid):
        return self.http.post(f"/{V}/interactions/{iid}/cancel")

    def stream(self, body, v=V, timeout=30):
        s = self.server
        return SSE(s.host, s.port, "POST", f"/{v}/interactions", self.key,
                   body=dict(body, stream=True), timeout=timeout)

    def stream_get(self, iid, last_event_id=None, v=V, timeout=30):
        q = "stream=true" + (f"&last_event_id={last_event_id}" if last_event_id is not None
                             else "")
        s = self.server
        return SSE(s.host, s.port, "GET", f"/{v}/interactions/{iid}?{q}", self.key,
                   timeout=timeout)

    def file(self, env_id, path):
        """The bytes of a workspace file (path relative to the sandbox root)."""
        return self.http.get(f"/{V}/environments/{env_id}/files/{path}?alt=media")

    def stop(self):
        finish(self.server)


def steps_of(it, type_):
    return [s for s in it.get("steps", []) if s.get("type") == type_]


def output_text(it):
    """What the SDK computes as output_text (spec §7.1)."""
    out = []
    for s in reversed(it.get("steps", [])):
        if s.get("type") == "user_input":
            break
        if s.get("type") == "thought":
            continue
        if s.get("type") != "model_output":
            if out:
                break
            continue
        texts = []
        for c in reversed(s.get("content") or []):
            if c.get("type") != "text":
                break
            texts.insert(0, c["text"])
        out = texts + out
    return "".join(out)


def result_text(step):
    """The result of a *_result step flattened to a string."""
    r = step.get("result")
    if isinstance(r, str):
        return r
    if isinstance(r, list):
        return "".join(c.get("text", "") for c in r if isinstance(c, dict))
    return json.dumps(r)


def bash(cmd, **extra):
    return {"calls": [{"name": "bash", "args": dict({"command": cmd}, **extra)}]}


def fs(op, path, content=None):
    a = {"operation": op, "path": path}
    if content is not None:
        a["content"] = content
    return {"calls": [{"name": "file_system", "args": a}]}


def model_calls(fake, n=None, timeout=10):
    """The fake's recorded model calls; with n, waits until there are at least n."""
    end = time.monotonic() + timeout * SLOWDOWN
    while True:
        reqs = fake.requests()
        if n is None or len(reqs) >= n:
            return reqs
        if time.monotonic() > end:
            raise AssertionError(f"the model got {len(reqs)} calls, expected {n}: {reqs!r:.3000}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def mfake():
    f = FakeModel().start()
    try:
        yield f
    finally:
        f.stop()


@pytest.fixture
def fake(mfake):
    mfake.reset()
    return mfake


@pytest.fixture
def ag(pd, fake):
    a = AgentServer(pd, fake).start()
    try:
        yield a
    finally:
        a.stop()


@pytest.fixture(scope="module")
def _mag(mpd, mfake):
    a = AgentServer(mpd, mfake).start()
    try:
        yield a
    finally:
        a.stop()


@pytest.fixture
def mag(_mag, fake):
    """The module's server; one that died in an earlier test is restarted first, and a test
    during which it dies fails (with the end of its log)."""
    if not _mag.server.alive():
        _mag.server.start()
    since = len(_mag.server.lines)
    yield _mag
    if not _mag.server.alive():
        rc = _mag.server.proc.returncode
        tail = "\n".join(_mag.server.lines[since:][-30:])
        _mag.server.start()
        pytest.fail(f"paddock serve died during this test (exit {rc}):\n{tail}")


__all__ = ["SSE", "AgentServer", "FakeModel", "V", "FINAL", "SCOPES", "WIRE", "steps_of",
           "output_text", "result_text", "bash", "fs", "model_calls", "system_text",
           "tool_results", "tool_names", "all_text", "mfake", "fake", "ag", "mag", "_mag",
           "SLOWDOWN", "Http"]
