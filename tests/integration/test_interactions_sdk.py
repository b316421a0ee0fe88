"""Interactions and agents through the official @google/genai SDK (tests/sdk/interactions.mjs),
against `paddock serve` whose model is the scripted fake (fakemodel.py).

Needs node and `npm ci` in tests/sdk; without them the test fails (it never skips)."""

import pdk
from agentkit import *  # noqa: F401,F403
from test_api_sdk import run_node_suite


def test_sdk_interactions(ag, fake):
    run_node_suite("interactions.mjs", {"PADDOCK_URL": ag.server.url, "PADDOCK_KEY": ag.key,
                                        "FAKE_URL": fake.url,
                                        "PADDOCK_SLOWDOWN": str(pdk.SLOWDOWN)},
                   180 * pdk.SLOWDOWN)
    assert not [l for l in ag.server.log_lines() if ag.key in l], "the key reached the log"
