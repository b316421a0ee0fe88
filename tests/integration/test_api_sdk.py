"""SDK conformance: the official @google/genai SDK (pinned in tests/sdk/package.json) drives every
environments and files call against the real server (tests/sdk/conformance.mjs).

Needs node and `npm ci` in tests/sdk; without them the test fails (it never skips)."""

import json
import os
import re
import shutil
import subprocess

import pytest

import pdk
from apiserver import *  # noqa: F401,F403 (fixtures)

SDK_DIR = pdk.ROOT / "tests" / "sdk"


def _node():
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: install nodejs and run `npm ci` in tests/sdk")
    installed = SDK_DIR / "node_modules" / "@google" / "genai" / "package.json"
    if not installed.exists():
        pytest.fail(f"{SDK_DIR}/node_modules is missing: run `npm ci` in tests/sdk")
    pinned = json.loads((SDK_DIR / "package.json").read_text())["dependencies"]["@google/genai"]
    have = json.loads(installed.read_text())["version"]
    if have != pinned:
        pytest.fail(f"@google/genai {have} is installed, {pinned} is pinned: run `npm ci` in "
                    f"tests/sdk")
    return node


def run_node_suite(script, env, timeout):
    """Runs `node --test SCRIPT` in tests/sdk and fails unless it ran at least ten tests and all
    passed (node:test exits 0 with no tests at all). Returns its output."""
    node = _node()
    try:
        p = subprocess.run([node, "--test", "--test-reporter=spec", script],
                           cwd=SDK_DIR, env=dict(os.environ, NO_COLOR="1", **env),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"node --test {script} did not finish within {timeout}s:\n"
                    f"{(e.stdout or b'').decode('utf-8', 'replace')[-20000:]}")
    out = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0, f"{script} failed (rc={p.returncode}):\n{out[-30000:]}"
    counts = dict(re.findall(r"(?m)^\S* ?(tests|pass|fail|skipped|todo|cancelled) (\d+)$", out))
    assert int(counts.get("tests", 0)) >= 10 and counts.get("pass") == counts.get("tests"), \
        f"not every test of {script} ran and passed: {counts}\n{out[-5000:]}"
    return out


def test_sdk_conformance(api):
    other = api.server.make_key("other-project", scopes=("environments",), project="other")
    run_node_suite("conformance.mjs", {"PADDOCK_URL": api.server.url, "PADDOCK_KEY": api.key,
                                       "PADDOCK_KEY_OTHER": other}, 300 * pdk.SLOWDOWN)
    # The key never reaches the server's log.
    assert not [l for l in api.server.log_lines() if api.key in l or other in l]
