"""The documented REST examples of the managed-agents docs (Gemini API "Environments in
Managed Agents"), replayed with curl exactly as written there — only the host and the key are
changed: create with "environment": "remote"; reuse with environment + previous_interaction_id;
sources; network "disabled"; streaming; the snapshot download. The model behind paddock is the
scripted fake, so each replay also checks that the sandbox really did what was asked."""

import io
import json
import shlex
import shutil
import subprocess
import tarfile

import pytest

from agentkit import *  # noqa: F401,F403

AGENT = "antigravity-preview-05-2026"


def curl(ag, script, timeout=60):
    """Runs a documented curl command line (as a shell script, like the docs) with the
    docs' host replaced by the server and $GEMINI_API_KEY set to a paddock key."""
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed")
    script = script.replace("https://generativelanguage.googleapis.com", ag.server.url)
    env = {"PATH": "/usr/bin:/bin", "GEMINI_API_KEY": ag.key}
    p = subprocess.run(["bash", "-c", "set -e\n" + script], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout * SLOWDOWN)
    assert p.returncode == 0, (p.returncode, p.stdout[-3000:], p.stderr[-3000:])
    return p.stdout


def curl_json(ag, script, **kw):
    out = curl(ag, script, **kw)
    try:
        return json.loads(out)
    except ValueError:
        raise AssertionError(f"not JSON: {out[:3000]!r}") from None


CREATE_REMOTE = """
curl -X POST "https://generativelanguage.googleapis.com/v1beta/interactions" \\
-H "Content-Type: application/json" \\
-H "x-goog-api-key: $GEMINI_API_KEY" \\
-H "Api-Revision: 2026-05-20" \\
-d '{
    "agent": "antigravity-preview-05-2026",
    "input": "Install pandas and matplotlib, verify the imports, and print the versions.",
    "environment": "remote"
}'
"""


def test_create_with_remote_environment(mag, fake):
    fake.script([bash("echo 'pandas 2.2.0'; echo 'matplotlib 3.9.0' > /workspace/versions.txt"),
                 {"text": "pandas 2.2.0, matplotlib 3.9.0"}])
    it = curl_json(mag, CREATE_REMOTE)
    assert it["status"] == "completed", it
    assert it["environment_id"].startswith("env_"), it
    assert output_text(it) == "pandas 2.2.0, matplotlib 3.9.0"
    q = model_calls(fake)[0]
    assert "Install pandas and matplotlib" in all_text(q)
    env = mag.http.get(f"/{V}/environments/{it['environment_id']}")
    assert env.status == 200, env


def test_reuse_with_environment_and_previous_interaction(mag, fake):
    fake.script([bash("mkdir -p /workspace/data && echo 'x,y' > /workspace/data/sales.csv"),
                 {"text": "saved sales.csv"}])
    first = curl_json(mag, CREATE_REMOTE)
    assert first["status"] == "completed", first
    fake.reset()
    fake.script([bash("cat /workspace/data/sales.csv"), {"text": "analyzed"}])
    script = f"""
ENV_ID={shlex.quote(first["environment_id"])}
INTERACTION_ID={shlex.quote(first["id"])}
curl -X POST "https://generativelanguage.googleapis.com/v1beta/interactions" \\
-H "Content-Type: application/json" \\
-H "x-goog-api-key: $GEMINI_API_KEY" \\
-H "Api-Revision: 2026-05-20" \\
-d '{{
    "agent": "antigravity-preview-05-2026",
    "input": "Now analyze sales.csv and create a summary report.",
    "environment": "'"$ENV_ID"'",
    "previous_interaction_id": "'"$INTERACTION_ID"'"
}}'
"""
    second = curl_json(mag, script)
    assert second["status"] == "completed", second
    assert second["environment_id"] == first["environment_id"]
    assert "x,y" in result_text(steps_of(second, "code_execution_result")[0])
    seen = all_text(model_calls(fake)[0])
    assert "Install pandas" in seen and "saved sales.csv" in seen and "analyze sales.csv" in seen


def test_sources_inline(mag, fake):
    fake.script([bash("cat /workspace/main.py /workspace/data/input.txt"), {"text": "read"}])
    script = """
curl -X POST "https://generativelanguage.googleapis.com/v1beta/interactions" \\
-H "Content-Type: application/json" \\
-H "x-goog-api-key: $GEMINI_API_KEY" \\
-H "Api-Revision: 2026-05-20" \\
-d '{
    "agent": "antigravity-preview-05-2026",
    "input": "Run main.py on the input file.",
    "environment": {
        "type": "remote",
        "sources": [
            {"type": "inline", "content": "print(1)", "target": "/workspace/main.py"},
            {"type": "inline", "content": "aGVsbG8gc291cmNlcw==", "encoding": "base64",
             "target": "/workspace/data/input.txt"}
        ]
    }
}'
"""
    it = curl_json(mag, script)
    assert it["status"] == "completed", it
    out = result_text(steps_of(it, "code_execution_result")[0])
    assert "print(1)" in out and "hello sources" in out, out
    # And through the files API, again with curl.
    got = curl(mag, f"""
curl -s "https://generativelanguage.googleapis.com/v1beta/environments/{it['environment_id']}/files/workspace/data/input.txt?alt=media" \\
-H "x-goog-api-key: $GEMINI_API_KEY"
""")
    assert got == b"hello sources"


def test_network_disabled(mag, fake):
    fake.script([bash("env | grep -i '_proxy=' || echo no-proxy; "
                      "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"), {"text": "offline"}])
    script = """
curl -X POST "https://generativelanguage.googleapis.com/v1beta/interactions" \\
-H "Content-Type: application/json" \\
-H "x-goog-api-key: $GEMINI_API_KEY" \\
-H "Api-Revision: 2026-05-20" \\
-d '{
    "agent": "antigravity-preview-05-2026",
    "input": "Try to reach the internet.",
    "environment": {
        "type": "remote",
        "network": "disabled"
    }
}'
"""
    it = curl_json(mag, script)
    assert it["status"] == "completed", it
    out = result_text(steps_of(it, "code_execution_result")[0])
    assert "no-proxy" in out and out.split("no-proxy")[1].split() == ["lo"], out
    env = mag.http.get(f"/{V}/environments/{it['environment_id']}").json()
    assert env.get("network") == "disabled", env
    # The contrast: a default environment does reach out, through the proxy.
    fake.reset()
    fake.script([bash("env | grep -i '_proxy=' || echo no-proxy"), {"text": "online"}])
    on = curl_json(mag, CREATE_REMOTE)
    assert "_proxy=" in result_text(steps_of(on, "code_execution_result")[0]).lower(), on


def test_streaming_with_curl(mag, fake):
    fake.script([{"text": "streamed over curl"}])
    out = curl(mag, """
curl -N -X POST "https://generativelanguage.googleapis.com/v1beta/interactions" \\
-H "Content-Type: application/json" \\
-H "x-goog-api-key: $GEMINI_API_KEY" \\
-H "Api-Revision: 2026-05-20" \\
-d '{
    "agent": "antigravity-preview-05-2026",
    "input": "Say something.",
    "environment": "remote",
    "stream": true
}'
""").decode()
    datas = [l[len("data: "):] for l in out.splitlines() if l.startswith("data: ")]
    assert datas and datas[-1] == "[DONE]", out[-2000:]
    events = [json.loads(d) for d in datas[:-1]]
    assert events[0]["event_type"] == "interaction.created"
    assert events[-1]["event_type"] == "interaction.completed"
    assert "streamed over curl" in "".join(e["delta"].get("text", "") for e in events
                                           if e["event_type"] == "step.delta")


def test_snapshot_download(mag, fake, tmp_path):
    fake.script([bash("mkdir -p /workspace/out && echo report > /workspace/out/report.md"),
                 {"text": "report written"}])
    it = curl_json(mag, CREATE_REMOTE)
    assert it["status"] == "completed", it
    snap = tmp_path / "snapshot.tar"
    curl(mag, f"""
ENV_ID={shlex.quote(it["environment_id"])}
curl -s -f "https://generativelanguage.googleapis.com/v1beta/files/environment-$ENV_ID:download?alt=media" \\
-H "x-goog-api-key: $GEMINI_API_KEY" \\
-o {shlex.quote(str(snap))}
""")
    data = snap.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        names = tf.getnames()
        hit = [n for n in names if n.rstrip("/").endswith("out/report.md")]
        assert hit, names[:50]
        assert tf.extractfile(hit[0]).read() == b"report\n"
