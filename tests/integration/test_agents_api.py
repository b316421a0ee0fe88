"""The Agents API (spec §2, §3.2, §6.1): CRUD, pagination, validation, and running a stored
agent (its system instruction, model, tools and base environment reach the run), including
base_agent chains. Runs against `paddock serve` with the scripted fake model."""

import json
import time
import urllib.parse

import pytest

from apiserver import assert_error_shape, assert_names
from agentkit import *  # noqa: F401,F403

AGENT = "antigravity-preview-05-2026"


def uid(prefix):
    return f"{prefix}-{time.monotonic_ns() % 10**10}"


def create_agent(ag, body, status=200):
    r = ag.http.post(f"/{V}/agents", json_body=body)
    if status == 200:
        assert r.status == 200, r
        return r.json()
    assert r.status == status, r
    return r


def get_agent(ag, aid):
    return ag.http.get(f"/{V}/agents/{urllib.parse.quote(aid, safe='')}")


def list_all(ag, page_size=None):
    return ag.http.pages("agents", page_size, V)


def test_crud(mag, fake):
    aid = uid("crud-agent")
    body = {"id": aid, "description": "Test agent", "system_instruction": "Be terse.",
            "agent_config": {"type": "antigravity", "model": "gemini-x"},
            "tools": [{"type": "code_execution"},
                      {"type": "function", "name": "get_time",
                       "parameters": {"type": "object", "properties": {}}}]}
    a = create_agent(mag, body)
    for k, v in body.items():
        assert a[k] == v, (k, a)
    g = get_agent(mag, aid)
    assert g.status == 200 and g.json()["id"] == aid, g
    for k, v in body.items():
        assert g.json()[k] == v, (k, g.json())
    # The version segment does not matter; a prefixed id (spec §1.5) finds it too.
    for v in ("v1", "v1alpha"):
        assert mag.http.get(f"/{v}/agents/{aid}").status == 200
    assert mag.http.get(f"/{V}/agents/agents%2F{aid}").status == 200
    items, _ = list_all(mag)
    assert aid in [x["id"] for x in items]
    # Duplicate id.
    r = create_agent(mag, {"id": aid}, status=409)
    assert_error_shape(r, 409)
    # Delete: {} then 404 everywhere.
    r = mag.http.delete(f"/{V}/agents/{aid}")
    assert r.status == 200 and r.json() == {}, r
    assert_error_shape(get_agent(mag, aid), 404)
    assert_error_shape(mag.http.delete(f"/{V}/agents/{aid}"), 404)
    assert aid not in [x["id"] for x in list_all(mag)[0]]
    assert_error_shape(mag.post({"agent": aid, "input": "x"}), 404)


def test_generated_id_and_builtins(mag, fake):
    a = create_agent(mag, {"system_instruction": "no id given"})
    assert isinstance(a.get("id"), str) and a["id"], a
    assert get_agent(mag, a["id"]).status == 200
    # The built-in agents can be read, not replaced.
    for b in (AGENT, "antigravity-preview-09-2026"):
        g = get_agent(mag, b)
        assert g.status == 200 and g.json()["id"] == b, g
    r = create_agent(mag, {"id": AGENT}, status=409)
    assert_error_shape(r, 409)
    mag.http.delete(f"/{V}/agents/{a['id']}")


def test_list_pagination(mag, fake):
    ids = [uid(f"page-{i}") for i in range(5)]
    for i in ids:
        create_agent(mag, {"id": i})
    try:
        every, pages = list_all(mag, page_size=2)
        got = [x["id"] for x in every]
        assert len(got) == len(set(got)), got
        assert set(ids) <= set(got)
        assert pages >= 3, pages
        one, _ = list_all(mag)
        assert [x["id"] for x in one] == got, "page sizes change nothing but the pages"
        r = mag.http.get(f"/{V}/agents?page_size=abc")
        assert_error_shape(r, 400)
    finally:
        for i in ids:
            mag.http.delete(f"/{V}/agents/{i}")


def test_agents_are_per_project(mag, fake):
    aid = uid("proj-agent")
    create_agent(mag, {"id": aid, "system_instruction": "mine"})
    other = mag.server.make_key("agents-other", scopes=SCOPES, project="other-agents")
    h = mag.server.http(other)
    assert_error_shape(h.get(f"/{V}/agents/{aid}"), 404)
    assert aid not in json.dumps(h.get(f"/{V}/agents").json())
    assert_error_shape(h.delete(f"/{V}/agents/{aid}"), 404)
    r = h.post(f"/{V}/interactions", json_body={"agent": aid, "input": "x"})
    assert_error_shape(r, 404)
    assert get_agent(mag, aid).status == 200
    mag.http.delete(f"/{V}/agents/{aid}")


def test_scopes(mag, fake):
    ro = mag.server.make_key("agents-ro", scopes=("agents.read",))
    h = mag.server.http(ro)
    assert h.get(f"/{V}/agents").status == 200
    assert_error_shape(h.post(f"/{V}/agents", json_body={"id": uid("ro")}), 403)
    none = mag.server.make_key("agents-none", scopes=("interactions",))
    assert_error_shape(mag.server.http(none).get(f"/{V}/agents"), 403)


@pytest.mark.parametrize("body, needles", [
    ({"id": "x1", "instructions": "wrong name"}, ("instructions",)),
    ({"id": "x2", "skills": []}, ("skills",)),
    ({"id": 7}, ("id",)),
    ({"id": "has space"}, ("id",)),
    ({"id": "x3", "system_instruction": 5}, ("system_instruction",)),
    ({"id": "x4", "agent_config": "fast"}, ("agent_config",)),
    ({"id": "x5", "agent_config": {"type": "deep-research"}}, ("agent_config",)),
    ({"id": "x6", "agent_config": {"type": "antigravity", "model": 3}}, ("model",)),
    ({"id": "x7", "tools": [{"type": "google_maps"}]}, ("tools",)),
    ({"id": "x8", "tools": {"type": "function"}}, ("tools",)),
    ({"id": "x9", "base_environment": 12}, ("base_environment",)),
    ({"id": "x10", "base_environment": {"type": "remote", "sources": "none"}},
     ("base_environment", "sources")),
    ({"id": "x11", "base_environment": {"type": "remote",
                                        "sources": [{"type": "inline", "target": "/",
                                                     "content": "x"}]}},
     ("base_environment", "target")),
])
def test_bad_agent_bodies(mag, fake, body, needles):
    r = create_agent(mag, body, status=400)
    assert_names(r, *needles, status=400)
    assert get_agent(mag, body["id"] if isinstance(body["id"], str) else "7").status == 404, \
        "nothing is half-created"


def test_bad_references(mag, fake):
    r = mag.http.post(f"/{V}/agents", json_body={"id": uid("orphan"), "base_agent": "nope"})
    assert r.status in (400, 404), r
    assert_error_shape(r)
    assert "base_agent" in r.json()["error"]["message"] or "nope" in r.json()["error"]["message"]
    r = mag.http.post(f"/{V}/agents", json_body={"id": uid("noenv"),
                                                 "base_environment": "env_" + "0" * 26})
    assert r.status in (400, 404), r
    assert_error_shape(r)


def test_running_a_stored_agent(mag, fake):
    aid = uid("runner")
    create_agent(mag, {"id": aid, "system_instruction": "STORED-SYS-4411 be careful",
                       "agent_config": {"type": "antigravity", "model": "anthropic:fake"}})
    fake.script([bash("echo from-stored > /workspace/stored.txt"), {"text": "stored done"}])
    it = mag.create({"agent": aid, "input": "do it"}, timeout=60)
    assert it["status"] == "completed", it
    assert it["agent"] == aid
    assert output_text(it) == "stored done"
    reqs = model_calls(fake)
    assert {q["format"] for q in reqs} == {"anthropic"}, "the stored agent's model is used"
    assert "STORED-SYS-4411" in system_text(reqs[0]), system_text(reqs[0])
    assert "bash" in tool_names(reqs[0])
    assert mag.file(it["environment_id"], "workspace/stored.txt").body == b"from-stored\n"
    # The request's agent_config.model overrides the stored one.
    fake.reset()
    fake.script([{"text": "override"}])
    it = mag.create({"agent": aid, "input": "x",
                     "agent_config": {"type": "antigravity", "model": "gemini-x"}}, timeout=60)
    assert it["status"] == "completed"
    assert model_calls(fake, 1)[0]["format"] == "gemini"
    mag.http.delete(f"/{V}/agents/{aid}")


def test_stored_agent_with_tools_and_base_environment(mag, fake):
    aid = uid("toolful")
    create_agent(mag, {"id": aid,
                       "tools": [{"type": "function", "name": "approve",
                                  "parameters": {"type": "object",
                                                 "properties": {"what": {"type": "string"}}}}],
                       "base_environment": {"type": "remote", "sources": [
                           {"type": "inline", "target": "/workspace/seed.txt",
                            "content": "seeded by the agent\n"}]}})
    fake.script([bash("cat /workspace/seed.txt"),
                 {"calls": [{"name": "approve", "args": {"what": "deploy"}}]}])
    it = mag.create({"agent": aid, "input": "go"}, timeout=60)
    assert it["status"] == "requires_action", it
    assert "seeded by the agent" in result_text(steps_of(it, "code_execution_result")[0])
    assert it["steps"][-1]["name"] == "approve"
    assert "approve" in tool_names(model_calls(fake)[0])
    mag.http.delete(f"/{V}/agents/{aid}")


def test_base_agent_chain(mag, fake):
    base, mid, leaf = uid("base"), uid("mid"), uid("leaf")
    create_agent(mag, {"id": base, "system_instruction": "BASE-SYS-1",
                       "agent_config": {"type": "antigravity", "model": "gemini-x"}})
    create_agent(mag, {"id": mid, "base_agent": base,
                       "base_environment": {"type": "remote", "sources": [
                           {"type": "inline", "target": "/workspace/mid.txt",
                            "content": "from mid\n"}]}})
    g = create_agent(mag, {"id": leaf, "base_agent": mid})
    assert g["base_agent"] == mid
    fake.script([bash("cat /workspace/mid.txt"), {"text": "leaf ran"}])
    it = mag.create({"agent": leaf, "input": "x"}, timeout=60)
    assert it["status"] == "completed", it
    reqs = model_calls(fake)
    assert reqs[0]["format"] == "gemini", "the model is inherited through the chain"
    assert "BASE-SYS-1" in system_text(reqs[0]), system_text(reqs[0])
    assert "from mid" in result_text(steps_of(it, "code_execution_result")[0])
    # A base agent that is a built-in is fine.
    b = create_agent(mag, {"id": uid("on-builtin"), "base_agent": AGENT})
    fake.reset()
    fake.script([{"text": "ok"}])
    assert mag.create({"agent": b["id"], "input": "x"})["status"] == "completed"
    for i in (leaf, mid, base, b["id"]):
        mag.http.delete(f"/{V}/agents/{i}")
