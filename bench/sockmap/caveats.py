#!/usr/bin/python3
"""Functional checks of the sockmap relay: early bytes, server-first data queued before
insertion, half-close both ways, resets, idle timeout, a reader that stops reading."""
import socket, threading, subprocess, time, sys, os, struct

D = os.path.dirname(os.path.abspath(__file__))
MODE = sys.argv[1] if len(sys.argv) > 1 else "sk"
UP = 9100
results = []

def log(*a):
    print(*a, flush=True)

def relay(port, *extra):
    p = subprocess.Popen([f"{D}/relay", MODE, "127.0.0.1", str(port), "127.0.0.2", str(UP)] + list(extra),
                         stderr=open(f"{D}/cav_relay_{port}.log", "w"))
    time.sleep(0.3)
    return p

def relay_log(port):
    time.sleep(0.2)
    return open(f"{D}/cav_relay_{port}.log").read().strip().splitlines()

class Upstream:
    """one-shot upstream server running behaviour(conn) in a thread"""
    def __init__(self, behaviour):
        self.ls = socket.socket(); self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.2", UP)); self.ls.listen(4)
        self.out = {}
        self.t = threading.Thread(target=self.run, args=(behaviour,), daemon=True); self.t.start()
    def run(self, behaviour):
        c, _ = self.ls.accept()
        try:
            behaviour(c, self.out)
        except Exception as e:
            self.out["exc"] = repr(e)
        self.ls.close()

def connect(port, early=b""):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"CONNECT 127.0.0.2:443 HTTP/1.1\r\nHost: x\r\n\r\n" + early)
    h = b""
    while not h.endswith(b"\r\n\r\n"):
        h += s.recv(1)
    assert h.startswith(b"HTTP/1.1 200"), h
    return s

def recv_all(s, timeout=5):
    s.settimeout(timeout); d = b""
    try:
        while True:
            x = s.recv(65536)
            if not x: return d, "eof"
            d += x
    except socket.timeout:
        return d, "timeout"
    except ConnectionResetError:
        return d, "reset"

def check(name, ok, detail=""):
    results.append((name, ok)); log(("PASS " if ok else "FAIL ") + name + (": " + detail if detail else ""))

# 1. early bytes travel first, echo comes back in order, FIN from the client is passed on
def t_early():
    def echo(c, out):
        d, why = recv_all(c); out["got"] = d; out["why"] = why
        c.sendall(d[::-1]); c.shutdown(socket.SHUT_WR); recv_all(c, 2); c.close()
    port = 7201; r = relay(port); u = Upstream(echo)
    s = connect(port, early=b"EARLY|")
    s.sendall(b"A" * 100000 + b"|END"); s.shutdown(socket.SHUT_WR)
    d, why = recv_all(s); s.close(); u.t.join(5); r.kill()
    exp = b"EARLY|" + b"A" * 100000 + b"|END"
    check("early bytes + client half-close", u.out.get("got") == exp and d == exp[::-1] and why == "eof",
          f"upstream got {len(u.out.get('got', b''))} ({u.out.get('why')}), client got {len(d)} ({why}); relay: {relay_log(port)[-1]}")

# 2. server speaks first while the relay has not inserted yet (data waits in the receive queue)
def t_banner(kick):
    def banner(c, out):
        c.sendall(b"BANNER\r\n"); d, why = recv_all(c, 4); out["got"] = d; c.close()
    port = 7202 if kick else 7203
    r = relay(port, "--delay", "300", *([] if kick else ["--no-kick"])); u = Upstream(banner)
    s = connect(port); s.settimeout(2)
    try: d = s.recv(100)
    except socket.timeout: d = b"(nothing within 2 s)"
    s.sendall(b"hello"); 
    try: d2 = s.recv(100)
    except Exception as e: d2 = repr(e)
    s.close(); u.t.join(6); r.kill()
    check(f"server-first bytes queued before insertion, {'with' if kick else 'without'} SO_RCVLOWAT kick",
          d == b"BANNER\r\n", f"client first read {d!r}; after client sends: {d2!r}")

# 3. upstream half-closes first, client keeps sending afterwards
def t_upstream_halfclose():
    def srv(c, out):
        c.sendall(b"R" * 300000); c.shutdown(socket.SHUT_WR)
        d, why = recv_all(c); out["got"] = d; out["why"] = why; c.close()
    port = 7204; r = relay(port); u = Upstream(srv)
    s = connect(port)
    d, why = recv_all(s)
    s.sendall(b"after-eof" * 1000); s.shutdown(socket.SHUT_WR); s.close()
    u.t.join(5); r.kill()
    check("upstream half-close then client data", len(d) == 300000 and why == "eof" and u.out.get("got") == b"after-eof" * 1000,
          f"client got {len(d)} {why}; upstream got {len(u.out.get('got', b''))} {u.out.get('why')}; relay: {relay_log(port)[-1]}")

# 4. upstream resets mid-stream
def t_upstream_reset():
    def srv(c, out):
        c.sendall(b"x" * 100000); time.sleep(0.3)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); c.close()
    port = 7205; r = relay(port); u = Upstream(srv)
    s = connect(port); t0 = time.time()
    d, why = recv_all(s); s.close(); u.t.join(5); r.kill()
    check("upstream RST reaches the client", why in ("reset", "eof"), f"client got {len(d)} then {why} after {time.time()-t0:.2f}s; relay: {relay_log(port)[-3:]}")

# 5. client resets mid-stream
def t_client_reset():
    def srv(c, out):
        d, why = recv_all(c, 5); out["got"] = d; out["why"] = why
    port = 7206; r = relay(port); u = Upstream(srv)
    s = connect(port); s.sendall(b"y" * 50000); time.sleep(0.3)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); s.close()
    u.t.join(7); r.kill()
    check("client RST reaches the upstream", u.out.get("why") in ("reset", "eof") and len(u.out.get("got", b"")) == 50000,
          f"upstream got {len(u.out.get('got', b''))} then {u.out.get('why')}; relay: {relay_log(port)[-3:]}")

# 6. idle timeout
def t_idle():
    def srv(c, out):
        d, why = recv_all(c, 10); out["why"] = why
    port = 7207; r = relay(port, "--idle", "2"); u = Upstream(srv)
    s = connect(port); t0 = time.time(); d, why = recv_all(s, 10); dt = time.time() - t0
    u.t.join(10); r.kill()
    check("idle timeout from tcpi_last_data_recv", why in ("reset", "eof") and 1.5 < dt < 5, f"closed after {dt:.1f}s ({why}), upstream saw {u.out.get('why')}")

# 7. byte counts: relay's tcp_info accounting vs truth
def t_counts():
    def srv(c, out):
        d, why = recv_all(c); out["got"] = len(d); c.sendall(b"z" * 1234567); c.close()
    port = 7208; r = relay(port); u = Upstream(srv)
    s = connect(port, early=b"e" * 10); s.sendall(b"q" * 76543); s.shutdown(socket.SHUT_WR)
    d, why = recv_all(s); s.close(); u.t.join(5); r.kill()
    line = [l for l in relay_log(port) if l.startswith("conn done")][-1]
    check("audit byte counts from tcp_info", "up 76553 down 1234567" in line, f"truth up {10+76543} down {len(d)}; relay says: {line}")

tests = [t_early, lambda: t_banner(True), lambda: t_banner(False), t_upstream_halfclose, t_upstream_reset, t_client_reset, t_idle, t_counts]
for t in tests:
    try:
        t()
    except Exception as e:
        check(getattr(t, "__name__", "test"), False, repr(e))
    time.sleep(0.2)
print(f"{sum(ok for _, ok in results)} passed, {sum(not ok for _, ok in results)} failed")
