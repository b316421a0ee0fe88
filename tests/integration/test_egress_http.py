"""Egress proxy, HTTP framing and what reaches an upstream (shared/security/egress-attacks.md cases
23 and 26-34), the documented 403, and the audit log (one record per decision, exact bytes).

The upstreams record every byte they receive (egresskit.Upstream), so "never forwarded" is
checked where it matters: at the upstream."""

import hashlib
import json

import pytest

import pdk
from egresskit import *  # noqa: F401,F403 (fixtures and helpers)


def upstream_untouched(up, before):
    up.wait_closed()
    assert up.count() == before, f"the upstream was reached: {up.snapshot()[before:]}"


def only_new(up, before, n=1):
    """The upstream connections made since `before`; asserts there are exactly n."""
    up.wait_count(before + n)
    up.wait_closed()
    got = up.snapshot()[before:]
    assert len(got) == n, got
    return got


# ------------------------------------------------------------------ 23. non-TLS in a tunnel

def test_tunnel_is_port_scoped_not_protocol_checked(lab):
    """Policy (documented here): an allowed CONNECT is a byte tunnel to host:port. Nothing
    checks that TLS is spoken in it; SSH-looking or plain HTTP bytes are relayed untouched,
    including headers the forwarder would strip. The scope is host:port, no more."""
    p, q = lab.echo.port, lab.up.port
    e = lab.env(allowlist=[f"allowed.test:{p}", f"allowed.test:{q}"])
    n = lab.up.count()
    ssh, http_in = e.raw_many([
        tunnel("allowed.test", p, b"SSH-2.0-OpenSSH_9.6\r\n\x00\x00\x01\x0c\x0a\x14"),
        tunnel("allowed.test", q, b"GET /in-tunnel HTTP/1.1\r\nHost: evil.test\r\n"
                                  b"Proxy-Authorization: Basic eDp5\r\n\r\n")])
    assert ssh.status == 200, ssh
    assert ssh.body == b"SSH-2.0-OpenSSH_9.6\r\n\x00\x00\x01\x0c\x0a\x14", ssh
    assert http_in.status == 200, http_in
    (c,) = only_new(lab.up, n)
    assert c.raw.startswith(b"GET /in-tunnel HTTP/1.1\r\nHost: evil.test\r\n"
                            b"Proxy-Authorization: Basic eDp5\r\n\r\n"), c


# ------------------------------------------------------------------ 26. ports

@pytest.mark.parametrize("port", [22, 25, 6379, 8080, 8443, 3128, 1])
def test_ports_outside_the_rule_are_denied(lab, port):
    e = lab.env(allowlist=["allowed.test", f"other.test:{lab.echo.port}"])
    c, g = e.raw_many([conn_spec(f"CONNECT allowed.test:{port} HTTP/1.1\r\n\r\n"),
                       conn_spec(get_abs(f"http://other.test:{port}/"))])
    assert "port is not allowed" in deny_body_ok(c, "allowed.test", port, e.id)
    assert "port is not allowed" in deny_body_ok(g, "other.test", port, e.id)


# ------------------------------------------------------------------ 27. pipelining

def test_bytes_pipelined_behind_a_refusal_never_reach_an_upstream(lab):
    p, q = lab.up.port, lab.echo.port
    e = lab.env(allowlist=[f"allowed.test:{p}", f"allowed.test:{q}"])
    n, m = lab.up.count(), lab.echo.count()
    smuggled = get_abs(f"http://allowed.test:{p}/smuggled", f"Host: allowed.test:{p}\r\n")
    replies = e.raw_many([
        conn_spec(f"CONNECT other.test:{q} HTTP/1.1\r\n\r\n".encode() + smuggled),
        conn_spec(f"CONNECT allowed.test:22 HTTP/1.1\r\n\r\n".encode() + smuggled),
        conn_spec(b"CONNECT allowed.test:443.evil HTTP/1.1\r\n\r\n" + smuggled),
        conn_spec(get_abs(f"http://other.test:{p}/denied") + smuggled),
        conn_spec(f"CONNECT allowed.test:{q} HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".encode()
                  + smuggled),
        # One packet, then more after the answer: still nothing.
        conn_spec([(f"CONNECT other.test:{q} HTTP/1.1\r\n\r\n", 0.5), (smuggled, 0)]),
    ])
    for r in replies:
        assert r.status in (400, 403), r
        assert r.eof, r
        assert r.raw.count(b"HTTP/1.1 ") == 1, f"more than one answer: {r!r}"
    upstream_untouched(lab.up, n)
    upstream_untouched(lab.echo, m)


def test_bytes_pipelined_behind_a_forwarded_request_are_dropped(lab):
    p = lab.up.port
    e = lab.env(allowlist=[f"allowed.test:{p}"])
    n = lab.up.count()
    r = e.raw(get_abs(f"http://allowed.test:{p}/first")
              + get_abs(f"http://allowed.test:{p}/second")
              + get_abs(f"http://other.test:{p}/third"))
    assert r.status == 200 and r.json()["line"] == "GET /first HTTP/1.1", r
    assert r.raw.count(b"HTTP/1.1 200") == 1, r
    (c,) = only_new(lab.up, n)
    assert b"/second" not in c.raw and b"/third" not in c.raw, c
    recs = lab.wait_records(e.id, 1)
    assert len(recs) == 1, recs


# ------------------------------------------------------------------ 28. CL/TE

BAD_FRAMING = {
    "cl-and-te": "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    "te-and-cl": "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    "te-only": "Transfer-Encoding: chunked\r\n",
    "te-gzip-chunked": "Transfer-Encoding: gzip, chunked\r\n",
    "te-identity": "Transfer-Encoding: identity\r\n",
    "te-upper": "TRANSFER-ENCODING: chunked\r\n",
    "te-tab": "Transfer-Encoding:\tchunked\r\n",
    "te-space-before-colon": "Transfer-Encoding : chunked\r\n",
    "te-folded": "Transfer-Encoding:\r\n chunked\r\n",
    "cl-duplicate-same": "Content-Length: 5\r\nContent-Length: 5\r\n",
    "cl-duplicate-differ": "Content-Length: 5\r\nContent-Length: 6\r\n",
    "cl-list": "Content-Length: 5, 5\r\n",
    "cl-plus": "Content-Length: +5\r\n",
    "cl-minus": "Content-Length: -1\r\n",
    "cl-hex": "Content-Length: 0x5\r\n",
    "cl-empty": "Content-Length: \r\n",
    "cl-overflow": "Content-Length: 99999999999999999999999\r\n",
    "cl-junk": "Content-Length: 5x\r\n",
    "cl-upper-dup": "content-length: 5\r\nCONTENT-LENGTH: 5\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD_FRAMING))
def test_ambiguous_framing_is_400_and_close(lab, name):
    p = lab.up.port
    e = lab.env(allowlist=[f"allowed.test:{p}"])
    n = lab.up.count()
    body = b"5\r\nhello\r\n0\r\n\r\n"
    fwd, con = e.raw_many([
        conn_spec(f"POST http://allowed.test:{p}/f HTTP/1.1\r\n{BAD_FRAMING[name]}\r\n".encode()
                  + body),
        conn_spec(f"CONNECT allowed.test:{p} HTTP/1.1\r\n{BAD_FRAMING[name]}\r\n".encode() + body)])
    refused(fwd, 400)
    refused(con, 400)   # a CONNECT has no body: any framing header but CL 0 is refused
    upstream_untouched(lab.up, n)


def test_connect_with_zero_content_length_is_fine(lab):
    e = lab.env(allowlist=[f"allowed.test:{lab.echo.port}"])
    r = e.raw_many([conn_spec([(f"CONNECT allowed.test:{lab.echo.port} HTTP/1.1\r\n"
                                "Content-Length: 0\r\n\r\n", 0.3), ("zero", 0)], shut=True)])[0]
    assert r.status == 200 and r.body == b"zero", r


# ------------------------------------------------------------------ 29. body on GET

def test_get_with_body_is_forwarded_exactly(lab):
    p = lab.up.port
    e = lab.env(allowlist=[f"allowed.test:{p}"])
    n = lab.up.count()
    body = bytes(range(50))
    r = e.raw_many([conn_spec([(get_abs(f"http://allowed.test:{p}/b", "Content-Length: 50\r\n")
                                + body[:20], 0.3),
                               (body[20:] + b"GET http://allowed.test/extra HTTP/1.1\r\n\r\n", 0)])])[0]
    assert r.status == 200, r
    got = r.json()
    assert got["body_len"] == 50 and got["body_sha256"] == hashlib.sha256(body).hexdigest(), got
    assert ["Content-Length", "50"] in got["headers"], got
    (c,) = only_new(lab.up, n)
    assert c.raw.endswith(b"\r\n\r\n" + body), c   # and nothing after the body
    recs = lab.wait_records(e.id, 1)
    assert int(recs[-1]["bytes_up"]) == len(c.raw), (recs, len(c.raw))


# ------------------------------------------------------------------ 30/31. target and Host

def test_host_must_match_absolute_target(lab):
    p = lab.up.port
    e = lab.env(allowlist=[f"allowed.test:{p}", f"other.test:{p}"])
    n = lab.up.count()
    bad = [f"Host: other.test:{p}\r\n", "Host: allowed.test\r\n", f"Host: allowed.test:{p + 1}\r\n",
           f"Host: allowed.test:{p}\r\nHost: other.test:{p}\r\n", f"Host: 127.0.0.2:{p}\r\n",
           "Host: \r\n", f"Host: allowed.test:{p}@other.test\r\n"]
    replies = e.raw_many([conn_spec(get_abs(f"http://allowed.test:{p}/h", h)) for h in bad]
                         + [conn_spec(get_abs(f"http://allowed.test:{p}/ok",
                                              f"Host: ALLOWED.test.:{p}\r\n"))])
    for h, r in zip(bad, replies):
        assert r.status == 400 and "Host" in r.body.decode(), (h, r)
        assert r.eof, r
    ok = replies[-1]
    assert ok.status == 200, ok
    (c,) = only_new(lab.up, n)
    assert c.header("host") == [f"allowed.test:{p}"], c   # rewritten from the target


def test_default_port_host_header(lab):
    """Host defaults: an absolute target without a port is port 80, and the Host sent upstream
    then has no port. (Port 80 is allowed by an entry without a port.)"""
    e = lab.env(allowlist=["allowed.test"])
    r = e.raw(get_abs("http://allowed.test/x", "Host: allowed.test:8080\r\n"))
    refused(r, 400, "host")


ORIGIN_AND_OTHERS = [
    "GET / HTTP/1.1\r\nHost: allowed.test:{p}\r\n\r\n",
    "GET /x HTTP/1.0\r\n\r\n",
    "OPTIONS * HTTP/1.1\r\nHost: allowed.test:{p}\r\n\r\n",
    "GET https://allowed.test:{p}/ HTTP/1.1\r\n\r\n",
    "GET ftp://allowed.test:{p}/ HTTP/1.1\r\n\r\n",
    "GET //allowed.test:{p}/ HTTP/1.1\r\n\r\n",
    "GET allowed.test:{p} HTTP/1.1\r\n\r\n",
    "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "GET http://allowed.test:{p}/ HTTP/1.2\r\n\r\n",
    "GET http://allowed.test:{p}/ HTTP/2\r\n\r\n",
    "GET http://allowed.test:{p}/ http/1.1\r\n\r\n",
    "GET http://allowed.test:{p}/\r\n\r\n",
    "GET  http://allowed.test:{p}/ HTTP/1.1\r\n\r\n",
    "G@T http://allowed.test:{p}/ HTTP/1.1\r\n\r\n",
    "\r\nGET http://allowed.test:{p}/ HTTP/1.1\r\n\r\n",
    "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
]


@pytest.mark.parametrize("i", range(len(ORIGIN_AND_OTHERS)))
def test_origin_form_and_other_targets_are_400(lab, i):
    p = lab.up.port
    e = lab.env(allowlist=[f"allowed.test:{p}"])
    n = lab.up.count()
    r = e.raw(ORIGIN_AND_OTHERS[i].format(p=p).encode("latin-1"))
    refused(r, 400)
    upstream_untouched(lab.up, n)


# ------------------------------------------------------------------ 32/34. headers upstream

def test_hop_by_hop_proxy_and_upgrade_headers_are_stripped(lab):
    p = lab.up.port
    e = lab.env(allowlist=[f"allowed.test:{p}"])
    n = lab.up.count()
    hdrs = ("Proxy-Authorization: Basic c2VjcmV0OnNlY3JldA==\r\n"
            "PROXY-AUTHORIZATION: Bearer upper\r\n"
            "Proxy-Connection: keep-alive\r\n"
            "Proxy-Authenticate: x\r\n"
            "X-Forwarded-For: 10.0.0.1\r\n"
            "x-forwarded-for: 169.254.169.254\r\n"
            "Forwarded: for=10.0.0.1;host=internal\r\n"
            "Via: 1.1 evil\r\n"
            "Connection: Upgrade, HTTP2-Settings, Keep-Alive\r\n"
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
            "X-Hop-A: named below\r\n"
            "connection: x-hop-a,X-Hop-B ,\r\n"
            "X-Hop-B: named above\r\n"
            "X-Paddock-Egress: deny\r\n"
            "Keep-Alive: timeout=5\r\n"
            "Upgrade: h2c\r\n"
            "TE: trailers\r\n"
            "Trailer: X-T\r\n"
            "Authorization: Bearer end-to-end\r\n"
            "Cookie: a=b\r\n"
            "X-Custom: kept\r\n")
    ws = ("Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZQ==\r\n"
          "Sec-WebSocket-Version: 13\r\n")
    r1, r2 = e.raw_many([conn_spec(get_abs(f"http://allowed.test:{p}/hdr", hdrs)),
                         conn_spec(get_abs(f"http://allowed.test:{p}/ws", ws))])
    assert r1.status == 200 and r2.status == 200, (r1, r2)
    c1, c2 = sorted(only_new(lab.up, n, 2), key=lambda c: b"/ws" in c.request_line())
    names = [l.split(b":", 1)[0].lower() for l in c1.header_lines()]
    for gone in (b"proxy-authorization", b"proxy-connection", b"proxy-authenticate",
                 b"x-forwarded-for", b"forwarded", b"via", b"keep-alive", b"upgrade", b"te",
                 b"trailer", b"http2-settings", b"x-hop-a", b"x-hop-b", b"x-paddock-egress"):
        assert gone not in names, (gone, c1)
    assert c1.header("connection") == ["close"], c1
    assert c1.header("authorization") == ["Bearer end-to-end"], c1
    assert c1.header("cookie") == ["a=b"] and c1.header("x-custom") == ["kept"], c1
    assert b"secret" not in c1.raw.lower() and b"c2VjcmV0" not in c1.raw, c1
    # A WebSocket upgrade cannot happen through the forwarder: no Upgrade reaches upstream.
    assert c2.header("upgrade") == [] and c2.header("connection") == ["close"], c2


def test_connection_cannot_take_the_framing_or_the_host_away(lab):
    """Connection names hop-by-hop fields, which are removed; never Content-Length or Host: an
    upstream that got the body without its length would read it as the next request."""
    p = lab.up.port
    e = lab.env(allowlist=[f"allowed.test:{p}"])
    n = lab.up.count()
    body = b"GET /smuggled HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
    r = e.raw_many([conn_spec(get_abs(
        f"http://allowed.test:{p}/cl", f"Host: allowed.test:{p}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: Content-Length, Host\r\n", body))])[0]
    assert r.status == 200, r
    (c,) = only_new(lab.up, n)
    assert c.header("content-length") == [str(len(body))], c
    assert c.header("host") == [f"allowed.test:{p}"], c
    assert c.raw.endswith(b"\r\n\r\n" + body), c


# ------------------------------------------------------------------ 33. nested proxying

def test_connect_inside_a_tunnel_is_just_bytes_to_the_upstream(lab):
    p = lab.echo.port
    e = lab.env(allowlist=[f"allowed.test:{p}"])
    inner = f"CONNECT other.test:{p} HTTP/1.1\r\nHost: other.test:{p}\r\n\r\n".encode()
    r = e.raw_many([tunnel("allowed.test", p, inner)])[0]
    assert r.status == 200, r
    # The inner CONNECT went to the upstream (echoed back), not to the proxy: one
    # "Connection established" only, and one decision in the log.
    assert r.raw.count(b"Connection established") == 1, r
    assert r.body == inner, r
    recs = lab.wait_records(e.id, 1)
    assert [(x["host"], x["method"]) for x in recs] == [("allowed.test", "CONNECT")], recs


# ------------------------------------------------------------------ the 403

def test_denial_is_loud_and_names_everything(lab):
    e = lab.env(allowlist=[f"allowed.test:{lab.up.port}"])
    r = e.raw(get_abs("http://other.test/secret?q=1"))
    reason = deny_body_ok(r, "other.test", 80, e.id)
    assert reason == "the host is not on the environment's allowlist", reason
    assert r.header("connection") == "close", r
    assert int(r.header("content-length")) == len(r.body), r
    # curl, unmodified, shows the same.
    c = e.sh("curl -sS -i -m 10 http://other.test/secret")
    assert c.rc == 0 and c.text.startswith("HTTP/1.1 403 Forbidden"), c
    assert f"paddock egress: other.test:80 denied for environment {e.id}: " in c.text, c
    h = e.sh("curl -sS -m 10 -o /dev/null -w '%{http_code}' https://other.test/")
    assert h.rc != 0 and "403" in h.text + h.errtext, h   # CONNECT refused: curl reports 403


# ------------------------------------------------------------------ audit

def test_one_record_per_decision_with_exact_bytes(lab):
    p, q = lab.up.port, lab.echo.port
    e = lab.env(allowlist=[f"allowed.test:{p}", f"allowed.test:{q}"])
    n = lab.up.count()
    up_payload = b"u" * 1234
    replies = e.raw_many([
        tunnel("allowed.test", q, up_payload),
        conn_spec(get_abs(f"http://allowed.test:{p}/rec")),
        conn_spec(get_abs(f"http://other.test:{p}/no")),
        conn_spec("CONNECT [::1:80 HTTP/1.1\r\n\r\n"),
        conn_spec(""),  # connects, sends nothing, times out: no decision, no record
    ])
    assert replies[0].body == up_payload, replies[0]
    assert [r.status for r in replies] == [200, 200, 403, 400, None], replies
    recs = lab.wait_records(e.id, 4)
    assert len(recs) == 4, recs
    t, g, d, b = recs
    assert (t["host"], t["port"], t["method"], t["decision"]) == ("allowed.test", q, "CONNECT",
                                                                   "allow"), t
    assert int(t["bytes_up"]) == len(up_payload) and int(t["bytes_down"]) == len(up_payload), t
    (c,) = only_new(lab.up, n)
    assert (g["host"], g["port"], g["method"], g["decision"]) == ("allowed.test", p, "GET",
                                                                   "allow"), g
    assert int(g["bytes_up"]) == len(c.raw), (g, c)
    assert int(g["bytes_down"]) == len(replies[1].raw), (g, replies[1])
    assert (d["host"], d["decision"], d["bytes_up"], d["bytes_down"]) == ("other.test", "deny",
                                                                          "0", "0"), d
    assert "allowlist" in d["reason"], d
    assert b["decision"] == "deny" and "IPv6" in b["reason"], b
    for x in recs:
        assert x["time"].endswith("Z"), x
    # The CLI shows the same records, numbers as numbers.
    cli = lab.cli_records(e.id)
    assert [(x["host"], x["port"], x["method"], x["decision"], x["reason"], x["bytes_up"],
             x["bytes_down"]) for x in cli] == \
        [(x["host"], x["port"], x["method"], x["decision"], x["reason"], int(x["bytes_up"]),
          int(x["bytes_down"])) for x in recs], (cli, recs)
    # Pages.
    r = lab.http.get(f"/v1beta/environments/{e.id}/egress?page_size=3")
    assert r.status == 200 and len(r.json()["records"]) == 3, r
    tok = r.json()["next_page_token"]
    r2 = lab.http.get(f"/v1beta/environments/{e.id}/egress?page_size=3&page_token={tok}")
    assert r2.status == 200 and r2.json()["records"] == recs[3:], r2
    assert "next_page_token" not in r2.json(), r2


def test_egress_log_is_per_environment_and_needs_read_scope(lab):
    a = lab.env(allowlist=[f"allowed.test:{lab.up.port}"])
    b = lab.env(allowlist=[f"allowed.test:{lab.up.port}"])
    a.raw(get_abs("http://other.test/a"))
    lab.wait_records(a.id, 1)
    assert lab.records(b.id) == []
    key = lab.server.make_key("egress-w", scopes=("environments.write",))
    r = lab.server.http(key).get(f"/v1beta/environments/{a.id}/egress")
    assert r.status == 403 and "environments.read" in r.text, r
    r = lab.server.http().get(f"/v1beta/environments/{a.id}/egress")
    assert r.status == 401, r
    other = lab.server.make_key("egress-p2", scopes=("environments",), project="p2")
    r = lab.server.http(other).get(f"/v1beta/environments/{a.id}/egress")
    assert r.status == 404, r


def test_upload_100k_is_counted(lab):
    p = lab.up.port
    e = lab.env(allowlist=[f"allowed.test:{p}"])
    n = lab.up.count()
    r = e.sh(f"head -c 100000 /dev/urandom > /tmp/blob && sha256sum /tmp/blob | cut -c1-64 && "
             f"curl -sS -m 30 --data-binary @/tmp/blob -H 'Content-Type: application/x-raw' "
             f"http://allowed.test:{p}/upload")
    assert r.rc == 0, r
    sha, answer = r.text.split("\n", 1)
    got = json.loads(answer)
    assert got["line"] == "POST /upload HTTP/1.1" and got["body_len"] == 100000, got
    assert got["body_sha256"] == sha.strip(), (sha, got)
    (c,) = only_new(lab.up, n)
    recs = lab.wait_records(e.id, 1)
    assert len(recs) == 1 and recs[0]["method"] == "POST", recs
    assert int(recs[0]["bytes_up"]) >= 100000 and int(recs[0]["bytes_up"]) == len(c.raw), recs
