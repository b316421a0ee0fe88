"""The Credentials API and what the egress proxy does with credentials (docs/API.md,
docs/EGRESS.md): secrets are write-only, sealed at rest and never logged; an allowlist entry's
bearer token and an oauth2 access token (refreshed before it expires) are injected as headers;
an environment variable naming a credential holds a placeholder that the proxy replaces only for
the credential's trusted domains; nothing secret ever appears inside the sandbox."""

import http.server
import json
import time
import urllib.parse

import pytest

from apiserver import *  # noqa: F401,F403
from apiserver import Api, ApiServer, finish
import pdk
from tlskit import HOST, echo_server, make_ca, make_cert, serve, tls_wrap

SECRET_BEARER = "bearer-SECRET-4711"
SECRET_ENV = "envvar-SECRET-0815"
# Access tokens no header may carry, by the client_id that gets them from the test's IdP.
BAD_TOKENS = {"crlf-header": "AT\r\nX-Injected: 1",
              "crlf-request": "AT\r\n\r\nGET /admin HTTP/1.1", "ctl": "AT\u0001",
              "non-ascii": "AT\u00e9", "empty": ""}


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("creds")
    ca, _ = make_ca(tmp)
    api_cert = make_cert(tmp, "api.test")
    other_cert = make_cert(tmp, "other.test")
    idp_cert = make_cert(tmp, "idp.test")
    api = echo_server(0, *api_cert)
    other = echo_server(0, *other_cert)
    grants = []
    rotating = {"rt": "RT-rot-1"}   # the one refresh token client "rot" may use now
    # Clients a test registers: client_id -> {"rt", "cs", "at", optionally "expires_in"}.
    clients = {}

    class Idp(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            n = int(self.headers.get("Content-Length", 0))
            f = urllib.parse.parse_qs(self.rfile.read(n).decode())
            grants.append(f)
            # client_id "cid" is the good client; a key of BAD_TOKENS gets that access token;
            # "zero" gets tokens said to expire at once; "rot" gets a new refresh token with
            # every access token, and the one it used stops working (RFC 6749 §6 rotation).
            cid = f.get("client_id", [""])[0]
            want_rt = rotating["rt"] if cid == "rot" else "RT-1"
            ok = (f.get("grant_type") == ["refresh_token"] and
                  f.get("refresh_token") == [want_rt] and f.get("client_secret") == ["CS-1"] and
                  (cid in ("cid", "zero", "rot") or cid in BAD_TOKENS))
            token = BAD_TOKENS.get(cid, f"AT-{len(grants)}")
            ans = {"access_token": token, "expires_in": 0 if cid == "zero" else 12}
            if cid in clients:
                c = clients[cid]
                ok = (f.get("grant_type") == ["refresh_token"] and
                      f.get("refresh_token") == [c["rt"]] and f.get("client_secret") == [c["cs"]])
                ans = {"access_token": c["at"] or f"AT-{len(grants)}",
                       "expires_in": c.get("expires_in", 12)}
            if ok and cid == "rot":
                rotating["rt"] = ans["refresh_token"] = "RT-rot-%d" % (
                    int(want_rt.rsplit("-", 1)[1]) + 1)
            body = json.dumps(ans if ok else {"error": "invalid_grant"}).encode()
            self.send_response(200 if ok else 400)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    idp = serve(tls_wrap(http.server.ThreadingHTTPServer((HOST, 0), Idp), *idp_cert))
    yield {"ca": ca, "api": api, "other": other, "idp": idp, "grants": grants,
           "clients": clients}
    for s in (api, other, idp):
        s.shutdown()


@pytest.fixture
def capi(pd, upstreams):
    server = ApiServer(pd, args=["--egress-resolve", f"api.test={HOST}",
                                 "--egress-resolve", f"other.test={HOST}",
                                 "--egress-resolve", f"idp.test={HOST}",
                                 "--egress-allow-cidr", f"{HOST}/32",
                                 "--egress-upstream-ca", str(upstreams["ca"])]).start()
    try:
        # Environments that bind credentials to destinations: a key that may write both.
        a = Api(server, scopes=("environments", "credentials.write"))
        a.ckey = server.make_key("creds", scopes=("credentials",))
        a.creds = server.http(a.ckey)
        yield a
    finally:
        finish(server)


def port(srv):
    return srv.server_address[1]


def inside(api, env_id, cmd):
    return api.pd.ok("env", "exec", env_id, "-c", cmd).text


def try_json(api, env_id, cmd):
    """The JSON a command printed, or None when it failed (a request cut by a policy swap)."""
    r = api.pd.run("env", "exec", env_id, "-c", cmd)
    try:
        return json.loads(r.text) if r.rc == 0 else None
    except ValueError:
        return None


def leaks(api, env_id, secret):
    """Where inside the sandbox the secret can be found: its files, every process's environment
    and command line. The secret travels reversed, so the search is not a place it is found."""
    script = ("import glob,os,sys\n"
              "s=sys.argv[1][::-1].encode()\n"
              "hits=[]\n"
              "for p in glob.glob('/proc/[0-9]*/environ')+glob.glob('/proc/[0-9]*/cmdline'):\n"
              " try:\n"
              "  if s in open(p,'rb').read(): hits.append(p)\n"
              " except OSError: pass\n"
              "for top in ('/workspace','/etc','/tmp','/root','/var','/home'):\n"
              " for d,_,fs in os.walk(top):\n"
              "  for f in fs:\n"
              "   p=os.path.join(d,f)\n"
              "   try:\n"
              "    if os.path.isfile(p) and not os.path.islink(p) and s in open(p,'rb').read():\n"
              "     hits.append(p)\n"
              "   except OSError: pass\n"
              "print(' '.join(hits))\n")
    r = api.pd.ok("env", "exec", env_id, "--", "python3", "-c", script, secret[::-1])
    return r.text.split()


def test_crud_and_secrets_are_write_only(capi):
    c = capi.creds
    r = c.post("/v1beta/credentials", json_body={"type": "bearer_token", "id": "b1",
                                                 "token": SECRET_BEARER})
    assert r.status == 200, r
    assert set(r.json()) == {"id", "type", "status", "create_time", "update_time"}
    assert SECRET_BEARER.encode() not in r.body
    assert c.get("/v1beta/credentials/b1").json()["type"] == "bearer_token"
    listing = c.get("/v1beta/credentials").json()["credentials"]
    assert [x["id"] for x in listing] == ["b1"] and SECRET_BEARER not in json.dumps(listing)
    # A create sent again (the SDK re-sends one after a connection error or any 409) finds
    # the same credential and answers with it; a create that differs in anything, the secret
    # included, is a conflict and changes nothing.
    again = c.post("/v1beta/credentials", json_body={"token": SECRET_BEARER, "id": "b1",
                                                     "type": "bearer_token"})
    assert again.status == 200, again
    assert again.json() == r.json()
    for differs in ({"token": "x"}, {"token": SECRET_BEARER, "prefix": "Token"},
                    {"token": SECRET_BEARER[:-1]}):
        d = c.post("/v1beta/credentials", json_body={"type": "bearer_token", "id": "b1",
                                                     **differs})
        assert d.status == 409 and d.json()["error"]["status"] == "ALREADY_EXISTS", d
        assert SECRET_BEARER.encode() not in d.body
    assert c.get("/v1beta/credentials/b1").json() == r.json()
    # duplicates, bad types, unknown fields, missing secrets, header injection tricks
    for body, needle in [({"type": "magic", "id": "x"}, "type"),
                         ({"type": "bearer_token", "id": "x"}, "token"),
                         ({"type": "bearer_token", "id": "x", "token": "t", "color": 1}, "color"),
                         ({"type": "bearer_token", "id": "x", "token": "a\r\nX-Evil: 1"}, "CR"),
                         ({"type": "environment_variable", "id": "x", "value": "v",
                           "injection_location": "query"}, "headers only"),
                         ({"type": "environment_variable", "id": "x", "value": "v",
                           "injection_location": "header", "trusted_domains": ["*.com"]},
                          "too broad"),
                         ({"type": "environment_variable", "id": "x", "value": "v",
                           "injection_location": "header", "trusted_domains": ["a.test", "*"]},
                          "every host"),
                         ({"type": "bearer_token", "id": "..", "token": "t"}, "id"),
                         ({"type": "oauth2", "id": "x", "client_id": "c"}, "required"),
                         ({"type": "oauth2", "id": "x", "client_id": "c", "client_secret": "s",
                           "refresh_token": "r", "token_url": "http://idp.test/token"},
                          "token_url must be an https:// URL"),
                         ({"type": "oauth2", "id": "x", "client_id": "c", "client_secret": "s",
                           "refresh_token": "r", "token_url": "https://"}, "token_url"),
                         ({"type": "oauth2", "id": "x", "client_id": "c", "client_secret": "s",
                           "refresh_token": "r", "token_url": "https://u:pw@idp.test/token"},
                          "user:password@"),
                         ({"type": "bearer_token", "id": "../x", "token": "t"}, "id")]:
        r = c.post("/v1beta/credentials", json_body=body)
        assert r.status == 400 and needle in r.json()["error"]["message"], (body, r)
    # PATCH with a mask changes only the masked field; the type never changes
    r = c.request("PATCH", "/v1beta/credentials/b1?update_mask=prefix",
                  json_body={"type": "bearer_token", "prefix": "Token", "token": "ignored"})
    assert r.status == 200, r
    r = c.request("PATCH", "/v1beta/credentials/b1", json_body={"type": "oauth2"})
    assert r.status == 400 and "type" in r.json()["error"]["message"]
    # another project sees nothing; scopes are enforced
    other = capi.server.http(capi.server.make_key("o", scopes=("credentials",), project="p2"))
    assert other.get("/v1beta/credentials/b1").status == 404
    assert capi.http.get("/v1beta/credentials").status == 403
    assert c.delete("/v1beta/credentials/b1").status == 200
    assert c.get("/v1beta/credentials/b1").status == 404


def test_patch_needs_type_and_one_update_mask(capi):
    """Spec §3.6: an update config must carry type (the SDK sends it on every update,
    observed-requests.md). A repeated update_mask is refused naming it: the first alone was
    honoured, so a token named in the second was silently not rotated, with a 200."""
    c = capi.creds
    assert c.post("/v1beta/credentials", json_body={
        "type": "bearer_token", "id": "p1", "token": "OLD"}).status == 200
    before = c.get("/v1beta/credentials/p1").json()["update_time"]
    time.sleep(0.01)
    for body in ({}, {"token": "NEW"}, {"type": None, "token": "NEW"}):
        r = c.request("PATCH", "/v1beta/credentials/p1?update_mask=token", json_body=body)
        assert r.status == 400 and "type is required" in r.json()["error"]["message"], (body, r)
    r = c.request("PATCH", "/v1beta/credentials/p1?update_mask=prefix&update_mask=token",
                  json_body={"type": "bearer_token", "prefix": "P", "token": "NEW"})
    assert r.status == 400 and "update_mask" in r.json()["error"]["message"], r
    assert c.get("/v1beta/credentials/p1").json()["update_time"] == before
    # One mask listing both fields is the way.
    r = c.request("PATCH", "/v1beta/credentials/p1?update_mask=prefix,token",
                  json_body={"type": "bearer_token", "prefix": "P", "token": "NEW"})
    assert r.status == 200, r


def test_concurrent_patches_do_not_undo_each_other(capi, upstreams):
    """Two clients PATCH different fields of one credential at once (one rotates the token,
    the other changes the prefix). Each PATCH reads, changes and writes the credential in one
    transaction, so neither writes back a value the other had already replaced: after every
    round, what the proxy injects is the last token with the last prefix."""
    import threading
    c = capi.creds
    assert c.post("/v1beta/credentials", json_body={"type": "bearer_token", "id": "race",
                                                    "token": "tok-0-0"}).status == 200
    api_host = f"api.test:{port(upstreams['api'])}"
    e = capi.http.create({"network": {"allowlist": [{"domain": api_host,
                                                     "credential": "race"}]}})["id"]
    n, bad = 25, []

    def patch(rnd, field, value_of):
        h = capi.server.http(capi.ckey)
        for i in range(1, n + 1):
            r = h.request("PATCH", f"/v1beta/credentials/race?update_mask={field}",
                          json_body={"type": "bearer_token", field: value_of(rnd, i)})
            if r.status != 200:
                bad.append(r)

    for rnd in range(1, 5):
        ts = [threading.Thread(target=patch, args=(rnd, "token", lambda r, i: f"tok-{r}-{i}")),
              threading.Thread(target=patch, args=(rnd, "prefix", lambda r, i: f"P{r}-{i}"))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert bad == [], bad
        want = f"P{rnd}-{n} tok-{rnd}-{n}"
        seen = lambda: (try_json(capi, e, f"curl -sS -m 10 https://{api_host}/") or {}).get(  # noqa
            "Authorization")
        assert pdk.wait_until(lambda: seen() == want, 10), (rnd, seen(), want)


def test_secrets_are_sealed_at_rest_and_never_logged(capi):
    r = capi.creds.post("/v1beta/credentials", json_body={
        "type": "environment_variable", "id": "e1", "value": SECRET_ENV,
        "injection_location": "header", "trusted_domains": ["api.test"]})
    assert r.status == 200
    key = capi.pd.data / "secret.key"
    assert key.stat().st_mode & 0o777 == 0o600 and key.stat().st_size == 32
    for f in capi.pd.data.glob("paddock.db*"):
        assert SECRET_ENV.encode() not in f.read_bytes(), f
    assert not any(SECRET_ENV in line for line in capi.server.lines)
    # A key file others can read protects nothing: it is refused, naming the file and mode.
    key.chmod(0o644)
    try:
        r = capi.creds.post("/v1beta/credentials", json_body={
            "type": "bearer_token", "id": "e2", "token": "t"})
        assert r.status == 500 and "mode 0600" in r.json()["error"]["message"] and \
            "0644" in r.json()["error"]["message"], r
    finally:
        key.chmod(0o600)
    assert capi.creds.post("/v1beta/credentials", json_body={
        "type": "bearer_token", "id": "e2", "token": "t"}).status == 200


def test_a_body_that_is_not_json_is_refused_without_quoting_it(capi):
    """jansson's error text quotes up to 20 bytes near the error: a short secret pasted with a
    stray newline would come back in the 400, and the SDK puts that message into its exception.
    Only the line and column are given (for credentials, and for environment specs, whose env
    values may be secret too)."""
    secret = "s3cr3t-t0k"
    for h, path, body in (
            (capi.creds, "/v1beta/credentials",
             '{"type":"bearer_token","id":"b","token":"%s\n"}' % secret),
            (capi.http, "/v1beta/environments", '{"env":{"K":"%s\n"}}' % secret)):
        r = h.request("POST", path, body=body.encode(),
                      headers={"Content-Type": "application/json"})
        assert r.status == 400, r
        msg = r.json()["error"]["message"]
        assert "line 1, column" in msg and "t0k" not in msg and "s3cr" not in msg, msg


def memory_holds(pid, needle):
    """Whether any readable mapping of process pid holds needle (pdk.memory_count)."""
    return pdk.memory_count(pid, needle) > 0


def open_connections(port):
    """How many TCP connections on this host have local port port and are not yet closed on
    that side (established, or closed by the peer only), from /proc/net/tcp and tcp6."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in pdk.read_text(table).splitlines()[1:]:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] in ("01", "08"):
                n += 1
    return n


def test_a_written_secret_is_not_left_in_the_daemons_memory(capi):
    """Once a credential is created and updated, the daemon keeps its secret only sealed: the
    request bodies, the parsed JSON, the parser's buffers and the sealing's plain text are
    wiped when freed, so a dump of the daemon's memory does not hold it."""
    import secrets
    new = secrets.token_hex(24)
    rotated = secrets.token_hex(24)
    assert capi.creds.post("/v1beta/credentials", json_body={
        "type": "bearer_token", "id": "mem", "token": new}).status == 200
    assert capi.creds.request("PATCH", "/v1beta/credentials/mem?update_mask=token", json_body={
        "type": "bearer_token", "token": rotated}).status == 200
    # Each request had a connection of its own, and its memory pool goes when the server has
    # closed it.
    assert pdk.wait_until(lambda: open_connections(capi.server.port) == 0, 10)
    pid = capi.server.proc.pid
    assert not memory_holds(pid, new.encode()), "the first token is in the daemon's memory"
    assert not memory_holds(pid, rotated.encode()), "the rotated token is in the daemon's memory"


def test_secrets_resolved_for_the_proxy_are_not_left_in_the_daemons_memory(capi, upstreams):
    """A bearer token and an oauth2 credential bound in an environment's allowlist: every
    reconcile builds the bearer header, the token request carries the refresh token and the
    client secret, and the access token becomes a header. Each of these strings is made in one
    allocation of its own size and wiped when freed: once the environment and the credentials
    are gone, a dump of the daemon's memory holds none of them. Long secrets (as real ones
    are); a piece past their first bytes is looked for, as a freed block's first bytes are the
    allocator's own, and a buffer that grew left only a prefix behind."""
    import secrets
    bearer, rt, cs, at = (secrets.token_hex(700) for _ in range(4))
    upstreams["clients"]["mem"] = {"rt": rt, "cs": cs, "at": at}
    api_host = f"api.test:{port(upstreams['api'])}"
    other_host = f"other.test:{port(upstreams['other'])}"
    idp = f"https://idp.test:{port(upstreams['idp'])}/token"
    assert capi.creds.post("/v1beta/credentials", json_body={
        "type": "bearer_token", "id": "mem-bt", "token": bearer}).status == 200
    assert capi.creds.post("/v1beta/credentials", json_body={
        "type": "oauth2", "id": "mem-oa", "client_id": "mem", "client_secret": cs,
        "refresh_token": rt, "token_url": idp}).status == 200
    e = capi.http.create({"network": {"allowlist": [
        {"domain": api_host, "credential": "mem-bt"},
        {"domain": other_host, "credential": "mem-oa"}]}})["id"]
    granted = lambda: any(g.get("client_id") == ["mem"] and g.get("refresh_token") == [rt]  # noqa
                          for g in upstreams["grants"])
    assert pdk.wait_until(granted, 15), "the token endpoint was never asked"
    time.sleep(3)   # a few reconciles, each building both headers
    assert capi.http.delete(f"/v1beta/environments/{e}").status == 200
    for cid in ("mem-bt", "mem-oa"):
        assert capi.creds.delete(f"/v1beta/credentials/{cid}").status == 200
    time.sleep(2)   # a pass that finds nothing to resolve
    assert pdk.wait_until(lambda: open_connections(capi.server.port) == 0, 10)
    pid = capi.server.proc.pid
    found = [what for what, s in (("bearer token", bearer), ("refresh token", rt),
                                  ("client secret", cs), ("access token", at))
             if memory_holds(pid, s[20:84].encode())]
    assert found == [], f"in the daemon's memory: {', '.join(found)}"


def test_bearer_token_is_injected_and_replaces_the_clients(capi, upstreams):
    capi.creds.post("/v1beta/credentials", json_body={"type": "bearer_token", "id": "gh",
                                                      "token": SECRET_BEARER})
    api_host = f"api.test:{port(upstreams['api'])}"
    other_host = f"other.test:{port(upstreams['other'])}"
    e = capi.http.create({"network": {"allowlist": [
        {"domain": api_host, "credential": "gh"}, {"domain": other_host}]}})["id"]
    got = json.loads(inside(capi, e, f"curl -sS -m 10 -H 'Authorization: Bearer mine' "
                                     f"https://{api_host}/"))
    assert got["Authorization"] == f"Bearer {SECRET_BEARER}"
    # Another allowed host is tunnelled untouched: the test CA is not trusted inside, so TLS
    # fails end to end, and the upstream never sees the token.
    seen_before = len(upstreams["other"].seen)
    out = capi.pd.run("env", "exec", e, "-c", f"curl -sS -m 10 https://{other_host}/")
    assert out.rc != 0
    assert all(SECRET_BEARER not in json.dumps(h) for h in upstreams["other"].seen[seen_before:])
    # The token is nowhere inside.
    assert leaks(capi, e, SECRET_BEARER) == []


def test_binding_a_credential_to_a_destination_needs_credentials_write(capi, upstreams):
    """A bearer_token or oauth2 credential has no domains of its own: the allowlist entry that
    names it decides where it is sent, and whoever decides that can read it there. So a key
    without credentials.write may not name a credential in an allowlist: not creating an
    environment, nor inline in an interaction, nor in an agent's base_environment. Nothing is
    created. A credential on "*" (every host) is refused for any key."""
    capi.creds.post("/v1beta/credentials", json_body={"type": "bearer_token", "id": "bind",
                                                      "token": SECRET_BEARER})
    api_host = f"api.test:{port(upstreams['api'])}"
    spec = {"network": {"allowlist": [{"domain": "other.test"},
                                      {"domain": api_host, "credential": "bind"}]}}
    weak = capi.server.http(capi.server.make_key(
        "weak", scopes=("environments", "interactions", "agents", "credentials.read")))
    listed = lambda: capi.http.get("/v1beta/environments").json().get("environments", [])  # noqa
    before = listed()
    for path, body, field in (
            ("/v1beta/environments", spec, ""),
            ("/v1beta/interactions", {"agent": "paddock", "input": "hi", "environment": spec},
             "environment."),
            ("/v1beta/agents", {"id": "binder", "base_environment": spec}, "base_environment.")):
        r = weak.post(path, json_body=body)
        assert r.status == 403, (path, r)
        msg = r.json()["error"]["message"]
        assert f"{field}network.allowlist[1].credential" in msg and "credentials.write" in msg \
            and "'bind'" in msg, (path, msg)
    assert listed() == before
    assert weak.get("/v1beta/agents/binder").status == 404
    # Without a credential the same key may; with credentials.write, binding is allowed.
    assert weak.create({"network": {"allowlist": [{"domain": api_host}]}})["id"]
    e = capi.http.create(spec)["id"]
    got = json.loads(inside(capi, e, f"curl -sS -m 10 https://{api_host}/"))
    assert got["Authorization"] == f"Bearer {SECRET_BEARER}"
    r = capi.http.create({"network": {"allowlist": [{"domain": "*", "credential": "bind"}]}},
                         ok=False)
    assert r.status == 400 and 'a credential on "*"' in r.json()["error"]["message"], r


def test_patch_clears_what_its_mask_names_and_the_body_leaves_out(capi, upstreams):
    """update_mask follows AIP-134: a field it names that the body leaves out (or sets to
    null) goes back to its default; a required one cannot be cleared. Here header_name and
    prefix are set, then cleared, and the proxy injects "Authorization: Bearer ..." again."""
    c = capi.creds
    assert c.post("/v1beta/credentials", json_body={
        "type": "bearer_token", "id": "clr", "token": "T-clr", "header_name": "X-Auth",
        "prefix": "Token"}).status == 200
    api_host = f"api.test:{port(upstreams['api'])}"
    e = capi.http.create({"network": {"allowlist": [{"domain": api_host,
                                                     "credential": "clr"}]}})["id"]
    got = json.loads(inside(capi, e, f"curl -sS -m 10 https://{api_host}/"))
    assert got.get("X-Auth") == "Token T-clr", got
    r = c.request("PATCH", "/v1beta/credentials/clr?update_mask=header_name,prefix",
                  json_body={"type": "bearer_token", "prefix": None})
    assert r.status == 200, r
    seen = lambda: try_json(capi, e, f"curl -sS -m 10 https://{api_host}/") or {}  # noqa
    assert pdk.wait_until(lambda: seen().get("Authorization") == "Bearer T-clr", 10), seen()
    assert "X-Auth" not in seen()
    r = c.request("PATCH", "/v1beta/credentials/clr?update_mask=token",
                  json_body={"type": "bearer_token"})
    assert r.status == 400 and "token is required" in r.json()["error"]["message"], r


def test_placeholder_is_replaced_only_for_trusted_domains(capi, upstreams):
    api_host = f"api.test:{port(upstreams['api'])}"
    other_host = f"other.test:{port(upstreams['other'])}"
    capi.creds.post("/v1beta/credentials", json_body={
        "type": "environment_variable", "id": "k", "value": SECRET_ENV,
        "injection_location": "header", "trusted_domains": [api_host]})
    # other.test gets a transform, so the proxy terminates TLS there too: a placeholder sent
    # there must arrive as the useless placeholder, not the secret.
    e = capi.http.create({"env": {"API_KEY": {"credential": "k"}},
                          "network": {"allowlist": [
                              {"domain": api_host},
                              {"domain": other_host, "transform": {"X-Via": "paddock"}}]}})["id"]
    ph = inside(capi, e, "printf %s \"$API_KEY\"")
    assert ph.startswith("paddock-credential-") and SECRET_ENV not in ph
    got = json.loads(inside(capi, e, f"curl -sS -m 10 -H \"X-Key: $API_KEY\" https://{api_host}/"))
    assert got["X-Key"] == SECRET_ENV
    got = json.loads(inside(capi, e, f"curl -sS -m 10 -H \"X-Key: $API_KEY\" "
                                     f"https://{other_host}/"))
    assert got["X-Key"] == ph and got["X-Via"] == "paddock"
    # The placeholder is the same for every command of the environment, and the secret is not
    # in any process's environment or the environment's files.
    assert inside(capi, e, "printf %s \"$API_KEY\"") == ph
    assert leaks(capi, e, SECRET_ENV) == []
    # ... and the search would have found it (a canary written into a file).
    inside(capi, e, "echo canary-31337 > /tmp/canary")
    assert leaks(capi, e, "canary-31337") == ["/tmp/canary"]
    # Moving the trust to other.test (as many domains as before) reaches the running
    # environment: other.test gets the secret from then on, and api.test no longer does (it
    # is not intercepted any more: the tunnel is untouched and the test CA not trusted inside).
    r = capi.creds.request("PATCH", "/v1beta/credentials/k?update_mask=trusted_domains",
                           json_body={"type": "environment_variable",
                                      "trusted_domains": [other_host]})
    assert r.status == 200, r
    assert pdk.wait_until(lambda: (try_json(
        capi, e, f"curl -sS -m 10 -H \"X-Key: $API_KEY\" https://{other_host}/") or {}).get(
        "X-Key") == SECRET_ENV, 10), "narrowed trusted_domains never reached the environment"
    seen = len(upstreams["api"].seen)
    capi.pd.run("env", "exec", e, "-c", f"curl -sS -m 10 -H \"X-Key: $API_KEY\" "
                                        f"https://{api_host}/")
    assert all(SECRET_ENV not in json.dumps(h) for h in upstreams["api"].seen[seen:])


def oauth_env(capi, upstreams, cred_id, client, refresh_token="RT-1"):
    """An oauth2 credential against the test's IdP and an environment whose allowlist entry
    for the api upstream names it: (that host, the environment's id)."""
    api_host = f"api.test:{port(upstreams['api'])}"
    idp = f"https://idp.test:{port(upstreams['idp'])}/token"
    r = capi.creds.post("/v1beta/credentials", json_body={
        "type": "oauth2", "id": cred_id, "client_id": client, "client_secret": "CS-1",
        "refresh_token": refresh_token, "token_url": idp})
    assert r.status == 200, r
    return api_host, capi.http.create({"network": {"allowlist": [
        {"domain": api_host, "credential": cred_id}]}})["id"]


def assert_refreshed(capi, e, api_host, within):
    """The access token environment e's requests to api_host carry changes within `within`
    seconds. A request caught by the policy swap that brings the new one is closed
    (docs/EGRESS.md): asked again."""
    first = json.loads(inside(capi, e, f"curl -sS -m 10 https://{api_host}/"))["Authorization"]
    assert first.startswith("Bearer AT-"), first
    deadline = time.monotonic() + within * pdk.SLOWDOWN
    while True:
        now = (try_json(capi, e, f"curl -sS -m 10 https://{api_host}/") or {}).get(
            "Authorization", first)
        if now != first:
            return
        assert time.monotonic() < deadline, "the access token was never refreshed"
        time.sleep(1)


@pytest.mark.slow
def test_oauth2_token_is_fetched_refreshed_and_vetted(capi, upstreams):
    api_host, e = oauth_env(capi, upstreams, "oa", "cid")
    # expires_in 12 s: refreshed at half its life, so a new token within ~6 s.
    assert_refreshed(capi, e, api_host, 20)
    assert upstreams["grants"][-1]["grant_type"] == ["refresh_token"]
    # A token_url on a refused address is never requested, and requests are refused with why.
    r = capi.creds.request("PATCH", "/v1beta/credentials/oa?update_mask=token_url",
                           json_body={"type": "oauth2", "token_url": "https://127.0.0.1:9/t"})
    assert r.status == 200
    # (A request caught by the policy swap itself is closed with "policy changed": the one
    # after it is refused with the reason.)

    def refused_with_why():
        capi.pd.run("env", "exec", e, "-c", f"curl -sS -m 5 https://{api_host}/")
        recs = capi.http.get(f"/v1beta/environments/{e}/egress").json()["records"]
        return any(x["decision"] == "deny" and "loopback" in x["reason"] for x in recs)
    assert pdk.wait_until(refused_with_why, 10), "\n".join(
        [json.dumps(x) for x in capi.http.get(f"/v1beta/environments/{e}/egress").json()[
            "records"][-3:]] + capi.server.lines[-25:])


@pytest.mark.parametrize("expires_in", ["2", 2.0])
def test_oauth2_expires_in_as_a_string_or_a_real_is_honoured(capi, upstreams, expires_in):
    """Some endpoints send expires_in as a string ("3599", Azure AD v1) or a real: it is the
    lifetime all the same (here 2 s, taken as the shortest paddock keeps, 10 s, refreshed at
    half of it), not an hour during which a dead token would be injected."""
    cid = f"exp-{type(expires_in).__name__}"
    upstreams["clients"][cid] = {"rt": "RT-1", "cs": "CS-1", "at": None,
                                 "expires_in": expires_in}
    api_host, e = oauth_env(capi, upstreams, "oa-" + cid, cid)
    assert_refreshed(capi, e, api_host, 15)
    asked = [g for g in upstreams["grants"] if g.get("client_id") == [cid]]
    assert len(asked) >= 2, asked


def test_oauth2_rotated_refresh_token_is_kept(capi, upstreams):
    """An endpoint that rotates refresh tokens (RFC 6749 §6) answers each refresh with a new
    one and refuses the old: paddock stores the new one, sealed, before it hands out the access
    token, so the next refresh uses it and keeps working."""
    api_host, e = oauth_env(capi, upstreams, "oa-rot", "rot", refresh_token="RT-rot-1")
    seen = set()
    deadline = time.monotonic() + 40 * pdk.SLOWDOWN
    while len(seen) < 3:   # the first token and two refreshes, each with the rotated token
        got = (try_json(capi, e, f"curl -sS -m 10 https://{api_host}/") or {}).get(
            "Authorization")
        if got is not None:
            seen.add(got)
        assert time.monotonic() < deadline, (seen, [g for g in upstreams["grants"]
                                                    if g.get("client_id") == ["rot"]])
        time.sleep(1)
    used = [g["refresh_token"][0] for g in upstreams["grants"] if g.get("client_id") == ["rot"]]
    assert used[:3] == ["RT-rot-1", "RT-rot-2", "RT-rot-3"], used
    assert not any(SECRET_BEARER in l or "RT-rot-" in l for l in capi.server.lines)


def test_oauth2_token_said_to_expire_at_once_is_not_asked_for_every_second(capi, upstreams):
    """An expires_in of 0 (or less) is taken as the shortest lifetime paddock keeps, 10 s, not
    as "already expired": otherwise every reconcile, once a second, asked the endpoint again."""
    api_host, e = oauth_env(capi, upstreams, "oa-zero", "zero")
    got = json.loads(inside(capi, e, f"curl -sS -m 10 https://{api_host}/"))["Authorization"]
    assert got.startswith("Bearer AT-"), got
    time.sleep(4)
    asked = [g for g in upstreams["grants"] if g.get("client_id") == ["zero"]]
    assert len(asked) <= 2, len(asked)


def test_a_stalled_token_endpoint_holds_up_nothing_else(capi, upstreams):
    """A token endpoint that accepts and never answers is asked on a thread of its own: the
    server's loop, which re-resolves every environment's credentials each second, goes on. A
    bearer token rotated meanwhile for another environment is injected within seconds, not
    after the stalled request's 15 s timeout; the stalled credential's requests are refused
    with the reason."""
    import socket
    stall = socket.socket()
    stall.bind((HOST, 0))
    stall.listen(8)   # the kernel accepts; nothing ever answers
    try:
        api_host, a = oauth_env(capi, upstreams, "oa-stall", "cid")
        assert json.loads(inside(capi, a, f"curl -sS -m 10 https://{api_host}/"))[
            "Authorization"].startswith("Bearer AT-")
        assert capi.creds.post("/v1beta/credentials", json_body={
            "type": "bearer_token", "id": "bt-stall", "token": "T-1"}).status == 200
        b = capi.http.create({"network": {"allowlist": [{"domain": api_host,
                                                         "credential": "bt-stall"}]}})["id"]
        r = capi.creds.request("PATCH", "/v1beta/credentials/oa-stall?update_mask=token_url",
                               json_body={"type": "oauth2", "token_url":
                                          f"https://idp.test:{stall.getsockname()[1]}/token"})
        assert r.status == 200, r
        # Until the next pass has asked the stalled endpoint (held open, never answered).
        stall.settimeout(10 * pdk.SLOWDOWN)
        held, _ = stall.accept()
        assert capi.creds.request("PATCH", "/v1beta/credentials/bt-stall?update_mask=token",
                                  json_body={"type": "bearer_token", "token": "T-2"}).status == 200
        seen = lambda: (try_json(capi, b, f"curl -sS -m 10 https://{api_host}/") or {}).get(  # noqa
            "Authorization")
        assert pdk.wait_until(lambda: seen() == "Bearer T-2", 5), seen()
        out = capi.pd.run("env", "exec", a, "-c", f"curl -sS -m 5 https://{api_host}/")
        assert out.rc != 0, out
        recs = lambda: capi.http.get(f"/v1beta/environments/{a}/egress").json()["records"]  # noqa
        assert pdk.wait_until(lambda: "being fetched" in recs()[-1]["reason"], 5), recs()[-1]
        held.close()
    finally:
        stall.close()


@pytest.mark.parametrize("client", sorted(BAD_TOKENS))
def test_oauth2_token_that_cannot_be_a_header_is_refused(capi, upstreams, client):
    """The token endpoint is outside paddock's control: an access token that could end the
    Authorization header (or is not one at all) is refused, the request is denied with why, and
    nothing of it reaches the upstream."""
    api_host, e = oauth_env(capi, upstreams, "oa-bad", client)
    seen = len(upstreams["api"].seen)
    out = capi.pd.run("env", "exec", e, "-c", f"curl -sS -m 10 https://{api_host}/")
    assert out.rc != 0, out
    assert upstreams["grants"][-1]["client_id"] == [client]
    recs = capi.http.get(f"/v1beta/environments/{e}/egress").json()["records"]
    assert recs and recs[-1]["decision"] == "deny" and "access_token" in recs[-1]["reason"], \
        recs
    assert len(upstreams["api"].seen) == seen


def test_missing_credential_fails_closed(capi, upstreams):
    api_host = f"api.test:{port(upstreams['api'])}"
    e = capi.http.create({"network": {"allowlist": [{"domain": api_host,
                                                     "credential": "nope"}]}})["id"]
    out = capi.pd.run("env", "exec", e, "-c", f"curl -sS -m 10 https://{api_host}/")
    assert out.rc != 0
    recs = capi.http.get(f"/v1beta/environments/{e}/egress").json()["records"]
    assert recs and recs[-1]["decision"] == "deny" and "nope" in recs[-1]["reason"], recs


def test_oauth2_token_url_stored_as_http_is_never_asked(capi, upstreams):
    """A token_url must be https. One stored before that rule (written into the database here)
    is refused when the token is needed, with the reason, and nothing connects to it: the
    client secret never goes out in clear."""
    import socket
    import sqlite3
    plain = socket.socket()
    plain.bind((HOST, 0))
    plain.listen(8)
    plain.settimeout(0.5)
    try:
        api_host = f"api.test:{port(upstreams['api'])}"
        r = capi.creds.post("/v1beta/credentials", json_body={
            "type": "oauth2", "id": "oa-old", "client_id": "cid", "client_secret": "CS-1",
            "refresh_token": "RT-1", "token_url": "https://idp.test/token"})
        assert r.status == 200, r
        old = f"http://idp.test:{plain.getsockname()[1]}/token"
        # Through the API an http:// token_url is refused on update as on create.
        r = capi.creds.request("PATCH", "/v1beta/credentials/oa-old?update_mask=token_url",
                               json_body={"type": "oauth2", "token_url": old})
        assert r.status == 400 and "https://" in r.json()["error"]["message"], r
        db = sqlite3.connect(capi.pd.data / "paddock.db", timeout=10)
        with db:
            n = db.execute("UPDATE credentials SET config = json_set(config, '$.token_url', ?)"
                           " WHERE id = 'oa-old'", (old,)).rowcount
        db.close()
        assert n == 1
        e = capi.http.create({"network": {"allowlist": [{"domain": api_host,
                                                         "credential": "oa-old"}]}})["id"]
        out = capi.pd.run("env", "exec", e, "-c", f"curl -sS -m 10 https://{api_host}/")
        assert out.rc != 0, out
        recs = capi.http.get(f"/v1beta/environments/{e}/egress").json()["records"]
        assert recs and recs[-1]["decision"] == "deny", recs
        assert "not an https://" in recs[-1]["reason"], recs
        with pytest.raises(socket.timeout):
            plain.accept()
    finally:
        plain.close()
