"""The scripted fake model (tests/fakes/fake_model.py) run inside the test process, plus
helpers that read what paddock sent it in each wire format (system prompt, tool results,
offered tools, conversation text).

FakeModel wraps fake_model.make_server on 127.0.0.1:<free port>; .script(steps), .requests()
and .reset() are its control endpoints (tests/fakes/README.md lists the step keys), and .env()
the variables that point paddock's three model clients at it. The same server is reachable over
HTTP (POST /_script, GET /_requests, POST /_reset) for the SDK tests.
"""

import json
import sys
import threading

import pdk

sys.path.insert(0, str(pdk.ROOT / "tests" / "fakes"))
import fake_model  # noqa: E402


class FakeModel:
    def __init__(self):
        self.srv = fake_model.make_server(0)
        self.port = self.srv.server_address[1]
        self._thread = threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self.srv.stopping.set()
        self.srv.shutdown()
        self.srv.server_close()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def env(self):
        """The environment variables that point paddock's three model clients here."""
        return {"GEMINI_BASE_URL": self.url, "GEMINI_API_KEY": "fake-gemini-key",
                "OPENAI_BASE_URL": self.url + "/v1", "OPENAI_API_KEY": "fake-openai-key",
                "ANTHROPIC_BASE_URL": self.url, "ANTHROPIC_API_KEY": "fake-anthropic-key"}

    def script(self, steps):
        self.srv.script.load(steps)

    def reset(self):
        self.srv.script.reset()

    def requests(self):
        """Every model call so far: {"format", "path", "headers", "body", "time"}."""
        with self.srv.script.lock:
            return [dict(r) for r in self.srv.script.requests]


# ---- reading what paddock sent, per format ----

def system_text(req):
    """The system prompt of one recorded request, as one string."""
    b, fmt = req["body"] or {}, req["format"]
    if fmt == "gemini":
        si = b.get("systemInstruction") or b.get("system_instruction") or {}
        return "\n".join(p.get("text", "") for p in si.get("parts", []))
    if fmt == "openai":
        return "\n".join(m["content"] if isinstance(m.get("content"), str)
                         else "".join(c.get("text", "") for c in m.get("content") or [])
                         for m in b.get("messages", []) if m.get("role") in ("system", "developer"))
    s = b.get("system")
    if isinstance(s, list):
        return "\n".join(x.get("text", "") for x in s)
    return s or ""


def tool_results(req):
    """The tool results in one recorded request, in order: [{"id", "name", "text", "is_error"}].
    text is the result flattened to one string (Gemini's response object as JSON)."""
    b, fmt = req["body"] or {}, req["format"]
    out = []
    if fmt == "gemini":
        for c in b.get("contents", []):
            for p in c.get("parts", []):
                fr = p.get("functionResponse")
                if fr:
                    resp = fr.get("response")
                    out.append({"id": fr.get("id"), "name": fr.get("name"),
                                "text": json.dumps(resp) if not isinstance(resp, str) else resp,
                                "response": resp, "is_error": None})
    elif fmt == "openai":
        for m in b.get("messages", []):
            if m.get("role") == "tool":
                c = m.get("content")
                if isinstance(c, list):
                    c = "".join(x.get("text", "") for x in c)
                out.append({"id": m.get("tool_call_id"), "name": m.get("name"), "text": c,
                            "is_error": None})
    else:
        for m in b.get("messages", []):
            if m.get("role") != "user" or not isinstance(m.get("content"), list):
                continue
            for blk in m["content"]:
                if blk.get("type") == "tool_result":
                    c = blk.get("content")
                    if isinstance(c, list):
                        c = "".join(x.get("text", "") for x in c)
                    out.append({"id": blk.get("tool_use_id"), "name": None, "text": c,
                                "is_error": blk.get("is_error")})
    return out


def tool_names(req):
    """The tool names one recorded request offered the model."""
    b, fmt = req["body"] or {}, req["format"]
    if fmt == "gemini":
        return [d["name"] for t in b.get("tools", []) for d in
                (t.get("functionDeclarations") or t.get("function_declarations") or [])]
    if fmt == "openai":
        return [t["function"]["name"] for t in b.get("tools", []) if "function" in t]
    return [t["name"] for t in b.get("tools", [])]


def all_text(req):
    """Every user/model text of the conversation in one recorded request (not tool results),
    concatenated: to check that earlier turns reached the model."""
    b, fmt = req["body"] or {}, req["format"]
    out = []
    if fmt == "gemini":
        for c in b.get("contents", []):
            out += [p["text"] for p in c.get("parts", []) if isinstance(p.get("text"), str)]
    elif fmt == "openai":
        for m in b.get("messages", []):
            if m.get("role") in ("user", "assistant"):
                c = m.get("content")
                if isinstance(c, str):
                    out.append(c)
                elif isinstance(c, list):
                    out += [x.get("text", "") for x in c]
    else:
        for m in b.get("messages", []):
            c = m.get("content")
            if isinstance(c, str):
                out.append(c)
            elif isinstance(c, list):
                out += [x.get("text", "") for x in c if x.get("type") == "text"]
    return "\n".join(out)
