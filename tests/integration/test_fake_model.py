"""Checks tests/fakes/fake_model.py itself, so that the integration tests of the agent loop can
trust it: every step kind rendered in each of the three wire formats, the shared queue, the
control endpoints, and that it serves requests in parallel. No paddock binary needed."""

import http.client
import json
import pathlib
import socket
import subprocess
import threading
import time

import pytest

FAKE = pathlib.Path(__file__).resolve().parents[1] / "fakes" / "fake_model.py"

PATHS = {
    "gemini": "/v1beta/models/gemini-2.5-pro:generateContent",
    "openai": "/v1/chat/completions",
    "anthropic": "/v1/messages",
}
BODIES = {
    "gemini": {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
    "openai": {"model": "local", "messages": [{"role": "user", "content": "hi"}]},
    "anthropic": {"model": "claude-x", "max_tokens": 10,
                  "messages": [{"role": "user", "content": "hi"}]},
}
FORMATS = list(PATHS)


@pytest.fixture(scope="module")
def fake():
    proc = subprocess.Popen(["/usr/bin/python3", str(FAKE), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:"), line
        yield int(line.rsplit(":", 1)[1])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def call(port, method, path, body=None, headers=None, timeout=10):
    """One request; returns (status, headers, parsed JSON or raw text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        conn.request(method, path, body=data, headers=hdrs)
        r = conn.getresponse()
        raw = r.read().decode()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw
        return r.status, {k.lower(): v for k, v in r.getheaders()}, parsed
    finally:
        conn.close()


def script(port, steps):
    call(port, "POST", "/_reset", {})
    status, _, _ = call(port, "POST", "/_script", steps)
    assert status == 200


def ask(port, fmt, **kw):
    return call(port, "POST", PATHS[fmt], BODIES[fmt], **kw)


def test_text_in_each_format(fake):
    script(fake, [{"text": "hello", "usage": {"input": 7, "output": 3}}] * 3)
    _, _, g = ask(fake, "gemini")
    assert g["candidates"][0]["content"] == {"role": "model", "parts": [{"text": "hello"}]}
    assert g["candidates"][0]["finishReason"] == "STOP"
    assert g["usageMetadata"]["promptTokenCount"] == 7
    assert g["usageMetadata"]["candidatesTokenCount"] == 3
    assert g["usageMetadata"]["totalTokenCount"] == 10
    _, _, o = ask(fake, "openai")
    assert o["choices"][0]["message"] == {"role": "assistant", "content": "hello"}
    assert o["choices"][0]["finish_reason"] == "stop"
    assert o["usage"]["prompt_tokens"] == 7 and o["usage"]["completion_tokens"] == 3
    assert o["model"] == "local"
    _, _, a = ask(fake, "anthropic")
    assert a["content"] == [{"type": "text", "text": "hello"}]
    assert a["stop_reason"] == "end_turn"
    assert a["usage"]["input_tokens"] == 7 and a["usage"]["output_tokens"] == 3


def test_thought_and_calls(fake):
    step = {"thought": "hmm", "text": "running",
            "calls": [{"name": "bash", "args": {"command": "ls"}},
                      {"name": "file_system", "args_raw": "{\"op\": "}],
            "usage": {"input": 5, "output": 4, "thought": 2}}
    script(fake, [step] * 3)
    _, _, g = ask(fake, "gemini")
    parts = g["candidates"][0]["content"]["parts"]
    assert parts[0] == {"text": "hmm", "thought": True}
    assert parts[1] == {"text": "running"}
    assert parts[2]["functionCall"] == {"name": "bash", "args": {"command": "ls"}}
    assert parts[2]["thoughtSignature"].startswith("fake-sig-")
    assert parts[3] == {"functionCall": {"name": "file_system", "args": "{\"op\": "}}
    assert g["usageMetadata"]["thoughtsTokenCount"] == 2
    _, _, o = ask(fake, "openai")
    m = o["choices"][0]["message"]
    assert m["reasoning_content"] == "hmm" and m["content"] == "running"
    assert json.loads(m["tool_calls"][0]["function"]["arguments"]) == {"command": "ls"}
    assert m["tool_calls"][0]["type"] == "function" and m["tool_calls"][0]["id"]
    assert m["tool_calls"][1]["function"]["arguments"] == "{\"op\": "
    assert o["choices"][0]["finish_reason"] == "tool_calls"
    assert o["usage"]["completion_tokens"] == 6
    assert o["usage"]["completion_tokens_details"]["reasoning_tokens"] == 2
    _, _, a = ask(fake, "anthropic")
    kinds = [b["type"] for b in a["content"]]
    assert kinds == ["thinking", "text", "tool_use", "tool_use"]
    assert a["content"][0]["thinking"] == "hmm" and a["content"][0]["signature"]
    assert a["content"][2]["input"] == {"command": "ls"} and a["content"][2]["id"]
    assert a["content"][3]["input"] == "{\"op\": "
    assert a["stop_reason"] == "tool_use"


def test_missing_ids_finish_and_block(fake):
    script(fake, [{"calls": [{"name": "bash", "args": {}}], "omit_ids": True},
                  {"text": "cut", "finish": "length"},
                  {"text": "cut", "finish": "length"},
                  {"block": "SAFETY"},
                  {"text": "x", "finish": "length"}])
    _, _, o = ask(fake, "openai")
    assert "id" not in o["choices"][0]["message"]["tool_calls"][0]
    _, _, g = ask(fake, "gemini")
    assert g["candidates"][0]["finishReason"] == "MAX_TOKENS"
    _, _, a = ask(fake, "anthropic")
    assert a["stop_reason"] == "max_tokens"
    _, _, g = ask(fake, "gemini")
    assert g["promptFeedback"] == {"blockReason": "SAFETY"} and "candidates" not in g
    _, _, o = ask(fake, "openai")
    assert o["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("fmt", FORMATS)
def test_errors_and_garbage(fake, fmt):
    script(fake, [{"status": 429, "headers": {"Retry-After": "0"}},
                  {"status": 500, "body": "plain words"},
                  {"status": 400, "body": {"error": {"message": "nope"}}},
                  {"garbage": "<html>"}])
    status, headers, body = ask(fake, fmt)
    assert status == 429 and headers["retry-after"] == "0"
    msg = body["error"]["message"]
    assert msg == "fake error 429"
    if fmt == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    if fmt == "gemini":
        assert body["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert ask(fake, fmt)[0:3:2] == (500, "plain words")
    assert ask(fake, fmt)[0:3:2] == (400, {"error": {"message": "nope"}})
    status, headers, body = ask(fake, fmt)
    assert status == 200 and body == "<html>" and headers["content-type"] == "text/plain"


def test_default_repeat_and_delay(fake):
    script(fake, [{"text": "one"}])
    assert ask(fake, "openai")[2]["choices"][0]["message"]["content"] == "one"
    assert ask(fake, "openai")[2]["choices"][0]["message"]["content"] == "done"
    call(fake, "POST", "/_reset", {})
    call(fake, "POST", "/_script", {"steps": [], "default": {"text": "fallback"}})
    assert ask(fake, "anthropic")[2]["content"][0]["text"] == "fallback"
    script(fake, [{"text": "first"}, {"text": "again", "repeat": True}])
    texts = [ask(fake, "gemini")[2]["candidates"][0]["content"]["parts"][0]["text"]
             for _ in range(4)]
    assert texts == ["first", "again", "again", "again"]
    script(fake, [{"delay_s": 0.4, "text": "late"}, {"delay_s": 0.2}])
    t0 = time.monotonic()
    assert ask(fake, "openai")[2]["choices"][0]["message"]["content"] == "late"
    assert time.monotonic() - t0 >= 0.4
    assert ask(fake, "openai")[2]["choices"][0]["message"]["content"] == "done"


def test_hang_does_not_block_others(fake):
    script(fake, [{"hang": True}, {"text": "meanwhile"}])
    errors = []

    def hanging():
        try:
            ask(fake, "gemini", timeout=0.5)
            errors.append("the hanging request was answered")
        except (socket.timeout, TimeoutError):
            pass

    th = threading.Thread(target=hanging)
    th.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    assert ask(fake, "openai")[2]["choices"][0]["message"]["content"] == "meanwhile"
    assert time.monotonic() - t0 < 0.5
    th.join()
    assert not errors


def test_requests_are_recorded(fake):
    script(fake, [{"text": "a"}, {"text": "b"}])
    ask(fake, "gemini", headers={"x-goog-api-key": "gkey"})
    call(fake, "POST", "/chat/completions", BODIES["openai"],
         headers={"Authorization": "Bearer okey"})
    _, _, reqs = call(fake, "GET", "/_requests")
    assert [r["format"] for r in reqs] == ["gemini", "openai"]
    assert reqs[0]["path"] == PATHS["gemini"]
    assert reqs[0]["headers"]["x-goog-api-key"] == "gkey"
    assert reqs[1]["path"] == "/chat/completions"
    assert reqs[1]["headers"]["authorization"] == "Bearer okey"
    assert reqs[1]["body"] == BODIES["openai"]
    assert call(fake, "GET", "/_stats")[2] == {"requests": 2, "kept": 2, "script_left": 0}
    call(fake, "POST", "/_reset", {})
    assert call(fake, "GET", "/_requests")[2] == []
    assert call(fake, "GET", "/_stats")[2]["requests"] == 0


def test_keeps_only_the_last_requests():
    proc = subprocess.Popen(["/usr/bin/python3", str(FAKE), "--keep", "3"],
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().strip().rsplit(":", 1)[1])
        for i in range(5):
            call(port, "POST", PATHS["openai"], dict(BODIES["openai"], n=i))
        _, _, reqs = call(port, "GET", "/_requests")
        assert [r["body"]["n"] for r in reqs] == [2, 3, 4]
        assert call(port, "GET", "/_stats")[2]["requests"] == 5
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_bad_input(fake):
    assert call(fake, "POST", "/v1/unknown", {})[0] == 404
    assert call(fake, "POST", "/_script", {"steps": [{"txet": "typo"}]})[0] == 400
    assert call(fake, "POST", "/_script", [1, 2])[0] == 400
    conn = http.client.HTTPConnection("127.0.0.1", fake, timeout=5)
    conn.request("POST", PATHS["anthropic"], body=b"{not json",
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 400 and json.loads(r.read())["type"] == "error"
    conn.close()
    # Still serving.
    script(fake, [])
    assert ask(fake, "openai")[0] == 200
