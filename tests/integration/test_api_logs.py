"""Logs of `paddock serve` (docs/API.md, Logs): one line per request
(`request method=… path=… status=… bytes=… ms=… key=<key name> end=ok|aborted`), one per state
change of an environment; with --log-format json every line is one JSON object with time, level,
msg and the fields; untrusted text is escaped; keys are logged by name, never by value."""

import json
import re
import secrets

import pytest

from apiserver import *  # noqa: F401,F403 (fixtures)

BAD_KEY = "pk_not_valid_" + "z" * 30
TEXT_REQ = re.compile(r"request method=(?P<method>\S+) path=(?P<path>\S+) status=(?P<status>\d+) "
                      r"bytes=(?P<bytes>\d+) ms=(?P<ms>[0-9.]+) key=(?P<key>\S+) "
                      r"end=(?P<end>ok|aborted)$")


def traffic(server, key, key_name):
    """Makes a varied set of requests, each to a path no other request of the test uses.
    Returns ([(method, path, status, body bytes, key name)], the environment it created)."""
    h = server.http(key)
    done = []
    tag = secrets.token_hex(6)

    def note(r, who):
        done.append((r.method, r.path.split("?")[0], r.status, len(r.body), who))
        return r

    note(server.http(None).get("/healthz"), "-")
    note(h.get(f"/v1beta/environments/env_{tag}missing"), key_name)
    note(h.get("/v1beta/environments?page_size=7"), key_name)
    r = note(h.post("/v1alpha/environments",
                    json_body={"sources": [{"type": "inline", "target": "/workspace/l.txt",
                                            "content": "secret-content-" + tag}]}), key_name)
    assert r.status == 200, r
    env_id = r.json()["id"]
    note(h.get(f"/v1beta/environments/{env_id}/files/workspace/l.txt?alt=media"), key_name)
    note(server.http(BAD_KEY).get(f"/v1beta/environments/{env_id}/files/workspace"), "-")
    note(server.http(key, auth="bearer").get(f"/v1beta/environments/{env_id}"), key_name)
    note(h.request("PATCH", f"/v1beta/environments/env_{tag}patch"), key_name)
    assert [d[2] for d in done] == [200, 404, 200, 200, 200, 401, 200, 405], done
    # state changes: a file uploaded, the environment deleted
    assert h.upload(env_id, "workspace/logged.txt", b"x").status == 200
    assert h.delete(f"/v1beta/environments/{env_id}").status == 200
    return done, env_id


def check_requests(records, done):
    """records: one dict of request fields per request line. Each request of `done` has exactly
    one, with its method, status, body size and key name."""
    problems = []
    for method, path, status, nbytes, who in done:
        hits = [r for r in records if r["path"].split("?")[0] == path and r["method"] == method]
        if len(hits) != 1:
            problems.append(f"{method} {path}: expected one request line, got {hits}")
            continue
        rec = hits[0]
        want = {"status": str(status), "bytes": str(nbytes), "key": who, "end": "ok"}
        got = {k: str(rec.get(k)) for k in want}
        if got != want:
            problems.append(f"{method} {path}: logged {got}, expected {want}")
        float(rec["ms"])
    assert not problems, "request lines:\n  " + "\n  ".join(problems)


def check_state_changes(lines, env_id):
    mine = [l.lower() for l in lines if env_id in l and "method" not in l]
    for word in ("created", "upload", "deleted"):
        assert [l for l in mine if word in l], f"no '{word}' line for {env_id}: {mine}"


def check_secrets(lines, key):
    leaked = [l for l in lines if key in l or BAD_KEY in l]
    assert not leaked, f"a key was logged: {leaked}"
    assert not [l for l in lines if "secret-content-" in l], "request bodies are not logged"


def json_records(lines):
    out, bad = [], []
    for l in lines:
        try:
            o = json.loads(l)
        except ValueError:
            bad.append(l)
            continue
        if not (isinstance(o, dict) and {"time", "level", "msg"} <= set(o)):
            bad.append(l)
            continue
        out.append(o)
    return out, bad


def test_json_logs(pd):
    # the global flag (`paddock --log-format json serve`); test_every_way_to_ask_for_json covers
    # the serve flag and PADDOCK_LOG_FORMAT
    server = ApiServer(pd, global_args=["--log-format", "json"]).start()
    try:
        key = server.make_key("log-key", scopes=("environments",))
        done, env_id = traffic(server, key, "log-key")
        assert server.wait_log(lambda l: "deleted" in l and env_id in l, timeout=10)
        objs, bad_first = json_records(server.log_lines())
        lines = server.log_lines()
        check_state_changes(lines, env_id)
        check_secrets(lines, key)
        records = [o for o in objs if o["msg"] == "request"]
        # untrusted text stays inside its JSON string
        raw_exchange(server.host, server.port,
                     b'GET /v1beta/environments/a"b\\c\x1b[31m\x7f\xff}{ HTTP/1.1\r\nHost: x\r\n'
                     b"x-goog-api-key: " + key.encode() + b"\r\n\r\n")
        assert server.http(None).get("/v1beta/marker-after-evil").status in (401, 404)
        assert server.wait_log(lambda l: "marker-after-evil" in l, timeout=10)
        objs, bad = json_records(server.log_lines())
        assert not [l for l in server.log_lines() if "\x1b" in l], "control character written raw"
        assert not set(bad) - set(bad_first), f"untrusted text broke the JSON lines: {bad}"
        check_requests(records, done)
        assert not bad, f"--log-format json: lines that are not JSON objects with time, level " \
                        f"and msg: {bad}"
    finally:
        finish(server)


def test_text_logs(pd):
    server = ApiServer(pd).start()   # text is the default
    try:
        key = server.make_key("text-key", scopes=("environments",))
        done, env_id = traffic(server, key, "text-key")
        assert server.wait_log(lambda l: "deleted" in l and env_id in l, timeout=10)
        lines = server.log_lines()
        records = [m.groupdict() for m in (TEXT_REQ.search(l) for l in lines) if m]
        check_state_changes(lines, env_id)
        check_secrets(lines, key)
        raw_exchange(server.host, server.port,
                     b"GET /v1beta/environments/a\x1b[31mb\x07 c HTTP/1.1\r\nHost: x\r\n\r\n")
        assert server.http(None).get("/v1beta/marker-after-evil").status in (401, 404)
        assert server.wait_log(lambda l: "marker-after-evil" in l, timeout=10)
        assert not [l for l in server.log_lines() if "\x1b" in l or "\x07" in l], \
            "control characters written raw to the log"
        check_requests(records, done)
    finally:
        finish(server)


@pytest.mark.parametrize("how", ["serve-flag", "global-flag", "variable"])
def test_every_way_to_ask_for_json(pd, how):
    """`serve --log-format json` (docs/API.md), `paddock --log-format json serve` (the global
    flag of --help) and PADDOCK_LOG_FORMAT=json all make every line JSON."""
    server = ApiServer(pd, log_format="json" if how == "serve-flag" else None,
                       global_args=["--log-format", "json"] if how == "global-flag" else ())
    if how == "variable":
        server.env["PADDOCK_LOG_FORMAT"] = "json"
    server.start()
    try:
        assert server.http(None).get("/v1beta/marker-json").status in (401, 404)
        assert server.wait_log(lambda l: "marker-json" in l, timeout=10)
        objs, bad = json_records(server.log_lines())
        assert not bad, f"not JSON objects with time, level and msg: {bad}"
    finally:
        finish(server)
