"""A plain CONNECT tunnel as a pipe: every byte arrives, in order, both ways at once; a close
is passed on as a half-close in either direction; a client that stops reading holds the
upstream back instead of making the proxy hold the bytes; and the sandbox's loopback, which
every tunnelled byte crosses, takes the large segments the kernel allows (src/sandbox/spawn.c).
"""

import json
import os
import random
import select
import socket
import struct
import subprocess
import threading
import time

import pytest

import pdk
from egresskit import lab, Acceptor, Upstream, UP_IP  # noqa: F401  (lab is a fixture)

SLOWDOWN = pdk.SLOWDOWN

# A client inside the sandbox: CONNECT through the proxy, then the steps given in argv[1]
# (JSON). It prints one JSON line with what it saw.
TUNNEL_CLIENT = r'''
import hashlib, json, os, random, socket, sys, threading, time
a = json.loads(sys.argv[1])
s = socket.create_connection(("127.0.0.1", 3128), timeout=60)
s.sendall(f"CONNECT {a['host']}:{a['port']} HTTP/1.1\r\nHost: {a['host']}:{a['port']}\r\n\r\n".encode())
head = b""
while b"\r\n\r\n" not in head:
    d = s.recv(1)
    if not d:
        break
    head += d
out = {"status": head.split(b" ")[1].decode() if head.count(b" ") else ""}
if a["mode"] == "both":
    # Send n random bytes while reading the echo at the same time; compare digests.
    data = os.urandom(a["n"])
    def send():
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=send)
    t.start()
    h, got = hashlib.sha256(), 0
    while True:
        d = s.recv(1 << 20)
        if not d:
            break
        h.update(d)
        got += len(d)
    t.join()
    out.update(sent_sha=hashlib.sha256(data).hexdigest(), got_sha=h.hexdigest(), got=got)
elif a["mode"] == "after_eof":
    # Read the upstream's answer up to its half-close, then keep sending.
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    resp = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        resp += d
    out["resp"] = resp.decode("latin-1")
    s.sendall(b"still-talking-after-eof")
    s.close()  # a FIN behind the bytes: the upstream reads them, then EOF
elif a["mode"] == "reset":
    # Say go (the upstream waits for the tunnel), then read until the stream ends: a clean end
    # (EOF) or a reset.
    s.sendall(b"go")
    got, end = 0, "eof"
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            got += len(d)
    except ConnectionResetError:
        end = "reset"
    out.update(got=got, end=end)
elif a["mode"] == "stall":
    # Read some, stop reading until a file appears, then read and check the rest.
    L = a["block_len"]
    blk = random.Random(a["seed"]).randbytes(L)
    blk2 = blk + blk
    off, bad = 0, -1
    def take(limit):
        global off, bad
        while off < limit:
            d = s.recv(min(1 << 20, limit - off))
            if not d:
                return False
            if bad < 0:
                i = 0
                while i < len(d):
                    o = (off + i) % L
                    n = min(len(d) - i, L - o)
                    if d[i:i + n] != blk2[o:o + n]:
                        bad = off + i
                        break
                    i += n
            off += len(d)
        return True
    take(a["first"])
    print(json.dumps({"paused_at": off}), flush=True)
    while not os.path.exists(a["go"]):
        time.sleep(0.05)
    take(a["total"])
    out.update(read=off, bad=bad)
print(json.dumps(out))
'''


def run_client(env, args, timeout=120):
    r = env.exec("python3", "/workspace/tunnel_client.py", json.dumps(args), timeout=timeout)
    assert r.rc == 0, r
    return json.loads(r.text.strip().splitlines()[-1])


@pytest.fixture
def client_env(lab):  # noqa: F811
    def make(port):
        e = lab.env(allowlist=[f"allowed.test:{port}"])
        w = e.write("/workspace/tunnel_client.py", TUNNEL_CLIENT)
        assert w.rc == 0, w
        return e
    return make


def test_tunnel_moves_bytes_both_ways_at_once_intact(lab, client_env):  # noqa: F811
    """16 MiB up and its echo down at the same time: same digest, and the audit record counts
    every byte each way."""
    n = 16 << 20
    e = client_env(lab.echo.port)
    got = run_client(e, {"mode": "both", "host": "allowed.test", "port": lab.echo.port, "n": n})
    assert got["status"] == "200", got
    assert got["got"] == n and got["got_sha"] == got["sent_sha"], got
    (rec,) = lab.wait_records(e.id, 1)
    assert rec["method"] == "CONNECT" and rec["decision"] == "allow", rec
    assert int(rec["bytes_up"]) == n and int(rec["bytes_down"]) == n, rec


def test_client_half_close_reaches_the_upstream(lab, client_env):  # noqa: F811
    """The client shuts its sending side once done; the echo upstream sees that EOF (not its
    own timeout), echoes the rest and closes, and the client gets every byte, then EOF."""
    e = client_env(lab.echo.port)
    n = lab.echo.count()
    got = run_client(e, {"mode": "both", "host": "allowed.test", "port": lab.echo.port,
                         "n": 100000})
    assert got["got"] == 100000 and got["got_sha"] == got["sent_sha"], got
    assert lab.echo.wait_count(n + 1)
    c = lab.echo.snapshot()[n]
    assert c.closed.wait(10 * SLOWDOWN) and c.eof, "the echo upstream never saw the client's EOF"


@pytest.fixture
def lingering_up():
    """An HTTP upstream that keeps reading for a while after it has answered and shut its
    sending side."""
    u = Upstream(linger=10 * SLOWDOWN)
    yield u
    u.close()


def test_upstream_half_close_leaves_the_client_side_open(lab, client_env,  # noqa: F811
                                                         lingering_up):
    """The HTTP upstream answers and shuts its sending side, then keeps reading: the client sees
    the answer end (EOF) and what it sends afterwards still reaches the upstream."""
    up = lingering_up
    e = client_env(up.port)
    got = run_client(e, {"mode": "after_eof", "host": "allowed.test", "port": up.port})
    assert got["status"] == "200" and got["resp"].startswith("HTTP/1.1 200"), got
    assert up.wait_count(1)
    c = up.snapshot()[0]
    assert c.closed.wait(20 * SLOWDOWN)
    assert c.raw.endswith(b"still-talking-after-eof"), c


def test_an_upstream_reset_reaches_the_client_as_a_reset(lab, client_env):  # noqa: F811
    """An upstream that sends part of a response and then resets the connection: the client
    must see a reset, not a clean end that would make the cut-off response look complete."""
    ls = socket.socket()
    ls.bind((UP_IP, 0))
    ls.listen(4)

    def serve(c):
        c.settimeout(30 * SLOWDOWN)
        c.recv(2)  # the client's "go": the tunnel is up
        c.sendall(b"x" * 100000)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()  # RST
    acc = Acceptor(ls, serve)
    try:
        e = client_env(ls.getsockname()[1])
        got = run_client(e, {"mode": "reset", "host": "allowed.test",
                             "port": ls.getsockname()[1]})
        assert got["status"] == "200" and got["end"] == "reset", got
        assert got["got"] <= 100000, got
    finally:
        acc.stop()


class Source:
    """An upstream that streams a repeating block to each connection until it has sent `cap`
    bytes, and notes when, past `after` bytes, a send has made no progress for `stall_s`
    seconds (the tunnel is holding it back): how much it had sent then. (A scheduling gap
    before the client has read `after` bytes is not a stall.)"""

    def __init__(self, block, cap, stall_s=3.0, after=0):
        self.block, self.cap, self.stall_s, self.after = block, cap, stall_s, after
        self.sent, self.stalled_at = 0, None
        self.ended = threading.Event()  # stalled, or sent everything, or failed
        self.sock = socket.socket()
        self.sock.bind((UP_IP, 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.acceptor = Acceptor(self.sock, self._take)

    def _take(self, s):
        threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        data, L = self.block * 4, len(self.block)
        try:
            s.setblocking(False)
            while self.sent < self.cap:
                _, w, _ = select.select([], [s], [], self.stall_s * SLOWDOWN)
                if not w:
                    if self.stalled_at is None and self.sent > self.after:
                        self.stalled_at = self.sent
                        self.ended.set()
                    _, w, _ = select.select([], [s], [], 60 * SLOWDOWN)
                    if not w:
                        return
                o = self.sent % L
                self.sent += s.send(data[o:o + min(3 * L, self.cap - self.sent)])
        except OSError:
            pass
        finally:
            self.ended.set()
            s.close()

    def close(self):
        self.acceptor.stop()


def sysctl_max(name, kernel_default):
    """The largest socket buffer TCP autotuning may reach, here or in the sandbox's network
    namespace (which copies the host's values since Linux 4.15, the kernel's defaults
    before)."""
    with open(f"/proc/sys/net/ipv4/{name}") as f:
        return max(int(f.read().split()[2]), kernel_default)


def cpu_s(pid):
    """CPU seconds (user + system) process pid has used."""
    with open(f"/proc/{pid}/stat") as f:
        v = f.read().rsplit(")", 1)[1].split()
    return (int(v[11]) + int(v[12])) / os.sysconf("SC_CLK_TCK")


def test_a_client_that_stops_reading_holds_the_upstream_back(lab, client_env):  # noqa: F811
    """The client reads 1 MiB and stops. The upstream must stall once the socket buffers on the
    way are full, not run on to its 1 GiB cap with the proxy holding the difference, and the
    proxy must sit idle meanwhile. When the client reads again, every byte arrives, in order."""
    seed, blen = 4242, 1048573  # a prime length: a shifted or dropped byte shows
    block = random.Random(seed).randbytes(blen)
    # What the path may hold: the client's receive buffer and the proxy's send buffer in the
    # sandbox's namespace, the proxy's receive buffer and the upstream's send buffer here.
    rmem, wmem = sysctl_max("tcp_rmem", 6 << 20), sysctl_max("tcp_wmem", 4 << 20)
    bound = 2 * (rmem + wmem) + (2 << 20)
    total = bound + (8 << 20)
    src = Source(block, 1 << 30, after=1 << 20)
    try:
        e = client_env(src.port)
        go, result = "/workspace/go", {}

        def client():
            result["r"] = e.exec("python3", "/workspace/tunnel_client.py", json.dumps(
                {"mode": "stall", "host": "allowed.test", "port": src.port, "seed": seed,
                 "block_len": blen, "first": 1 << 20, "go": go, "total": total}),
                timeout=180 * SLOWDOWN)

        t = threading.Thread(target=client)
        t.start()
        assert src.ended.wait(90 * SLOWDOWN) and src.stalled_at is not None, \
            f"the upstream never stalled: {src.sent} bytes sent to a client that stopped reading"
        assert (1 << 20) < src.stalled_at < bound, (src.stalled_at, bound)
        # Held back, the proxy waits: it does not spin on the stalled tunnel.
        pid = lab.server.proc.pid
        c0 = cpu_s(pid)
        time.sleep(2)
        assert cpu_s(pid) - c0 < 0.5 * SLOWDOWN, "the proxy kept busy while the tunnel stalled"
        w = e.write(go, "go")
        assert w.rc == 0, w
        t.join(180 * SLOWDOWN)
        r = result["r"]
        assert r.rc == 0, r
        got = json.loads(r.text.strip().splitlines()[-1])
        assert got["status"] == "200" and got["read"] == total and got["bad"] == -1, got
    finally:
        src.close()


IFLA_GSO_MAX_SIZE, IFLA_TSO_MAX_SIZE, IFLA_GSO_IPV4_MAX_SIZE = 41, 59, 63

LINK_ATTRS = r'''
import json, socket, struct
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
s.bind((0, 0))
body = struct.pack("BxHiII", 0, 0, 1, 0, 0)  # ifinfomsg for ifindex 1 (lo)
s.send(struct.pack("IHHII", 16 + len(body), 18, 1, 1, 0) + body)  # RTM_GETLINK, NLM_F_REQUEST
r = s.recv(65536)
ln, typ = struct.unpack("IH", r[:6])
out, off = {}, 16 + 16
while off + 4 <= ln:
    alen, atyp = struct.unpack("HH", r[off:off + 4])
    if alen < 4:
        break
    if alen == 8:
        out[atyp] = struct.unpack("I", r[off + 4:off + 8])[0]
    off += (alen + 3) & ~3
print(json.dumps({"type": typ, "attrs": out}))
'''


def link_attrs(run):
    got = json.loads(run(LINK_ATTRS))
    assert got["type"] == 16, got  # RTM_NEWLINK: the link's description
    return {int(k): v for k, v in got["attrs"].items()}


def test_sandbox_loopback_takes_large_segments(lab):  # noqa: F811
    """Inside the sandbox, lo's GSO limits (IPv6 and IPv4) are raised to what the kernel says
    loopback takes (tso_max_size, at most 512 KiB) where the kernel takes large IPv4 segments
    (6.3+), and left at 64 KiB elsewhere; a sandbox process cannot change them."""
    host = link_attrs(lambda code: subprocess.run(["/usr/bin/python3", "-c", code],
                                                  capture_output=True, text=True,
                                                  check=True).stdout)
    tso = host.get(IFLA_TSO_MAX_SIZE, 0)
    e = lab.env()

    def in_sandbox(code):
        r = e.py(code)
        assert r.rc == 0, r
        return r.text
    inside = link_attrs(in_sandbox)
    if IFLA_GSO_IPV4_MAX_SIZE in host and tso > 65536:  # kernels from 6.3
        want = min(tso, 524280)
        assert inside.get(IFLA_GSO_IPV4_MAX_SIZE) == want, inside
    else:  # left alone: nothing to gain for IPv4 tunnels
        want = 65536
    assert inside.get(IFLA_GSO_MAX_SIZE) == want, inside
    # No capability to change it back (or anything else about lo) from inside.
    r = e.py("import socket, struct\n"
             "s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0); s.bind((0, 0))\n"
             "body = struct.pack('BxHiII', 0, 0, 1, 0, 0) + struct.pack('HHI', 8, 41, 65536)\n"
             "s.send(struct.pack('IHHII', 16 + len(body), 16, 5, 1, 0) + body)\n"
             "r = s.recv(4096); print(struct.unpack('i', r[16:20])[0])")
    assert r.rc == 0 and int(r.text.strip()) == -1, r  # -EPERM
    assert link_attrs(in_sandbox).get(IFLA_GSO_MAX_SIZE) == want
