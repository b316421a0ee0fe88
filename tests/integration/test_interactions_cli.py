"""`paddock run [--env ID] [--agent A] [--model M] [--json] "task"`: one interaction run in the
CLI process against the scripted fake model. The final answer goes to stdout, the interaction
and environment ids to stderr, --json prints the stream's events as JSON lines, and the exit
status is 0 only for a completed run."""

import json
import os
import pty
import re
import sqlite3
import subprocess

from apiserver import assert_error_shape
from agentkit import *  # noqa: F401,F403

LAST_RE = re.compile(r"interaction (int_[0-9a-z]+) (\w+); environment (env_[0-9a-z]+)")


def run(pd, fake, *args, model="openai:fake", env_extra=None, timeout=60):
    env = dict(pd.env)
    env.pop("PADDOCK_MODEL", None)
    env.update(fake.env())
    env.update(env_extra or {})
    a = ["run"] + (["--model", model] if model else []) + list(args)
    return pd.run(*a, env=env, timeout=timeout)


def ids_of(r):
    m = LAST_RE.search(r.errtext)
    assert m, f"no 'interaction ID STATUS; environment ENV' on stderr: {r}"
    return m.group(1), m.group(2), m.group(3)


def test_run_prints_the_answer_and_the_environment(pd, fake):
    fake.script([bash("echo cli-made > /workspace/cli.txt; echo ran"), {"text": "All done."}])
    r = run(pd, fake, "make a file")
    assert r.rc == 0, r
    assert r.text == "All done.\n", r
    iid, status, env_id = ids_of(r)
    assert status == "completed"
    assert env_id in [e["id"] for e in pd.ls()], "the environment outlives the run"
    reqs = model_calls(fake)
    assert len(reqs) == 2 and "make a file" in all_text(reqs[0])
    assert "ran" in json.dumps(tool_results(reqs[1]))

    # --env reuses it: the file is there; the model is told nothing else changed.
    fake.reset()
    fake.script([bash("cat /workspace/cli.txt"), {"text": "Found it."}])
    r2 = run(pd, fake, "--env", env_id, "read the file")
    assert r2.rc == 0 and r2.text == "Found it.\n", r2
    _, _, env2 = ids_of(r2)
    assert env2 == env_id
    assert "cli-made" in json.dumps(tool_results(model_calls(fake)[1]))


def test_run_json_lines(pd, fake):
    fake.script([bash("echo json-out"), {"text": "json answer"}])
    r = run(pd, fake, "--json", "--agent", "antigravity-preview-09-2026", "task")
    assert r.rc == 0, r
    lines = [l for l in r.text.splitlines() if l.strip()]
    events = [json.loads(l) for l in lines]  # every line is one JSON event
    kinds = [e["event_type"] for e in events]
    assert kinds[0] == "interaction.created" and kinds[-1] == "interaction.completed", kinds
    assert "step.start" in kinds and "step.delta" in kinds and "step.stop" in kinds
    assert events[-1]["interaction"]["status"] == "completed"
    deltas = "".join(e["delta"].get("result", "") + e["delta"].get("text", "")
                     for e in events if e["event_type"] == "step.delta")
    assert "json-out" in deltas and "json answer" in deltas, deltas
    assert "json answer\n" not in r.text.replace(json.dumps("json answer"), ""), \
        "--json prints events only"
    ids_of(r)


def test_run_failure_exits_nonzero(pd, fake):
    fake.script([{"status": 400, "body": {"error": {"message": "model says no"}},
                  "repeat": True}])
    r = run(pd, fake, "doomed")
    assert r.rc != 0, r
    _, status, _ = ids_of(r)
    assert status == "failed"
    assert "model says no" in r.errtext, r


def test_run_budget_exceeded_exits_nonzero(pd, fake):
    fake.script([dict(bash("true"), repeat=True)])
    r = run(pd, fake, "--max-steps", "2", "loop forever")
    assert r.rc != 0, r
    assert ids_of(r)[1] == "budget_exceeded"
    assert len(fake.requests()) == 2


def test_run_without_a_model_says_which_setting(pd, fake):
    r = run(pd, fake, "hello", model=None)
    assert r.rc != 0, r
    assert re.search(r"--model|PADDOCK_MODEL", r.errtext), r
    assert fake.requests() == []


def test_run_usage_errors(pd, fake):
    assert run(pd, fake).rc == 2
    assert run(pd, fake, "a", "b").rc == 2
    r = run(pd, fake, "--env", "env_" + "0" * 26, "x")
    assert r.rc != 0 and "env_" in r.errtext, r
    assert fake.requests() == []


def run_on_a_terminal(pd, fake, *args):
    """paddock run with stderr on a pty; returns (stdout bytes, stderr text without colours)."""
    env = dict(pd.env)
    env.pop("PADDOCK_MODEL", None)
    env.update(fake.env())
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen(pd.argv("run", *args), env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        slave = None
        err = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            err += chunk
        out = p.stdout.read()
        assert p.wait(60) == 0, (out, err)
    finally:
        os.close(master)
        if slave is not None:
            os.close(slave)
    text = re.sub(rb"\x1b\[[0-9;]*[A-Za-z]", b"", err).decode("utf-8", "replace")
    return out, text.replace("\r\n", "\n")


def test_run_shows_live_progress_on_a_terminal(pd, fake):
    """With stderr on a terminal: the commands, their output and the tokens and cost so far
    are shown as they happen; stdout still gets only the answer."""
    fake.script([bash("echo progress-output-77"), {"text": "Finished."}])
    out, text = run_on_a_terminal(pd, fake, "--model", "openai:gpt-4o", "show me")
    assert out == b"Finished.\n", out
    assert "echo progress-output-77\n" in text, text
    assert "\nprogress-output-77\n" in text, text
    assert re.search(r"\d+ tokens", text), text
    assert re.search(r"\$0\.\d+", text.replace("$ echo", "")), \
        f"no cost shown for a priced model: {text}"


def test_run_tokens_so_far_count_every_turn(pd, fake):
    fake.script([dict(bash("echo t"), usage={"input": 1000, "output": 20}),
                 {"text": "Finished.", "usage": {"input": 1100, "output": 5}}])
    out, text = run_on_a_terminal(pd, fake, "--model", "openai:gpt-4o", "count")
    # Both turns: 1020 + 1105 tokens.
    assert re.search(r"\b2,?125 tokens", text), f"the tokens so far are not the run's: {text}"


def test_delete_of_a_run_another_process_runs_is_refused(pd, fake):
    """While `paddock run` runs an interaction, the server's DELETE of it answers 409 naming
    the other process, rather than deleting rows that process goes on writing."""
    a = AgentServer(pd, fake).start()
    p = None
    try:
        fake.script([{"hang": True}])
        env = dict(pd.env)
        env.pop("PADDOCK_MODEL", None)
        env.update(fake.env())
        p = subprocess.Popen(pd.argv("run", "--model", "openai:fake", "hello"), env=env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        model_calls(fake, 1)
        db = sqlite3.connect(str(pd.data / "paddock.db"), timeout=10)
        (iid,) = db.execute("SELECT id FROM interactions WHERE status = 'in_progress'").fetchone()
        db.close()
        r = a.http.delete(f"/{V}/interactions/{iid}")
        assert_error_shape(r, 409)
        assert "another paddock process" in r.json()["error"]["message"], r.json()
        assert a.get(iid)["status"] == "in_progress"
    finally:
        if p is not None:
            p.kill()
            p.wait()
        a.stop()
