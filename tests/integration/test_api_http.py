"""The HTTP surface of `paddock serve` against docs/API.md: health, the error shape, every route
under v1, v1beta and v1alpha, 404 and 405, the Environment resource, pagination, file listing,
download, upload, extract and the snapshot, and a slow client being cut off."""

import io
import json
import os
import subprocess
import re
import socket
import tarfile
import time

import pytest

import pdk
from apiserver import *  # noqa: F401,F403 (fixtures)

ISO = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$"


@pytest.fixture(scope="module")
def env(mapi):
    """One environment with a few files, shared by the read-only tests of this module."""
    h = mapi.http
    e = h.create({"sources": [
        {"type": "inline", "target": "/workspace/a.txt", "content": "alpha\n"},
        {"type": "inline", "target": "/workspace/d/b.txt", "content": "YmV0YQo=", "encoding": "base64"},
        {"type": "inline", "target": "/workspace/d/e/c.txt", "content": "gamma\n"},
        {"type": "inline", "target": "/usr/local/bin/tool", "content": "#!/bin/sh\necho tool\n"},
    ], "env": {"FOO": "bar baz", "OBJ": {"value": "v"}}, "network": "disabled"})
    return e


# ------------------------------------------------------------------ health, errors, routing

def test_healthz_and_readyz_need_no_key(mapi):
    h = mapi.server.http(None)
    for path in ("/healthz", "/readyz", "/healthz?from=probe", "/readyz?x=1"):
        r = h.get(path)
        assert r.status == 200, r
    # and a key does not hurt
    assert mapi.http.get("/healthz").status == 200


def test_error_shape_and_content_type(mapi, env):
    h = mapi.http
    cases = [(mapi.server.http(None).get("/v1beta/environments"), 401),
             (h.get(f"/v1beta/environments/{MISSING_ID}"), 404),
             (h.get("/v1beta/no-such-collection"), 404),
             (h.get("/nothing/at/all"), 404),
             (h.request("PATCH", f"/v1beta/environments/{env['id']}"), 405),
             (h.request("POST", "/v1beta/environments", body="{",
                        headers={"Content-Type": "application/json"}), 400)]
    for r, status in cases:
        assert_error_shape(r, status)


@pytest.mark.parametrize("method,path", [
    ("DELETE", "/v1beta/environments"),
    ("PUT", "/v1beta/environments"),
    ("PATCH", "/v1beta/environments"),
    ("POST", "/v1beta/environments/{id}"),
    ("PUT", "/v1beta/environments/{id}"),
    ("PATCH", "/v1beta/environments/{id}"),
    ("POST", "/v1beta/environments/{id}/files/workspace/a.txt"),
    ("DELETE", "/v1beta/files/environment-{id}:download?alt=media"),
    ("POST", "/v1beta/files/environment-{id}:download?alt=media"),
    ("GET", "/upload/v1beta/environments/{id}/files/workspace/a.txt"),
    ("POST", "/healthz"),
    ("DELETE", "/readyz"),
])
def test_wrong_method_is_405(mapi, env, method, path):
    before = mapi.http.ids()
    r = mapi.http.request(method, path.format(id=env["id"]))
    assert_error_shape(r, 405)
    assert mapi.http.ids() == before
    assert mapi.http.download(env["id"], "workspace/a.txt").body == b"alpha\n"


@pytest.mark.parametrize("v", VERSIONS)
def test_every_route_under_every_version(mapi, v):
    h = mapi.http
    e = h.create({"sources": [{"type": "inline", "target": "/workspace/v.txt", "content": v}]}, v=v)
    eid = e["id"]
    r = h.get_env(eid, v=v)
    assert r.status == 200 and r.json()["id"] == eid, r
    r = h.get(f"/{v}/environments?page_size=1000")
    assert r.status == 200 and eid in [x["id"] for x in r.json()["environments"]], r
    r = h.files(eid, "workspace", v=v)
    assert r.status == 200 and "v.txt" in [f["name"] for f in r.json()["files"]], r
    r = h.download(eid, "workspace/v.txt", v=v)
    assert r.status == 200 and r.body == v.encode(), r
    r = h.upload(eid, "workspace/up.txt", b"up " + v.encode(), v=v)
    assert r.status == 200, r
    assert h.download(eid, "workspace/up.txt", v=v).body == b"up " + v.encode()
    r = h.snapshot(eid, v=v)
    assert r.status == 200, r
    with tarfile.open(fileobj=io.BytesIO(r.body)) as t:
        assert "workspace/v.txt" in [m.name.lstrip("./") for m in t.getmembers()]
    r = h.delete(f"/{v}/environments/{eid}")
    assert r.status == 200 and r.json() == {}, r
    assert h.get_env(eid, v=v).status == 404


def test_json_answers_say_application_json(mapi, env):
    h = mapi.http
    for r in (h.get_env(env["id"]), h.get("/v1beta/environments"), h.files(env["id"], "")):
        assert r.status == 200, r
        assert r.header("content-type", "").split(";")[0].strip() == "application/json", r
        json.loads(r.body)


def test_sdk_style_headers_are_tolerated(mapi, env):
    """content-type: application/json on a GET and DELETE, an empty Cookie header."""
    h = mapi.http
    hdrs = {"Content-Type": "application/json", "Cookie": "", "Accept": "application/json",
            "Accept-Language": "*", "Sec-Fetch-Mode": "cors", "Accept-Encoding": "gzip, deflate",
            "User-Agent": "google-genai-sdk/3.1.0 gl-node/v20.20.2",
            "X-Goog-Api-Client": "google-genai-sdk/3.1.0 gl-node/v20.20.2"}
    r = h.request("GET", f"/v1beta/environments/{env['id']}", headers=hdrs)
    assert r.status == 200 and r.json()["id"] == env["id"], r
    r = h.request("DELETE", f"/v1beta/environments/{MISSING_ID}", headers=hdrs)
    assert_error_shape(r, 404)


# ------------------------------------------------------------------ environments

def test_environment_resource(mapi, env):
    r = mapi.http.get_env(env["id"])
    assert r.status == 200, r
    e = r.json()
    assert ENV_ID_RE.match(e["id"])
    assert e["status"] == "active" and e["state"] == "running", e
    for k in ("created", "updated", "last_accessed"):
        assert isinstance(e[k], str) and re.match(ISO, e[k]), (k, e)
    for k in ("file_count", "size_bytes"):
        assert isinstance(e[k], str) and e[k].isdigit(), (k, e)
    assert e["sources"] == [
        {"type": "inline", "target": "/workspace/a.txt"},
        {"type": "inline", "target": "/workspace/d/b.txt", "encoding": "base64"},
        {"type": "inline", "target": "/workspace/d/e/c.txt"},
        {"type": "inline", "target": "/usr/local/bin/tool"}], e
    assert e["network"] == "disabled"
    assert e["env"]["FOO"] == "bar baz", e
    # environments/ID works wherever an id does
    r = mapi.http.get(f"/v1beta/environments/environments%2F{env['id']}")
    assert r.status == 200 and r.json()["id"] == env["id"], r


def test_file_count_and_size_are_refreshed(mapi):
    h = mapi.http
    e = h.create({})
    assert h.upload(e["id"], "workspace/counted.bin", b"q" * 100_000).status == 200

    def counted():
        x = h.get_env(e["id"]).json()
        return int(x["file_count"]) >= 1 and int(x["size_bytes"]) >= 100_000
    assert pdk.wait_until(counted, 15), h.get_env(e["id"]).json()
    assert h.delete(f"/v1beta/environments/{e['id']}").status == 200


def test_env_values_reach_commands(mapi, env):
    r = mapi.pd.run("env", "exec", env["id"], "--", "sh", "-c", 'printf "%s|%s" "$FOO" "$OBJ"')
    assert r.rc == 0, r
    assert r.text == "bar baz|v", r


def test_inline_sources_are_written_inside_the_sandbox(mapi, env):
    r = mapi.pd.run("env", "exec", env["id"], "--", "sh", "-c",
                    "cat /workspace/a.txt /workspace/d/b.txt /workspace/d/e/c.txt && "
                    "stat -c '%u:%g' /workspace/a.txt")
    assert r.rc == 0, r
    assert r.text == "alpha\nbeta\ngamma\n0:0\n", r


def test_network_is_off_until_the_proxy_exists(mapi):
    e = mapi.http.create({"network": {"allowlist": [{"domain": "*.example.com"}]}})
    assert e["network"] == {"allowlist": [{"domain": "*.example.com"}]}
    r = mapi.pd.run("env", "exec", e["id"], "--", "cat", "/proc/net/dev")
    assert r.rc == 0, r
    ifaces = [l.split(":")[0].strip() for l in r.text.splitlines()[2:] if ":" in l]
    assert set(ifaces) <= {"lo"}, f"fail closed: no interface but lo, got {ifaces}"
    assert mapi.http.delete(f"/v1beta/environments/{e['id']}").status == 200


def test_list_pagination_and_order(mapi):
    h = mapi.http
    mine = [h.create({})["id"] for _ in range(5)]
    everything = h.list_all()
    ids = [e["id"] for e in everything]
    assert [i for i in ids if i in mine] == mine, "oldest first"
    created = [e["created"] for e in everything]
    assert created == sorted(created), created
    for size in (1, 2, 3):
        assert [e["id"] for e in h.list_all(page_size=size)] == ids
    r = h.get("/v1beta/environments?page_size=1")
    assert r.status == 200 and len(r.json()["environments"]) == 1 and r.json()["next_page_token"]
    # page_size above the cap of 1000: capped, or refused naming page_size
    r = h.get("/v1beta/environments?page_size=100000")
    if r.status == 200:
        assert [e["id"] for e in r.json()["environments"]] == ids, r
    else:
        assert_names(r, "page_size")
    # an environment deleted between two pages does not break the walk
    r = h.get("/v1beta/environments?page_size=2")
    token = r.json()["next_page_token"]
    assert h.delete(f"/v1beta/environments/{mine[0]}").status == 200
    r = h.get(f"/v1beta/environments?page_size=2&page_token={token}")
    assert r.status == 200, r
    for i in mine[1:]:
        assert h.delete(f"/v1beta/environments/{i}").status == 200
    assert not set(mine) & set(h.ids())


def test_a_dead_create_does_not_end_the_walk(mapi):
    """A page drops environments whose create died half-way (a row left in "creating" with no
    creator). The page is filled from the rows after it, so a short page still means the end
    of the list and the walk misses nothing."""
    import sqlite3
    h = mapi.server.http(mapi.server.make_key("walker", project="walk"))
    mine = [h.create({})["id"] for _ in range(3)]
    mapi.pd.ids.update(mine)
    dead = "env_" + "d" * 26
    db = sqlite3.connect(mapi.pd.data / "paddock.db", timeout=10)
    with db:  # the oldest row of the project, so it falls in the first page
        db.execute("INSERT INTO environments (id, state, network, image, memory_bytes,"
                   " cpus_milli, pids, disk_bytes, uid_slot, created_ms, updated_ms,"
                   " last_used_ms, project, seq) VALUES (?, 0, 'disabled', 'host', 1, 1, 1, 1,"
                   " 999999, 1, 1, 1, 'walk', (SELECT MAX(seq) + 1 FROM environments))",
                   (dead,))
    db.close()
    assert [e["id"] for e in h.list_all(page_size=2)] == mine
    assert h.get(f"/v1beta/environments/{dead}").status == 404
    for i in mine:
        assert h.delete(f"/v1beta/environments/{i}").status == 200


def test_delete_removes_the_sandbox(mapi):
    h = mapi.http
    e = h.create({})
    pid = cli_envs(mapi.pd)[e["id"]]["init_pid"]
    r = h.delete(f"/v1beta/environments/{e['id']}")
    assert r.status == 200 and r.json() == {}, r
    assert e["id"] not in cli_envs(mapi.pd)
    assert pdk.wait_until(lambda: not pdk.pid_alive(pid), 10)
    assert pdk.wait_until(lambda: not pdk.cgroup_dirs_for(e["id"]), 10), pdk.cgroup_dirs_for(e["id"])
    assert_error_shape(h.delete(f"/v1beta/environments/{e['id']}"), 404)


# ------------------------------------------------------------------ files

def names(r):
    assert r.status == 200, r
    return [f["name"] for f in r.json().get("files", [])]


def test_file_listing(mapi, env):
    h, eid = mapi.http, env["id"]
    root = h.files(eid, "")
    assert "workspace" in names(root) and "usr" in names(root)
    assert h.files(eid, "").json() == h.files(eid, "/").json()
    d = h.files(eid, "workspace/d").json()["files"]
    by = {f["name"]: f for f in d}
    assert set(by) == {"b.txt", "e"}, d
    b = by["b.txt"]
    assert (b["path"], b["type"], b["size_bytes"]) == ("workspace/d/b.txt", "file", "5"), b
    assert isinstance(b["mime_type"], str) and b["mime_type"].startswith("text/"), b
    assert re.match(ISO, b["modified"]), b
    assert by["e"]["type"] == "directory" and by["e"]["path"] == "workspace/d/e"
    # leading and doubled slashes are ignored; environments/ID works
    for path in ("/workspace/d", "workspace//d", "//workspace/d/", "workspace/d/"):
        assert h.files(eid, path).json()["files"] == d, path
    assert h.files(f"environments%2F{eid}", "workspace/d").json()["files"] == d
    # a file lists as itself
    f = h.files(eid, "workspace/a.txt").json()["files"]
    assert len(f) == 1 and f[0]["path"] == "workspace/a.txt" and f[0]["type"] == "file", f
    # a symlink lists as a symlink
    r = mapi.pd.run("env", "exec", eid, "--", "ln", "-sfn", "a.txt", "/workspace/lnk")
    assert r.rc == 0, r
    ln = [x for x in h.files(eid, "workspace").json()["files"] if x["name"] == "lnk"]
    assert ln and ln[0]["type"] == "symlink", ln


def test_recursive_listing_is_ordered_paginated_and_skips_proc(mapi, env):
    h, eid = mapi.http, env["id"]
    r = h.files(eid, "workspace", query="recursive=true")
    paths = [f["path"] for f in r.json()["files"]]
    for p in ("workspace/a.txt", "workspace/d", "workspace/d/b.txt", "workspace/d/e",
              "workspace/d/e/c.txt"):
        assert p in paths, paths
    assert paths == sorted(paths), paths
    for size in (1, 2, 5):
        got, token = [], None
        for _ in range(100):
            q = f"recursive=true&page_size={size}" + (f"&page_token={token}" if token else "")
            body = h.files(eid, "workspace", query=q).json()
            assert len(body.get("files", [])) <= size
            got += [f["path"] for f in body.get("files", [])]
            token = body.get("next_page_token")
            if not token:
                break
        assert got == paths, size
    # the whole tree from the root, in path order, never inside /proc, /sys or /dev: walk it
    # until past "sys" (the rest is /tmp, /usr and /var of the base image)
    got, token = [], None
    for _ in range(100):
        q = "recursive=true&page_size=1000" + (f"&page_token={token}" if token else "")
        r = h.files(eid, "", query=q)
        assert r.status == 200, r
        page = [f["path"] for f in r.json().get("files", [])]
        got += page
        token = r.json().get("next_page_token")
        if not token or (page and page[-1].split("/")[0] > "sys"):
            break
    assert got in (sorted(got), sorted(got, key=lambda p: p.split("/"))), "path order"
    for top in ("dev", "proc", "sys", "etc"):
        assert top in got, (top, got[:50])
    inside = [p for p in got if p.split("/")[0] in ("proc", "sys", "dev") and "/" in p]
    assert not inside, inside[:10]


def test_a_name_that_is_not_utf8_does_not_end_the_listing(mapi):
    """A file whose name is not UTF-8 cannot be listed in JSON and is left out; the pages go
    on past it. (It used to count for nothing: the page that met it ended without its
    next_page_token, and every file after it was lost to the listing.)"""
    h = mapi.http
    e = h.create({})
    mapi.pd.ids.add(e["id"])
    r = mapi.pd.run("env", "exec", e["id"], "--", "sh", "-c",
                    "mkdir /workspace/many && cd /workspace/many && "
                    "for i in $(seq 100 249); do : > f$i; done && : > \"$(printf 'f150\\377')\"")
    assert r.rc == 0, r
    for size in (100, 7):
        got, token = [], None
        for _ in range(100):
            q = f"page_size={size}" + (f"&page_token={token}" if token else "")
            body = h.files(e["id"], "workspace/many", query=q).json()
            got += [f["name"] for f in body.get("files", [])]
            token = body.get("next_page_token")
            if not token:
                break
        assert got == [f"f{i}" for i in range(100, 250)], (size, len(got), got[-3:])


def test_a_finalize_that_times_out_keeps_the_staged_upload(mapi):
    """A finalize the sandbox did not answer (its processes stopped here: 504) keeps the session and
    its staged bytes, so that the same finalize sent again completes the upload; only what the
    content causes (a bad archive, a conflict, a full disk) ends a session. It used to end on
    any failure, and the whole upload had to cross the network again."""
    import signal
    h = mapi.http
    e = h.create({})
    mapi.pd.ids.add(e["id"])
    session = h.session_path(h.upload_start(e["id"], "workspace/late.txt", 5))
    r = h.upload_chunk(session, b"hello", 0)
    assert r.status == 200, r
    # Every process of the sandbox stopped from the host: nothing takes the control
    # connection, which times out after 10 s.
    procs = pdk.procs_in_cgroup_of(e["id"])
    for pid in procs:
        os.kill(pid, signal.SIGSTOP)
    try:
        r = h.upload_chunk(session, b"", 5, finalize=True, timeout=60)
        assert r.status == 504, r
    finally:
        for pid in procs:
            os.kill(pid, signal.SIGCONT)
    r = h.upload_chunk(session, b"", 5, finalize=True)
    assert r.status == 200, r
    assert h.download(e["id"], "workspace/late.txt").body == b"hello"


def test_download(mapi, env):
    h, eid = mapi.http, env["id"]
    r = h.download(eid, "workspace/d/b.txt")
    assert r.status == 200 and r.body == b"beta\n", r
    assert h.download(eid, "/workspace//d/b.txt").body == b"beta\n"
    assert h.download(f"environments%2F{eid}", "workspace/d/b.txt").body == b"beta\n"
    r = h.download(eid, "usr/local/bin/tool")
    assert r.status == 200 and r.body.startswith(b"#!/bin/sh"), r
    # a file the sandbox itself made unreadable is still read with the sandbox's permissions
    assert mapi.pd.run("env", "exec", eid, "--", "sh", "-c",
                       "echo s > /workspace/secret && chmod 000 /workspace/secret").rc == 0
    r = h.download(eid, "workspace/secret")
    assert r.status == 200 and r.body == b"s\n", r   # root inside the sandbox reads 000 files
    # a symlink leading out of the sandbox is resolved inside it
    assert mapi.pd.run("env", "exec", eid, "--", "sh", "-c",
                       "echo inside > /tmp/target && ln -sfn /tmp/target /workspace/out").rc == 0
    r = h.download(eid, "workspace/out")
    assert r.status == 200 and r.body == b"inside\n", r
    assert_error_shape(h.download(eid, "workspace/none"), 404)
    assert_error_shape(h.download(eid, "workspace/d"), 400)


def test_upload_overwrite_and_sizes(mapi):
    h = mapi.http
    eid = h.create({})["id"]
    r = h.upload(eid, "workspace/new/deep/f.txt", b"one")
    assert r.status == 200, r
    f = r.json()["files"]
    assert len(f) == 1 and f[0]["path"] == "workspace/new/deep/f.txt" and f[0]["size_bytes"] == "3"
    assert h.download(eid, "workspace/new/deep/f.txt").body == b"one"
    assert h.upload(eid, "workspace/new/deep/f.txt", b"two!").status == 200
    assert h.download(eid, "workspace/new/deep/f.txt").body == b"two!"
    r = h.upload(eid, "workspace/new/g.txt", b"", query="overwrite=false")
    assert r.status == 200 and r.json()["files"][0]["size_bytes"] == "0", r
    # 9 MiB: two chunks, byte-exact
    big = os.urandom(9 * MiB + 1)
    r = h.upload(eid, "workspace/big.bin", big)
    assert r.status == 200 and r.json()["files"][0]["size_bytes"] == str(len(big)), r
    assert h.download(eid, "workspace/big.bin").body == big
    # the uploaded file is owned by root inside the sandbox and visible to commands
    r = mapi.pd.run("env", "exec", eid, "--", "sh", "-c",
                    "stat -c '%u:%g %s' /workspace/big.bin")
    assert r.rc == 0 and r.text.strip() == f"0:0 {len(big)}", r
    # the session is single-use
    s = h.session_path(h.upload_start(eid, "workspace/once.txt", 1))
    assert h.upload_chunk(s, b"1", 0, finalize=True).status == 200
    r = h.upload_chunk(s, b"2", 0, finalize=True)
    assert r.status >= 400, r
    assert h.download(eid, "workspace/once.txt").body == b"1"
    assert h.delete(f"/v1beta/environments/{eid}").status == 200


def test_upload_overwrite_false_on_an_existing_file_is_a_failed_precondition(mapi, env):
    """docs/API.md: 400 FAILED_PRECONDITION at start (not 409, which the SDK retries)."""
    h, eid = mapi.http, env["id"]
    for path in ("workspace/a.txt", "workspace/d"):
        r = h.upload_start(eid, path, 5, query="overwrite=false")
        err = assert_names(r, path, status=400)
        assert err["status"] == "FAILED_PRECONDITION", r
    assert h.download(eid, "workspace/a.txt").body == b"alpha\n"


def test_upload_overwrite_false_holds_until_the_file_is_in(mapi, env):
    """overwrite=false is kept at the end too: a file made at the path after the start was
    answered (here by a command in the sandbox) is not replaced when the upload finishes; the
    finish answers 400 FAILED_PRECONDITION naming the path. Before, only the start looked, and
    the finish replaced what had been made since."""
    h, eid = mapi.http, env["id"]
    s = h.session_path(h.upload_start(eid, "workspace/late.txt", 3, query="overwrite=false"))
    r = mapi.pd.run("env", "exec", eid, "--", "sh", "-c", "echo mine > /workspace/late.txt")
    assert r.rc == 0, r
    r = h.upload_chunk(s, b"new", 0, finalize=True)
    err = assert_names(r, "workspace/late.txt", status=400)
    assert err["status"] == "FAILED_PRECONDITION", r
    assert h.download(eid, "workspace/late.txt").body == b"mine\n"
    # Without the race the same upload goes in.
    r = h.upload(eid, "workspace/late2.txt", b"new", query="overwrite=false")
    assert r.status == 200 and h.download(eid, "workspace/late2.txt").body == b"new", r


def test_upload_extract(mapi, tmp_path):
    h = mapi.http
    eid = h.create({})["id"]
    for mode, name in (("w", "t.tar"), ("w:gz", "t.tgz"), ("w:bz2", "t.tbz"), ("w:xz", "t.txz")):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=mode, format=tarfile.PAX_FORMAT) as t:
            for path, data, perm in (("top.txt", b"top\n", 0o644), ("sub/x.sh", b"#!/bin/sh\n", 0o755),
                                     ("sub/deeper/y", b"y" * 5000, 0o600)):
                ti = tarfile.TarInfo(path)
                ti.size, ti.mode = len(data), perm
                t.addfile(ti, io.BytesIO(data))
            ln = tarfile.TarInfo("sub/link")
            ln.type, ln.linkname = tarfile.SYMTYPE, "x.sh"
            t.addfile(ln)
        dest = f"workspace/ex-{name.replace('.', '-')}"
        r = h.upload(eid, dest, buf.getvalue(), query="extract=true")
        assert r.status == 200, (name, r)
        assert h.download(eid, f"{dest}/top.txt").body == b"top\n"
        assert h.download(eid, f"{dest}/sub/deeper/y").body == b"y" * 5000
        r = mapi.pd.run("env", "exec", eid, "--", "sh", "-c",
                        f"stat -c '%a %n' /{dest}/sub/x.sh /{dest}/sub/deeper/y && readlink /{dest}/sub/link")
        assert r.rc == 0, r
        assert r.text.split("\n")[:3] == [f"755 /{dest}/sub/x.sh", f"600 /{dest}/sub/deeper/y", "x.sh"], r
    import zipfile
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("z/one.txt", "zip one\n")
    r = h.upload(eid, "workspace/zipped", zbuf.getvalue(), query="extract=true")
    assert r.status == 200, r
    assert h.download(eid, "workspace/zipped/z/one.txt").body == b"zip one\n"
    assert h.delete(f"/v1beta/environments/{eid}").status == 200


def test_upload_extract_archive_of_dot(mapi, tmp_path):
    """`tar -C dir -czf x.tgz .` (the usual way to pack a directory) writes "./" first: the
    target itself, skipped (the target keeps its own mode). A non-directory "." is refused."""
    h = mapi.http
    eid = h.create({})["id"]
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "top.txt").write_bytes(b"top\n")
    (src / "sub" / "x.txt").write_bytes(b"x\n")
    os.chmod(src, 0o700)
    subprocess.run(["tar", "-C", str(src), "-czf", str(tmp_path / "x.tgz"), "."], check=True)
    data = (tmp_path / "x.tgz").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        assert t.getnames()[0] in ("./", "."), t.getnames()
    r = h.upload(eid, "workspace/dot", data, query="extract=true")
    assert r.status == 200, r
    assert h.download(eid, "workspace/dot/top.txt").body == b"top\n"
    assert h.download(eid, "workspace/dot/sub/x.txt").body == b"x\n"
    r = mapi.pd.run("env", "exec", eid, "--", "stat", "-c", "%a", "/workspace/dot")
    assert r.rc == 0 and r.text.strip() == "755", r
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name in ("ok.txt", "."):
            ti = tarfile.TarInfo(name)
            ti.size = 2
            t.addfile(ti, io.BytesIO(b"ok"))
    r = h.upload(eid, "workspace/dot-file", buf.getvalue(), query="extract=true")
    assert r.status == 400 and "target directory" in r.json()["error"]["message"], r
    assert h.download(eid, "workspace/dot-file/ok.txt").status == 404
    assert h.delete(f"/v1beta/environments/{eid}").status == 200


def test_from_environment(mapi, env):
    h = mapi.http
    for ref in (env["id"], f"environments/{env['id']}"):
        c = h.create({"from_environment": ref})
        assert c["id"] != env["id"]
        assert h.download(c["id"], "workspace/d/e/c.txt").body == b"gamma\n"
        assert h.download(c["id"], "usr/local/bin/tool").body.startswith(b"#!/bin/sh")
        assert h.upload(c["id"], "workspace/only-in-copy", b"c").status == 200
        assert h.download(env["id"], "workspace/only-in-copy").status == 404
        assert h.delete(f"/v1beta/environments/{c['id']}").status == 200
    assert h.download(env["id"], "workspace/a.txt").body == b"alpha\n"


def test_snapshot(mapi):
    h = mapi.http
    e = h.create({"sources": [{"type": "inline", "target": "/workspace/s/a.txt", "content": "A"}]})
    eid = e["id"]
    r = mapi.pd.run("env", "exec", eid, "--", "sh", "-c",
                    "mkdir -p /usr/local/bin && printf t > /usr/local/bin/tool && "
                    "chmod 0751 /usr/local/bin/tool && chown 1234:2345 /workspace/s/a.txt && "
                    "ln -s a.txt /workspace/s/l && mkdir /workspace/s/emptydir && "
                    "echo changed >> /etc/debian_version")
    assert r.rc == 0, r
    big = bytes(range(256)) * (12 * MiB // 256)
    assert h.upload(eid, "workspace/s/big.bin", big).status == 200
    r = h.snapshot(eid)
    assert r.status == 200, r
    with tarfile.open(fileobj=io.BytesIO(r.body)) as t:
        m = {x.name.lstrip("./").rstrip("/"): x for x in t.getmembers()}
        assert t.extractfile(m["workspace/s/a.txt"]).read() == b"A"
        assert (m["workspace/s/a.txt"].uid, m["workspace/s/a.txt"].gid) == (1234, 2345)
        assert t.extractfile(m["usr/local/bin/tool"]).read() == b"t"
        assert m["usr/local/bin/tool"].mode & 0o7777 == 0o751
        assert m["workspace/s/l"].issym() and m["workspace/s/l"].linkname == "a.txt"
        assert m["workspace/s/emptydir"].isdir()
        assert t.extractfile(m["workspace/s/big.bin"]).read() == big
        assert t.extractfile(m["etc/debian_version"]).read().endswith(b"changed\n")
        # nothing of the base image that was not changed
        for base in ("etc/passwd", "bin/sh", "usr/bin/env"):
            assert base not in m, base
        assert not [n for n in m if n.split("/")[0] in ("proc", "sys", "dev") and "/" in n]
    assert h.delete(f"/v1beta/environments/{eid}").status == 200


# ------------------------------------------------------------------ connections

def test_keep_alive_serves_several_requests(mapi, env):
    import http.client
    c = http.client.HTTPConnection(mapi.server.host, mapi.server.port, timeout=20 * SLOWDOWN)
    try:
        for _ in range(3):
            c.request("GET", f"/v1beta/environments/{env['id']}", headers={"x-goog-api-key": mapi.key})
            r = c.getresponse()
            assert r.status == 200 and json.loads(r.read())["id"] == env["id"]
    finally:
        c.close()


def trickle_until_closed(server, key, limit):
    """Sends a request's headers one byte a second; returns the seconds until the server closed
    the connection (None if it had not after `limit` seconds). Checks meanwhile that the server
    keeps answering others."""
    s = socket.create_connection((server.host, server.port), timeout=5)
    request = (b"GET /v1beta/environments HTTP/1.1\r\nHost: x\r\nx-goog-api-key: "
               + key.encode() + b"\r\nX-Padding: " + b"a" * 200 + b"\r\n\r\n")
    t0 = time.monotonic()
    s.settimeout(0.05)
    try:
        for i, byte in enumerate(request):
            try:
                s.sendall(bytes([byte]))
            except OSError:
                return time.monotonic() - t0
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                try:
                    data = s.recv(4096)
                except socket.timeout:
                    continue
                except OSError:
                    return time.monotonic() - t0
                if not data:    # an answer (408) before the close is fine too
                    return time.monotonic() - t0
            if i % 3 == 0:
                assert server.http(None).get("/healthz", timeout=5).status == 200
            if time.monotonic() - t0 > limit:
                return None
    finally:
        s.close()


@pytest.fixture(scope="module")
def quick(mapi, tmp_path_factory):
    """A second server, on a data dir of its own, with --header-timeout 2s and mapi's key."""
    p = pdk.Paddock(tmp_path_factory.mktemp("quick") / "data")
    try:
        s = ApiServer(p, args=["--header-timeout", "2s"]).start()
        try:
            s.key = s.make_key("quick", scopes=("environments",))
            yield s
        finally:
            finish(s)
    finally:
        p.teardown()


def test_slow_client_is_cut_off_at_the_header_timeout(mapi, quick):
    took = trickle_until_closed(quick, quick.key, 15)
    assert took is not None, "a client sending one header byte a second was never cut off"
    assert 1.5 <= took < 2 + 4 * SLOWDOWN, f"--header-timeout 2s, closed after {took:.1f}s"
    assert quick.http(None).get("/healthz").status == 200


def test_idle_keep_alive_connection_is_closed_at_the_header_timeout(mapi, quick):
    import http.client
    c = http.client.HTTPConnection(quick.host, quick.port, timeout=10 * SLOWDOWN)
    try:
        c.request("GET", "/v1beta/environments", headers={"x-goog-api-key": quick.key})
        r = c.getresponse()
        assert r.status == 200 and r.getheader("connection", "").lower() != "close", \
            r.getheaders()
        r.read()
        t0 = time.monotonic()
        c.sock.settimeout(10 * SLOWDOWN)
        assert c.sock.recv(1) == b"", "the server wrote something on an idle connection"
        took = time.monotonic() - t0
        assert 1.5 <= took < 2 + 4 * SLOWDOWN, f"idle connection closed after {took:.1f}s"
    finally:
        c.close()


def body_head(method, path, key, length):
    """A request head that announces a JSON body of length bytes, which is not sent."""
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\nx-goog-api-key: {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


def answer_without_body(server, head):
    """What the server answers to head alone, the body held back (b"" when it waits)."""
    return raw_exchange(server.host, server.port, head, timeout=5)


def test_a_body_over_the_cap_is_refused_before_it_is_sent(mapi):
    """A Content-Length past what the server reads to answer a 413 cleanly (32 MiB; the cap is
    8 MiB) is a 413 at once: the server neither waits for the body nor buffers any of it. (Over
    the cap and within 32 MiB, the body is read, thrown away and answered 413:
    test_interactions_api's test_huge_input_is_refused_or_run.)"""
    out = answer_without_body(mapi.server, body_head("POST", "/v1beta/environments", mapi.key,
                                                     32 * pdk.MiB + 1))
    head, _, body = out.partition(b"\r\n\r\n")
    assert re.match(rb"HTTP/1\.1 413 ", head), out[:300]
    assert json.loads(body)["error"]["status"] == "RESOURCE_EXHAUSTED", body


def test_a_body_the_key_may_not_send_is_refused_before_it_is_sent(mapi):
    """A key that lacks the scope a route needs gets its 403 before the body: a read-only key
    cannot make the server buffer 8 MiB bodies on many connections."""
    ro = mapi.server.make_key("ro-body", scopes=("environments.read", "credentials.read"))
    for path in ("/v1beta/environments", "/v1beta/credentials"):
        out = answer_without_body(mapi.server, body_head("POST", path, ro, 8 * pdk.MiB))
        head, _, body = out.partition(b"\r\n\r\n")
        assert re.match(rb"HTTP/1\.1 403 ", head), (path, out[:300])
        assert ".write" in json.loads(body)["error"]["message"], body
    # Within its scope the same key's body is read (and answered by the route).
    out = raw_exchange(mapi.server.host, mapi.server.port,
                       body_head("GET", "/v1beta/environments", ro, 2) + b"{}", timeout=5)
    assert re.match(rb"HTTP/1\.1 200 ", out), out[:300]


def server_unread(port):
    """Bytes the server's sockets on port have received and not yet read (ss's Recv-Q)."""
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(line.split()[0]) for line in out.splitlines() if line.strip())


def test_bodies_read_at_once_have_a_budget(mapi):
    """The server holds at most 256 MiB of request bodies at once. 32 clients each hold 8 MiB
    (the cap) short of one byte; the next body is read to its end, thrown away and answered 503
    with a Retry-After; once one of the 32 goes, a body is read and reaches its route again.
    Without the budget, the server's 1024 connections could make it hold 8 GiB."""
    port, key = mapi.server.port, mapi.key
    holders = []
    try:
        for _ in range(32):
            s = socket.create_connection((mapi.server.host, port), timeout=30 * SLOWDOWN)
            s.sendall(body_head("POST", "/v1beta/environments", key, 8 * pdk.MiB))
            s.sendall(b" " * (8 * pdk.MiB - 1))
            holders.append(s)
        assert pdk.wait_until(lambda: server_unread(port) == 0, 20), server_unread(port)
        out = raw_exchange(mapi.server.host, port,
                           body_head("POST", "/v1beta/environments", key, 2 * pdk.MiB) +
                           b"x" * (2 * pdk.MiB), timeout=30)
        head, _, body = out.partition(b"\r\n\r\n")
        assert re.match(rb"HTTP/1\.1 503 ", head), out[:300]
        assert re.search(rb"(?i)\r\nretry-after: 1\r\n", head), head
        err = json.loads(body)["error"]
        assert err["status"] == "UNAVAILABLE" and "256 MiB" in err["message"], err
        # Requests without a body are not held back.
        assert mapi.server.http(key).get("/v1beta/environments").status == 200
        holders.pop().close()

        def dispatched():
            o = raw_exchange(mapi.server.host, port,
                             body_head("POST", "/v1beta/environments", key, 2 * pdk.MiB) +
                             b"x" * (2 * pdk.MiB), timeout=30)
            return re.match(rb"HTTP/1\.1 400 ", o) is not None
        assert pdk.wait_until(dispatched, 10), "the budget was not given back"
    finally:
        for s in holders:
            s.close()


def test_a_body_slower_than_the_minimum_rate_is_cut_off(mapi, quick):
    """A body must arrive at 64 KiB/s on average once the grace (--header-timeout, 2 s here)
    is spent: one that trickles a byte every half second is closed, and the server goes on
    answering others."""
    s = socket.create_connection((quick.host, quick.port), timeout=5)
    s.sendall(body_head("POST", "/v1beta/environments", quick.key, 1000))
    t0 = time.monotonic()
    s.settimeout(0.5)
    took = None
    try:
        for _ in range(60):
            try:
                s.sendall(b" ")
                if s.recv(4096) == b"":
                    took = time.monotonic() - t0
                    break
            except socket.timeout:
                continue
            except OSError:
                took = time.monotonic() - t0
                break
    finally:
        s.close()
    assert took is not None, "a body trickled at 2 bytes a second was never cut off"
    assert 1.5 <= took < 2 + 4 * SLOWDOWN, f"closed after {took:.1f}s"
    assert quick.http(None).get("/healthz").status == 200


@pytest.mark.slow
def test_slow_client_is_cut_off_by_default(mapi):
    """The default header timeout (10s) applies without any flag."""
    took = trickle_until_closed(mapi.server, mapi.key, 35)
    assert took is not None, "a client sending one header byte a second was never cut off"
    assert 8 <= took < 10 + 5 * SLOWDOWN, took
    assert mapi.server.http(None).get("/healthz").status == 200


def test_many_idle_connections_do_not_block_others(mapi):
    socks = [socket.create_connection((mapi.server.host, mapi.server.port), timeout=5)
             for _ in range(64)]
    try:
        for s in socks:
            s.sendall(b"GET /healthz HTTP/1.1\r\n")
        t0 = time.monotonic()
        r = mapi.server.http(None).get("/healthz", timeout=10)
        assert r.status == 200 and time.monotonic() - t0 < 5 * SLOWDOWN, r
    finally:
        for s in socks:
            s.close()


def test_garbage_request_line_does_not_hurt_the_server(mapi):
    out = raw_exchange(mapi.server.host, mapi.server.port, b"\x00\x01 garbage\r\n\r\n", timeout=3)
    assert out == b"" or out.startswith(b"HTTP/1.1 4") or out.startswith(b"HTTP/1.0 4"), out[:200]
    out = raw_exchange(mapi.server.host, mapi.server.port,
                       b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", timeout=3)
    assert out == b"" or out.startswith(b"HTTP/1.1 4") or out.startswith(b"HTTP/1.0 4"), out[:200]
    assert mapi.server.http(None).get("/healthz").status == 200


def test_oversized_headers_are_refused_with_a_json_error(mapi):
    out = raw_exchange(mapi.server.host, mapi.server.port,
                       b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200000 + b"\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert re.match(rb"HTTP/1\.[01] (400|413|431) ", head), out[:300]
    assert re.search(rb"(?im)^content-type:\s*application/json", head), \
        f"every error is JSON (docs/API.md), this one is not: {out[:400]!r}"
    err = json.loads(body)["error"]
    assert err["code"] == int(head.split()[1]) and err["message"], err
    assert mapi.server.http(None).get("/healthz").status == 200


def test_upload_sessions_end_when_cancelled_idle_or_orphaned(mapi):
    """An upload session holds its announced size of the disk's room until it ends. A client
    ends one with `X-Goog-Upload-Command: cancel`; the janitor ends one nothing was sent to for
    a day (the staged file's mtime, set back here); and a server's start removes staged files
    that no session names (a process killed between the two)."""
    h, pd = mapi.http, mapi.pd
    e = h.create({})
    pd.ids.add(e["id"])
    staged = pd.data / "uploads"
    # cancel
    session = h.session_path(h.upload_start(e["id"], "workspace/c.txt", 10))
    assert h.upload_chunk(session, b"12345", 0).status == 200
    upl = session.split("upload_id=")[1].split("&")[0]
    assert (staged / upl).exists()
    r = h.upload_chunk(session, b"", 5, command="cancel")
    assert r.status == 200 and r.header("x-goog-upload-status") == "cancelled", r
    assert not (staged / upl).exists()
    assert h.upload_chunk(session, b"", 5, command="query").status == 404
    # idle for a day
    session = h.session_path(h.upload_start(e["id"], "workspace/i.txt", 10))
    upl = session.split("upload_id=")[1].split("&")[0]
    day_ago = time.time() - 25 * 3600
    os.utime(staged / upl, (day_ago, day_ago))
    assert pdk.wait_until(lambda: not (staged / upl).exists(), 10), "an idle session was kept"
    assert h.upload_chunk(session, b"", 0, command="query").status == 404
    assert any("nothing sent to it for" in str(l) and upl in str(l)
               for l in mapi.server.log_lines()), "no log line says why the session ended"
    # orphaned
    orphan = staged / "upl_orphanorphanorphanorphanorphan"
    orphan.write_bytes(b"left behind")
    mapi.server.restart()
    assert not orphan.exists(), "a staged file no session names survived the start"


def test_upload_staging_leaves_room_and_goes_with_its_environment(tmp_path):
    """Uploads stage on the data directory's disk, outside every quota: a start whose announced
    bytes, with what open sessions may still write and what the storage image may still grow
    by, would leave less than 256 MiB free is a 413 that says so. An environment's unfinished
    sessions go when it is deleted. (A 3 GiB tmpfs holds the data directory; its image is
    2 GiB, sparse.)"""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3G", "tmpfs", str(small)], check=True)
    pd = pdk.Paddock(small / "data")
    s = None
    try:
        s = ApiServer(pd).start()
        h = s.http(s.make_key("staging", scopes=("environments",)))
        eid = h.create({})["id"]
        r = h.upload_start(eid, "workspace/huge.bin", 2 * pdk.GiB)
        assert_error_shape(r, 413)
        assert "no room to stage" in r.json()["error"]["message"], r.json()
        # Announced bytes count before they arrive: 300 MiB sessions until the room is gone.
        sessions = []
        for _ in range(8):
            r = h.upload_start(eid, "workspace/part.bin", 300 * pdk.MiB)
            if r.status != 200:
                break
            sessions.append(h.session_path(r))
        assert_error_shape(r, 413)
        assert 1 <= len(sessions) < 8, len(sessions)
        assert "open uploads" in r.json()["error"]["message"], r.json()
        staged = pd.data / "uploads"
        assert len(list(staged.iterdir())) == len(sessions)
        assert h.delete(f"/v1beta/environments/{eid}").status == 200
        assert list(staged.iterdir()) == []
        assert h.upload_chunk(sessions[0], b"x", 0, finalize=True).status == 404
    finally:
        if s is not None:
            finish(s)
        pd.teardown()
        subprocess.run(["umount", "-l", str(small)], check=False)
