"""mcp_server tools (issue 5): paddock connects to an MCP server over streamable HTTP, shows its
tools to the model, calls them, records mcp_server_tool_call / _result steps; the server's
headers go to its own URL only (no redirect followed), and its address passes the egress
proxy's rules (loopback is refused unless the operator allows it).

Upstreams: tests/fakes/fake_model.py (OpenAI format) and tests/fakes/mcp_server.py, both on
127.0.0.1.
"""

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from apiserver import ApiServer, finish

FAKES = Path(__file__).resolve().parents[1] / "fakes"
AGENT = "antigravity-preview-05-2026"


class Proc:
    def __init__(self, *argv):
        self.p = subprocess.Popen(["/usr/bin/python3", *argv], stdout=subprocess.PIPE, text=True)
        m = re.search(r"http://127\.0\.0\.1:(\d+)", self.p.stdout.readline())
        assert m, "fake did not start"
        self.url = f"http://127.0.0.1:{m.group(1)}"

    def call(self, method, path, body=None):
        req = urllib.request.Request(self.url + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            data = r.read()
        return json.loads(data) if data else None

    def stop(self):
        self.p.kill()
        self.p.wait()


@pytest.fixture
def model():
    f = Proc(str(FAKES / "fake_model.py"), "--port", "0")
    yield f
    f.stop()


def serve(pd, model, allow=True):
    env = dict(pd.env, OPENAI_BASE_URL=model.url + "/v1")
    args = ["--model", "openai:fake"] + (["--egress-allow-cidr", "127.0.0.0/8"] if allow else [])
    s = ApiServer(pd, args=args, env=env)
    s.start()
    key = s.make_key("mcp", scopes=("interactions", "environments"))
    return s, s.http(key)


def run(http, body):
    r = http.post("/v1beta/interactions", json_body=body, timeout=120)
    assert r.status == 200, r
    return r.json()


def mcp_tool(url, **kw):
    return dict({"type": "mcp_server", "name": "fakemcp", "url": url,
                 "headers": {"Authorization": "Bearer mcp-secret-123"}}, **kw)


@pytest.mark.parametrize("sse", [False, True], ids=["json", "sse"])
def test_mcp_tools_are_listed_called_and_recorded(pd, model, sse):
    mcp = Proc(str(FAKES / "mcp_server.py"), "--port", "0", *(["--sse"] if sse else []))
    s, http = serve(pd, model)
    try:
        model.call("POST", "/_script", [
            {"calls": [{"name": "add", "args": {"a": 2, "b": 40}}]},
            {"text": "the sum is 42"}])
        it = run(http, {"agent": AGENT, "input": "add 2 and 40",
                        "environment": {"type": "remote", "network": "disabled"},
                        "tools": [mcp_tool(mcp.url + "/",
                                           allowed_tools=[{"mode": "auto",
                                                           "tools": ["echo", "add"]}])]})
        assert it["status"] == "completed", it
        kinds = [st["type"] for st in it["steps"]]
        assert kinds == ["user_input", "mcp_server_tool_call", "mcp_server_tool_result",
                         "model_output"], kinds
        call, res = it["steps"][1], it["steps"][2]
        assert call["name"] == "add" and call["server_name"] == "fakemcp"
        assert call["arguments"] == {"a": 2, "b": 40}
        assert res["call_id"] == call["id"] and res["result"] == "42"
        reqs = model.call("GET", "/_requests")
        # The model saw the server's tools (allowed_tools hid secret_tool) and the result.
        tools = [t["function"]["name"] for t in reqs[0]["body"]["tools"]]
        assert "echo" in tools and "add" in tools and "secret_tool" not in tools
        tool_msgs = [m for m in reqs[1]["body"]["messages"] if m["role"] == "tool"]
        assert tool_msgs and tool_msgs[-1]["content"] == "42"
        # The MCP server got the configured header, a session, and the call.
        seen = mcp.call("GET", "/_requests")
        methods = [r["body"].get("method") for r in seen]
        assert methods[:3] == ["initialize", "notifications/initialized", "tools/list"]
        assert "tools/call" in methods
        assert all(r["headers"].get("authorization") == "Bearer mcp-secret-123" for r in seen)
        assert seen[-1]["headers"].get("mcp-session-id") == "sess-42"
        # The header never reached the model.
        assert "mcp-secret-123" not in json.dumps(reqs)
    finally:
        finish(s)
        mcp.stop()


def test_mcp_result_over_the_cap_keeps_its_head_and_says_so(pd, model):
    """A tools/call answer larger than a step keeps (1 MiB) reaches the record and the model as
    its first MiB and a note of what was left out, never as an empty success."""
    mcp = Proc(str(FAKES / "mcp_server.py"), "--port", "0")
    s, http = serve(pd, model)
    try:
        model.call("POST", "/_script", [
            {"calls": [{"name": "big", "args": {"items": 3, "size": 600000}}]},
            {"text": "done"}])
        it = run(http, {"agent": AGENT, "input": "fetch it",
                        "environment": {"type": "remote", "network": "disabled"},
                        "tools": [mcp_tool(mcp.url + "/")]})
        assert it["status"] == "completed", it
        res = [st for st in it["steps"] if st["type"] == "mcp_server_tool_result"][0]["result"]
        assert res.startswith("item0:xxx") and "item1:xxx" in res, res[:100]
        assert "item2:" not in res
        assert 1 << 20 <= len(res) < (1 << 20) + 100, len(res)
        dropped = 3 * 600006 + 2 - (1 << 20)
        assert res.endswith(f"[{dropped} bytes of the result not kept]"), res[-100:]
    finally:
        finish(s)
        mcp.stop()


def test_mcp_call_in_flight_is_cancelled(pd, model):
    """A cancel stops an MCP call under way within about a second (not at the call's own
    60 s timeout), answers cancelled, and starts none of the turn's later calls; a delete of
    a running interaction works the same way."""
    mcp = Proc(str(FAKES / "mcp_server.py"), "--port", "0")
    s, http = serve(pd, model)
    try:
        for verb in ("cancel", "delete"):
            model.call("POST", "/_reset", {})
            model.call("POST", "/_script", [
                {"calls": [{"name": "slow", "args": {"seconds": 30}},
                           {"name": "add", "args": {"a": 1, "b": 2}}]},
                {"text": "never"}])
            r = http.post("/v1beta/interactions", json_body={
                "agent": AGENT, "input": "slow", "background": True,
                "environment": {"type": "remote", "network": "disabled"},
                "tools": [mcp_tool(mcp.url + "/")]})
            assert r.status == 200, r
            iid = r.json()["id"]
            deadline = time.monotonic() + 15
            while not [q for q in mcp.call("GET", "/_requests")
                       if q["body"].get("params", {}).get("name") == "slow"]:
                assert time.monotonic() < deadline, "the slow call never started"
                time.sleep(0.05)
            t0 = time.monotonic()
            if verb == "cancel":
                r = http.post(f"/v1beta/interactions/{iid}/cancel")
                assert r.status == 200 and r.json()["status"] == "cancelled", r
            else:
                r = http.delete(f"/v1beta/interactions/{iid}")
                assert r.status == 200, r
                assert http.get(f"/v1beta/interactions/{iid}").status == 404
            assert time.monotonic() - t0 < 5, "the MCP call was not cut short"
            calls = [q["body"]["params"]["name"] for q in mcp.call("GET", "/_requests")
                     if q["body"].get("method") == "tools/call"]
            assert calls.count("add") == 0, calls
    finally:
        finish(s)
        mcp.stop()


def test_mcp_server_slow_to_open_is_cancelled(pd, model):
    """A cancel while paddock connects to an MCP server (its initialize takes 30 s) ends the
    interaction cancelled within seconds."""
    mcp = Proc(str(FAKES / "mcp_server.py"), "--port", "0", "--slow-init", "30")
    s, http = serve(pd, model)
    try:
        model.call("POST", "/_script", [{"text": "never"}])
        r = http.post("/v1beta/interactions", json_body={
            "agent": AGENT, "input": "x", "background": True,
            "environment": {"type": "remote", "network": "disabled"},
            "tools": [mcp_tool(mcp.url + "/")]})
        assert r.status == 200, r
        iid = r.json()["id"]
        deadline = time.monotonic() + 15
        while not mcp.call("GET", "/_requests"):
            assert time.monotonic() < deadline, "paddock never connected"
            time.sleep(0.05)
        t0 = time.monotonic()
        r = http.post(f"/v1beta/interactions/{iid}/cancel")
        assert r.status == 200 and r.json()["status"] == "cancelled", r
        assert time.monotonic() - t0 < 5
        assert not model.call("GET", "/_requests"), "the model was called after the cancel"
    finally:
        finish(s)
        mcp.stop()


def test_mcp_error_never_carries_the_header_secret(pd, model):
    """An MCP server that echoes its Authorization header in a JSON-RPC error: the result the
    model and the step see, and the server's log, have it redacted."""
    mcp = Proc(str(FAKES / "mcp_server.py"), "--port", "0")
    s, http = serve(pd, model)
    try:
        model.call("POST", "/_script", [{"calls": [{"name": "fail_echo", "args": {}}]},
                                        {"text": "done"}])
        it = run(http, {"agent": AGENT, "input": "x",
                        "environment": {"type": "remote", "network": "disabled"},
                        "tools": [mcp_tool(mcp.url + "/")]})
        assert it["status"] == "completed", it
        res = [st for st in it["steps"] if st["type"] == "mcp_server_tool_result"][0]
        assert res["is_error"] and "denied for" in res["result"], res
        assert "[redacted]" in res["result"], res
        assert "mcp-secret-123" not in json.dumps([it["steps"], it.get("errors")])
        assert "mcp-secret-123" not in json.dumps(model.call("GET", "/_requests"))
        assert "mcp-secret-123" not in "\n".join(s.log_lines())
    finally:
        finish(s)
        mcp.stop()


def test_mcp_headers_never_follow_a_redirect(pd, model):
    other = Proc(str(FAKES / "mcp_server.py"), "--port", "0")
    mcp = Proc(str(FAKES / "mcp_server.py"), "--port", "0", "--redirect-to", other.url + "/")
    s, http = serve(pd, model)
    try:
        it = run(http, {"agent": AGENT, "input": "hi",
                        "environment": {"type": "remote", "network": "disabled"},
                        "tools": [mcp_tool(mcp.url + "/")]})
        assert it["status"] == "failed", it
        assert any("fakemcp" in e["message"] and "307" in e["message"]
                   for e in it.get("errors", [])), it
        assert len(mcp.call("GET", "/_requests")) == 1
        assert other.call("GET", "/_requests") == []  # nothing, so no header, went there
        assert model.call("GET", "/_requests") == []  # the run stopped before the model
    finally:
        finish(s)
        mcp.stop()
        other.stop()


def test_mcp_server_on_loopback_is_refused_unless_allowed(pd, model):
    mcp = Proc(str(FAKES / "mcp_server.py"), "--port", "0")
    s, http = serve(pd, model, allow=False)
    try:
        it = run(http, {"agent": AGENT, "input": "hi",
                        "environment": {"type": "remote", "network": "disabled"},
                        "tools": [mcp_tool(mcp.url + "/")]})
        assert it["status"] == "failed", it
        msg = " ".join(e["message"] for e in it.get("errors", []))
        assert "fakemcp" in msg and "loopback" in msg, it
        assert mcp.call("GET", "/_requests") == []
    finally:
        finish(s)
        mcp.stop()


@pytest.mark.parametrize("tool,why", [
    ({"type": "mcp_server", "url": "ftp://x/"}, "http(s) url"),
    ({"type": "mcp_server", "url": "http://x/", "headers": {"a": "b\r\nc: d"}}, "line breaks"),
    ({"type": "mcp_server", "url": "http://x/", "headers": ["a"]}, "headers"),
    ({"type": "google_search"}, "not supported"),
])
def test_bad_tools_are_refused_at_create(pd, model, tool, why):
    s, http = serve(pd, model)
    try:
        r = http.post("/v1beta/interactions",
                      json_body={"agent": AGENT, "input": "hi", "tools": [tool]})
        assert r.status == 400, r
        assert why in r.json()["error"]["message"], r
    finally:
        finish(s)


def test_mcp_headers_go_to_their_own_server_only(pd, model):
    """Two servers in one run: the header configured for one reaches it on every request,
    never the other server and never the model."""
    docs = Proc(str(FAKES / "mcp_server.py"), "--port", "0")
    other = Proc(str(FAKES / "mcp_server.py"), "--port", "0")
    s, http = serve(pd, model)
    try:
        model.call("POST", "/_script", [{"calls": [{"name": "echo", "args": {"text": "hi"}}]},
                                        {"text": "done"}])
        it = run(http, {"agent": AGENT, "input": "echo hi",
                        "environment": {"type": "remote", "network": "disabled"},
                        "tools": [mcp_tool(docs.url + "/", name="docs",
                                           headers={"X-Docs-Secret": "s3cret-docs-only"},
                                           allowed_tools=[{"mode": "auto", "tools": ["echo"]}]),
                                  mcp_tool(other.url + "/", name="other", headers={},
                                           allowed_tools=[{"mode": "auto", "tools": ["add"]}])]})
        assert it["status"] == "completed", it
        call = [st for st in it["steps"] if st["type"] == "mcp_server_tool_call"]
        assert call and call[0]["server_name"] == "docs", it["steps"]
        seen_docs, seen_other = docs.call("GET", "/_requests"), other.call("GET", "/_requests")
        assert seen_docs and seen_other  # both were initialized and listed
        assert all(r["headers"].get("x-docs-secret") == "s3cret-docs-only" for r in seen_docs)
        assert not [r for r in seen_other if "x-docs-secret" in r["headers"]], seen_other
        assert "s3cret-docs-only" not in json.dumps(model.call("GET", "/_requests"))
    finally:
        finish(s)
        docs.stop()
        other.stop()


def test_mcp_server_down_fails_the_run_and_names_it(pd, model):
    dead = Proc(str(FAKES / "mcp_server.py"), "--port", "0")
    url = dead.url
    dead.stop()
    s, http = serve(pd, model)
    try:
        it = run(http, {"agent": AGENT, "input": "hi",
                        "environment": {"type": "remote", "network": "disabled"},
                        "tools": [mcp_tool(url + "/", name="deadmcp")]})
        assert it["status"] == "failed", it
        assert any("deadmcp" in e["message"] for e in it.get("errors", [])), it
        assert model.call("GET", "/_requests") == []  # the run stopped before the model
    finally:
        finish(s)


def test_mcp_header_values_are_sent_but_never_read_back(pd, model):
    """An mcp_server tool's headers are the MCP server's credentials: runs send them, but no
    answer of the API carries their values, neither the interaction (its create answer, a
    get) nor a stored agent (create, get, list), whose runs still send them. They used to be
    echoed whole to any key that may read interactions or agents."""
    mcp = Proc(str(FAKES / "mcp_server.py"), "--port", "0")
    s, http = serve(pd, model)
    try:
        ag = s.http(s.make_key("ag", scopes=("agents", "interactions", "environments")))
        model.call("POST", "/_script", [{"calls": [{"name": "add", "args": {"a": 1, "b": 2}}]},
                                        {"text": "3"},
                                        {"calls": [{"name": "add", "args": {"a": 3, "b": 4}}]},
                                        {"text": "7"}])
        env = {"type": "remote", "network": "disabled"}
        it = run(http, {"agent": AGENT, "input": "x", "environment": env,
                        "tools": [mcp_tool(mcp.url + "/")]})
        assert it["status"] == "completed", it
        assert it["tools"][0]["headers"] == {"Authorization": "[redacted]"}, it["tools"]
        assert it["tools"][0]["url"] == mcp.url + "/"
        got = http.get(f"/v1beta/interactions/{it['id']}")
        assert got.status == 200 and got.json()["tools"][0]["headers"] == \
            {"Authorization": "[redacted]"}, got
        a = ag.post("/v1beta/agents", json_body={"id": "mcp-agent",
                                                 "tools": [mcp_tool(mcp.url + "/")]})
        assert a.status == 200, a
        answers = [it, got.json(), a.json(), ag.get("/v1beta/agents/mcp-agent").json(),
                   ag.get("/v1beta/agents").json()]
        assert all(x["tools"][0]["headers"] == {"Authorization": "[redacted]"}
                   for x in answers[2:4]), answers[2:4]
        assert "mcp-secret-123" not in json.dumps(answers), answers
        n = len(mcp.call("GET", "/_requests"))
        r = ag.post("/v1beta/interactions", json_body={"agent": "mcp-agent", "input": "y",
                                                       "environment": env}, timeout=120)
        assert r.status == 200 and r.json()["status"] == "completed", r
        assert "mcp-secret-123" not in r.text, r
        seen = mcp.call("GET", "/_requests")[n:]
        assert seen and all(x["headers"].get("authorization") == "Bearer mcp-secret-123"
                            for x in seen), seen
    finally:
        finish(s)
        mcp.stop()
