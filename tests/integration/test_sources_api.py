"""Network sources of an environment (docs/API.md): `repository` (git clone) and `gcs` (the GCS
JSON API, or a plain https/http URL), fetched by the sandbox itself through the egress proxy,
so the environment's allowlist and the proxy's address rules apply and a private source's token
is injected by the proxy without ever entering the sandbox. Upstreams are test servers on
127.0.0.2, named with --egress-resolve and opened with --egress-allow-cidr."""

import http.server
import json
import os
import subprocess
import urllib.parse

import pytest

from apiserver import *  # noqa: F401,F403
from apiserver import Api, ApiServer, finish
import pdk
from tlskit import HOST, make_ca, make_cert, serve, tls_wrap


@pytest.fixture(scope="module")
def gitrepo(tmp_path_factory):
    """A bare repository served over dumb HTTP on 127.0.0.2."""
    root = tmp_path_factory.mktemp("git")
    work = root / "work"
    subprocess.run(["git", "init", "-q", "--bare", str(root / "r.git")], check=True)
    subprocess.run(["git", "clone", "-q", str(root / "r.git"), str(work)], check=True,
                   capture_output=True)
    (work / "README.md").write_text("hello from the repository\n")
    (work / "src").mkdir()
    (work / "src" / "main.py").write_text("print('hi')\n")
    git = ["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "init"], check=True)
    subprocess.run(git + ["push", "-q", "origin", "HEAD:master"], check=True, capture_output=True)
    subprocess.run(["git", "-C", str(root / "r.git"), "symbolic-ref", "HEAD", "refs/heads/master"],
                   check=True)
    subprocess.run(["git", "-C", str(root / "r.git"), "update-server-info"], check=True)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *a):
            pass

    httpd = serve(http.server.ThreadingHTTPServer((HOST, 0), Quiet))
    yield httpd.server_address[1]
    httpd.shutdown()


@pytest.fixture(scope="module")
def fake_gcs(tmp_path_factory):
    """storage.googleapis.com's JSON API for one private bucket, over TLS on 127.0.0.2:443;
    it wants 'Authorization: Bearer gcs-token-XYZ' and records every Authorization it saw."""
    tmp = tmp_path_factory.mktemp("gcs")
    ca, _ = make_ca(tmp)
    cert, key = make_cert(tmp, "storage.googleapis.com")
    objects = {"data/a.txt": b"alpha\n", "data/sub/b.bin": bytes(range(256)) * 40,
               "other/c.txt": b"not under the prefix\n"}
    seen = []

    class Gcs(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            if self.headers.get("Authorization") != "Bearer gcs-token-XYZ":
                return self._send(403, b'{"error":"forbidden"}')
            u = urllib.parse.urlsplit(self.path)
            q = urllib.parse.parse_qs(u.query)
            base = "/storage/v1/b/private-bucket/o"
            if u.path == base:
                pfx = q.get("prefix", [""])[0]
                items = [{"name": n, "size": str(len(d))} for n, d in objects.items()
                         if n.startswith(pfx)]
                return self._send(200, json.dumps({"items": items}).encode())
            if u.path.startswith(base + "/") and q.get("alt") == ["media"]:
                name = urllib.parse.unquote(u.path[len(base) + 1:])
                if name in objects:
                    return self._send(200, objects[name])
            return self._send(404, b"{}")

        def _send(self, code, body):
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = serve(tls_wrap(http.server.ThreadingHTTPServer((HOST, 443), Gcs), cert, key))
    yield {"ca": ca, "objects": objects, "seen": seen}
    httpd.shutdown()


@pytest.fixture
def srcapi(pd, fake_gcs):
    server = ApiServer(pd, args=["--egress-resolve", "repo.test=" + HOST,
                                 "--egress-resolve", "storage.googleapis.com=" + HOST,
                                 "--egress-allow-cidr", HOST + "/32",
                                 "--egress-upstream-ca", str(fake_gcs["ca"])]).start()
    try:
        yield Api(server)
    finally:
        finish(server)


def sh(api, env_id, cmd):
    return api.pd.ok("env", "exec", env_id, "-c", cmd).text


def test_repository_is_cloned_inside_through_the_proxy(srcapi, gitrepo):
    url = f"http://repo.test:{gitrepo}/r.git"
    e = srcapi.http.create({"sources": [{"type": "repository", "source": url,
                                         "target": "/workspace/repo"}],
                            "network": {"allowlist": [{"domain": f"repo.test:{gitrepo}"}]}})
    out = sh(srcapi, e["id"], "cat /workspace/repo/README.md /workspace/repo/src/main.py; "
                              "git -C /workspace/repo log --oneline | wc -l")
    assert out == "hello from the repository\nprint('hi')\n1\n"
    assert int(e["file_count"]) > 2
    # The clone went through the proxy, as one allowed decision per request.
    recs = srcapi.http.get(f"/v1beta/environments/{e['id']}/egress").json()["records"]
    assert recs and all(r["host"] == "repo.test" and r["decision"] == "allow" for r in recs)


def test_repository_default_target_is_under_workspace(srcapi, gitrepo):
    url = f"http://repo.test:{gitrepo}/r.git"
    e = srcapi.http.create({"sources": [{"type": "repository", "source": url}]})
    assert sh(srcapi, e["id"], "cat /workspace/r/README.md") == "hello from the repository\n"


def test_repository_the_allowlist_refuses_is_a_400_and_nothing_is_left(srcapi, gitrepo):
    before = srcapi.http.ids()
    r = srcapi.http.create({"sources": [{"type": "repository",
                                         "source": f"http://repo.test:{gitrepo}/r.git"}],
                            "network": {"allowlist": [{"domain": "elsewhere.test"}]}}, ok=False)
    assert r.status == 400, r
    msg = r.json()["error"]["message"]
    assert "repo.test" in msg and "allowlist" in msg, msg
    assert srcapi.http.ids() == before
    assert not [e for e in srcapi.pd.ls() if e["id"] not in before]


@pytest.mark.parametrize("source,why", [
    ("ssh://git@repo.test/r.git", "transports"),
    ("git@repo.test:r.git", "transports"),
    ("file:///etc", "transports"),
    ("ext::sh -c id", "repository"),
    ("--upload-pack=touch /tmp/x", "transports"),
])
def test_repository_other_transports_are_refused_before_anything(srcapi, source, why):
    before = srcapi.http.ids()
    r = srcapi.http.create({"sources": [{"type": "repository", "source": source,
                                         "target": "/workspace/x"}]}, ok=False)
    assert r.status == 400, r
    assert "sources[0]" in r.json()["error"]["message"]
    assert srcapi.http.ids() == before


def test_network_sources_need_the_network(srcapi, gitrepo):
    r = srcapi.http.create({"sources": [{"type": "repository",
                                         "source": f"http://repo.test:{gitrepo}/r.git"}],
                            "network": "disabled"}, ok=False)
    assert r.status == 400 and "disabled" in r.json()["error"]["message"], r


def test_https_url_source_downloads_one_file(srcapi, gitrepo):
    e = srcapi.http.create({"sources": [{"type": "gcs",
                                         "source": f"http://repo.test:{gitrepo}/work/README.md",
                                         "target": "/workspace/dl/readme.txt"}]})
    assert sh(srcapi, e["id"], "cat /workspace/dl/readme.txt") == "hello from the repository\n"


def test_gcs_private_bucket_with_an_injected_token(srcapi, fake_gcs):
    ck = srcapi.server.make_key("creds", scopes=("credentials", "environments"))
    r = srcapi.server.http(ck).post("/v1beta/credentials", json_body={
        "type": "bearer_token", "id": "gcs", "token": "gcs-token-XYZ"})
    assert r.status == 200, r
    e = srcapi.server.http(ck).create({
        "sources": [{"type": "gcs", "source": "gs://private-bucket/data/",
                     "target": "/workspace/data"}],
        "network": {"allowlist": [{"domain": "storage.googleapis.com", "credential": "gcs"}]}})
    eid = e["id"]
    got = sh(srcapi, eid, "cat /workspace/data/a.txt; od -An -tx1 /workspace/data/sub/b.bin | "
                          "wc -l; ls /workspace/data")
    assert got.splitlines()[0] == "alpha"
    assert "other" not in got and "c.txt" not in got
    assert sh(srcapi, eid, "stat -c %s /workspace/data/sub/b.bin") == "10240\n"
    # Every request upstream carried the token; the sandbox never had it.
    assert fake_gcs["seen"] and all(a == "Bearer gcs-token-XYZ" for a in fake_gcs["seen"][-3:])
    leak = sh(srcapi, eid, "grep -rl gcs-token-XYZ /workspace /etc /tmp /root 2>/dev/null; "
                           "cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | "
                           "grep -c gcs-token-XYZ || true")
    assert leak.strip() == "0", leak


def test_gcs_without_the_credential_is_refused(srcapi, fake_gcs):
    before = srcapi.http.ids()
    r = srcapi.http.create({
        "sources": [{"type": "gcs", "source": "gs://private-bucket/data/",
                     "target": "/workspace/data"}],
        "network": {"allowlist": [{"domain": "storage.googleapis.com"}]}}, ok=False)
    # Tunnelled TLS to the fake upstream is not trusted inside (its CA is the test's), and
    # without a token the bucket refuses: either way a 400 naming the gcs download.
    assert r.status == 400 and "gcs download failed" in r.json()["error"]["message"], r
    assert srcapi.http.ids() == before


@pytest.fixture
def skillapi(pd, tmp_path):
    """A server with a skills directory: pdf-tools (nested files, a symlink to /etc/shadow that
    must not be followed) and team/review (a skill one level down)."""
    skills = tmp_path / "skills"
    (skills / "pdf-tools" / "scripts").mkdir(parents=True)
    (skills / "pdf-tools" / "SKILL.md").write_text("---\nname: pdf-tools\n---\nbody\n")
    (skills / "pdf-tools" / "scripts" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (skills / "pdf-tools" / "scripts" / "run.sh").chmod(0o755)
    (skills / "pdf-tools" / "shadow").symlink_to("/etc/shadow")
    (skills / "team" / "review").mkdir(parents=True)
    (skills / "team" / "review" / "SKILL.md").write_text("---\nname: review\n---\n")
    server = ApiServer(pd, args=["--skills-dir", str(skills)]).start()
    try:
        yield Api(server)
    finally:
        finish(server)


def test_skill_registry_copies_the_skill_under_agent_skills(skillapi):
    e = skillapi.http.create({"sources": [
        {"type": "skill_registry", "source": "pdf-tools"},
        {"type": "skill_registry", "source": "team/review", "target": "/opt/skills/review"}]})
    out = sh(skillapi, e["id"], "cat /.agent/skills/pdf-tools/SKILL.md; "
                                "/.agent/skills/pdf-tools/scripts/run.sh; "
                                "cat /opt/skills/review/SKILL.md; "
                                "ls -A /.agent/skills/pdf-tools")
    assert out == ("---\nname: pdf-tools\n---\nbody\nrun\n---\nname: review\n---\n"
                   "SKILL.md\nscripts\n"), out
    # The symlink in the operator's directory was neither followed nor copied.
    assert "root:" not in out


@pytest.mark.parametrize("source,needle", [
    ("../etc", "skill name"), ("/etc", "skill name"), ("no-such-skill", "no skill"),
])
def test_skill_registry_refuses_bad_names_before_anything(skillapi, source, needle):
    before = skillapi.http.ids()
    r = skillapi.http.create({"sources": [{"type": "skill_registry", "source": source}]},
                             ok=False)
    assert r.status == 400 and needle in r.json()["error"]["message"], r
    assert skillapi.http.ids() == before


def test_skill_registry_without_a_skills_dir_is_refused(srcapi):
    r = srcapi.http.create({"sources": [{"type": "skill_registry", "source": "x"}]}, ok=False)
    assert r.status == 400 and "--skills-dir" in r.json()["error"]["message"], r
