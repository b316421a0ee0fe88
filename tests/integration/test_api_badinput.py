"""Bad input: every malformed, mistyped, out-of-bounds or traversing request is a 4xx in the
documented error shape whose message names the field or the limit, and afterwards nothing was
created or changed (the API's list, the CLI's view of the data dir and the files are as before)."""

import base64
import json
import urllib.parse

import pytest

from apiserver import *  # noqa: F401,F403 (fixtures)

MAX_UPLOAD = 4 * MiB


@pytest.fixture(scope="module")
def srv(mpd):
    s = ApiServer(mpd, args=["--max-upload", str(MAX_UPLOAD)]).start()
    try:
        a = Api(s)
        h = a.http
        a.env = h.create({"sources": [{"type": "inline", "target": "/workspace/keep.txt",
                                       "content": "keep"}]})["id"]
        yield a
    finally:
        finish(s)


def state(a):
    """What must not change: API ids, CLI ids and the environment's workspace listing."""
    h = a.http
    r = h.files(a.env, "workspace", query="recursive=true")
    assert r.status == 200, r
    files = sorted((f["path"], f.get("type"), f.get("size_bytes")) for f in r.json().get("files", []))
    return {"api": h.ids(), "cli": sorted(cli_envs(a.pd)), "files": files}


@pytest.fixture
def same(srv):
    """Asserts, after the test, that nothing was created or changed."""
    before = state(srv)
    yield srv
    r = srv.server.http().get("/healthz")
    assert r.status == 200, f"server unhealthy after bad input: {r!r}"
    after = state(srv)
    assert after == before, f"bad input changed state:\nbefore={before}\nafter={after}"


# ------------------------------------------------------------------ environment creation bodies

SRC = {"type": "inline", "target": "/workspace/ok.txt", "content": "ok"}
FIELD_SIZE_NEEDLES = ("1 mb", "1 mib", "1048576", "1000000", "1mb", "1mib", "limit", "too large",
                      "too big", "exceeds")
TOTAL_SIZE_NEEDLES = ("2 mb", "2 mib", "2097152", "2000000", "2mb", "2mib", "total", "in all")

CREATE_CASES = {
    # name: (body (dict, or raw str/bytes), needles, statuses)
    "malformed-json": ('{"sources": [', ("json", "parse", "malformed", "syntax"), 400),
    "trailing-garbage": ('{} x', ("json", "parse", "malformed", "syntax", "trailing"), 400),
    "not-an-object": ("[]", ("object", "body"), 400),
    "deep-array": ('{"sources":' + "[" * 10000 + "]" * 10000 + "}",
                   ("depth", "nest", "deep", "level", "sources"), 400),
    "deep-object": ('{"env":' + '{"a":' * 10000 + "1" + "}" * 10000 + "}",
                    ("depth", "nest", "deep", "level", "env"), 400),
    "deep-bare": ("[" * 10000 + "]" * 10000, ("depth", "nest", "deep", "level", "object", "body"),
                  400),
    "sources-not-list": ({"sources": "x"}, ("sources",), 400),
    "source-not-object": ({"sources": [5]}, ("sources[0]",), 400),
    "target-wrong-type": ({"sources": [{"type": "inline", "target": 5, "content": "x"}]},
                          ("sources[0].target",), 400),
    "content-wrong-type": ({"sources": [{"type": "inline", "target": "/x", "content": 5}]},
                           ("sources[0].content",), 400),
    "type-missing": ({"sources": [{"target": "/x", "content": "x"}]}, ("sources[0].type",), 400),
    "target-missing": ({"sources": [{"type": "inline", "content": "x"}]}, ("sources[0].target",),
                       400),
    "unknown-source-type": ({"sources": [SRC, {"type": "ftp", "target": "/x"}]},
                            ("sources[1].type",), 400),
    "repository": ({"sources": [{"type": "repository", "source": "github.com/o/r",
                                 "target": "/workspace/r"}]},
                   ("egress", "proxy", "repository"), 400),
    "gcs": ({"sources": [{"type": "gcs", "source": "gs://b/p", "target": "/workspace/d"}]},
            ("egress", "proxy", "gcs"), 400),
    "skill-traversal": ({"sources": [{"type": "skill_registry", "source": "../etc"}]},
                        ("sources[0].source", "sources[0]"), 400),
    "target-root": ({"sources": [{"type": "inline", "target": "/", "content": "x"}]},
                    ("sources[0].target",), 400),
    "target-dotdot": ({"sources": [SRC, {"type": "inline", "target": "/workspace/../etc/evil",
                                         "content": "x"}]}, ("sources[1].target",), 400),
    "target-dotdot-end": ({"sources": [{"type": "inline", "target": "/workspace/..",
                                        "content": "x"}]}, ("sources[0].target",), 400),
    "target-relative": ({"sources": [SRC, {"type": "inline", "target": "workspace/a",
                                           "content": "x"}]}, ("sources[1].target",), 400),
    "target-empty": ({"sources": [{"type": "inline", "target": "", "content": "x"}]},
                     ("sources[0].target",), 400),
    "inline-over-1MB": ({"sources": [{"type": "inline", "target": "/workspace/big",
                                      "content": "x" * (MiB + 1)}]},
                        ("sources[0]",) + FIELD_SIZE_NEEDLES, 400),
    "inline-b64-over-1MB": ({"sources": [{"type": "inline", "target": "/workspace/big",
                                          "encoding": "base64",
                                          "content": "QUFB" * ((MiB + 3) // 3)}]},
                            ("sources[0]",) + FIELD_SIZE_NEEDLES, 400),
    "inline-total-over-2MB": ({"sources": [{"type": "inline", "target": f"/workspace/p{i}",
                                            "content": "y" * 900_000} for i in range(3)]},
                              TOTAL_SIZE_NEEDLES, 400),
    "bad-base64": ({"sources": [SRC, {"type": "inline", "target": "/workspace/b", "encoding": "base64",
                                      "content": "!!!not base64!!!"}]},
                   ("sources[1].content", "base64"), 400),
    "unknown-encoding": ({"sources": [{"type": "inline", "target": "/workspace/b",
                                       "encoding": "rot13", "content": "x"}]},
                         ("sources[0].encoding",), 400),
    "unknown-field": ({"sources": [SRC], "bogus_field": 1}, ("bogus_field",), 400),
    "network-wrong-type": ({"network": 5}, ("network",), 400),
    "network-unknown-mode": ({"network": "sometimes"}, ("network",), 400),
    "allowlist-no-domain": ({"network": {"allowlist": [{"transform": [{"X-A": "b"}]}]}},
                            ("network.allowlist[0].domain", "network.allowlist[0]"), 400),
    "env-wrong-type": ({"env": "FOO=bar"}, ("env",), 400),
    "env-value-wrong-type": ({"env": {"FOO": 5}}, ("env.FOO", 'env["FOO"]', "env[FOO]", "FOO"),
                             400),
    "from-env-wrong-type": ({"from_environment": 5}, ("from_environment",), 400),
    "from-env-and-sources": ({"from_environment": "REAL", "sources": [SRC]},
                             ("from_environment", "sources"), 400),
    "from-env-missing": ({"from_environment": MISSING_ID}, ("from_environment", MISSING_ID),
                         (400, 404)),
    "from-env-garbage": ({"from_environment": "environments/../../x"},
                         ("from_environment", "../../x"), (400, 404)),
}


@pytest.mark.parametrize("case", sorted(CREATE_CASES))
def test_bad_create_body(same, case):
    a = same
    body, needles, status = CREATE_CASES[case]
    if isinstance(body, dict):
        body = json.loads(json.dumps(body).replace('"REAL"', json.dumps(a.env)))
        raw = json.dumps(body)
    else:
        raw = body
    r = a.http.request("POST", "/v1beta/environments", body=raw,
                       headers={"Content-Type": "application/json"})
    assert_names(r, *needles, status=status)


def test_limits_are_not_too_small(srv):
    """Just under the limits is accepted: a 900 kB file, 2 x 900 kB in all."""
    h = srv.http
    e = h.create({"sources": [{"type": "inline", "target": f"/workspace/q{i}",
                               "content": "z" * 900_000} for i in range(2)]})
    r = h.download(e["id"], "workspace/q1")
    assert r.status == 200 and r.body == b"z" * 900_000, r
    r = h.delete(f"/v1beta/environments/{e['id']}")
    assert r.status == 200, r


# ------------------------------------------------------------------ unknown ids, bad queries

def test_unknown_ids_are_404_naming_the_id(same):
    h = same.http
    for bad in (MISSING_ID, "env_nope", "nope", "environments%2F" + MISSING_ID):
        shown = bad.replace("environments%2F", "")
        for method, path in [("GET", f"/v1beta/environments/{bad}"),
                             ("DELETE", f"/v1beta/environments/{bad}"),
                             ("GET", f"/v1beta/environments/{bad}/files/"),
                             ("GET", f"/v1beta/environments/{bad}/files/a?alt=media"),
                             ("GET", f"/v1beta/files/environment-{bad}:download?alt=media")]:
            r = h.request(method, path)
            assert_names(r, shown, status=404)
        r = h.upload_start(bad, "workspace/x", 3)
        assert_names(r, shown, status=404)


def test_missing_file_is_404_and_directory_download_is_400(same):
    h = same.http
    r = h.download(same.env, "workspace/nothing-here")
    assert_names(r, "workspace/nothing-here", status=404)
    r = h.files(same.env, "workspace/nothing-here")
    assert_names(r, "workspace/nothing-here", status=404)
    r = h.download(same.env, "workspace")
    assert_names(r, "directory", "workspace", status=400)


@pytest.mark.parametrize("query,needle", [("page_size=abc", "page_size"),
                                          ("page_size=-5", "page_size"),
                                          ("page_token=not-a-real-token", "page_token")])
def test_bad_list_query(same, query, needle):
    r = same.http.get(f"/v1beta/environments?{query}")
    assert_names(r, needle)
    r = same.http.files(same.env, "workspace", query="recursive=true&" + query)
    assert_names(r, needle)


@pytest.mark.parametrize("raw", [b"1600000000000:env_abcdefghijklmnopqrstuvwxyz",  # before seq
                                 b"1:-1", b"-1:1", b"1:", b":1", b"1",
                                 b"99999999999999999999:1", b"1:2:3", b"1:2\x00"])
def test_forged_env_page_token(same, raw):
    """A token the server did not write, or one from before environments were numbered, is
    refused with its name, not read as some other position."""
    tok = base64.b64encode(raw).decode()
    r = same.http.get(f"/v1beta/environments?page_token={urllib.parse.quote(tok)}")
    assert_names(r, "page_token")


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1beta/environments/%FF"),
    ("GET", "/v1beta/files/environment-%C3:download?alt=media"),
    ("GET", "/v1beta/environments?page_token=%FF"),
    ("GET", "/v1beta/environments/{env}/files/workspace/%ED%A0%80?alt=media"),
    ("PUT", "/upload/v1beta/environments/{env}/files/workspace/bad%FFname"),
    ("DELETE", "/v1beta/environments/{env}/files/workspace/caf%E9"),
])
def test_text_that_is_not_utf8_in_a_url_is_400(same, method, path):
    """A path segment, file path or query value that does not decode to UTF-8 (JSON, every
    answer's format, cannot carry it) is a 400 naming the problem. It used to reach the route:
    its answer could not be encoded and the connection was dropped without one, after an
    upload had already written its file."""
    hdrs = {"X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": "3"} if method == "PUT" else None
    r = same.http.request(method, path.format(env=same.env), headers=hdrs)
    assert_names(r, "utf-8", status=400)


def test_upload_content_type_must_be_a_media_type(same):
    """The upload's content type is stored and answered: one that is not printable ASCII
    (Latin-1 here) or too long to keep whole is refused at the start, naming the header."""
    h = same.http
    for bad in ("text/caf\xe9", "a/" + "b" * 200, "text/plain\x01"):
        r = h.upload_start(same.env, "workspace/typed.txt", 3,
                           extra_headers={"X-Goog-Upload-Header-Content-Type": bad})
        assert_names(r, "x-goog-upload-header-content-type", status=400)


# ------------------------------------------------------------------ traversal in file paths

TRAVERSALS = ["workspace/../../etc/passwd", "../etc/passwd", "workspace/..", "..",
              "workspace/%2e%2e/%2e%2e/etc/passwd", "workspace/%2E%2E", "/../etc/passwd",
              "workspace//..//..//etc/passwd"]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_dotdot_in_file_paths_is_400(same, path):
    h, env = same.http, same.env
    for r in (h.files(env, path), h.download(env, path), h.upload_start(env, path, 3),
              h.upload_start(env, path, 3, query="extract=true")):
        assert_names(r, "..", "path", status=400)


# ------------------------------------------------------------------ uploads

def test_upload_over_max_upload_is_413_at_start(same):
    h = same.http
    r = h.upload_start(same.env, "workspace/too-big.bin", MAX_UPLOAD + 1)
    assert_names(r, str(MAX_UPLOAD), "4 mib", "4mib", "4m", "max-upload", "max_upload", "limit",
                 "too large", status=413)
    r = h.upload_start(same.env, "workspace/too-big.bin", "12abc")
    assert_names(r, "content-length", "x-goog-upload-header-content-length", status=400)
    r = h.download(same.env, "workspace/too-big.bin")
    assert r.status == 404, r


def test_upload_exactly_max_upload_is_accepted(srv):
    h = srv.http
    data = bytes(range(256)) * (MAX_UPLOAD // 256)
    r = h.upload(srv.env, "workspace/exact.bin", data, chunk=MAX_UPLOAD // 2)
    assert r.status == 200, r
    r = h.download(srv.env, "workspace/exact.bin")
    assert r.status == 200 and r.body == data


def test_upload_more_than_announced(same):
    h = same.http
    # in the final chunk
    s = h.session_path(h.upload_start(same.env, "workspace/over1", 100))
    r = h.upload_chunk(s, b"a" * 101, 0, finalize=True)
    assert r.status in (400, 413), r
    assert_names(r, "100", "announced", "content-length", "more", "exceeds", "size",
                 status=r.status)
    # in an intermediate chunk
    s = h.session_path(h.upload_start(same.env, "workspace/over2", 100))
    r = h.upload_chunk(s, b"a" * 60, 0)
    assert r.status == 200, r
    r = h.upload_chunk(s, b"a" * 60, 60)
    assert r.status in (400, 413), r
    assert_error_shape(r)
    # finalize with fewer bytes than announced is refused too
    s = h.session_path(h.upload_start(same.env, "workspace/over3", 100))
    r = h.upload_chunk(s, b"a" * 99, 0, finalize=True)
    assert r.status == 400, r
    assert_error_shape(r)
    for p in ("workspace/over1", "workspace/over2", "workspace/over3"):
        assert h.download(same.env, p).status == 404


def test_upload_wrong_offset_is_400_and_the_session_resumes(srv):
    h = srv.http
    data = bytes(range(100))
    s = h.session_path(h.upload_start(srv.env, "workspace/off.bin", len(data)))
    r = h.upload_chunk(s, data[:5], 3)
    assert_names(r, "offset", status=400)
    r = h.upload_chunk(s, data[:10], 0)
    assert r.status == 200, r
    for bad in (0, 5, 11, 1000):
        r = h.upload_chunk(s, data[bad:], bad, finalize=True) if bad < 100 else \
            h.upload_chunk(s, b"", bad, finalize=True)
        assert_names(r, "offset", status=400)
    r = h.upload_chunk(s, b"", 0, command="query")
    assert r.status == 200, r
    assert r.header("x-goog-upload-size-received") == "10", r
    assert h.download(srv.env, "workspace/off.bin").status == 404, "visible before finalize"
    # an unannounced command and a missing offset are refused
    r = h.request("POST", s, body=b"x", headers={"X-Goog-Upload-Command": "upload"})
    assert_names(r, "offset", status=400)
    r = h.upload_chunk(s, b"x", 10, command="frobnicate")
    assert_names(r, "command", status=400)
    # then the upload can still complete; nothing of the rejected chunks landed
    r = h.upload_chunk(s, data[10:], 10, finalize=True)
    assert r.status == 200, r
    r = h.download(srv.env, "workspace/off.bin")
    assert r.status == 200 and r.body == data, r


def test_post_to_an_unknown_upload_session(same):
    r = same.http.request("POST", "/upload/v1beta/environments/x/files/y/not-a-session",
                          headers={"X-Goog-Upload-Command": "upload, finalize",
                                   "X-Goog-Upload-Offset": "0"}, body=b"abc")
    assert 400 <= r.status < 500, r
    assert_error_shape(r)


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "link-out"])
def test_extract_refuses_escaping_archives(same, tmp_path, kind):
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        ok = tarfile.TarInfo("fine.txt")
        ok.size = 4
        t.addfile(ok, io.BytesIO(b"fine"))
        bad = tarfile.TarInfo({"absolute": "/etc/evil", "dotdot": "../../evil",
                               "link-out": "link"}[kind])
        if kind == "link-out":
            bad.type, bad.linkname = tarfile.SYMTYPE, "../../../../etc"
            t.addfile(bad)
            inner = tarfile.TarInfo("link/evil")
            inner.size = 4
            t.addfile(inner, io.BytesIO(b"evil"))
        else:
            bad.size = 4
            t.addfile(bad, io.BytesIO(b"evil"))
    h = same.http
    r = h.upload(same.env, f"workspace/ex-{kind}", buf.getvalue(), query="extract=true")
    assert r.status == 400, r
    assert_error_shape(r)
    assert h.files(same.env, f"workspace/ex-{kind}").status == 404, "nothing of the archive is written"
