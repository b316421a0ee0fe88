"""Egress proxy, names (shared/security/egress-attacks.md cases 1-8): case folding, trailing dot,
IDN, wildcard alignment, over-broad patterns, junk in authorities and targets, ports smuggled into
hosts, over-long names. Explicit proxy, no TLS interception.

Every request is sent as exact bytes from inside a sandbox to the proxy listener there
(127.0.0.1:3128). Environments here always have an allowlist, so a name the proxy wrongly took
for a name would be denied by policy (403) rather than looked up in DNS: nothing leaves the
machine. A 400 therefore shows the proxy refused at parse time, before any resolution."""

import pytest

from egresskit import *  # noqa: F401,F403 (fixtures and helpers)


def upstream_untouched(up, before):
    up.wait_closed()
    assert up.count() == before, f"the upstream was reached: {up.snapshot()[before:]}"


# ------------------------------------------------------------------ 1. case folding

def test_case_folding_matches_and_is_canonical_downstream(lab):
    e = lab.env(allowlist=[f"Allowed.TEST:{lab.echo.port}", f"allowed.test:{lab.up.port}"])
    n = lab.up.count()
    t, g = e.raw_many([tunnel("ALLOWED.Test", lab.echo.port, b"folded"),
                       conn_spec(get_abs(f"http://ALLOWED.TeSt:{lab.up.port}/p",
                                         f"Host: allowed.TEST:{lab.up.port}\r\n"))])
    assert t.status == 200 and t.raw.endswith(b"folded"), t
    assert g.status == 200, g
    lab.up.wait_count(n + 1)
    up = lab.up.snapshot()[n]
    # The canonical lower-case name is what goes downstream.
    assert up.header("host") == [f"allowed.test:{lab.up.port}"], up
    recs = lab.wait_records(e.id, 2)
    assert [(r["host"], r["decision"]) for r in recs] == [("allowed.test", "allow")] * 2, recs


# ------------------------------------------------------------------ 2. trailing dot

def test_trailing_dot_same_decision_as_without(lab):
    e = lab.env(allowlist=[f"allowed.test.:{lab.echo.port}"])
    with_dot, without, other = e.raw_many([
        tunnel("allowed.test.", lab.echo.port, b"dot"),
        tunnel("allowed.test", lab.echo.port, b"nodot"),
        conn_spec(f"CONNECT other.test.:{lab.echo.port} HTTP/1.1\r\n\r\n")])
    assert with_dot.status == 200 and with_dot.raw.endswith(b"dot"), with_dot
    assert without.status == 200 and without.raw.endswith(b"nodot"), without
    deny_body_ok(other, "other.test", lab.echo.port, e.id)
    recs = lab.wait_records(e.id, 3)
    assert [r["host"] for r in recs] == ["allowed.test", "allowed.test", "other.test"], recs


def test_two_trailing_dots_are_refused(lab):
    e = lab.env(allowlist=[f"allowed.test:{lab.echo.port}"])
    n = lab.echo.count()
    r = e.raw(f"CONNECT allowed.test..:{lab.echo.port} HTTP/1.1\r\n\r\n")
    refused(r, 400)
    upstream_untouched(lab.echo, n)


# ------------------------------------------------------------------ 3. IDN

@pytest.mark.parametrize("entry", ["\u00e9xample.test", "\u0430pple.test",  # é, Cyrillic а
                                   "b\u00fccher.test:8443"])
def test_unicode_allowlist_entries_are_refused(lab, entry):
    r = lab.env(allowlist=[entry], ok=False)
    assert r.status == 400, r
    msg = r.json()["error"]["message"]
    assert "network.allowlist[0]" in msg and ("idna" in msg.lower() or "xn--" in msg), r


def test_idn_requests_use_a_labels_only(lab):
    e = lab.env(allowlist=[f"xn--xample-9ua.test:{lab.echo.port}"])
    n = lab.echo.count()
    a_label, upper, unicode_, cyr = e.raw_many([
        tunnel("xn--xample-9ua.test", lab.echo.port, b"alabel"),
        tunnel("XN--XAMPLE-9UA.TEST", lab.echo.port, b"upper"),
        conn_spec(f"CONNECT \u00e9xample.test:{lab.echo.port} HTTP/1.1\r\n\r\n".encode()),
        conn_spec(f"CONNECT \u0430llowed.test:{lab.echo.port} HTTP/1.1\r\n\r\n".encode())])
    assert a_label.status == 200 and a_label.raw.endswith(b"alabel"), a_label
    assert upper.status == 200 and upper.raw.endswith(b"upper"), upper
    # No Unicode comparison, no silent conversion: the UTF-8 forms are refused outright.
    refused(unicode_, 400, "idna", "xn--")
    refused(cyr, 400, "idna", "xn--")
    lab.echo.wait_closed()
    assert lab.echo.count() == n + 2, lab.echo.snapshot()[n:]


# ------------------------------------------------------------------ 4. wildcards

def test_wildcard_matches_subdomains_only_label_aligned(lab):
    p = lab.up.port
    e = lab.env(allowlist=[f"*.allowed.test:{p}"])
    n = lab.up.count()
    sub, deep, apex, glued = e.raw_many([
        conn_spec(get_abs(f"http://a.allowed.test:{p}/1")),
        conn_spec(get_abs(f"http://a.b.allowed.test:{p}/2")),
        conn_spec(get_abs(f"http://allowed.test:{p}/3")),
        conn_spec(get_abs(f"http://evilallowed.test:{p}/4"))])
    assert sub.status == 200 and sub.json()["line"] == "GET /1 HTTP/1.1", sub
    assert deep.status == 200 and deep.json()["line"] == "GET /2 HTTP/1.1", deep
    # The apex is not matched by "*.allowed.test" (documented), nor is a glued name.
    assert "not on the environment's allowlist" in deny_body_ok(apex, "allowed.test", p, e.id)
    deny_body_ok(glued, "evilallowed.test", p, e.id)
    lab.up.wait_closed()
    assert lab.up.count() == n + 2, lab.up.snapshot()[n:]


# ------------------------------------------------------------------ 5. over-broad patterns

@pytest.mark.parametrize("entry", ["*.com", "*.co.uk", "*.com.au", "*.test", "ex*ample.com",
                                   "api.*.x.com", "*example.com", "**.example.com",
                                   "*.*.example.com", "example.*", "*.", "*..example.com",
                                   "*.example.com*", "*:99999", "[*.example.com]"])
def test_over_broad_or_malformed_patterns_refused_at_creation(lab, entry):
    r = lab.env(allowlist=["allowed.test", entry], ok=False)
    assert r.status == 400, r
    assert "network.allowlist[1]" in r.json()["error"]["message"], r


def test_public_suffix_list_is_short_as_documented(lab):
    """docs/EGRESS.md: only a TLD and ~45 common two-level public suffixes are refused under a
    wildcard; "*.github.io" is accepted (and means every GitHub Pages site). Pinned here so a
    change of that contract is noticed; operators must not rely on the proxy for the rest of
    the Public Suffix List."""
    r = lab.env(allowlist=["*.github.io"], ok=False)
    assert r.status == 200, r
    lab.pd.ids.add(r.json()["id"])


def test_catch_all_star_is_names_only(lab):
    p = lab.up.port
    e = lab.env(allowlist=[f"*:{p}"])
    n = lab.up.count()
    name, ip = e.raw_many([conn_spec(get_abs(f"http://allowed.test:{p}/star")),
                           conn_spec(get_abs(f"http://127.0.0.2:{p}/ip"))])
    assert name.status == 200 and name.json()["line"] == "GET /star HTTP/1.1", name
    assert "IP literals" in deny_body_ok(ip, "127.0.0.2", p, e.id)
    lab.up.wait_closed()
    assert lab.up.count() == n + 1


# ------------------------------------------------------------------ 6. brackets and junk

JUNK_AUTHORITIES = {
    "bracketed-name": "[allowed.test]:{p}",
    "double-brackets": "[[allowed.test]]:{p}",
    "percent-encoded-dot": "allowed%2etest:{p}",
    "nul": "allowed.test\x00:{p}",
    "cr": "allowed.test\r:{p}",
    "lf": "allowed.test\n:{p}",
    "tab": "allowed.test\t:{p}",
    "underscore": "allowed_test:{p}",
    "backslash": "allowed.test\\:{p}",
    "leading-hyphen-label": "-allowed.test:{p}",
    "empty-label": "a..allowed.test:{p}",
    "only-dot": ".:{p}",
    "space": "allowed .test:{p}",
    "slash": "allowed.test/:{p}",
}


@pytest.mark.parametrize("name", sorted(JUNK_AUTHORITIES))
def test_junk_in_connect_authority_is_400(lab, name):
    e = lab.env(allowlist=[f"allowed.test:{lab.echo.port}", f"*.allowed.test:{lab.echo.port}"])
    n = lab.echo.count()
    auth = JUNK_AUTHORITIES[name].format(p=lab.echo.port)
    r = e.raw(f"CONNECT {auth} HTTP/1.1\r\n\r\nping")
    refused(r, 400)
    assert e.id in r.body.decode(), r
    upstream_untouched(lab.echo, n)


JUNK_HEADERS = {
    "cr-in-value": "X-A: a\rb\r\n",
    "lf-in-value": "X-A: a\nInjected: 1\r\n",
    "nul-in-value": "X-A: a\x00b\r\n",
    "folded": "X-A: a\r\n  continued\r\n",
    "space-before-colon": "X-A : b\r\n",
    "no-colon": "JustAName\r\n",
    "empty-name": ": v\r\n",
    "esc-in-value": "X-A: a\x1bb\r\n",
}


@pytest.mark.parametrize("name", sorted(JUNK_HEADERS))
def test_junk_header_lines_are_400(lab, name):
    p = lab.up.port
    e = lab.env(allowlist=[f"allowed.test:{p}"])
    n = lab.up.count()
    r = e.raw(get_abs(f"http://allowed.test:{p}/junk", JUNK_HEADERS[name]))
    refused(r, 400)
    upstream_untouched(lab.up, n)


# The request target of an absolute-form request is copied into the upstream request line
# without any check for control characters: a bare LF or CR reaches the upstream, which an
# LF-tolerant server reads as a line break (header injection / request splitting on a host the
# sandbox may only speak HTTP to).
@pytest.mark.parametrize("path", ["/x\nX-Injected:1", "/x\rX-Injected:1", "/x\x01", "/x\x7f"])
def test_control_characters_in_request_target_are_400(lab, path):
    p = lab.up.port
    e = lab.env(allowlist=[f"allowed.test:{p}"])
    n = lab.up.count()
    r = e.raw(f"GET http://allowed.test:{p}{path} HTTP/1.1\r\n\r\n")
    lab.up.wait_closed()
    got = [c.request_line() for c in lab.up.snapshot()[n:]]
    assert got == [], f"upstream received request line(s) {got!r}"
    refused(r, 400)


# ------------------------------------------------------------------ 7. ports in hosts

SMUGGLED = [
    "CONNECT evil.test:443.allowed.test:{p} HTTP/1.1",
    "CONNECT allowed.test:{p}@evil.test:80 HTTP/1.1",
    "CONNECT evil.test@allowed.test:{p} HTTP/1.1",
    "CONNECT allowed.test:{p}:80 HTTP/1.1",
    "CONNECT allowed.test:+{p} HTTP/1.1",
    "CONNECT allowed.test:-{p} HTTP/1.1",
    "CONNECT allowed.test:{p}x HTTP/1.1",
    "CONNECT allowed.test:65536 HTTP/1.1",
    "CONNECT allowed.test:0 HTTP/1.1",
    "CONNECT allowed.test: HTTP/1.1",
    "CONNECT allowed.test HTTP/1.1",
    "CONNECT http://allowed.test:{p} HTTP/1.1",
    "GET http://allowed.test:{p}@evil.test/ HTTP/1.1",
    "GET http://user@allowed.test:{p}/ HTTP/1.1",
    "GET http://allowed.test:{p}\\@evil.test/ HTTP/1.1",
    "GET http://allowed.test:{p}:80/ HTTP/1.1",
    "GET http://allowed.test%3a{p}/ HTTP/1.1",
]


@pytest.mark.parametrize("line", SMUGGLED)
def test_port_or_userinfo_smuggled_into_authority_is_400(lab, line):
    p = lab.up.port
    e = lab.env(allowlist=[f"allowed.test:{p}", f"*.allowed.test:{p}"])
    n = lab.up.count()
    r = e.raw(line.format(p=p) + "\r\n\r\n")
    refused(r, 400)
    upstream_untouched(lab.up, n)


@pytest.mark.parametrize("entry", ["evil.test:443.allowed.test", "allowed.test:443@evil.test",
                                   "user@allowed.test", "allowed.test:99999", "allowed.test:0",
                                   "allowed.test:", "allowed.test:80:443", "allowed.test:+80",
                                   "http://allowed.test", "allowed.test/path"])
def test_smuggled_ports_refused_at_creation(lab, entry):
    r = lab.env(allowlist=[entry], ok=False)
    assert r.status == 400, r
    assert "network.allowlist[0]" in r.json()["error"]["message"], r


def test_entry_port_scopes_the_name(lab):
    """An entry with a port allows that port only; the same name on another port is denied
    with a reason that says so (case 26 as well)."""
    p = lab.echo.port
    e = lab.env(allowlist=[f"allowed.test:{p}"])
    ok, other_port, default = e.raw_many([tunnel("allowed.test", p, b"scoped"),
                                          conn_spec("CONNECT allowed.test:22 HTTP/1.1\r\n\r\n"),
                                          conn_spec("CONNECT allowed.test:443 HTTP/1.1\r\n\r\n")])
    assert ok.status == 200 and ok.raw.endswith(b"scoped"), ok
    assert "port" in deny_body_ok(other_port, "allowed.test", 22, e.id)
    assert "port" in deny_body_ok(default, "allowed.test", 443, e.id)


# ------------------------------------------------------------------ 8. over-long names

def _name(total, label=63):
    parts, left = [], total
    while left > 0:
        n = min(label, left)
        parts.append("a" * n)
        left -= n + 1
    name = ".".join(parts)
    return name[:-5] + ".test" if len(name) >= total else name


def test_over_long_names_refused_before_resolution(lab):
    p = lab.echo.port
    e = lab.env(allowlist=[f"allowed.test:{p}"])
    n = lab.echo.count()
    n253 = _name(253)
    assert len(n253) == 253 and all(len(l) <= 63 for l in n253.split("."))
    n254 = "a" + n253
    label64 = "b" * 64 + ".allowed.test"
    chain300 = ".".join(["abcdefghij"] * 27) + ".test"  # 301 bytes of short labels
    assert len(chain300) > 300
    ok_len, too_long, long_label, chain = e.raw_many([
        conn_spec(f"CONNECT {n253}:{p} HTTP/1.1\r\n\r\n"),
        conn_spec(f"CONNECT {n254}:{p} HTTP/1.1\r\n\r\n"),
        conn_spec(f"CONNECT {label64}:{p} HTTP/1.1\r\n\r\n"),
        conn_spec(f"GET http://{chain300}:{p}/ HTTP/1.1\r\n\r\n")])
    # 253 bytes is a valid name: it parses, and the policy denies it (403, named in full).
    deny_body_ok(ok_len, n253, p, e.id)
    refused(too_long, 400)
    refused(long_label, 400)
    refused(chain, 400)
    upstream_untouched(lab.echo, n)
    r = lab.env(allowlist=[chain300], ok=False)
    assert r.status == 400 and "network.allowlist[0]" in r.text, r
