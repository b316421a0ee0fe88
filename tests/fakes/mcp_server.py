#!/usr/bin/python3
"""A small MCP server over the streamable HTTP transport, for paddock's integration tests.

    /usr/bin/python3 tests/fakes/mcp_server.py [--port N] [--sse] [--redirect-to URL]

Listens on 127.0.0.1 (port 0 = any), prints `listening on http://127.0.0.1:PORT` first.
POST / takes JSON-RPC: initialize (answers with an Mcp-Session-Id), notifications (202),
tools/list (tools `echo` {text} and `add` {a, b}, plus `secret_tool` that allowed_tools can
hide), tools/call. With --sse every answer is a text/event-stream carrying the JSON-RPC
response (after a notification event, as real servers may send). With --redirect-to every
POST answers 307 to that URL instead. GET /_requests lists what arrived (path, headers, body).
"""

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOOLS = [
    {"name": "echo", "description": "Echoes its text.",
     "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}},
                     "required": ["text"]}},
    {"name": "add", "description": "Adds two numbers.",
     "inputSchema": {"type": "object", "properties": {"a": {"type": "number"},
                                                       "b": {"type": "number"}}}},
    {"name": "big", "description": "Answers `items` text items of `size` bytes each.",
     "inputSchema": {"type": "object", "properties": {"items": {"type": "integer"},
                                                       "size": {"type": "integer"}}}},
    {"name": "fail_echo", "description": "Fails, echoing the Authorization header it got.",
     "inputSchema": {"type": "object"}},
    {"name": "slow", "description": "Answers after `seconds`.",
     "inputSchema": {"type": "object", "properties": {"seconds": {"type": "number"}}}},
    {"name": "secret_tool", "description": "Should be hidden by allowed_tools.",
     "inputSchema": {"type": "object"}},
]


class State:
    def __init__(self, sse, redirect, slow_init=0.0):
        self.sse, self.redirect, self.slow_init = sse, redirect, slow_init
        self.lock = threading.Lock()
        self.requests = []


def make_handler(st):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def send(self, code, body=b"", ctype="application/json", headers=None):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/_requests":
                with st.lock:
                    self.send(200, json.dumps(st.requests).encode())
                return
            self.send(405, b"{}")

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n)
            try:
                msg = json.loads(raw)
            except ValueError:
                msg = None
            with st.lock:
                st.requests.append({"path": self.path,
                                    "headers": {k.lower(): v for k, v in self.headers.items()},
                                    "body": msg})
            if st.redirect:
                self.send(307, b"", headers={"Location": st.redirect})
                return
            if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0":
                self.send(400, b'{"error":"not JSON-RPC"}')
                return
            if "id" not in msg:
                self.send(202, b"")
                return
            method, params = msg.get("method"), msg.get("params") or {}
            headers = {}
            if method == "initialize":
                time.sleep(st.slow_init)
                result = {"protocolVersion": "2025-03-26", "capabilities": {"tools": {}},
                          "serverInfo": {"name": "fake-mcp", "version": "1"}}
                headers["Mcp-Session-Id"] = "sess-42"
            elif self.headers.get("Mcp-Session-Id") != "sess-42":
                self.send(400, b'{"error":"no session"}')
                return
            elif method == "tools/list":
                result = {"tools": TOOLS}
            elif method == "tools/call":
                name, args = params.get("name"), params.get("arguments") or {}
                if name == "echo":
                    result = {"content": [{"type": "text", "text": "echo: " + str(args.get("text"))}]}
                elif name == "big":
                    n, size = int(args.get("items", 1)), int(args.get("size", 1))
                    result = {"content": [{"type": "text", "text": f"item{i}:" + "x" * size}
                                          for i in range(n)]}
                elif name == "fail_echo":
                    # A server that echoes what it was sent in its error: the header's secret.
                    answer = {"jsonrpc": "2.0", "id": msg["id"],
                              "error": {"code": -32000, "message": "denied for " +
                                        str(self.headers.get("Authorization"))}}
                    self.send(200, json.dumps(answer).encode(), headers=headers)
                    return
                elif name == "slow":
                    time.sleep(float(args.get("seconds", 1)))
                    result = {"content": [{"type": "text", "text": "slept"}]}
                elif name == "add":
                    result = {"content": [{"type": "text",
                                           "text": str(args.get("a", 0) + args.get("b", 0))}]}
                else:
                    result = {"content": [{"type": "text", "text": "no such tool"}],
                              "isError": True}
            else:
                answer = {"jsonrpc": "2.0", "id": msg["id"],
                          "error": {"code": -32601, "message": "method not found"}}
                self.send(200, json.dumps(answer).encode(), headers=headers)
                return
            answer = {"jsonrpc": "2.0", "id": msg["id"], "result": result}
            if st.sse:
                note = {"jsonrpc": "2.0", "method": "notifications/message",
                        "params": {"level": "info", "data": "working"}}
                body = ("event: message\ndata: " + json.dumps(note) + "\n\n" +
                        "event: message\ndata: " + json.dumps(answer) + "\n\n").encode()
                self.send(200, body, ctype="text/event-stream", headers=headers)
            else:
                self.send(200, json.dumps(answer).encode(), headers=headers)
    return H


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--sse", action="store_true")
    ap.add_argument("--redirect-to")
    ap.add_argument("--slow-init", type=float, default=0.0, help="seconds initialize takes")
    a = ap.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", a.port),
                              make_handler(State(a.sse, a.redirect_to, a.slow_init)))
    srv.daemon_threads = True
    print(f"listening on http://127.0.0.1:{srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
