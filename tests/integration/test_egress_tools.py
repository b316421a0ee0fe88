"""Egress proxy with unmodified tools inside a sandbox (docs/EGRESS.md: "curl, git, pip, npm,
python and node use the proxy unmodified"): curl over HTTP and over HTTPS through CONNECT (TLS end
to end, with a test CA made by openssl), python urllib, git clone over dumb HTTP, pip download
from a local simple index, and node.

Every environment here has an allowlist naming only the local upstreams, so a tool that tried
anything else (a version check, an index) would be denied by the proxy, never resolved."""

import json

import pytest

from egresskit import *  # noqa: F401,F403 (fixtures and helpers)


@pytest.fixture(scope="module")
def tools(lab, tmp_path_factory):
    root = tmp_path_factory.mktemp("egress-tools")
    head = make_git_repo(root)
    whl, sha = make_wheel_index(root)
    ca, ctx = make_ca(root / "tls")
    static = StaticUpstream(root / "srv")
    tls = Upstream(tls=ctx)
    t = type("Tools", (), {})()
    t.head, t.whl, t.sha, t.ca, t.static, t.tls = head, whl, sha, ca, static, tls
    t.env = lab.env(allowlist=[f"allowed.test:{static.port}", f"allowed.test:{tls.port}",
                               f"other.test:{tls.port}"])
    r = t.env.write("/workspace/ca.pem", ca.read_bytes())
    assert r.rc == 0, r
    try:
        yield t
    finally:
        static.close()
        tls.close()


def test_curl_http(lab, tools):
    p = tools.static.port
    r = tools.env.sh(f"curl -sS -m 20 -D - http://allowed.test:{p}/repo.git/HEAD")
    assert r.rc == 0, r
    assert r.text.startswith("HTTP/1.0 200") and r.text.endswith("ref: refs/heads/main\n"), r


def test_curl_https_through_connect_is_end_to_end_tls(lab, tools):
    p = tools.tls.port
    n = tools.tls.count()
    before = len(lab.records(tools.env.id))
    r = tools.env.sh(f"curl -sS -m 20 --cacert /workspace/ca.pem https://allowed.test:{p}/tls "
                     f"-H 'X-Secret: abc'")
    assert r.rc == 0, r
    got = json.loads(r.text)
    assert got["line"] == "GET /tls HTTP/1.1", got
    assert ["X-Secret", "abc"] in got["headers"], got   # decrypted only by the upstream
    assert tools.tls.count() == n + 1
    rec = lab.wait_records(tools.env.id, before + 1)[before]
    assert (rec["method"], rec["host"], rec["port"], rec["decision"]) == \
        ("CONNECT", "allowed.test", p, "allow"), rec
    # Without the CA the upstream's certificate is not trusted: the proxy does not interpose.
    bad = tools.env.sh(f"curl -sS -m 20 https://allowed.test:{p}/tls")
    assert bad.rc == 60, bad   # CURLE_PEER_FAILED_VERIFICATION


def test_python_urllib_http_and_https(lab, tools):
    code = f"""
import json, ssl, urllib.request
a = urllib.request.urlopen("http://allowed.test:{tools.static.port}/simple/", timeout=20).read()
ctx = ssl.create_default_context(cafile="/workspace/ca.pem")
b = urllib.request.urlopen("https://other.test:{tools.tls.port}/py", timeout=20, context=ctx).read()
try:
    urllib.request.urlopen("http://denied.test/", timeout=20)
    c = None
except urllib.error.HTTPError as e:
    c = [e.code, e.read().decode()]
print(json.dumps([a.decode(), json.loads(b)["line"], c]))
"""
    r = tools.env.py(code)
    assert r.rc == 0, r
    a, b, c = json.loads(r.text.strip().splitlines()[-1])
    assert "egkpkg" in a, a
    assert b == "GET /py HTTP/1.1", b
    assert c[0] == 403 and c[1].startswith("paddock egress: denied.test:80 denied"), c


def test_git_clone_over_dumb_http(lab, tools):
    p = tools.static.port
    r = tools.env.sh(f"cd /workspace && git clone -q http://allowed.test:{p}/repo.git clone && "
                     f"git -C clone rev-parse HEAD && cat clone/hello.txt", timeout=120)
    assert r.rc == 0, r
    sha, text = r.text.split("\n", 1)
    assert sha == tools.head and text == "hello through the proxy\n", r
    assert "/repo.git/info/refs?service=git-upload-pack" in tools.static.paths


def test_pip_download_from_a_local_index(lab, tools):
    # --trusted-host: pip's own rule for plain-HTTP indexes, nothing to do with the proxy.
    p = tools.static.port
    r = tools.env.sh(f"cd /workspace && python3 -m pip download --no-deps --no-cache-dir "
                     f"--disable-pip-version-check --trusted-host allowed.test -d dl --index-url http://allowed.test:{p}/simple/ "
                     f"egkpkg && sha256sum dl/*.whl", timeout=180)
    assert r.rc == 0, r
    assert f"{tools.sha}  dl/{tools.whl}" in r.text, r
    assert f"/files/{tools.whl}" in tools.static.paths


def test_node_http_through_the_proxy(lab, tools):
    """node's http module speaks to the proxy in absolute form (what a proxy agent does)."""
    p = tools.static.port
    js = (f"const http=require('http');"
          f"http.get({{host:'127.0.0.1',port:3128,path:'http://allowed.test:{p}/repo.git/HEAD',"
          f"headers:{{Host:'allowed.test:{p}'}}}},r=>{{let b='';r.on('data',d=>b+=d);"
          f"r.on('end',()=>console.log(r.statusCode,b.trim()))}}).on('error',e=>console.log('ERR',e.code))")
    r = tools.env.exec("node", "-e", js, timeout=60)
    if r.rc == 127 or "not found" in r.errtext:
        pytest.skip("no node in the sandbox")
    assert r.rc == 0 and r.text.strip() == "200 ref: refs/heads/main", r


def node_fetch(url):
    return (f"fetch('{url}').then(r=>r.text()).then(t=>console.log('OK',t.trim()))"
            f".catch(e=>console.log('ERR',(e.cause&&e.cause.message)||e.message))")


def test_node_fetch_unmodified(lab, tools):
    """Node's built-in fetch ignores HTTP(S)_PROXY before Node 24; every exec in a networked
    environment loads /etc/paddock/node-proxy.cjs (NODE_OPTIONS), which sends it through the
    proxy: CONNECT, then TLS end to end for https. A denial reaches the caller with the proxy's
    reason."""
    p, t = tools.static.port, tools.tls.port
    r = tools.env.exec("node", "-e", node_fetch(f"http://allowed.test:{p}/repo.git/HEAD"),
                       timeout=60)
    if r.rc == 127:
        pytest.skip("no node in the sandbox")
    assert r.text.strip() == "OK ref: refs/heads/main", r
    n = tools.tls.count()
    before = len(lab.records(tools.env.id))
    r = tools.env.sh("NODE_EXTRA_CA_CERTS=/workspace/ca.pem node -e \""
                     + node_fetch(f"https://allowed.test:{t}/node") + "\"", timeout=60)
    assert r.rc == 0 and r.text.startswith("OK "), r
    assert json.loads(r.text[3:])["line"] == "GET /node HTTP/1.1", r
    assert tools.tls.count() == n + 1
    rec = lab.wait_records(tools.env.id, before + 1)[before]
    assert (rec["method"], rec["host"], rec["port"], rec["decision"]) == \
        ("CONNECT", "allowed.test", t, "allow"), rec
    r = tools.env.exec("node", "-e", node_fetch("https://denied.test/"), timeout=60)
    assert r.text.startswith("ERR egress proxy refused denied.test:443: HTTP/1.1 403"), r
    assert "denied.test" in r.text and "allowlist" in r.text.lower(), r
    # An environment's own NODE_OPTIONS stay in force, after ours; without a network, none.
    e = lab.env(allowlist=[f"allowed.test:{p}"],
                body={"env": {"NODE_OPTIONS": "--max-old-space-size=77"}})
    try:
        r = e.exec("node", "-e", "console.log(process.env.NODE_OPTIONS)")
        assert r.text.strip() == "--require /etc/paddock/node-proxy.cjs --max-old-space-size=77", r
        r = e.exec("node", "-e", node_fetch(f"http://allowed.test:{p}/repo.git/HEAD"))
        assert r.text.strip() == "OK ref: refs/heads/main", r
    finally:
        e.rm()
    off = lab.env(network="disabled")
    try:
        r = off.exec("node", "-e", "console.log(String(process.env.NODE_OPTIONS))")
        assert r.text.strip() == "undefined", r
    finally:
        off.rm()
