"""The egress audit names the interaction whose command made a connection (issue 4, "Audit").

An interaction's commands get a proxy URL whose user is the interaction and whose password is a
tag bound to the environment (src/env/env.c, env_proxy_tag()); clients send them to the proxy
unasked (Proxy-Authorization: Basic), the proxy verifies the tag and records the interaction.
Nothing else may claim one: a made-up tag, another environment's tag, or none gives a record
without an interaction, and the header never reaches an upstream.
"""

import re

import pytest

import pdk
from agentkit import AgentServer, bash, steps_of, result_text, fake, mfake  # noqa: F401
from egresskit import Upstream, UP_IP

V = "v1beta"


@pytest.fixture
def setup(pd, fake):  # noqa: F811
    up = Upstream()
    a = AgentServer(pd, fake, args=["--egress-allow-cidr", f"{UP_IP}/32",
                                    "--egress-resolve", f"allowed.test={UP_IP}"]).start()
    try:
        yield a, up
    finally:
        a.stop()
        up.close()


def make_env(a, port):
    r = a.http.post(f"/{V}/environments", json_body={
        "network": {"allowlist": [{"domain": f"allowed.test:{port}"}]}})
    assert r.status == 200, r
    e = r.json()
    a.pd.ids.add(e["id"])
    return e["id"]


def run(a, fake, env_id, cmd):  # noqa: F811
    fake.reset()
    fake.script([bash(cmd), {"text": "done"}])
    it = a.create({"model": "openai:fake", "input": "go", "environment": env_id}, timeout=120)
    assert it["status"] == "completed", it
    return it["id"], result_text(steps_of(it, "code_execution_result")[0])


def records(a, env_id, n):
    got = []

    def enough():
        nonlocal got
        r = a.http.get(f"/{V}/environments/{env_id}/egress?page_size=100")
        assert r.status == 200, r
        got = r.json().get("records", [])
        return len(got) >= n
    pdk.wait_until(enough, 10)
    return got


def test_records_name_the_interaction_that_made_them(setup, fake):  # noqa: F811
    a, up = setup
    p = up.port
    env_a, env_b = make_env(a, p), make_env(a, p)
    # An interaction in B shows its proxy URL (its tag is bound to B) and reaches out once.
    iid_b, out_b = run(a, fake, env_b, f"echo $HTTP_PROXY; curl -sS -o /dev/null "
                                       f"http://allowed.test:{p}/z && echo z-ok")
    stolen = out_b.strip().splitlines()[0]
    assert re.fullmatch(rf"http://{iid_b}:[0-9a-f]{{32}}@127\.0\.0\.1:3128", stolen), out_b
    assert "z-ok" in out_b, out_b
    (rec_b,) = records(a, env_b, 1)
    assert rec_b.get("interaction_id") == iid_b, rec_b

    target = f"http://allowed.test:{p}"
    made_up = "$(echo \"$HTTP_PROXY\" | sed -E 's/:[0-9a-f]{32}@/:" + "0" * 32 + "@/')"
    cmd = "; ".join([
        "cd /workspace",
        f"curl -sS -o /dev/null {target}/a && echo a-ok",                 # absolute form
        f"curl -sS -o /dev/null -p {target}/b && echo b-ok",              # CONNECT
        f"python3 -c \"import urllib.request as u; u.urlopen('{target}/c').read()\" && echo c-ok",
        f"node -e \"fetch('{target}/d').then(r => r.text()).then(() => console.log('d-ok'))\"",
        # git asks libcurl to wait for a 407 unless told basic (GIT_HTTP_PROXY_AUTHMETHOD);
        # the upstream is no git server, so only the connection counts here.
        f"git ls-remote {target}/repo.git >/dev/null 2>&1; echo h-ok",
        "curl -sS -o /dev/null http://denied.test/x; echo i-ok",           # a refusal too
        # Claims that must not stick: a made-up tag, B's tag, and none at all.
        f"curl -sS -o /dev/null -x \"{made_up}\" {target}/e && echo e-ok",
        f"curl -sS -o /dev/null -x '{stolen}' {target}/f && echo f-ok",
        f"curl -sS -o /dev/null -x http://127.0.0.1:3128 {target}/g && echo g-ok",
    ])
    n0 = up.count()
    iid_a, out = run(a, fake, env_a, cmd)
    for k in "abcdhiefg":
        assert f"{k}-ok" in out, out
    recs = records(a, env_a, 9)
    got = [(r["method"], r["decision"], r.get("interaction_id")) for r in recs]
    # git makes one request or two (it falls back to the dumb protocol): all its own.
    assert len(got) >= 9 and got[4:-4] == [("GET", "allow", iid_a)] * (len(got) - 8), recs
    assert got[:4] == [("GET", "allow", iid_a), ("CONNECT", "allow", iid_a),
                       ("GET", "allow", iid_a), ("CONNECT", "allow", iid_a)], recs
    assert got[-4:] == [("GET", "deny", iid_a),
                        ("GET", "allow", None), ("GET", "allow", None), ("GET", "allow", None)], recs
    # The CLI shows it too.
    cli = a.pd.run("env", "egress", env_a, "--json", timeout=30)
    assert cli.rc == 0, cli
    assert [x.get("interaction_id") for x in cli.json()] == [g[2] for g in got], cli
    # One interaction's records alone, through the API and the CLI.
    mine = [x for x in recs if x.get("interaction_id") == iid_a]
    for q in (iid_a, f"interactions/{iid_a}"):
        r = a.http.get(f"/{V}/environments/{env_a}/egress?interaction_id={q}&page_size=100")
        assert r.status == 200 and r.json()["records"] == mine, r
    assert len(mine) < len(recs), recs  # the filter has something to leave out
    r = a.http.get(f"/{V}/environments/{env_b}/egress?interaction_id={iid_a}")
    assert r.status == 200 and r.json()["records"] == [], r
    r = a.http.get(f"/{V}/environments/{env_a}/egress?interaction_id=int_nope")
    assert r.status == 400 and "interaction_id" in r.json()["error"]["message"], r
    cli = a.pd.run("env", "egress", env_a, "--interaction", iid_a, "--json", timeout=30)
    assert cli.rc == 0 and len(cli.json()) == len(mine), cli
    assert {x["interaction_id"] for x in cli.json()} == {iid_a}, cli
    assert records(a, env_b, 1) == [rec_b]  # nothing of A's went into B's log
    # The header was the proxy's only: no upstream saw it.
    up.wait_closed()
    for c in up.snapshot()[n0:]:
        assert b"proxy-authorization" not in c.raw.lower(), c


def test_commands_outside_an_interaction_carry_no_claim(setup, fake):  # noqa: F811
    a, up = setup
    env_a = make_env(a, up.port)
    r = a.pd.run("env", "exec", env_a, "-c",
                 f"echo $HTTP_PROXY; curl -sS -o /dev/null http://allowed.test:{up.port}/x && "
                 "echo ok", timeout=60)
    assert r.rc == 0 and r.text.splitlines()[0] == "http://127.0.0.1:3128", r
    (rec,) = records(a, env_a, 1)
    assert rec["method"] == "GET" and "interaction_id" not in rec, rec


def test_a_malformed_claim_is_ignored_not_refused(setup, fake):  # noqa: F811
    """Garbage in Proxy-Authorization (not base64, no colon, overlong, NUL inside, another
    scheme) changes nothing: the request goes through, unattributed. The same interaction's
    own user and password, sent by hand (lower-case "basic"), are attributed: the header is
    what counts, however it is spelled."""
    a, up = setup
    env_a = make_env(a, up.port)
    bad = ["Basic !!!!", "Basic", "Bearer abc", "Basic " + "QUFB" * 200, "Basic YQBiOmM=",
           "Basic YWJj"]
    url = f"http://allowed.test:{up.port}"
    plain = "curl -sS -o /dev/null -x http://127.0.0.1:3128"
    cmd = "; ".join([f"{plain} -H 'Proxy-Authorization: {h}' {url}/{i} && echo ok{i}"
                     for i, h in enumerate(bad)] + [
        'u=${HTTP_PROXY#http://}; u=${u%@*}',
        f'{plain} -H "Proxy-Authorization: basic $(printf %s "$u" | base64 -w0)" {url}/c '
        '&& echo okc'])
    iid, out = run(a, fake, env_a, cmd)
    for k in [str(i) for i in range(len(bad))] + ["c"]:
        assert f"ok{k}" in out, out
    recs = records(a, env_a, len(bad) + 1)
    assert [x["decision"] for x in recs] == ["allow"] * (len(bad) + 1), recs
    assert [x.get("interaction_id") for x in recs] == [None] * len(bad) + [iid], recs


def test_paddock_run_is_attributed_by_the_running_server(setup, fake):  # noqa: F811
    """`paddock run` is another process than the server whose proxy checks the tag: both read
    the same key file (DATA/egress-tag.key), so an interaction run from the command line is
    named in the audit like one run through the API."""
    a, up = setup
    env_a = make_env(a, up.port)
    fake.reset()
    fake.script([bash(f"curl -sS -o /dev/null http://allowed.test:{up.port}/cli && echo cli-ok"),
                 {"text": "done"}])
    env = dict(a.pd.env)
    env.pop("PADDOCK_MODEL", None)
    env.update(fake.env())
    r = a.pd.run("run", "--model", "openai:fake", "--env", env_a, "go", env=env, timeout=120)
    assert r.rc == 0, r
    m = re.search(r"interaction (int_[0-9a-z]+) completed", r.errtext)
    assert m, r
    assert "cli-ok" in str(fake.requests()), fake.requests()
    (rec,) = records(a, env_a, 1)
    assert rec["method"] == "GET" and rec.get("interaction_id") == m.group(1), rec
