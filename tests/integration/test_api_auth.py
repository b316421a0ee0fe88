"""Keys: no key, unknown key and revoked key are 401; a missing scope is 403 naming the scope;
another project's resources are 404, indistinguishable from missing ones; both
x-goog-api-key and Authorization: Bearer work."""

import pytest

from apiserver import *  # noqa: F401,F403 (fixtures)


@pytest.fixture(scope="module")
def world(mapi):
    """Keys of every kind and one environment (with a file) of project `default`."""
    s = mapi.server
    keys = {
        "rw": mapi.key,
        "ro": s.make_key("ro", scopes=("environments.read",)),
        "wo": s.make_key("wo", scopes=("environments.write",)),
        "both": s.make_key("both", scopes=("environments.read", "environments.write")),
        "revoked": s.make_key("revoked", scopes=("environments",)),
        "other": s.make_key("other", scopes=("environments",), project="other"),
    }
    h = s.http(keys["rw"])
    env = h.create({"sources": [{"type": "inline", "target": "/workspace/a.txt", "content": "a"}]})
    r = h.upload(env["id"], "workspace/up.txt", b"uploaded")
    assert r.status == 200, r
    s.revoke_key("revoked")
    return {"keys": keys, "env": env["id"], "server": s}


def reads(env_id):
    """(method, path) of every read route for env_id."""
    return [("GET", "/v1beta/environments"),
            ("GET", f"/v1beta/environments/{env_id}"),
            ("GET", f"/v1beta/environments/{env_id}/files/"),
            ("GET", f"/v1beta/environments/{env_id}/files/workspace/a.txt?alt=media"),
            ("GET", f"/v1beta/files/environment-{env_id}:download?alt=media")]


def writes(env_id):
    return [("POST", "/v1beta/environments"),
            ("DELETE", f"/v1beta/environments/{env_id}"),
            ("PUT", f"/upload/v1beta/environments/{env_id}/files/workspace/w.txt")]


UPLOAD_START = {"X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start",
                "X-Goog-Upload-Header-Content-Length": "3"}


def send(http, method, path):
    if method == "POST":
        return http.post(path, json_body={})
    if method == "PUT":
        return http.request("PUT", path, headers=UPLOAD_START)
    return http.request(method, path)


def unchanged(world):
    """The environment and its files are as the fixture left them."""
    h = world["server"].http(world["keys"]["rw"])
    ids = h.ids()
    assert ids == [world["env"]], ids
    r = h.download(world["env"], "workspace/a.txt")
    assert r.status == 200 and r.body == b"a", r
    r = h.download(world["env"], "workspace/w.txt")
    assert r.status == 404, r


@pytest.mark.parametrize("who", ["none", "unknown", "revoked", "empty", "bearer-unknown",
                                 "bearer-revoked"])
def test_unauthenticated_is_401_everywhere(world, who):
    s, keys = world["server"], world["keys"]
    http = {"none": s.http(None), "unknown": s.http("pk_not_a_real_key_0123456789"),
            "revoked": s.http(keys["revoked"]), "empty": s.http(""),
            "bearer-unknown": s.http("pk_not_a_real_key_0123456789", auth="bearer"),
            "bearer-revoked": s.http(keys["revoked"], auth="bearer")}[who]
    for method, path in reads(world["env"]) + writes(world["env"]):
        r = send(http, method, path)
        err = assert_error_shape(r, 401)
        assert err["status"] == "UNAUTHENTICATED", r
    unchanged(world)


def test_missing_key_on_unknown_environment_is_401_not_404(world):
    """Authentication comes first: nothing about existence leaks to the unauthenticated."""
    s = world["server"]
    for env_id in (world["env"], MISSING_ID):
        r = s.http(None).get(f"/v1beta/environments/{env_id}")
        assert_error_shape(r, 401)


@pytest.mark.parametrize("auth", ["x-goog-api-key", "bearer"])
def test_both_headers_carry_the_key(world, auth):
    h = world["server"].http(world["keys"]["rw"], auth=auth)
    r = h.get_env(world["env"])
    assert r.status == 200 and r.json()["id"] == world["env"], r
    r = h.download(world["env"], "workspace/up.txt")
    assert r.status == 200 and r.body == b"uploaded", r
    # a bearer header with another scheme is not a key
    r = world["server"].http(None).get(f"/v1beta/environments/{world['env']}",
                                        headers={"Authorization": f"Basic {world['keys']['rw']}"})
    assert_error_shape(r, 401)


def test_read_only_key_reads_but_cannot_write(world):
    h = world["server"].http(world["keys"]["ro"])
    for method, path in reads(world["env"]):
        r = send(h, method, path)
        assert r.status == 200, r
    for method, path in writes(world["env"]):
        r = send(h, method, path)
        err = assert_error_shape(r, 403)
        assert err["status"] == "PERMISSION_DENIED", r
        assert "environments.write" in err["message"], f"403 should name the scope: {r!r}"
    unchanged(world)


def test_write_only_key_writes_but_cannot_read(world):
    h = world["server"].http(world["keys"]["wo"])
    for method, path in reads(world["env"]):
        r = send(h, method, path)
        err = assert_error_shape(r, 403)
        assert "environments.read" in err["message"], f"403 should name the scope: {r!r}"
    # and it can create and delete (its own project's environments)
    r = h.post("/v1beta/environments", json_body={})
    assert r.status == 200, r
    new = r.json()["id"]
    r = h.delete(f"/v1beta/environments/{new}")
    assert r.status == 200 and r.json() == {}, r
    unchanged(world)


def test_scopes_listed_separately_equal_the_bare_scope(world):
    h = world["server"].http(world["keys"]["both"])
    for method, path in reads(world["env"]):
        assert send(h, method, path).status == 200
    r = h.upload(world["env"], "workspace/both.txt", b"both")
    assert r.status == 200, r
    assert h.download(world["env"], "workspace/both.txt").body == b"both"


def test_revoking_takes_effect_on_a_running_server(world):
    s = world["server"]
    key = s.make_key("short-lived", scopes=("environments",))
    assert s.http(key).get_env(world["env"]).status == 200
    s.revoke_key("short-lived")
    assert_error_shape(s.http(key).get_env(world["env"]), 401)


def _same_error(a, b, ids):
    """a and b are the same error once the ids they name are blanked."""
    ea, eb = assert_error_shape(a), assert_error_shape(b)
    ma, mb = ea["message"], eb["message"]
    for i in ids:
        ma, mb = ma.replace(i, "ID"), mb.replace(i, "ID")
    assert (a.status, ea["status"], ea["code"], ma) == (b.status, eb["status"], eb["code"], mb), \
        f"another project's environment is distinguishable from a missing one:\n {a!r}\n {b!r}"
    assert a.header("content-type") == b.header("content-type")


def test_other_project_is_404_exactly_like_missing(world):
    s, keys, env_id = world["server"], world["keys"], world["env"]
    other = s.http(keys["other"])
    ids = (env_id, MISSING_ID)
    for tmpl in ["/v1beta/environments/{}", "/v1beta/environments/{}/files/",
                 "/v1beta/environments/{}/files/workspace/a.txt",
                 "/v1beta/environments/{}/files/workspace/a.txt?alt=media",
                 "/v1beta/files/environment-{}:download?alt=media"]:
        theirs = other.get(tmpl.format(env_id))
        missing = other.get(tmpl.format(MISSING_ID))
        assert theirs.status == 404, theirs
        _same_error(theirs, missing, ids)
    theirs = other.delete(f"/v1beta/environments/{env_id}")
    missing = other.delete(f"/v1beta/environments/{MISSING_ID}")
    assert theirs.status == 404, theirs
    _same_error(theirs, missing, ids)
    theirs = send(other, "PUT", f"/upload/v1beta/environments/{env_id}/files/workspace/w.txt")
    missing = send(other, "PUT", f"/upload/v1beta/environments/{MISSING_ID}/files/workspace/w.txt")
    assert theirs.status == 404, theirs
    _same_error(theirs, missing, ids)
    # forking another project's environment is refused the same way
    theirs = other.post("/v1beta/environments", json_body={"from_environment": env_id})
    missing = other.post("/v1beta/environments", json_body={"from_environment": MISSING_ID})
    assert theirs.status in (400, 404), theirs
    _same_error(theirs, missing, ids)
    # its list holds only its own
    assert other.ids() == []
    mine = other.create({})
    assert other.ids() == [mine["id"]]
    assert mine["id"] not in s.http(keys["rw"]).ids()
    r = other.delete(f"/v1beta/environments/{mine['id']}")
    assert r.status == 200, r
    unchanged(world)


def test_upload_session_belongs_to_its_key_project(world):
    """An upload URL handed to project A cannot be fed by a key of project B, nor without a key."""
    s, keys, env_id = world["server"], world["keys"], world["env"]
    rw = s.http(keys["rw"])
    session = rw.session_path(rw.upload_start(env_id, "workspace/sess.txt", 4))
    r = s.http(None).upload_chunk(session, b"evil", 0, finalize=True)
    assert_error_shape(r, 401)
    r = s.http(keys["other"]).upload_chunk(session, b"evil", 0, finalize=True)
    assert r.status in (403, 404), r
    assert_error_shape(r)
    r = rw.upload_chunk(session, b"good", 0, finalize=True)
    assert r.status == 200, r
    assert rw.download(env_id, "workspace/sess.txt").body == b"good"
