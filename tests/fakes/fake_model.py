#!/usr/bin/python3
"""A scripted fake model server speaking Gemini generateContent, OpenAI chat completions and
Anthropic Messages, for paddock's integration tests and benchmarks. Python 3 stdlib only.

    /usr/bin/python3 tests/fakes/fake_model.py [--port N] [--script FILE] [--default-text T]

The first line on stdout is `listening on http://127.0.0.1:PORT`. The script is a JSON list of
steps (or {"steps": [...], "default": {...}}), consumed in order by whichever format asks next;
each step is rendered into that request's format. See tests/fakes/README.md for the steps and
the control endpoints (/_script, /_requests, /_reset).
"""

import argparse
import collections
import json
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 64 * 1024 * 1024

STEP_KEYS = {"text", "thought", "calls", "usage", "status", "body", "headers", "delay_s",
             "garbage", "hang", "repeat", "finish", "block", "omit_ids"}


class Script:
    """The queue of steps shared by all formats, the requests seen, and counters for ids."""

    def __init__(self, steps=None, default=None, keep=10000):
        self.lock = threading.Lock()
        self.default = default or {"text": "done"}
        # The last `keep` requests: a benchmark must not grow the fake without bound.
        self.requests = collections.deque(maxlen=keep)
        self.total = 0
        self.ids = 0
        self.load(steps or [])

    def load(self, steps, default=None):
        if isinstance(steps, dict):
            default = steps.get("default", default)
            steps = steps.get("steps", [])
        if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
            raise ValueError("a script is a JSON list of step objects")
        for s in steps:
            unknown = set(s) - STEP_KEYS
            if unknown:
                raise ValueError("unknown step keys: " + ", ".join(sorted(unknown)))
        with self.lock:
            self.steps = list(steps)
            self.pos = 0
            if default is not None:
                self.default = default

    def next_step(self):
        with self.lock:
            if self.pos < len(self.steps):
                step = self.steps[self.pos]
                if not (step.get("repeat") and self.pos == len(self.steps) - 1):
                    self.pos += 1
                return step
            return self.default

    def next_id(self):
        with self.lock:
            self.ids += 1
            return self.ids

    def record(self, entry):
        with self.lock:
            self.requests.append(entry)
            self.total += 1

    def reset(self):
        with self.lock:
            self.steps, self.pos, self.ids, self.total = [], 0, 0, 0
            self.requests.clear()
            self.default = {"text": "done"}


# ------------------------------------------------------------------ rendering


def _usage(step, req_len):
    """The step's usage, or one derived from the sizes of the request and the answer."""
    u = dict(step.get("usage") or {})
    text = step.get("text") or ""
    u.setdefault("input", max(1, req_len // 4))
    u.setdefault("output", max(1, len(text) // 4) + 10 * len(step.get("calls") or []))
    u.setdefault("thought", len(step.get("thought") or "") // 4)
    u.setdefault("cached", 0)
    return u


def _args_value(call):
    """A call's arguments as a JSON value, for the formats whose arguments are objects: args,
    or args_raw parsed when it parses and kept as a string when it does not."""
    if "args_raw" in call:
        try:
            return json.loads(call["args_raw"])
        except ValueError:
            return call["args_raw"]
    return call.get("args", {})


def _args_string(call):
    if "args_raw" in call:
        return call["args_raw"]
    return json.dumps(call.get("args", {}))


def render_gemini(step, script, model, req_len):
    if step.get("block"):
        return {"promptFeedback": {"blockReason": step["block"]},
                "usageMetadata": {"promptTokenCount": req_len // 4}}
    parts = []
    if step.get("thought"):
        parts.append({"text": step["thought"], "thought": True})
    if step.get("text"):
        parts.append({"text": step["text"]})
    for i, call in enumerate(step.get("calls") or []):
        fc = {"name": call["name"], "args": _args_value(call)}
        if call.get("id"):
            fc["id"] = call["id"]
        part = {"functionCall": fc}
        if i == 0:
            part["thoughtSignature"] = "fake-sig-%d" % script.next_id()
        parts.append(part)
    finish = {"length": "MAX_TOKENS", "other": "SAFETY",
              "malformed": "MALFORMED_FUNCTION_CALL"}.get(step.get("finish"), "STOP")
    u = _usage(step, req_len)
    usage = {"promptTokenCount": u["input"], "candidatesTokenCount": u["output"],
             "totalTokenCount": u["input"] + u["output"] + u["thought"]}
    if u["thought"]:
        usage["thoughtsTokenCount"] = u["thought"]
    if u["cached"]:
        usage["cachedContentTokenCount"] = u["cached"]
    return {"candidates": [{"content": {"role": "model", "parts": parts},
                            "finishReason": finish, "index": 0}],
            "usageMetadata": usage, "modelVersion": model}


def render_openai(step, script, model, req_len):
    msg = {"role": "assistant", "content": step.get("text") or None}
    if step.get("thought"):
        msg["reasoning_content"] = step["thought"]
    calls = step.get("calls") or []
    if calls:
        msg["tool_calls"] = []
        for call in calls:
            tc = {"type": "function",
                  "function": {"name": call["name"], "arguments": _args_string(call)}}
            if not step.get("omit_ids"):
                tc["id"] = call.get("id") or "call_fake_%d" % script.next_id()
            msg["tool_calls"].append(tc)
    if step.get("block"):
        finish = "content_filter"
    else:
        finish = {"length": "length", "other": "content_filter", "malformed": "tool_calls"}.get(
            step.get("finish"), "tool_calls" if calls else "stop")
    u = _usage(step, req_len)
    return {"id": "chatcmpl-fake-%d" % script.next_id(), "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
            "usage": {"prompt_tokens": u["input"],
                      "completion_tokens": u["output"] + u["thought"],
                      "total_tokens": u["input"] + u["output"] + u["thought"],
                      "prompt_tokens_details": {"cached_tokens": u["cached"]},
                      "completion_tokens_details": {"reasoning_tokens": u["thought"]}}}


def render_anthropic(step, script, model, req_len):
    content = []
    if step.get("thought"):
        content.append({"type": "thinking", "thinking": step["thought"],
                        "signature": "fake-sig-%d" % script.next_id()})
    if step.get("text"):
        content.append({"type": "text", "text": step["text"]})
    calls = step.get("calls") or []
    for call in calls:
        content.append({"type": "tool_use",
                        "id": call.get("id") or "toolu_fake_%d" % script.next_id(),
                        "name": call["name"], "input": _args_value(call)})
    if step.get("block"):
        stop = "refusal"
    else:
        stop = {"length": "max_tokens", "other": "refusal", "malformed": "tool_use"}.get(
            step.get("finish"), "tool_use" if calls else "end_turn")
    u = _usage(step, req_len)
    return {"id": "msg_fake_%d" % script.next_id(), "type": "message", "role": "assistant",
            "model": model, "content": content, "stop_reason": stop, "stop_sequence": None,
            # Anthropic counts thinking in output_tokens and cache reads apart from input.
            "usage": {"input_tokens": u["input"] - u["cached"],
                      "output_tokens": u["output"] + u["thought"],
                      "cache_read_input_tokens": u["cached"],
                      "cache_creation_input_tokens": 0}}


def error_body(fmt, status, message):
    if fmt == "gemini":
        names = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}
        return {"error": {"code": status, "message": message,
                          "status": names.get(status, "INTERNAL")}}
    if fmt == "anthropic":
        kind = {429: "rate_limit_error", 529: "overloaded_error"}.get(
            status, "invalid_request_error" if status < 500 else "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": "fake_error", "code": status}}


RENDER = {"gemini": render_gemini, "openai": render_openai, "anthropic": render_anthropic}


def route(path):
    """The format a model path speaks, or None."""
    if path.startswith("/v1beta/models/") and path.endswith(":generateContent"):
        return "gemini"
    if path in ("/v1/chat/completions", "/chat/completions"):
        return "openai"
    if path == "/v1/messages":
        return "anthropic"
    return None


# -------------------------------------------------------------------- server


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-model/1"

    def setup(self):
        super().setup()
        # Headers and body are two writes: without this, Nagle holds the body until the
        # client's delayed ACK (40 ms) on a kept-alive connection.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("fake_model: " + (fmt % args) + "\n")

    def _read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
                if len(data) > MAX_BODY:
                    raise ValueError("request body too large")
        n = int(self.headers.get("Content-Length") or 0)
        if n < 0 or n > MAX_BODY:
            raise ValueError("request body too large")
        return self.rfile.read(n)

    def _send(self, status, body, ctype="application/json", headers=None):
        if not isinstance(body, (bytes, bytearray)):
            body = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _hang(self):
        """Holds the request unanswered until the client goes away or the server stops."""
        self.close_connection = True
        sock = self.connection
        while not self.server.stopping.is_set():
            ready, _, _ = select.select([sock], [], [], 0.1)
            if ready:
                try:
                    if not sock.recv(1, 2):  # MSG_PEEK: 0 bytes means the peer closed
                        return
                except OSError:
                    return
                time.sleep(0.1)

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/_requests":
            with self.server.script.lock:
                reqs = list(self.server.script.requests)
            return self._send(200, reqs)
        if path == "/_stats":
            with self.server.script.lock:
                s = self.server.script
                stats = {"requests": s.total, "kept": len(s.requests),
                         "script_left": max(0, len(s.steps) - s.pos)}
            return self._send(200, stats)
        if path == "/_health":
            return self._send(200, {"ok": True})
        return self._send(404, {"error": {"message": "no route for GET " + path}})

    def do_POST(self):
        try:
            raw = self._read_body()
        except (ValueError, OSError) as e:
            self.close_connection = True
            return self._send(413, {"error": {"message": str(e)}})
        path = self.path.split("?")[0]
        script = self.server.script
        if path == "/_script":
            try:
                script.load(json.loads(raw or b"[]"))
            except ValueError as e:
                return self._send(400, {"error": {"message": str(e)}})
            return self._send(200, {"ok": True})
        if path == "/_reset":
            script.reset()
            return self._send(200, {"ok": True})
        fmt = route(path)
        if fmt is None:
            return self._send(404, {"error": {"message": "no route for POST " + path}})
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        script.record({"path": self.path, "format": fmt,
                       "headers": {k.lower(): v for k, v in self.headers.items()},
                       "body": body if body is not None else raw.decode("utf-8", "replace"),
                       "time": time.time()})
        if body is None:
            return self._send(400, error_body(fmt, 400, "the request body is not JSON"))
        self._answer(fmt, script.next_step(), body, len(raw), path)

    def _answer(self, fmt, step, body, req_len, path):
        if step.get("delay_s"):
            time.sleep(float(step["delay_s"]))
        if step.get("hang"):
            return self._hang()
        headers = step.get("headers") or {}
        if step.get("status") and int(step["status"]) != 200:
            status = int(step["status"])
            b = step.get("body")
            if b is None:
                b = error_body(fmt, status, "fake error %d" % status)
            return self._send(status, b, headers=headers)
        if "garbage" in step:
            return self._send(200, str(step["garbage"]), ctype="text/plain", headers=headers)
        if "body" in step:
            return self._send(200, step["body"], headers=headers)
        if fmt == "gemini":
            model = path[len("/v1beta/models/"):-len(":generateContent")]
        else:
            model = body.get("model", "") if isinstance(body, dict) else ""
        content = {k: v for k, v in step.items() if k in ("text", "thought", "calls", "block")}
        if not content:
            step = dict(self.server.script.default, **{k: v for k, v in step.items()
                                                       if k in ("usage", "finish")})
        return self._send(200, RENDER[fmt](step, self.server.script, model, req_len),
                          headers=headers)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def handle_error(self, request, client_address):
        # A client that went away mid-answer is normal here (timeouts, caps, cancels).
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def make_server(port=0, steps=None, default=None, verbose=False, keep=10000):
    srv = Server(("127.0.0.1", port), Handler)
    srv.script = Script(steps, default, keep)
    srv.stopping = threading.Event()
    srv.verbose = verbose
    return srv


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--script", help="a JSON file: a list of steps, or {steps, default}")
    ap.add_argument("--default-text", default="done",
                    help="the text answered once the script is exhausted")
    ap.add_argument("--keep", type=int, default=10000,
                    help="how many of the last requests /_requests returns")
    ap.add_argument("--verbose", action="store_true", help="log requests to stderr")
    args = ap.parse_args()
    steps = []
    if args.script:
        with open(args.script, encoding="utf-8") as f:
            steps = json.load(f)
    srv = make_server(args.port, None, {"text": args.default_text}, args.verbose, args.keep)
    srv.script.load(steps)
    print("listening on http://127.0.0.1:%d" % srv.server_address[1], flush=True)
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stopping.set()
        srv.server_close()


if __name__ == "__main__":
    main()
