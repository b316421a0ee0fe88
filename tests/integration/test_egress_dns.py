"""The proxy's own DNS lookups (shared/security/egress-attacks.md cases 14-16, design rules 1
and 2; docs/EGRESS.md "Addresses"): every connection is resolved once and dialled at the very
address that was checked, whatever the next answer says; an answer mixing refused and allowed
addresses dials an allowed one; a name is looked up exactly as the policy decided on it, never
through the resolver's search list; a name the policy denies is never looked up at all.
`--egress-resolv-conf` points the proxy at a DNS server of the test's own on loopback."""

import pytest

import pdk
from egresskit import *  # noqa: F401,F403 (fixtures and helpers)


@pytest.fixture(scope="module")
def dl(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("egress-dns")
    up = Upstream()                                   # 127.0.0.2: allowed by the lab's range
    trap = Upstream(host=REFUSED_IP, port=up.port)    # 127.0.0.3: must never be dialled
    dns = DnsServer({
        "rebind.test": lambda n: [UP_IP] if n % 2 == 0 else [REFUSED_IP],
        "mixed.test": [REFUSED_IP, UP_IP],
        "mixed6.test": ["::1", UP_IP],
        "intranet.corp.test": [UP_IP],
        "nx.example.test.corp.test": [UP_IP],
        "ok.test": [UP_IP],
    })
    conf = tmp / "resolv.conf"
    conf.write_text(f"nameserver 127.0.0.1:{dns.port}\nsearch corp.test\n"
                    "options ndots:5 timeout:2 attempts:2\n")
    p = pdk.Paddock(tmp / "data")
    lab = None
    try:
        lab = Lab(p, extra_args=["--egress-resolv-conf", str(conf)], resolve={})
        lab.up, lab.trap, lab.dns = up, trap, dns
        yield lab
    finally:
        if lab is not None:
            lab.close()
        for x in (up, trap, dns):
            x.close()
        p.teardown()


def codes(e, *urls):
    """The HTTP status curl got for each URL, fetched one connection after another."""
    script = "; ".join(f"curl -s -m 15 -o /dev/null -w '%{{http_code}}\\n' {u}" for u in urls)
    r = e.sh(script)
    return r.text.split()


def test_each_connection_dials_the_address_it_checked(dl):
    """rebind.test answers 127.0.0.2 and 127.0.0.3 in turn, with TTL 0: a connection either
    reaches .2 or is refused, and nothing ever connects to .3."""
    e = dl.env(allowlist=[f"rebind.test:{dl.up.port}"])
    got = codes(e, *[f"http://rebind.test:{dl.up.port}/"] * 6)
    assert sorted(set(got)) == ["200", "403"], got
    assert dl.trap.count() == 0
    recs = dl.wait_records(e.id, 6)
    assert any("loopback" in x["reason"] for x in recs if x["decision"] == "deny"), recs


def test_mixed_answers_dial_an_allowed_address(dl):
    e = dl.env(allowlist=[f"mixed.test:{dl.up.port}", f"mixed6.test:{dl.up.port}"])
    n = dl.up.count()
    got = codes(e, f"http://mixed.test:{dl.up.port}/", f"http://mixed6.test:{dl.up.port}/")
    assert got == ["200", "200"], got
    assert dl.up.count() == n + 2 and dl.trap.count() == 0


def test_names_are_looked_up_exactly_never_through_the_search_list(dl):
    """resolv.conf says "search corp.test" and "ndots:5": the system resolver would try
    intranet.corp.test for "intranet" and nx.example.test.corp.test for the name that does not
    exist. The proxy dials only the name it decided on, so both fail to resolve."""
    e = dl.env(allowlist=[f"intranet:{dl.up.port}", f"nx.example.test:{dl.up.port}"])
    n = dl.up.count()
    got = codes(e, f"http://intranet:{dl.up.port}/", f"http://nx.example.test:{dl.up.port}/")
    assert got == ["502", "502"], got
    assert dl.up.count() == n
    asked = dl.dns.names()
    assert "intranet" in asked and "nx.example.test" in asked, asked
    assert not any(x.endswith(".corp.test") for x in asked), asked


def test_denied_name_is_never_looked_up(dl):
    """A lookup is itself a message out (case 18): a name the policy denies is not asked for."""
    e = dl.env(allowlist=[f"ok.test:{dl.up.port}"])
    got = codes(e, f"http://ok.test:{dl.up.port}/", f"http://secret-1234.exfil.test:{dl.up.port}/",
                f"http://ok.test:{dl.up.port + 1 if dl.up.port < 65535 else 1}/")
    assert got[0] == "200" and got[1] == "403" and got[2] == "403", got
    assert not any("exfil" in x for x in dl.dns.names())


@pytest.mark.parametrize("content,needle", [(None, "cannot be read"),
                                            ("search corp.test\n", "names no nameserver")])
def test_bad_resolv_conf_is_refused_at_start(pd, tmp_path, content, needle):
    conf = tmp_path / "resolv.conf"
    if content is not None:
        conf.write_text(content)
    r = pd.run("serve", "--egress-resolv-conf", str(conf), timeout=60)
    assert r.rc != 0
    pdk.one_line_error(r, "--egress-resolv-conf")
    assert needle in r.errtext, r
