"""How a sandbox's init serves requests (docs/internals/SANDBOX.md, "init and its handlers"):
a handler that has served a request serves the next one instead of init forking a new process
each time, yet no request sees anything a previous one left behind in it."""

import concurrent.futures
import json
import os
import re
import socket
import struct
import time

import pdk

HANDLER_NAMES = {"paddock-spare", "paddock-handler"}


def handler_of(env):
    """The pid of the handler that ran this exec (the command's parent)."""
    r = env.sh("echo $PPID")
    assert r.rc == 0, r
    return int(r.text)


def handlers_inside(env):
    """Handlers as seen from inside (idle ones and the one serving this probe)."""
    return [p for p in env.probe("procs")["procs"] if p["comm"] in HANDLER_NAMES]


def test_back_to_back_requests_reuse_handlers(env):
    """Execs and file operations one after another are served by at most two processes (the
    one that came back and the one init may have forked meanwhile), not one each."""
    seen = set()
    for i in range(12):
        seen.add(handler_of(env))
        assert env.write(f"f{i}", b"x").rc == 0
        assert env.read(f"f{i}").out == b"x"
        assert env.files().rc == 0
    assert len(seen) <= 2, f"12 execs ran under {len(seen)} handlers: {sorted(seen)}"


def test_reused_handler_leaves_no_trace_in_the_next_command(env):
    """Signal mask and dispositions, descriptors and working directory are a fresh command's,
    however many requests its handler served before (with stdin, output, other directories,
    a timeout)."""
    assert env.exec("cat", opts=["--cwd", "/tmp"], input=b"in").out == b"in"
    assert env.sh("echo out; echo err >&2; exit 3").rc == 3
    assert env.exec("sleep", "5", opts=["--timeout", "1"]).rc == 124
    for _ in range(3):
        status = env.exec("cat", "/proc/self/status").text
        fields = dict(re.findall(r"^(Sig\w+):\s+(\S+)$", status, re.M))
        assert int(fields["SigBlk"], 16) == 0, status
        assert int(fields["SigIgn"], 16) == 0, status
        assert env.exec("pwd").text == "/workspace\n"
        fds = env.probe("fds")["fds"]
        assert sorted(f["fd"] for f in fds) == [0, 1, 2], fds


def test_handler_with_a_process_left_behind_is_not_reused(env):
    """A background process the command left keeps its handler from serving again: the
    handler exits, the process is reparented to init, and a later command's timeout (which
    kills that command's whole tree) does not reach it."""
    r = env.sh("setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $! $PPID")
    assert r.rc == 0, r
    daemon, handler = map(int, r.text.split())

    def status_of(pid):
        r = env.exec("cat", f"/proc/{pid}/status")
        return r.text if r.rc == 0 else ""

    assert pdk.wait_until(lambda: "PPid:\t1\n" in status_of(daemon), 5), status_of(daemon)
    assert pdk.wait_until(lambda: status_of(handler) == "", 5), status_of(handler)
    assert handler_of(env) != handler
    assert env.exec("sleep", "5", opts=["--timeout", "1"]).rc == 124
    assert "PPid:\t1\n" in status_of(daemon), "the background process did not survive"


def test_idle_handlers_are_capped_after_a_burst(env):
    """Concurrent requests each get a handler; once they are done, no more than two wait."""
    with concurrent.futures.ThreadPoolExecutor(6) as ex:
        results = list(ex.map(lambda _: env.exec("sleep", "0.5"), range(6)))
    assert all(r.rc == 0 for r in results), results
    assert pdk.wait_until(lambda: len(handlers_inside(env)) <= 2, 10), handlers_inside(env)
    assert env.exec("echo", "alive").text == "alive\n"


def test_killed_idle_handlers_are_replaced(env):
    """Idle handlers killed from inside (they run as the sandbox's root) are replaced."""
    r = env.sh("for p in /proc/[0-9]*; do "
               "  [ \"$(cat $p/comm 2>/dev/null)\" = paddock-spare ] && kill -9 ${p#/proc/}; "
               "done; true")
    assert r.rc == 0, r
    for _ in range(3):
        assert env.exec("echo", "alive").text == "alive\n"


def test_request_while_every_handler_is_busy(env):
    """With every handler busy in a long command, a new request still gets a handler of its
    own at once (init forks one after a short wait for a busy one to come back)."""
    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        long = [ex.submit(env.exec, "sleep", "4") for _ in range(2)]
        assert pdk.wait_until(lambda: len(handlers_inside(env)) >= 3, 10)
        t0 = time.monotonic()
        r = env.exec("echo", "alive")
        took = time.monotonic() - t0
        assert r.text == "alive\n", r
        assert took < 2 * pdk.SLOWDOWN, f"an exec beside two busy ones took {took:.1f}s"
        assert all(f.result().rc == 0 for f in long)


def test_command_is_not_pinned_to_a_cpu(env):
    """The handler pins itself around the vfork; the command gets every CPU it had."""
    want = sorted(os.sched_getaffinity(0))
    for _ in range(3):
        r = env.exec("cat", "/proc/self/status")
        listed = re.search(r"^Cpus_allowed_list:\s+(\S+)$", r.text, re.M).group(1)
        cpus = set()
        for part in listed.split(","):
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
        assert sorted(cpus) == want, f"the command may run on {listed} only"


# The control protocol (src/sandbox/sandbox_int.h): u32 type, u32 length, payload.
PROTO_REQ, PROTO_STDIN, PROTO_STDOUT, PROTO_RESULT = 1, 2, 4, 9


def raw_exec(env, argv):
    """Sends an exec request on the environment's control socket as sandbox_exec() does, with
    stdin left open, and reads its output and result; returns them with the socket, open."""
    d = os.open(env.pd.data / "envs" / env.id, os.O_PATH | os.O_DIRECTORY)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(f"/proc/self/fd/{d}/ctl.sock")
    finally:
        os.close(d)
    req = json.dumps({"op": "exec", "argv": argv, "env": [], "stdin": True,
                      "timeout_ms": 10000, "max_output": 0}).encode()
    s.sendall(struct.pack("=II", PROTO_REQ, len(req)) + req)
    out = b""
    while True:
        hdr = s.recv(8, socket.MSG_WAITALL)
        kind, n = struct.unpack("=II", hdr)
        data = s.recv(n, socket.MSG_WAITALL) if n else b""
        if kind == PROTO_STDOUT:
            out += data
        if kind == PROTO_RESULT:
            return out, json.loads(data), s


def test_handler_is_free_once_the_result_is_out(env):
    """A caller that keeps its connection open after the result (and never closes the
    command's stdin) holds no handler: the one that served it waits for the next request, and
    what the caller sends after the result is refused rather than read forever."""
    out, result, s = raw_exec(env, ["sh", "-c", "echo $PPID"])
    try:
        assert result["ok"] and result["exited"] and result["code"] == 0, result
        handler = int(out)

        def free():
            """Waiting for a request, or serving this very one."""
            r = env.sh(f"echo $PPID; cat /proc/{handler}/comm")
            ppid, comm = r.text.split()
            return int(ppid) == handler or comm == "paddock-spare"

        assert pdk.wait_until(free, 5), "the handler is busy while the caller holds its connection"
        s.settimeout(10)
        try:
            for _ in range(64):
                s.sendall(struct.pack("=II", PROTO_STDIN, 4096) + b"x" * 4096)
            refused = False
        except (BrokenPipeError, ConnectionResetError):
            refused = True
        assert refused, "stdin sent after the result was still read"
    finally:
        s.close()
