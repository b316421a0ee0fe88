"""The Interactions API (spec §2, §3.1, §4, §5) driven over plain HTTP against `paddock serve`,
whose model clients talk to a scripted fake model (fakemodel.py) in each of the three wire
formats. Every test checks both sides: what the API answers, and what paddock sent the model.
"""

import http.client
import json
import re
import signal
import socket
import sqlite3
import threading
import time

import pytest

import pdk
from apiserver import assert_error_shape, assert_names
from agentkit import *  # noqa: F401,F403

AGENT = "antigravity-preview-05-2026"
ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
IID_RE = re.compile(r"^int_[0-9a-z]+$")
FORMATS = ("gemini", "openai", "anthropic")
U = {"input": 10, "output": 5}  # usage of each scripted answer where a test adds tokens up


def agent_body(input_, model=None, **kw):
    b = {"agent": AGENT, "input": input_}
    if model:
        b["agent_config"] = {"type": "antigravity", "model": model}
    b.update(kw)
    return b


def check_interaction(it, status=None):
    assert IID_RE.match(it.get("id", "")), it
    assert it.get("object") == "interaction", it
    for k in ("created", "updated"):
        assert ISO_RE.match(str(it.get(k))), (k, it)
    if status:
        assert it.get("status") == status, json.dumps(it, indent=1)[:4000]
    assert isinstance(it.get("steps"), list), it
    return it


def check_usage(u, turns=None):
    """Usage as spec §4.2: the totals add up."""
    for k in ("total_input_tokens", "total_output_tokens", "total_tokens"):
        assert isinstance(u.get(k), int), u
    assert u["total_tokens"] == (u["total_input_tokens"] + u["total_output_tokens"]
                                 + u.get("total_thought_tokens", 0)
                                 + u.get("total_tool_use_tokens", 0)), u
    if turns is not None:
        assert u["total_input_tokens"] == 10 * turns and u["total_output_tokens"] == 5 * turns, u


def flat(text_or_obj):
    """A tool result as the model got it, reduced to its text (Gemini wraps it in an object)."""
    if isinstance(text_or_obj, str):
        return text_or_obj
    if isinstance(text_or_obj, dict):
        return "\n".join(flat(v) for v in text_or_obj.values())
    if isinstance(text_or_obj, list):
        return "\n".join(flat(v) for v in text_or_obj)
    return str(text_or_obj)


def model_result_texts(req):
    return [flat(r.get("response", r["text"])) for r in tool_results(req)]


def wait_step(ag, iid, type_, timeout=15):
    """Polls until the interaction has a step of type_; returns the interaction."""
    end = time.monotonic() + timeout * SLOWDOWN
    while True:
        it = ag.get(iid)
        if steps_of(it, type_):
            return it
        assert it["status"] not in FINAL, f"{iid} ended before a {type_} step: {it}"
        assert time.monotonic() < end, f"no {type_} step in {iid}: {it}"
        time.sleep(0.05)


# ------------------------------------------------------------ tool round trips per format


@pytest.mark.parametrize("fmt", FORMATS)
def test_bash_round_trip_writes_a_file(mag, fake, fmt):
    """The model asks for bash; paddock runs it in the sandbox (the file really exists there),
    records code_execution_call/result, and sends the output back in the model's format."""
    token = f"tok-{fmt}-{time.monotonic_ns()}"
    cmd = f"printf '%s\\n' {token} > /workspace/out-{fmt}.txt && cat /workspace/out-{fmt}.txt"
    fake.script([dict(bash(cmd), usage=U), {"text": f"wrote it ({fmt})", "usage": U}])
    it = mag.create(agent_body("write the token to a file", model=WIRE[fmt]), timeout=60)
    check_interaction(it, "completed")
    assert it["agent"] == AGENT
    env_id = it.get("environment_id")
    assert env_id and env_id.startswith("env_"), it

    # (Gemini's thoughtSignature may show as a thought step carrying the signature.)
    steps = [s for s in it["steps"] if s["type"] != "thought"]
    types = [s["type"] for s in steps]
    assert types == ["user_input", "code_execution_call", "code_execution_result",
                     "model_output"], types
    for th in steps_of(it, "thought"):
        assert fmt == "gemini" and th.get("signature", "").startswith("fake-sig-"), th
    call, res = steps[1], steps[2]
    assert call["arguments"] == {"code": cmd, "language": "bash"}, call
    assert call["id"] and res["call_id"] == call["id"], (call, res)
    assert token in result_text(res) and res.get("is_error") in (False, None), res
    assert output_text(it) == f"wrote it ({fmt})"
    check_usage(it["usage"], turns=2)

    # The file is in the environment's workspace.
    r = mag.file(env_id, f"workspace/out-{fmt}.txt")
    assert r.status == 200 and r.body == f"{token}\n".encode(), r

    # What paddock sent the model: the right endpoint, key header and model name, the
    # built-in tools, and the command's output as the tool result of that call.
    reqs = model_calls(fake)
    assert len(reqs) == 2, reqs
    assert {q["format"] for q in reqs} == {fmt}, [q["path"] for q in reqs]
    q0, q1 = reqs
    if fmt == "gemini":
        assert q0["path"].startswith("/v1beta/models/gemini-x:generateContent"), q0["path"]
        assert q0["headers"].get("x-goog-api-key") == "fake-gemini-key", q0["headers"]
    elif fmt == "openai":
        assert q0["path"] == "/v1/chat/completions", q0["path"]
        assert q0["headers"].get("authorization") == "Bearer fake-openai-key", q0["headers"]
        assert q0["body"]["model"] == "fake"
    else:
        assert q0["path"] == "/v1/messages", q0["path"]
        assert q0["headers"].get("x-api-key") == "fake-anthropic-key", q0["headers"]
        assert q0["headers"].get("anthropic-version"), q0["headers"]
        assert q0["body"]["model"] == "fake" and q0["body"].get("max_tokens"), q0["body"]
    assert {"bash", "file_system"} <= set(tool_names(q0)), tool_names(q0)
    assert "write the token to a file" in all_text(q0)
    assert tool_results(q0) == []
    results = tool_results(q1)
    assert len(results) == 1, results
    assert token in model_result_texts(q1)[0], results
    if fmt != "gemini":
        assert results[0]["id"] == call["id"], results
    else:
        assert results[0]["name"] == "bash", results


@pytest.mark.parametrize("fmt", FORMATS)
def test_file_system_tool_and_thoughts(mag, fake, fmt):
    """file_system write then read: function_call/function_result steps, the file is in the
    sandbox, the read content reaches the model; a thought part becomes a thought step."""
    content = f"fs content {fmt}\nsecond line\n"
    thought = {"thought": f"thinking about {fmt}"}
    fake.script([dict(fs("write", f"/workspace/fs-{fmt}.txt", content), **thought),
                 fs("read", f"/workspace/fs-{fmt}.txt"),
                 {"text": "read back"}])
    it = mag.create(agent_body("use the file tool", model=WIRE[fmt]), timeout=60)
    check_interaction(it, "completed")
    calls, results = steps_of(it, "function_call"), steps_of(it, "function_result")
    assert [c["name"] for c in calls] == ["file_system", "file_system"], it["steps"]
    assert calls[0]["arguments"]["operation"] == "write", calls
    assert [r["call_id"] for r in results] == [c["id"] for c in calls], it["steps"]
    assert not any(r.get("is_error") for r in results), results
    assert content.strip() in result_text(results[1]), results[1]
    if thought:
        th = steps_of(it, "thought")
        assert th, it["steps"]
        assert f"thinking about {fmt}" in json.dumps(th), th
        assert output_text(it) == "read back"
    r = mag.file(it["environment_id"], f"workspace/fs-{fmt}.txt")
    assert r.status == 200 and r.body == content.encode(), r
    reqs = model_calls(fake)
    assert len(reqs) == 3
    assert content.strip() in model_result_texts(reqs[2])[-1], tool_results(reqs[2])
    if fmt == "gemini":
        # thoughtSignature of a functionCall part goes back verbatim.
        parts = [p for c in reqs[1]["body"]["contents"] for p in c.get("parts", [])
                 if "functionCall" in p]
        assert parts and all(p.get("thoughtSignature", "").startswith("fake-sig-") for p in parts), \
            parts
    if fmt == "anthropic":
        blocks = [b for m in reqs[1]["body"]["messages"] if m["role"] == "assistant"
                  for b in (m["content"] if isinstance(m["content"], list) else [])]
        thinking = [b for b in blocks if b.get("type") == "thinking"]
        assert thinking and thinking[0].get("signature", "").startswith("fake-sig-"), blocks


def test_bash_failure_is_a_result_the_model_sees(mag, fake):
    """A command that fails is an is_error result (with its exit status), not a failed run."""
    fake.script([bash("echo to-stderr >&2; exit 3"), {"text": "it failed"}])
    it = mag.create(agent_body("fail"), timeout=60)
    check_interaction(it, "completed")
    res = steps_of(it, "code_execution_result")[0]
    assert res.get("is_error") is True and "to-stderr" in result_text(res), res
    seen = model_result_texts(model_calls(fake)[1])[0]
    assert "to-stderr" in seen and "3" in seen, seen


# ------------------------------------------------------------------ input forms, get, delete


@pytest.mark.parametrize("form", ["string", "content", "contents", "steps"])
def test_input_forms(mag, fake, form):
    text = f"input as {form}"
    inp = {"string": text,
           "content": {"type": "text", "text": text},
           "contents": [{"type": "text", "text": text}],
           "steps": [{"type": "user_input", "content": [{"type": "text", "text": text}]}]}[form]
    fake.script([{"text": "ok"}])
    it = mag.create({"model": "openai:fake", "input": inp}, timeout=30)
    check_interaction(it, "completed")
    assert it["steps"][0]["type"] == "user_input", it
    assert text in json.dumps(it["steps"][0]), it["steps"][0]
    assert it["model"] == "openai:fake"
    assert "environment_id" not in it, "a model interaction without environment gets none"
    assert text in all_text(model_calls(fake, 1)[0])


def test_get_include_input_delete_and_versions(mag, fake):
    fake.script([{"text": "hello there"}])
    body = {"model": "openai:fake", "input": "remember me", "system_instruction": "be brief"}
    it = mag.create(body, timeout=30)
    iid = it["id"]
    for v in ("v1", "v1beta", "v1alpha"):
        g = mag.get(iid, v=v)
        assert g["id"] == iid and g["status"] == "completed", g
        assert g["steps"] == it["steps"]
        assert "input" not in g, g
    g = mag.get(iid, "include_input=true&stream=false")
    assert g["input"] == "remember me", g
    assert output_text(g) == "hello there"
    # The system instruction reached the model.
    assert "be brief" in system_text(model_calls(fake, 1)[0])

    r = mag.http.delete(f"/{V}/interactions/{iid}")
    assert r.status == 200 and r.json() == {}, r
    r = mag.http.get(f"/{V}/interactions/{iid}")
    assert_error_shape(r, 404)
    r = mag.http.delete(f"/{V}/interactions/{iid}")
    assert_error_shape(r, 404)


@pytest.mark.parametrize("body, needles", [
    ({"input": "x"}, ("model", "agent")),
    ({"model": "openai:fake", "agent": AGENT, "input": "x"}, ("model", "agent")),
    ({"model": "openai:fake", "input": "x", "tools": [{"type": "google_maps"}]}, ("tools",)),
    ({"model": "openai:fake", "input": "x", "tools": "bash"}, ("tools",)),
    ({"model": "openai:fake", "input": 42}, ("input",)),
    ({"model": "openai:fake", "input": "x", "store": "yes"}, ("store",)),
    ({"model": "openai:fake", "input": "x", "environment": 7}, ("environment",)),
    ({"model": "openai:fake", "input": "x", "environment": {"type": "local"}}, ("environment",
                                                                                 "type")),
    ({"model": "openai:fake", "input": "x", "previous_interaction_id": 5},
     ("previous_interaction_id",)),
    ({"agent": AGENT, "input": "x", "agent_config": {"max_steps": "many"}}, ("max_steps",)),
    ({"agent": AGENT, "input": "x", "agent_config": {"timeout_s": -1}}, ("timeout_s",)),
    ({"model": "nosuchformat:abc", "input": "x"}, ("model",)),
])
def test_bad_create_bodies(mag, fake, body, needles):
    r = mag.post(body)
    assert_names(r, *needles, status=400)
    assert fake.requests() == [], "nothing ran"


@pytest.fixture
def own(pd, fake):
    """A server of the test's own, for tests that may bring it down: its teardown stops it
    without failing on what a crash left in the log (the test itself fails on the crash)."""
    a = AgentServer(pd, fake).start()
    try:
        yield a
    finally:
        a.server.stop()


def test_unknown_previous_interaction_id(own, fake):
    r = own.post({"model": "openai:fake", "input": "x",
                  "previous_interaction_id": "int_" + "a" * 26})
    assert_error_shape(r, 404)
    assert "previous_interaction_id" in r.json()["error"]["message"]
    assert own.server.alive()
    assert fake.requests() == []


def test_previous_interaction_id_of_an_unstored_one(own, fake):
    fake.script([{"text": "not stored"}])
    it = own.create({"model": "openai:fake", "input": "x", "store": False})
    assert it["status"] == "completed"
    r = own.post({"model": "openai:fake", "input": "x", "previous_interaction_id": it["id"]})
    assert_error_shape(r, 404)
    assert own.server.alive()


def test_unknown_references(mag, fake):
    assert_error_shape(mag.post({"agent": "no-such-agent", "input": "x"}), 404)
    assert_error_shape(mag.post({"agent": AGENT, "input": "x",
                                 "environment": "env_" + "0" * 26}), 404)
    assert_error_shape(mag.http.get(f"/{V}/interactions/int_nope"), 404)
    assert_error_shape(mag.http.post(f"/{V}/interactions/int_nope/cancel"), 404)
    assert fake.requests() == []


def test_scopes(mag, fake):
    """A key without the interactions scope is refused; .read cannot create."""
    env_only = mag.server.make_key("env-only", scopes=("environments",))
    r = mag.post({"model": "openai:fake", "input": "x"}, key=env_only)
    assert_error_shape(r, 403)
    fake.script([{"text": "ok"}])
    it = mag.create({"model": "openai:fake", "input": "x"})
    ro = mag.server.make_key("int-read", scopes=("interactions.read",))
    h = mag.server.http(ro)
    assert h.get(f"/{V}/interactions/{it['id']}").status == 200
    assert_error_shape(h.post(f"/{V}/interactions",
                              json_body={"model": "openai:fake", "input": "x"}), 403)
    assert_error_shape(h.delete(f"/{V}/interactions/{it['id']}"), 403)


def test_other_project_cannot_see(mag, fake):
    other = mag.server.make_key("other-proj", scopes=SCOPES, project="other")
    fake.script([{"text": "mine"}])
    it = mag.create({"model": "openai:fake", "input": "x"})
    h = mag.server.http(other)
    assert_error_shape(h.get(f"/{V}/interactions/{it['id']}"), 404)
    assert_error_shape(h.post(f"/{V}/interactions/{it['id']}/cancel"), 404)
    assert_error_shape(h.delete(f"/{V}/interactions/{it['id']}"), 404)
    r = h.post(f"/{V}/interactions", json_body={"model": "openai:fake", "input": "x",
                                                "previous_interaction_id": it["id"]})
    assert_error_shape(r, 404)
    assert mag.get(it["id"])["status"] == "completed"


# ------------------------------------------------------------------------------ streaming


def check_stream(events, done):
    """§5: event_id on every event, increasing; created → status_update(in_progress) → step
    events with matching start/stop per index → completed; [DONE] at the end."""
    assert done, "no data: [DONE]"
    kinds = [e["event_type"] for e in events]
    assert kinds[0] == "interaction.created", kinds
    assert kinds[1] == "interaction.status_update" and events[1]["status"] == "in_progress", \
        events[:2]
    assert kinds[-1] == "interaction.completed", kinds
    assert kinds.count("interaction.completed") == 1, kinds
    ids = [int(e["event_id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), ids
    assert all(e["_id"] == e["event_id"] for e in events), "id: line and event_id differ"
    iid = events[0]["interaction"]["id"]
    assert all(e.get("interaction_id", iid) == iid for e in events)
    open_, seen = set(), []
    for e in events:
        if e["event_type"] == "step.start":
            assert e["index"] not in open_ and e["index"] == len(seen), (e, seen)
            open_.add(e["index"])
            seen.append(e["step"]["type"])
        elif e["event_type"] == "step.delta":
            assert e["index"] in open_, e
        elif e["event_type"] == "step.stop":
            assert e["index"] in open_, e
            open_.discard(e["index"])
    assert not open_, f"steps never stopped: {open_}"
    return seen


def test_stream_order_done_and_resume(mag, fake):
    fake.script([dict(bash("echo streamed-out; echo line2"), usage=U), {"text": "fin", "usage": U}])
    s = mag.stream(agent_body("stream it"))
    assert s.status == 200 and s.headers["content-type"].startswith("text/event-stream"), \
        (s.status, s.headers, s.body)
    events = s.all()
    kinds = check_stream(events, s.done)
    assert kinds == ["user_input", "code_execution_call", "code_execution_result",
                     "model_output"], kinds
    iid = events[0]["interaction"]["id"]
    final = events[-1]["interaction"]
    assert final["status"] == "completed" and final["id"] == iid, final
    check_usage(final["usage"], turns=2)
    assert final.get("environment_id", "").startswith("env_") or \
        mag.get(iid)["environment_id"].startswith("env_")

    # The bash output arrives as code_execution_result deltas.
    res_idx = kinds.index("code_execution_result")
    chunks = [e["delta"] for e in events if e["event_type"] == "step.delta"
              and e["index"] == res_idx]
    assert chunks and all(c["type"] == "code_execution_result" for c in chunks), chunks
    assert "streamed-out" in "".join(c["result"] for c in chunks), chunks
    text = "".join(e["delta"]["text"] for e in events if e["event_type"] == "step.delta"
                   and e["delta"]["type"] == "text")
    assert text == "fin"
    stops = [e for e in events if e["event_type"] == "step.stop"
             and e["index"] == kinds.index("model_output")]
    assert stops and stops[0].get("usage", {}).get("total_tokens"), stops

    # The stored interaction matches the stream.
    it = mag.get(iid)
    assert [st["type"] for st in it["steps"]] == kinds

    # Resume: every event after the given one, then [DONE]; from the start without one.
    whole = mag.stream_get(iid)
    again = whole.all()
    assert whole.done and [e["event_id"] for e in again] == [e["event_id"] for e in events]
    assert again == events
    for cut in (events[0]["event_id"], events[3]["event_id"], events[-2]["event_id"]):
        r = mag.stream_get(iid, last_event_id=cut)
        rest = r.all()
        assert r.done, cut
        want = [e for e in events if int(e["event_id"]) > int(cut)]
        assert rest == want, (cut, [e["event_id"] for e in rest])
    r = mag.stream_get(iid, last_event_id=events[-1]["event_id"])
    assert r.all() == [] and r.done


def test_step_usage_counts_every_turn(mag, fake):
    """Usage per step (§4.2): the step.stop usages of a run add up to its total, the turn that
    only asked for a tool included — that is how a streaming client counts tokens so far."""
    fake.script([dict(bash("echo u"), usage={"input": 1000, "output": 20}),
                 {"text": "done", "usage": {"input": 1100, "output": 5}}])
    s = mag.stream(agent_body("count"))
    events = s.all()
    final = events[-1]["interaction"]
    assert final["usage"]["total_tokens"] == 2125, final
    per_step = sum(e.get("usage", {}).get("total_tokens", 0) for e in events
                   if e["event_type"] == "step.stop")
    assert per_step == 2125, f"step.stop usages add up to {per_step}, the run used 2125"


def test_stream_get_follows_a_live_run(mag, fake):
    """GET ?stream=true on a running background interaction replays what happened and
    continues live to the end; resuming mid-run works too."""
    fake.script([bash("echo before; sleep 1; echo after"), {"text": "live done"}])
    it = mag.create(agent_body("bg", background=True))
    iid = it["id"]
    s = mag.stream_get(iid)
    first = []
    for e in s.events():
        first.append(e)
        if len(first) == 3:
            break
    s.close()
    r = mag.stream_get(iid, last_event_id=first[-1]["event_id"])
    rest = r.all()
    assert r.done
    events = first + rest
    check_stream(events, True)
    assert events[-1]["interaction"]["status"] == "completed"
    got = "".join(e["delta"].get("result", "") for e in rest if e["event_type"] == "step.delta")
    assert "after" in got, rest


def test_stream_replay_of_events_larger_than_a_batch_loses_none(mag, fake):
    """Twelve reads of a 1 MiB file of control bytes make step events of ~6 MiB of JSON each,
    more than one fill of a stream holds (64 MiB): a replay still carries every event, in
    order, once."""
    fake.script([bash("head -c 1048576 /dev/zero | tr '\\0' '\\1' > /workspace/ctl.bin"),
                 {"calls": [{"name": "file_system",
                             "args": {"operation": "read", "path": "/workspace/ctl.bin"}}] * 12},
                 {"text": "read them all"}])
    it = mag.create(agent_body("read"), timeout=120)
    assert it["status"] == "completed", it.get("errors")
    s = mag.server
    c = http.client.HTTPConnection(s.host, s.port, timeout=120 * SLOWDOWN)
    c.request("GET", f"/{V}/interactions/{it['id']}?stream=true",
              headers={"x-goog-api-key": mag.key})
    r = c.getresponse()
    assert r.status == 200, r.status
    body = r.read()
    c.close()
    ids, results = [], 0
    for block in body.split(b"\n\n"):
        data = [l[6:] for l in block.split(b"\n") if l.startswith(b"data: ")]
        if not data or data[0] == b"[DONE]":
            continue
        e = json.loads(data[0])
        assert e["event_type"] != "error", e
        ids.append(e.get("event_id"))
        if e["event_type"] == "step.start" and e["step"]["type"] == "function_result":
            results += 1
            assert len(e["step"]["result"]) == 1 << 20
    assert body.rstrip().endswith(b"data: [DONE]"), body[-200:]
    assert results == 12, results
    assert len(ids) == len(set(ids)), "an event came twice"


def test_stream_bad_request_is_json_400(mag, fake):
    """A stream create that fails validation answers the error, not an event stream."""
    s = mag.stream({"model": "openai:fake"})
    assert s.status == 400, (s.status, s.body)
    assert b"input" in s.body
    s.close()


# --------------------------------------------------------------------- background, cancel


def test_background_and_polling(mag, fake):
    fake.script([bash("sleep 1; echo bg-out > /workspace/bg.txt"), {"text": "bg finished"}])
    it = mag.create(agent_body("background job", background=True))
    check_interaction(it)
    assert it["status"] in ("queued", "in_progress"), it
    seen = {it["status"]}
    end = time.monotonic() + 20 * SLOWDOWN
    while True:
        g = mag.get(it["id"])
        seen.add(g["status"])
        if g["status"] in FINAL:
            break
        assert time.monotonic() < end, g
        time.sleep(0.05)
    assert g["status"] == "completed", g
    assert "in_progress" in seen, seen
    assert output_text(g) == "bg finished"
    assert mag.file(g["environment_id"], "workspace/bg.txt").body == b"bg-out\n"


def test_cancel_a_running_command(mag, fake):
    fake.script([bash("sleep 60"), {"text": "never"}])
    it = mag.create(agent_body("sleep", background=True))
    wait_step(mag, it["id"], "code_execution_call")
    time.sleep(0.2)
    t0 = time.monotonic()
    r = mag.cancel(it["id"])
    assert r.status == 200, r
    c = r.json()
    assert c["id"] == it["id"] and c["status"] in ("cancelled",), c
    g = mag.wait(it["id"], timeout=10)
    assert time.monotonic() - t0 < 5 * SLOWDOWN, "cancel did not stop the command promptly"
    assert g["status"] == "cancelled", g
    assert steps_of(g, "code_execution_call"), "steps so far are kept"
    time.sleep(0.3)
    assert len(fake.requests()) == 1, "the model is not called after a cancel"
    # The sleep is gone from the sandbox.
    envs = mag.pd.run("env", "exec", g["environment_id"], "--", "sh", "-c",
                      "for p in /proc/[0-9]*; do cat $p/cmdline 2>/dev/null; echo; done")
    assert "sleep60" not in envs.text.replace("\0", ""), envs
    # Cancelling again does not change it.
    r = mag.cancel(it["id"])
    assert r.status in (200, 400, 409), r
    assert mag.get(it["id"])["status"] == "cancelled"


def test_cancel_while_the_model_thinks(mag, fake):
    fake.script([{"hang": True}])
    it = mag.create({"model": "openai:fake", "input": "slow", "background": True})
    model_calls(fake, 1)
    t0 = time.monotonic()
    r = mag.cancel(it["id"])
    assert r.status == 200 and r.json()["status"] == "cancelled", r
    g = mag.wait(it["id"], timeout=10)
    assert g["status"] == "cancelled" and time.monotonic() - t0 < 5 * SLOWDOWN, g
    assert not steps_of(g, "model_output"), g


def test_cancel_during_a_command_beside_a_client_call(mag, fake):
    """A turn that calls the caller's function and bash, cancelled while bash runs, ends
    cancelled: not requires_action, which would ask the caller for results of paddock's own
    calls."""
    tool = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
    fake.script([{"calls": [{"name": "get_weather", "args": {}},
                            {"name": "bash", "args": {"command": "sleep 60"}}]}])
    it = mag.create(agent_body("both", tools=[tool], background=True))
    wait_step(mag, it["id"], "code_execution_call")
    time.sleep(0.2)
    r = mag.cancel(it["id"])
    assert r.status == 200, r
    g = mag.wait(it["id"], timeout=10)
    assert g["status"] == "cancelled", g


# ------------------------------------------------------------------ conversations, actions


@pytest.mark.parametrize("fmt", FORMATS)
def test_previous_interaction_continues_in_the_same_environment(mag, fake, fmt):
    fake.script([bash("echo first-file > /workspace/prev.txt"), {"text": "ALPHA-ANSWER"}])
    a = mag.create(agent_body("first question ONE", model=WIRE[fmt]), timeout=60)
    assert a["status"] == "completed"
    fake.reset()
    fake.script([bash("cat /workspace/prev.txt"), {"text": "second answer"}])
    b = mag.create(agent_body("second question TWO", model=WIRE[fmt],
                              previous_interaction_id=a["id"]), timeout=60)
    check_interaction(b, "completed")
    assert b["environment_id"] == a["environment_id"], (a, b)
    assert b.get("previous_interaction_id") == a["id"], b
    assert "first-file" in result_text(steps_of(b, "code_execution_result")[0])
    # The model saw the earlier turns: the first question, the command and its answer.
    q = model_calls(fake)[0]
    seen = all_text(q)
    assert "first question ONE" in seen and "ALPHA-ANSWER" in seen and \
        "second question TWO" in seen, seen
    assert seen.index("first question ONE") < seen.index("ALPHA-ANSWER") < \
        seen.index("second question TWO"), seen
    # The earlier tool call and its result are in the history too, paired.
    assert len(tool_results(q)) == 1 and "first-file" not in model_result_texts(q)[0]
    assert_calls_paired(q)
    # The new interaction's own steps start with its input.
    assert b["steps"][0]["type"] == "user_input" and "TWO" in json.dumps(b["steps"][0])


def assert_calls_paired(q):
    """Every tool result in a recorded request answers a call made earlier in it, and the
    results of a turn's calls come right after it, ahead of anything else: every format refuses
    a request where other content stands between a call and its result."""
    b, fmt = q["body"], q["format"]
    if fmt == "openai":
        ids, want = [], []
        for m in b["messages"]:
            if want:
                assert m["role"] == "tool", f"{m} between the calls {want} and their results"
                want.remove(m["tool_call_id"])
            ids += [c["id"] for c in m.get("tool_calls") or []]
            want += [c["id"] for c in m.get("tool_calls") or []]
            if m["role"] == "tool":
                assert m["tool_call_id"] in ids, (m, ids)
        assert not want, f"calls {want} have no result"
    elif fmt == "anthropic":
        ids, want = [], []
        for m in b["messages"]:
            blocks = m["content"] if isinstance(m["content"], list) else [{"type": "text"}]
            if want:
                lead = [x["tool_use_id"] for x in blocks[:len(want)] if x.get("type") == "tool_result"]
                assert sorted(lead) == sorted(want), f"{blocks} must open with results for {want}"
                want = []
            for blk in blocks:
                if blk.get("type") == "tool_use":
                    ids.append(blk["id"])
                    want.append(blk["id"])
                if blk.get("type") == "tool_result":
                    assert blk["tool_use_id"] in ids, (blk, ids)
        assert not want, f"calls {want} have no result"
        roles = [m["role"] for m in b["messages"]]
        assert all(x != y for x, y in zip(roles, roles[1:])), f"roles must alternate: {roles}"
    else:
        names, want = [], []
        for c in b["contents"]:
            parts = c.get("parts", [])
            if want:
                got = [p["functionResponse"]["name"] for p in parts if "functionResponse" in p]
                assert sorted(got) == sorted(want) and len(got) == len(parts), \
                    f"{parts} must be the results of {want}, alone"
                want = []
            for p in parts:
                if "functionCall" in p:
                    names.append(p["functionCall"]["name"])
                    want.append(p["functionCall"]["name"])
                if "functionResponse" in p:
                    assert p["functionResponse"]["name"] in names, (p, names)
        assert not want, f"calls {want} have no result"
        assert b["contents"][0]["role"] == "user"


@pytest.mark.parametrize("first, second", [("gemini", "anthropic"), ("anthropic", "openai"),
                                           ("openai", "gemini")])
def test_continue_with_another_model_format(mag, fake, first, second):
    """The stored history is format-neutral: a conversation started on one wire format goes on
    on another, with its tool calls and results still paired."""
    fake.script([dict(bash("echo cross-format"), thought="pondering"), {"text": "FIRST-DONE"}])
    a = mag.create(agent_body("start", model=WIRE[first]), timeout=60)
    assert a["status"] == "completed", a
    fake.reset()
    fake.script([{"text": "SECOND-DONE"}])
    b = mag.create(agent_body("go on", model=WIRE[second], previous_interaction_id=a["id"]),
                   timeout=60)
    assert b["status"] == "completed" and output_text(b) == "SECOND-DONE", b
    q = model_calls(fake, 1)[0]
    assert q["format"] == second
    assert "FIRST-DONE" in all_text(q) and "start" in all_text(q)
    assert "cross-format" in "".join(model_result_texts(q)), tool_results(q)
    assert_calls_paired(q)


def test_environment_by_id_and_model_path_sandbox(mag, fake):
    """environment: <id> reuses the sandbox for a model interaction, which then gets tools."""
    fake.script([bash("echo via-id > /workspace/byid.txt"), {"text": "x"}])
    a = mag.create(agent_body("make"), timeout=60)
    fake.reset()
    fake.script([bash("cat /workspace/byid.txt"), {"text": "y"}])
    b = mag.create({"model": "openai:fake", "input": "read",
                    "environment": a["environment_id"]}, timeout=60)
    check_interaction(b, "completed")
    assert b["environment_id"] == a["environment_id"]
    assert "via-id" in result_text(steps_of(b, "code_execution_result")[0])
    assert "bash" in tool_names(model_calls(fake)[0])


def test_model_path_without_environment_has_no_sandbox_tools(mag, fake):
    fake.script([{"text": "plain"}])
    it = mag.create({"model": "openai:fake", "input": "hi"})
    assert it["status"] == "completed" and "environment_id" not in it
    names = tool_names(model_calls(fake, 1)[0])
    assert "bash" not in names and "file_system" not in names, names


@pytest.mark.parametrize("fmt", FORMATS)
def test_requires_action_round_trip(mag, fake, fmt):
    tool = {"type": "function", "name": "get_weather", "description": "weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}
    fake.script([{"calls": [{"name": "get_weather", "args": {"city": "Paris"}}]}])
    a = mag.create({"model": WIRE[fmt], "input": "weather in Paris?", "tools": [tool]},
                   timeout=30)
    check_interaction(a, "requires_action")
    last = a["steps"][-1]
    assert last["type"] == "function_call" and last["name"] == "get_weather", a["steps"]
    assert last["arguments"] == {"city": "Paris"}, last
    q0 = model_calls(fake)[0]
    assert "get_weather" in tool_names(q0)

    fake.reset()
    fake.script([{"text": "It is sunny in Paris"}])
    b = mag.create({"model": WIRE[fmt], "previous_interaction_id": a["id"], "tools": [tool],
                    "input": [{"type": "function_result", "call_id": last["id"],
                               "name": "get_weather", "result": "sunny, 21C"}]}, timeout=30)
    check_interaction(b, "completed")
    assert output_text(b) == "It is sunny in Paris"
    q = model_calls(fake)[0]
    res = tool_results(q)
    assert len(res) == 1 and "sunny, 21C" in model_result_texts(q)[0], res
    if fmt != "gemini":
        assert res[0]["id"] == last["id"], res
    else:
        assert res[0]["name"] == "get_weather", res
        # The stored model turn goes back with its thoughtSignature (Gemini 400s without it).
        fc = [p for c in q["body"]["contents"] for p in c.get("parts", []) if "functionCall" in p]
        assert fc and fc[0].get("thoughtSignature", "").startswith("fake-sig-"), fc
    assert "weather in Paris?" in all_text(q)
    assert_calls_paired(q)


@pytest.mark.parametrize("fmt", FORMATS)
def test_requires_action_result_with_text(mag, fake, fmt):
    """A continuation may carry text beside its function_result, in either order: the model
    gets the result right after its call, and the text after that."""
    tool = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
    fake.script([{"calls": [{"name": "get_weather", "args": {}}]}])
    a = mag.create({"model": WIRE[fmt], "input": "weather?", "tools": [tool]}, timeout=30)
    check_interaction(a, "requires_action")
    call = a["steps"][-1]
    fake.reset()
    fake.script([{"text": "done"}])
    b = mag.create({"model": WIRE[fmt], "previous_interaction_id": a["id"], "tools": [tool],
                    "input": [{"type": "text", "text": "ALSO-THIS"},
                              {"type": "function_result", "call_id": call["id"],
                               "name": "get_weather", "result": "RAINY"}]}, timeout=30)
    check_interaction(b, "completed")
    q = model_calls(fake, 1)[0]
    assert_calls_paired(q)
    text = json.dumps(q["body"])
    assert text.index("RAINY") < text.index("ALSO-THIS"), text


def test_requires_action_needs_the_result(mag, fake):
    """Continuing a requires_action interaction without a function_result for its call is a
    400 (the model would see a dangling call)."""
    tool = {"type": "function", "name": "ask", "parameters": {"type": "object"}}
    fake.script([{"calls": [{"name": "ask", "args": {}}]}])
    a = mag.create({"model": "openai:fake", "input": "q", "tools": [tool]})
    assert a["status"] == "requires_action"
    r = mag.post({"model": "openai:fake", "previous_interaction_id": a["id"], "tools": [tool],
                  "input": [{"type": "function_result", "call_id": "wrong-id", "result": "x"}]})
    assert_names(r, "call_id", "function_result", status=400)


def test_continue_through_an_interaction_that_never_ran(pd, fake):
    """A conversation goes on whole through an interaction cancelled while it was queued (it
    stored no conversation): the model sees the first exchange, the cancelled one's input and
    the new input, in order."""
    a = AgentServer(pd, fake, args=["--workers", "1"]).start()
    try:
        fake.script([{"text": "ALPHA-ANSWER"}, {"hang": True}])
        first = a.create({"model": "openai:fake", "input": "first question ONE"})
        assert first["status"] == "completed", first
        x = a.create({"model": "openai:fake", "input": "blocker", "background": True})
        model_calls(fake, 2)
        y = a.create({"model": "openai:fake", "input": "second question TWO",
                      "previous_interaction_id": first["id"], "background": True})
        assert a.get(y["id"])["status"] == "queued"
        assert a.cancel(y["id"]).json()["status"] == "cancelled"
        assert a.cancel(x["id"]).status == 200
        assert a.wait(x["id"])["status"] == "cancelled"
        fake.reset()
        fake.script([{"text": "third answer"}])
        z = a.create({"model": "openai:fake", "input": "third question THREE",
                      "previous_interaction_id": y["id"]})
        assert z["status"] == "completed", z
        seen = all_text(model_calls(fake, 1)[0])
        marks = ["first question ONE", "ALPHA-ANSWER", "second question TWO",
                 "third question THREE"]
        assert all(m in seen for m in marks), seen
        assert [seen.index(m) for m in marks] == sorted(seen.index(m) for m in marks), seen
        assert "blocker" not in seen
        # The first one deleted since: the chain starts after it.
        assert a.http.delete(f"/{V}/interactions/{first['id']}").status == 200
        fake.reset()
        fake.script([{"text": "fourth answer"}])
        w = a.create({"model": "openai:fake", "input": "fourth question FOUR",
                      "previous_interaction_id": y["id"]})
        assert w["status"] == "completed", w
        seen = all_text(model_calls(fake, 1)[0])
        assert "second question TWO" in seen and "fourth question FOUR" in seen, seen
        assert "first question ONE" not in seen and "ALPHA-ANSWER" not in seen, seen
    finally:
        a.stop()


@pytest.mark.parametrize("fmt", FORMATS)
def test_calls_cut_at_the_output_limit_do_not_run(mag, fake, fmt):
    """A turn that stopped at the output limit may have cut its calls' arguments short: none
    runs, the model is told why, and a model that keeps being cut ends the interaction
    incomplete, saying so."""
    fake.script([dict(bash("echo RAN > /workspace/cut.txt"), finish="length"), {"text": "ok"}])
    it = mag.create(agent_body("cut", model=WIRE[fmt]), timeout=60)
    check_interaction(it, "completed")
    assert mag.file(it["environment_id"], "workspace/cut.txt").status == 404
    seen = model_result_texts(model_calls(fake, 2)[1])
    assert len(seen) == 1 and "output token limit" in seen[0], seen
    fake.reset()
    fake.script([dict(bash("true"), finish="length", repeat=True)])
    it = mag.create(agent_body("cut again", model=WIRE[fmt]), timeout=60)
    check_interaction(it, "incomplete")
    assert "output limit" in json.dumps(it["errors"]), it["errors"]
    assert len(fake.requests()) == 3, fake.requests()


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_tool_call_the_upstream_could_not_read_is_tried_again(mag, fake, fmt):
    """A turn that ends in a tool call the upstream could not read (Gemini's
    MALFORMED_FUNCTION_CALL; a tool_calls/tool_use finish with no call) is a format error:
    the model is told and tries again; three in a row fail the interaction, saying why."""
    fake.script([{"finish": "malformed", "text": ""}, {"text": "recovered"}])
    it = mag.create({"model": WIRE[fmt], "input": "go"}, timeout=30)
    check_interaction(it, "completed")
    assert output_text(it) == "recovered"
    assert "could not be read" in all_text(model_calls(fake, 2)[1])
    fake.reset()
    fake.script([{"finish": "malformed", "text": "", "repeat": True}])
    it = mag.create({"model": WIRE[fmt], "input": "go again"}, timeout=30)
    check_interaction(it, "failed")
    assert "malformed tool calls in a row" in json.dumps(it["errors"]), it["errors"]
    assert len(fake.requests()) == 3


def test_the_step_cap_keeps_the_input(mag, fake):
    """Turns whose calls reach the 10,000 steps an interaction keeps end it budget_exceeded,
    with its first step (the input) intact and the command that fell over the cap not run.
    (Ten turns of 500 calls: a turn may make at most 512.)"""
    # Calls of a tool the interaction does not allow: each answered at once, none a format
    # error (three turns of those in a row would end it first).
    turn = [{"name": "file_system", "args": {"operation": "list", "path": "/"}}] * 500
    last = turn[:-1] + [{"name": "bash", "args": {"command": "echo RAN > /workspace/capped.txt"}}]
    fake.script([{"calls": turn}] * 9 + [{"calls": last}, {"text": "never"}])
    it = mag.create(agent_body("many calls", agent_config={"type": "antigravity",
                                                           "allowed_tools": ["bash"]}),
                    timeout=120)
    assert it["status"] == "budget_exceeded", it.get("errors")
    assert it["steps"][0]["type"] == "user_input", it["steps"][0]
    assert "steps" in json.dumps(it["errors"]), it["errors"]
    assert mag.file(it["environment_id"], "workspace/capped.txt").status == 404
    assert len(fake.requests()) == 10


# ----------------------------------------------------------------------------- budgets


def budget_error(it, *words):
    assert it["status"] == "budget_exceeded", json.dumps(it, indent=1)[:3000]
    errs = json.dumps(it.get("errors", [])).lower()
    assert it.get("errors") and any(w in errs for w in words), it.get("errors")


def test_budget_max_steps(mag, fake):
    fake.script([dict(bash("echo again"), repeat=True)])
    it = mag.create(agent_body("loop", agent_config={"type": "antigravity", "max_steps": 3}),
                    timeout=60)
    budget_error(it, "max_steps", "steps")
    assert len(fake.requests()) == 3, "max_steps counts model turns"
    assert len(steps_of(it, "code_execution_result")) >= 2, it["steps"]


def test_budget_tokens(mag, fake):
    fake.script([dict(bash("true"), usage={"input": 60, "output": 10}, repeat=True)])
    it = mag.create(agent_body("tokens", agent_config={"type": "antigravity",
                                                        "max_total_tokens": "150"}), timeout=60)
    budget_error(it, "max_total_tokens", "token")
    assert len(fake.requests()) == 3, fake.requests()
    assert it["usage"]["total_tokens"] >= 150 and steps_of(it, "code_execution_call")


def test_budget_time(mag, fake):
    fake.script([bash("sleep 30"), {"text": "never"}])
    t0 = time.monotonic()
    it = mag.create(agent_body("slow", agent_config={"type": "antigravity", "timeout_s": 1}),
                    timeout=60)
    assert time.monotonic() - t0 < 6 * SLOWDOWN, "timeout_s did not stop the run"
    budget_error(it, "timeout_s", "time")
    assert steps_of(it, "code_execution_call"), it["steps"]


def test_budget_time_holds_between_the_calls_of_one_turn(mag, fake):
    """The wall time budget is checked before each call of a turn, not only between turns:
    a bash call that uses it up leaves the turn's later calls unstarted (a file operation, and
    a second command that would have written a file)."""
    fake.script([{"calls": [{"name": "bash", "args": {"command": "sleep 30"}},
                            {"name": "file_system",
                             "args": {"operation": "write", "path": "/workspace/late.txt",
                                      "content": "after the budget"}},
                            {"name": "bash", "args": {"command": "echo x > /workspace/late2"}}]},
                 {"text": "never"}])
    it = mag.create(agent_body("slow", agent_config={"type": "antigravity", "timeout_s": 1}),
                    timeout=60)
    budget_error(it, "timeout_s", "time")
    r = mag.pd.run("env", "exec", it["environment_id"], "--", "sh", "-c",
                   "ls /workspace/late.txt /workspace/late2 2>&1; true")
    assert "No such file" in r.text and "late.txt" in r.text and "late2" in r.text, r.text
    assert len(fake.requests()) == 1, "the model is not called past the budget"


def test_a_turn_of_too_many_calls_fails_the_run(mag, fake):
    """A model turn may make at most 512 tool calls: one that makes more runs none of them and
    ends the interaction failed, saying how many it made (recording and pairing 200 000 calls
    held a worker for minutes)."""
    fake.script([{"calls": [{"name": "bash", "args": {"command": f"echo {i} >> /workspace/ran"}}
                            for i in range(513)]}, {"text": "never"}])
    it = mag.create(agent_body("many"), timeout=60)
    assert it["status"] == "failed", json.dumps(it)[:2000]
    errs = json.dumps(it.get("errors", []))
    assert "513 tool calls" in errs and "512" in errs, errs
    assert not steps_of(it, "code_execution_call"), "a call of the turn ran"
    assert len(fake.requests()) == 1


def test_budget_cost(mag, fake):
    """max_cost_usd against the built-in price of openai:gpt-4o ($2.50/$10 per Mtok): 0.35 a
    turn here, so the second turn crosses 0.5."""
    fake.script([dict(bash("true"), usage={"input": 100000, "output": 10000}, repeat=True)])
    it = mag.create(agent_body("spend", agent_config={"type": "antigravity",
                                                       "model": "openai:gpt-4o",
                                                       "max_cost_usd": 0.5}), timeout=60)
    budget_error(it, "max_cost_usd", "cost")
    assert len(fake.requests()) == 2, len(fake.requests())
    assert it["usage"].get("total_cost_usd") == pytest.approx(0.70, rel=0.01), it["usage"]


def test_allowed_tools(mag, fake):
    fake.script([bash("echo should-not-run > /workspace/nope.txt"), {"text": "ok"}])
    it = mag.create(agent_body("restricted", agent_config={
        "type": "antigravity", "allowed_tools": ["file_system"]}), timeout=60)
    names = tool_names(model_calls(fake)[0])
    assert "bash" not in names and "file_system" in names, names
    res = steps_of(it, "code_execution_result") + steps_of(it, "function_result")
    assert res and all(r.get("is_error") for r in res), it["steps"]
    assert mag.file(it["environment_id"], "workspace/nope.txt").status == 404


# ------------------------------------------------------------------ idempotency, store


def test_idempotency_key(mag, fake):
    fake.script([{"text": "once"}, {"text": "twice"}])
    key = f"idem-{time.monotonic_ns()}"
    a = mag.create({"model": "openai:fake", "input": "x"}, headers={"Idempotency-Key": key})
    b = mag.create({"model": "openai:fake", "input": "x"}, headers={"Idempotency-Key": key})
    assert a["id"] == b["id"] and output_text(b) == "once", (a, b)
    assert len(fake.requests()) == 1, "a second run started"
    # Background too: same id, no second run.
    fake.reset()
    fake.script([{"delay_s": 0.5, "text": "bg once"}, {"text": "bg twice"}])
    key2 = key + "-bg"
    c = mag.create({"model": "openai:fake", "input": "y", "background": True},
                   headers={"Idempotency-Key": key2})
    d = mag.create({"model": "openai:fake", "input": "y", "background": True},
                   headers={"Idempotency-Key": key2})
    assert c["id"] == d["id"]
    assert output_text(mag.wait(c["id"])) == "bg once"
    assert len(fake.requests()) == 1
    # Another key, or another project with the same key, is another interaction.
    fake.reset()
    fake.script([{"text": "other"}, {"text": "other project"}])
    e = mag.create({"model": "openai:fake", "input": "x"}, headers={"Idempotency-Key": key + "x"})
    assert e["id"] != a["id"]
    other = mag.server.make_key("idem-other", scopes=SCOPES, project="idem-other")
    r = mag.post({"model": "openai:fake", "input": "x"}, headers={"Idempotency-Key": key},
                 key=other)
    assert r.status == 200 and r.json()["id"] != a["id"], r


def test_store_false_rules(mag, fake):
    r = mag.post({"model": "openai:fake", "input": "x", "store": False, "background": True})
    assert_names(r, "background", status=400)
    assert "store" in r.json()["error"]["message"]
    fake.script([{"text": "kept"}, {"text": "not stored"}])
    a = mag.create({"model": "openai:fake", "input": "x"})
    r = mag.post({"model": "openai:fake", "input": "x", "store": False,
                  "previous_interaction_id": a["id"]})
    assert_names(r, "previous_interaction_id", status=400)
    assert "store" in r.json()["error"]["message"]
    assert len(fake.requests()) == 1
    it = mag.create({"model": "openai:fake", "input": "x", "store": False})
    assert it["status"] == "completed" and output_text(it) == "not stored", it
    assert_error_shape(mag.http.get(f"/{V}/interactions/{it['id']}"), 404)
    # (Nor can it be continued: test_previous_interaction_id_of_an_unstored_one.)


# ------------------------------------------------------------------------------ faults


def test_upstream_5xx_then_success(mag, fake):
    fake.script([{"status": 500}, {"status": 503}, {"status": 429}, {"text": "recovered"}])
    it = mag.create({"model": "openai:fake", "input": "x"}, timeout=60)
    assert it["status"] == "completed" and output_text(it) == "recovered", it
    assert len(fake.requests()) == 4


def test_upstream_400_fails_naming_the_model(mag, fake):
    fake.script([{"status": 400, "body": {"error": {"message": "unsupported thing XYZ",
                                                    "type": "invalid_request_error"}},
                  "repeat": True}])
    it = mag.create({"model": "openai:fake", "input": "x"}, timeout=60)
    assert it["status"] == "failed", it
    errs = json.dumps(it.get("errors", []))
    assert it.get("errors") and "fake" in errs, errs
    assert "XYZ" in errs, "the upstream's message is passed on"
    assert "fake-openai-key" not in json.dumps(it)
    assert len(fake.requests()) == 1, "a 400 is not retried"


def test_upstream_garbage_fails(mag, fake):
    """An answer that is not the format's JSON is tried twice more by the loop, 1 s and then
    2 s later (the client's own retries do not cover it), then fails the interaction."""
    fake.script([{"garbage": "<html>bad gateway</html>", "repeat": True}])
    it = mag.create({"model": "openai:fake", "input": "x"}, timeout=60)
    assert it["status"] == "failed" and it.get("errors"), it
    assert mag.server.alive()
    t = [q["time"] for q in fake.requests()]
    assert len(t) == 3, t
    assert t[1] - t[0] >= 0.9 and t[2] - t[1] >= 1.9, t


def test_upstream_wrong_json_shape_fails(mag, fake):
    fake.script([{"garbage": json.dumps({"choices": "nope"}), "repeat": True}])
    it = mag.create({"model": "openai:fake", "input": "x"}, timeout=60)
    assert it["status"] == "failed" and it.get("errors"), it


def test_invalid_tool_json_once_then_recovers(mag, fake):
    fake.script([{"calls": [{"name": "bash", "args_raw": "{\"command\": \"echo hi"}]},
                 bash("echo recovered-cmd"), {"text": "fine"}])
    it = mag.create(agent_body("x"), timeout=60)
    assert it["status"] == "completed", it
    errs = [s for s in it["steps"] if s["type"].endswith("_result") and s.get("is_error")]
    assert errs, it["steps"]
    reqs = model_calls(fake)
    assert len(reqs) == 3
    first = model_result_texts(reqs[1])
    assert first and "json" in first[0].lower(), first


def test_invalid_tool_json_three_times_fails(mag, fake):
    fake.script([{"calls": [{"name": "bash", "args_raw": "not json at all"}], "repeat": True}])
    it = mag.create(agent_body("x"), timeout=60)
    assert it["status"] == "failed", it
    assert it.get("errors") and re.search(r"json|malformed|invalid",
                                          json.dumps(it["errors"]).lower()), it["errors"]
    assert len(fake.requests()) == 3, len(fake.requests())
    results = [s for s in it["steps"] if s["type"].endswith("_result")]
    assert len(results) >= 2 and all(r.get("is_error") for r in results), it["steps"]


def test_unknown_tool_is_an_error_result(mag, fake):
    fake.script([{"calls": [{"name": "launch_rockets", "args": {"n": 1}}]}, {"text": "ok"}])
    it = mag.create(agent_body("x"), timeout=60)
    assert it["status"] == "completed", it
    res = [s for s in it["steps"] if s["type"] == "function_result"]
    assert res and res[0].get("is_error") is True, it["steps"]
    seen = model_result_texts(model_calls(fake)[1])
    assert seen and "launch_rockets" in seen[0], seen


@pytest.mark.slow
def test_model_unreachable_fails(pd, fake):
    """An upstream that refuses connections: retried, then failed with the reason."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    a = AgentServer(pd, fake, extra_env={"OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"})
    a.start()
    try:
        t0 = time.monotonic()
        it = a.create({"model": "openai:fake", "input": "x", "background": True})
        g = a.wait(it["id"], timeout=90)
        assert g["status"] == "failed" and g.get("errors"), g
        assert re.search(r"connect|refused|unreachable", json.dumps(g["errors"]).lower()), g
        assert time.monotonic() - t0 < 80 * SLOWDOWN
    finally:
        a.stop()


# --------------------------------------------------------------- truncation, AGENTS.md


@pytest.mark.parametrize("fmt", FORMATS)
def test_long_tool_output_reaches_the_model_clipped(mag, fake, fmt):
    # 3000 numbered lines: 50,000+ characters, every part of it recognisable.
    full = "".join(f"line-{i:05d}-abcdefghij\n" for i in range(1, 3001))
    assert len(full) > 60000
    fake.script([bash("for i in $(seq 1 3000); do printf 'line-%05d-abcdefghij\\n' $i; done"),
                 {"text": "long"}])
    it = mag.create(agent_body("long output", model=WIRE[fmt]), timeout=60)
    assert it["status"] == "completed", it
    assert result_text(steps_of(it, "code_execution_result")[0]) == full, \
        "the step keeps the whole output"
    seen = model_result_texts(model_calls(fake)[1])[0]
    assert len(seen) < 12000, len(seen)
    assert full[:1500] in seen, "the head is kept"
    assert full[-1500:].rstrip("\n") in seen, "the tail is kept"
    assert "line-01500-" not in seen, "the middle is cut"
    assert re.search(r"trunc|omit|cut|elid|skip|remov", seen.lower()), \
        "a note says what was cut"


def test_agents_md_and_skills_reach_the_system_prompt(mag, fake):
    env = {"type": "remote", "sources": [
        {"type": "inline", "target": "/workspace/AGENTS.md",
         "content": "# House rules\nAGENTS-MARKER-7781: always run the tests.\n"},
        {"type": "inline", "target": "/.agent/skills/deploy/SKILL.md",
         "content": "---\nname: deploy\ndescription: Deploys the app DESC-MARKER-55\n---\n"
                    "BODY-MARKER-99 step one\n"}]}
    fake.script([{"text": "ok"}])
    it = mag.create(agent_body("hi", environment=env, system_instruction="SYS-MARKER-1"),
                    timeout=60)
    assert it["status"] == "completed", it
    sys_ = system_text(model_calls(fake, 1)[0])
    assert "SYS-MARKER-1" in sys_ and "AGENTS-MARKER-7781" in sys_, sys_
    assert sys_.index("SYS-MARKER-1") < sys_.index("AGENTS-MARKER-7781"), sys_
    assert "deploy" in sys_ and "DESC-MARKER-55" in sys_, sys_
    assert "BODY-MARKER-99" not in sys_, "a skill's body is read on demand, not inlined"
    # ... and the model can read it.
    fake.reset()
    fake.script([fs("read", "/.agent/skills/deploy/SKILL.md"), {"text": "read the skill"}])
    it2 = mag.create(agent_body("use the skill", environment=it["environment_id"]), timeout=60)
    assert "BODY-MARKER-99" in result_text(steps_of(it2, "function_result")[0]), it2["steps"]

    # AGENTS.md written by an earlier interaction is read on the next one.
    fake.reset()
    fake.script([bash("echo 'LATER-RULE-31' > /workspace/AGENTS.md"), {"text": "ok"},
                 {"text": "ok2"}])
    a = mag.create(agent_body("write rules"), timeout=60)
    mag.create(agent_body("again", previous_interaction_id=a["id"]), timeout=60)
    reqs = model_calls(fake, 3)
    assert "LATER-RULE-31" not in system_text(reqs[0])
    assert "LATER-RULE-31" in system_text(reqs[2]), system_text(reqs[2])


@pytest.mark.parametrize("fmt", FORMATS)
def test_system_prompt_survives_bytes_that_are_not_utf8(mag, fake, fmt):
    """AGENTS.md in Latin-1 (with a NUL in it) and a skill description cut inside a
    multi-byte character still reach the model: the bytes that are not UTF-8 become U+FFFD,
    and the rest of the system prompt stays."""
    desc = "\u00e9" * 300  # 600 bytes: the description's cut lands inside a character
    fake.script([bash("printf 'LATIN1-MARK \\351t\\351 \\000 AFTER-NUL\\n' > "
                      "/workspace/AGENTS.md && mkdir -p /.agent/skills/acc && "
                      f"printf -- '---\\nname: acc\\ndescription: {desc}\\n---\\n' > "
                      "/.agent/skills/acc/SKILL.md"), {"text": "written"}, {"text": "ok"}])
    a = mag.create(agent_body("write", model=WIRE[fmt], system_instruction="SYS-MARK-2"),
                   timeout=60)
    assert a["status"] == "completed", a
    b = mag.create(agent_body("again", model=WIRE[fmt], system_instruction="SYS-MARK-2",
                              previous_interaction_id=a["id"]), timeout=60)
    assert b["status"] == "completed", b
    sys_ = system_text(model_calls(fake, 3)[2])
    assert "SYS-MARK-2" in sys_ and "persistent Linux sandbox" in sys_, sys_
    assert "LATIN1-MARK \ufffdt\ufffd \ufffd AFTER-NUL" in sys_, sys_
    assert "- acc: " + "\u00e9" * 200 in sys_, sys_


# ------------------------------------------------------- concurrency, restarts, disconnects


def test_workers_queue_and_per_key_cap(pd, fake):
    a = AgentServer(pd, fake, args=["--workers", "1", "--max-per-key", "2"]).start()
    try:
        fake.script([{"delay_s": 1.5, "text": "first"}, {"text": "second"}])
        x = a.create({"model": "openai:fake", "input": "1", "background": True})
        model_calls(fake, 1)
        y = a.create({"model": "openai:fake", "input": "2", "background": True})
        assert a.get(y["id"])["status"] == "queued", "one worker: the second waits"
        r = a.post({"model": "openai:fake", "input": "3", "background": True})
        assert r.status == 429, r
        assert_error_shape(r)
        ra = r.header("retry-after")
        assert ra and ra.isdigit() and int(ra) >= 1, r.headers
        # Another key of the same project is not capped by this one.
        k2 = a.server.make_key("second-key", scopes=SCOPES)
        r2 = a.post({"model": "openai:fake", "input": "4", "background": True}, key=k2)
        assert r2.status == 200, r2
        for it in (x, y, r2.json()):
            assert a.wait(it["id"], timeout=30)["status"] == "completed"
        # Room again once they ended.
        fake.script([{"text": "more"}])
        assert a.create({"model": "openai:fake", "input": "5"})["status"] == "completed"
    finally:
        a.stop()


def test_restart_mid_run_marks_it_failed_with_its_steps(pd, fake):
    a = AgentServer(pd, fake).start()
    try:
        fake.script([bash("echo started > /workspace/r.txt; sleep 60"), {"text": "never"}])
        it = a.create(agent_body("long", background=True))
        wait_step(a, it["id"], "code_execution_call")
        time.sleep(0.3)
        a.server.kill(signal.SIGKILL)
        a.server.start()
        g = a.wait(it["id"], timeout=20)
        assert g["status"] == "failed", g
        assert g.get("errors"), g
        types = [s["type"] for s in g["steps"]]
        assert types[:2] == ["user_input", "code_execution_call"], types
        assert a.file(g["environment_id"], "workspace/r.txt").body == b"started\n"
        # Its conversation was kept as of its last turn: an interaction that continues it
        # shows the model the call that ran, closed with a result that says what happened,
        # rather than only the first input (the model would run it again). Its usage is kept.
        assert g["usage"]["total_tokens"] > 0, g["usage"]
        fake.reset()
        fake.script([{"text": "carrying on"}])
        c = a.create({"model": "openai:fake", "input": "go on", "previous_interaction_id": g["id"]},
                     timeout=60)
        assert c["status"] == "completed", c
        msgs = fake.requests()[0]["body"]["messages"]
        calls = [m for m in msgs if m.get("tool_calls")]
        assert calls and "echo started" in json.dumps(calls[0]["tool_calls"]), msgs
        results = [m for m in msgs if m["role"] == "tool"]
        assert results and "the server stopped while this call ran" in results[0]["content"], msgs
        assert msgs[-1]["role"] == "user" and "go on" in json.dumps(msgs[-1]), msgs[-1]
        # The server works on after the restart, in the same environment.
        fake.reset()
        fake.script([bash("cat /workspace/r.txt"), {"text": "after restart"}])
        b = a.create(agent_body("again", environment=g["environment_id"]), timeout=60)
        assert b["status"] == "completed" and "started" in json.dumps(b["steps"]), b
    finally:
        a.stop()


def test_background_survives_client_disconnect(mag, fake):
    fake.script([bash("sleep 1; echo survived > /workspace/dc.txt"), {"text": "still here"}])
    s = mag.stream(agent_body("disconnect", background=True))
    assert s.status == 200, s.body
    got = []
    for e in s.events():
        got.append(e)
        if len(got) == 2:
            break
    iid = got[0]["interaction"]["id"]
    s.close()
    g = mag.wait(iid, timeout=30)
    assert g["status"] == "completed" and output_text(g) == "still here", g
    assert mag.file(g["environment_id"], "workspace/dc.txt").body == b"survived\n"


def test_many_streams_at_once(mag, fake):
    """Several concurrent streaming creates each get their own complete, ordered stream."""
    fake.script([{"delay_s": 0.2, "text": "same", "repeat": True}])
    out, errs = {}, []

    def one(i):
        try:
            s = mag.stream({"model": "openai:fake", "input": f"n{i}"})
            ev = s.all()
            out[i] = (ev, s.done)
        except Exception as e:  # noqa: BLE001
            errs.append(e)
    ts = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errs, errs
    ids = set()
    for i, (ev, done) in out.items():
        check_stream(ev, done)
        assert ev[-1]["interaction"]["status"] == "completed"
        ids.add(ev[0]["interaction"]["id"])
    assert len(ids) == 6


# ------------------------------------------------------------------------ more of the loop


@pytest.mark.parametrize("fmt", FORMATS)
def test_parallel_tool_calls(mag, fake, fmt):
    """Two calls in one model turn: both run, both results go back in the next request, each
    with its own call id."""
    fake.script([{"calls": [{"name": "bash", "args": {"command": "echo par-one"}},
                            {"name": "file_system", "args": {"operation": "write",
                                                             "path": "/workspace/par.txt",
                                                             "content": "par-two"}}]},
                 {"text": "both"}])
    it = mag.create(agent_body("two at once", model=WIRE[fmt]), timeout=60)
    assert it["status"] == "completed", it
    calls = steps_of(it, "code_execution_call") + steps_of(it, "function_call")
    results = steps_of(it, "code_execution_result") + steps_of(it, "function_result")
    assert len(calls) == 2 and len(results) == 2, it["steps"]
    assert {c["id"] for c in calls} == {r["call_id"] for r in results}
    assert len({c["id"] for c in calls}) == 2, "each call has its own id"
    assert mag.file(it["environment_id"], "workspace/par.txt").body == b"par-two"
    reqs = model_calls(fake)
    assert len(reqs) == 2
    res = tool_results(reqs[1])
    assert len(res) == 2, res
    assert "par-one" in "".join(model_result_texts(reqs[1])), res
    if fmt != "gemini":
        assert {r["id"] for r in res} == {c["id"] for c in calls}, res
    if fmt == "gemini":
        # Both function responses travel in one user turn after the model's turn.
        turns = [c for c in reqs[1]["body"]["contents"]
                 if any("functionResponse" in p for p in c.get("parts", []))]
        assert len(turns) == 1 and len(turns[0]["parts"]) == 2, turns
    if fmt == "anthropic":
        users = [m for m in reqs[1]["body"]["messages"] if m["role"] == "user"
                 and isinstance(m["content"], list)
                 and any(b.get("type") == "tool_result" for b in m["content"])]
        assert len(users) == 1, users


def test_file_system_list_and_delete(mag, fake):
    fake.script([fs("write", "/workspace/d/a.txt", "A"), fs("write", "/workspace/d/b.txt", "B"),
                 fs("list", "/workspace/d"), fs("delete", "/workspace/d/a.txt"),
                 fs("read", "/workspace/d/a.txt"), {"text": "ok"}])
    it = mag.create(agent_body("files"), timeout=60)
    assert it["status"] == "completed", it
    res = steps_of(it, "function_result")
    assert len(res) == 5, it["steps"]
    listing = result_text(res[2])
    assert "a.txt" in listing and "b.txt" in listing, listing
    assert not res[3].get("is_error"), res[3]
    assert res[4].get("is_error") is True, "reading a deleted file is an error result"
    assert mag.file(it["environment_id"], "workspace/d/a.txt").status == 404
    assert mag.file(it["environment_id"], "workspace/d/b.txt").body == b"B"


def test_bash_timeout_argument(mag, fake):
    fake.script([bash("sleep 20; echo never", timeout_s=1), {"text": "timed out"}])
    t0 = time.monotonic()
    it = mag.create(agent_body("short leash"), timeout=60)
    assert time.monotonic() - t0 < 8 * SLOWDOWN, "timeout_s of the bash call was not applied"
    assert it["status"] == "completed", it
    res = steps_of(it, "code_execution_result")[0]
    assert res.get("is_error") is True and "never" not in result_text(res), res
    seen = model_result_texts(model_calls(fake)[1])[0].lower()
    assert "time" in seen, seen


def test_environment_object_env_vars(mag, fake):
    fake.script([bash("echo \"FOO=$FOO BAR=$BAR\""), {"text": "ok"}])
    it = mag.create(agent_body("vars", environment={"type": "remote",
                                                    "env": {"FOO": "foo-val",
                                                            "BAR": {"value": "bar-val"}}}),
                    timeout=60)
    assert it["status"] == "completed", it
    assert "FOO=foo-val BAR=bar-val" in result_text(steps_of(it, "code_execution_result")[0])


def test_model_hang_is_bounded_by_timeout(mag, fake):
    """An upstream that never answers: the wall-time budget still ends the run."""
    fake.script([{"hang": True, "repeat": True}])
    t0 = time.monotonic()
    it = mag.create(agent_body("x", agent_config={"type": "antigravity", "timeout_s": 1}),
                    timeout=60)
    assert time.monotonic() - t0 < 6 * SLOWDOWN
    budget_error(it, "timeout_s", "time")


def test_retry_after_is_honoured(mag, fake):
    fake.script([{"status": 429, "headers": {"Retry-After": "1"}}, {"text": "after wait"}])
    it = mag.create({"model": "openai:fake", "input": "x"}, timeout=60)
    assert it["status"] == "completed" and output_text(it) == "after wait", it
    reqs = model_calls(fake)
    assert len(reqs) == 2
    assert reqs[1]["time"] - reqs[0]["time"] >= 0.9, "Retry-After: 1 was not waited for"


def test_generation_config_reaches_the_model(mag, fake):
    fake.script([{"text": "ok"}])
    it = mag.create({"model": "openai:fake", "input": "x",
                     "generation_config": {"temperature": 0.25, "max_output_tokens": 77}})
    assert it["status"] == "completed", it
    b = model_calls(fake, 1)[0]["body"]
    assert b.get("temperature") == 0.25, b
    assert 77 in (b.get("max_tokens"), b.get("max_completion_tokens")), b


def test_echoed_fields(mag, fake):
    tools = [{"type": "function", "name": "noop", "parameters": {"type": "object"}}]
    fake.script([{"text": "ok"}])
    body = agent_body("echo me", system_instruction="SI", tools=tools,
                      agent_config={"type": "antigravity", "max_steps": 5})
    it = mag.create(body, timeout=60)
    assert it["system_instruction"] == "SI" and it["tools"] == tools, it
    assert it["agent_config"]["max_steps"] == 5, it


def test_delete_a_running_interaction_stops_it(mag, fake):
    fake.script([bash("sleep 60")])
    it = mag.create(agent_body("doomed", background=True))
    wait_step(mag, it["id"], "code_execution_call")
    r = mag.http.delete(f"/{V}/interactions/{it['id']}")
    assert r.status == 200, r
    assert_error_shape(mag.http.get(f"/{V}/interactions/{it['id']}"), 404)
    time.sleep(0.5)
    assert len(fake.requests()) == 1, "the run went on after its delete"


def test_queued_cancel_and_restart_requeues(pd, fake):
    """With one worker: a queued interaction can be cancelled before it runs (the model never
    hears of it); a server killed with one running and one queued fails the running one and
    runs the queued one after the restart."""
    a = AgentServer(pd, fake, args=["--workers", "1"]).start()
    try:
        fake.script([{"hang": True}])
        x = a.create({"model": "openai:fake", "input": "runs", "background": True})
        model_calls(fake, 1)
        y = a.create({"model": "openai:fake", "input": "waits", "background": True})
        assert a.get(y["id"])["status"] == "queued"
        r = a.cancel(y["id"])
        assert r.status == 200 and r.json()["status"] == "cancelled", r
        z = a.create({"model": "openai:fake", "input": "waits too", "background": True})
        assert a.get(z["id"])["status"] == "queued"
        a.server.kill(signal.SIGKILL)
        fake.script([{"text": "ran after restart"}])
        a.server.start()
        assert a.wait(x["id"])["status"] == "failed"
        assert a.get(y["id"])["status"] == "cancelled"
        g = a.wait(z["id"])
        assert g["status"] == "completed" and output_text(g) == "ran after restart", g
        assert [q for q in fake.requests() if "waits too" in all_text(q)]
        assert not [q for q in fake.requests() if "waits\n" in all_text(q) + "\n"
                    and "waits too" not in all_text(q)], "the cancelled one ran"
    finally:
        a.stop()


@pytest.mark.slow
def test_the_end_is_recorded_after_the_database_was_busy(pd, fake):
    """The database held by another writer for longer than the run's writes wait for it
    (10 s each): the run's record of its model's answer fails, and so does the first write of
    its end; the end is tried again until it is recorded, never left in_progress until a
    restart."""
    a = AgentServer(pd, fake).start()
    try:
        fake.script([{"delay_s": 1, "text": "late answer"}])
        it = a.create({"model": "openai:fake", "input": "x", "background": True})
        model_calls(fake, 1)
        db = sqlite3.connect(str(pd.data / "paddock.db"), timeout=30, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            time.sleep(36)
            assert a.get(it["id"])["status"] == "in_progress"
        finally:
            db.execute("ROLLBACK")
            db.close()
        g = a.wait(it["id"], timeout=30)
        assert g["status"] == "failed", g
        assert "recording the interaction failed" in json.dumps(g["errors"]), g["errors"]
    finally:
        a.stop()


def test_retention_purges_old_interactions(pd, fake):
    """Past retention, interactions go: a batch per janitor tick (each takes its steps and
    events with it), every one of them within a few ticks."""
    a = AgentServer(pd, fake, args=["--retention", "1s"]).start()
    try:
        fake.script([{"text": "short-lived", "repeat": True}])
        ids = [a.create({"model": "openai:fake", "input": f"x{i}"})["id"] for i in range(25)]
        assert a.get(ids[0])["status"] == "completed"
        time.sleep(1.5)
        a.server.stop()
        a.server.start()
        end = time.monotonic() + 15 * SLOWDOWN
        left = ids
        while left:
            left = [i for i in left if a.http.get(f"/{V}/interactions/{i}").status != 404]
            assert time.monotonic() < end, f"{len(left)} of 25 were not purged"
            time.sleep(0.2)
        assert_error_shape(a.http.get(f"/{V}/interactions/{ids[-1]}"), 404)
    finally:
        a.stop()


def test_stream_of_a_failed_run_ends_properly(mag, fake):
    fake.script([{"status": 400, "repeat": True}])
    s = mag.stream({"model": "openai:fake", "input": "x"})
    events = s.all()
    assert s.done, "no [DONE] after a failure"
    assert events[0]["event_type"] == "interaction.created"
    last = events[-1]
    assert last["event_type"] in ("interaction.completed", "error"), last
    fin = [e for e in events if e["event_type"] == "interaction.completed"]
    assert fin and fin[-1]["interaction"]["status"] == "failed", events


def test_stream_of_a_cancelled_run_ends_properly(mag, fake):
    fake.script([bash("sleep 60")])
    it = mag.create(agent_body("x", background=True))
    s = mag.stream_get(it["id"])
    got = []
    for e in s.events():
        got.append(e)
        if e["event_type"] == "step.start" and e["step"]["type"] == "code_execution_call":
            assert mag.cancel(it["id"]).status == 200
    assert s.done, got
    assert got[-1]["event_type"] == "interaction.completed", got[-1]
    assert got[-1]["interaction"]["status"] == "cancelled", got[-1]


def test_store_false_stream(mag, fake):
    fake.script([{"text": "ephemeral"}])
    s = mag.stream({"model": "openai:fake", "input": "x", "store": False})
    events = s.all()
    check_stream(events, s.done)
    iid = events[0]["interaction"]["id"]
    # It goes once its stream has ended (the server may finish that just after [DONE]).
    assert pdk.wait_until(lambda: mag.http.get(f"/{V}/interactions/{iid}").status == 404,
                          timeout=3), "a store: false interaction was kept"


def test_streams_that_outlive_their_request_share_no_database_connection(mag, fake):
    """A store: false stream deletes its interaction when MHD frees the response, which is
    after the request completed. Its database connection must still be its own then: handed
    back to the pool with the request, it was in another request's hands at the same time (CI
    saw "file is not a database" on the requests that followed). Streams end one after another
    while other requests poll; none may fail."""
    import concurrent.futures
    import threading

    stop, bad = threading.Event(), []

    def poll():
        while not stop.is_set():
            r = mag.http.get(f"/{V}/interactions/int_{'a' * 26}")  # key and row lookups
            if r.status != 404:
                bad.append(r)

    fake.script([{"text": "ephemeral", "repeat": True}])
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        pollers = [ex.submit(poll) for _ in range(2)]
        try:
            for _ in range(25):
                s = mag.stream({"model": "openai:fake", "input": "x", "store": False})
                events = s.all()
                check_stream(events, s.done)
                iid = events[0]["interaction"]["id"]
                r = mag.http.get(f"/{V}/interactions/{iid}")
                assert r.status in (200, 404), r
        finally:
            stop.set()
            for f in pollers:
                f.result()
    assert not bad, bad[:3]
    fake.reset()


def test_foreground_stream_disconnect_is_survived(mag, fake):
    """A client that drops a (non-background) stream: the server stays up and the interaction
    still reaches a final status (whichever the server chooses)."""
    fake.script([bash("sleep 1; echo x"), {"text": "end"}])
    s = mag.stream(agent_body("drop me"))
    first = next(s.events())
    s.close()
    iid = first["interaction"]["id"]
    g = mag.wait(iid, timeout=30)
    assert g["status"] in ("completed", "cancelled", "failed"), g
    assert mag.server.alive()


# ----------------------------------------------------------------- awkward bytes and races


def test_tool_output_with_invalid_utf8_and_nul(mag, fake):
    fake.script([bash("printf 'ok-\\377\\376-bad\\n'; printf 'nul-\\000-byte\\n'"),
                 {"text": "survived"}])
    it = mag.create(agent_body("bytes"), timeout=60)
    assert it["status"] == "completed", it
    out = result_text(steps_of(it, "code_execution_result")[0])
    assert "ok-" in out and "-bad" in out and "-byte" in out, repr(out)
    seen = model_result_texts(model_calls(fake)[1])[0]
    assert "ok-" in seen and "-bad" in seen, repr(seen)
    # The stream of it is valid JSON too.
    events = mag.stream_get(it["id"]).all()
    assert events[-1]["event_type"] == "interaction.completed"


def test_long_multibyte_output_is_cut_on_character_boundaries(mag, fake):
    fake.script([bash("for i in $(seq 1 4000); do printf 'é漢🙂'; done; echo"),
                 {"text": "wide"}])
    it = mag.create(agent_body("wide chars"), timeout=60)
    assert it["status"] == "completed", it
    full = result_text(steps_of(it, "code_execution_result")[0])
    assert full == "é漢🙂" * 4000 + "\n", len(full)
    seen = model_result_texts(model_calls(fake)[1])[0]
    assert "\ufffd" not in seen, "a character was cut in half"
    assert seen.startswith("é漢🙂é漢🙂") and len(seen) < 12000, seen[:50]


def test_concurrent_creates_with_one_idempotency_key(mag, fake):
    fake.script([{"delay_s": 0.3, "text": "once only"}, {"text": "again"}])
    key = f"race-{time.monotonic_ns()}"
    ids, errs = [], []

    def one():
        try:
            r = mag.post({"model": "openai:fake", "input": "x", "background": True},
                         headers={"Idempotency-Key": key})
            b = r.json()
            ids.append((r.status, b.get("id") or (b.get("error") or {}).get("message")))
        except Exception as e:  # noqa: BLE001
            errs.append(e)
    ts = [threading.Thread(target=one) for _ in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert not errs, errs
    assert {s for s, _ in ids} == {200}, ids
    assert len({i for _, i in ids}) == 1, f"one key made several interactions: {ids}"
    mag.wait(ids[0][1])
    time.sleep(0.2)
    assert len(fake.requests()) == 1


def test_per_key_cap_under_concurrency(pd, fake):
    a = AgentServer(pd, fake, args=["--max-per-key", "2"]).start()
    try:
        fake.script([{"hang": True, "repeat": True}])
        res, lock = [], threading.Lock()

        def one(i):
            r = a.post({"model": "openai:fake", "input": f"c{i}", "background": True})
            with lock:
                res.append(r)
        ts = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        ok = [r for r in res if r.status == 200]
        assert len(ok) == 2, [r.status for r in res]
        assert all(r.status == 429 and r.header("retry-after") for r in res if r.status != 200)
        for r in ok:
            assert a.cancel(r.json()["id"]).status == 200
        for r in ok:
            assert a.wait(r.json()["id"])["status"] == "cancelled"
        fake.script([{"text": "room again"}])
        assert a.create({"model": "openai:fake", "input": "after"})["status"] == "completed"
    finally:
        a.stop()


def test_cancel_right_after_create(mag, fake):
    fake.script([{"delay_s": 0.5, "text": "x", "repeat": True}])
    for _ in range(3):
        it = mag.create({"model": "openai:fake", "input": "x", "background": True})
        r = mag.cancel(it["id"])
        assert r.status == 200, r
        assert mag.wait(it["id"], timeout=10)["status"] == "cancelled"


def test_environment_deleted_under_a_running_interaction(mag, fake):
    fake.script([bash("sleep 60"), {"text": "never"}])
    it = mag.create(agent_body("x", background=True))
    g = wait_step(mag, it["id"], "code_execution_call")
    time.sleep(0.2)
    r = mag.http.delete(f"/{V}/environments/{g['environment_id']}")
    assert r.status in (200, 400, 409), r
    if r.status == 200:
        # The command dies with its sandbox: an error result (the model may still answer),
        # or the run ends.
        end = mag.wait(it["id"], timeout=20)
        res = steps_of(end, "code_execution_result")
        assert end["status"] in ("failed", "cancelled") or \
            (res and res[0].get("is_error") is True), end
    else:
        assert mag.cancel(it["id"]).status == 200
        mag.wait(it["id"], timeout=20)
    assert mag.server.alive()


def test_huge_input_is_refused_or_run(mag, fake):
    fake.script([{"text": "big"}])
    r = mag.post({"model": "openai:fake", "input": "x" * (12 << 20)}, timeout=60)
    assert r.status in (200, 400, 413), r
    if r.status != 200:
        assert_error_shape(r)
    assert mag.server.alive()


def test_stream_resume_edge_cases(mag, fake):
    fake.script([{"text": "short"}])
    it = mag.create({"model": "openai:fake", "input": "x"})
    iid = it["id"]
    s = mag.stream_get(iid, last_event_id=999999)
    assert s.status == 200 and s.all() == [] and s.done
    s = mag.stream_get(iid, last_event_id="not-a-number")
    if s.status == 200:
        ev = s.all()
        assert s.done and ev and ev[0]["event_type"] == "interaction.created", ev
    else:
        assert s.status == 400, (s.status, s.body)
        s.close()
    other = mag.server.make_key("stream-other", scopes=SCOPES, project="stream-other")
    r = mag.server.http(other).get(f"/{V}/interactions/{iid}?stream=true")
    assert_error_shape(r, 404)
    assert mag.http.get(f"/{V}/interactions/{iid}/nope").status == 404
    assert mag.server.alive()


def test_stream_thought_and_function_call_events(mag, fake):
    """§5: a thought arrives as thought_summary / thought_signature deltas; a function call as
    the complete step of its step.start; requires_action ends the stream."""
    tool = {"type": "function", "name": "get_x", "parameters": {"type": "object"}}
    fake.script([{"thought": "deep thinking", "calls": [{"name": "get_x", "args": {"a": 1}}]}])
    s = mag.stream({"model": "gemini-x", "input": "hi", "tools": [tool]})
    events = s.all()
    check_stream(events, s.done)
    starts = {e["index"]: e["step"] for e in events if e["event_type"] == "step.start"}
    th = [i for i, st in starts.items() if st["type"] == "thought"]
    assert th, starts
    deltas = [e["delta"] for e in events if e["event_type"] == "step.delta"
              and e["index"] == th[0]]
    assert {"type": "thought_summary", "content": {"type": "text", "text": "deep thinking"}} \
        in deltas, deltas
    assert any(d["type"] == "thought_signature" and d["signature"].startswith("fake-sig-")
               for d in deltas), deltas
    fc = [st for st in starts.values() if st["type"] == "function_call"]
    assert fc and fc[0]["name"] == "get_x" and fc[0]["arguments"] == {"a": 1}, starts
    assert events[-1]["interaction"]["status"] == "requires_action"
