"""How a sandbox's init serves requests (docs/internals/SANDBOX.md, "init and its handlers"):
a handler that has served a request serves the next one instead of init forking a new process
each time, yet no request sees anything a previous one left behind in it."""

import concurrent.futures
import json
import os
import re
import socket
import struct
import subprocess
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


# ------------------------------------------------ handlers stopped from inside the sandbox
#
# Processes of the sandbox run as the handlers' uid and may stop them (only pid 1 is out of
# their reach). Nothing below may make a caller wait for ever: a stopped idle handler is
# replaced by init, and a stopped busy one costs its caller the control socket's timeout
# (PROTO_TIMEOUT_MS in src/sandbox/sandbox_int.h).
CTL_TIMEOUT_S = 10


def host_procs(env):
    """(pid, comm, state) of every live process of the sandbox, read from the host: nothing
    here goes through the sandbox's control socket."""
    out = []
    for pid in pdk.procs_in_cgroup_of(env.id):
        stat = pdk.read_text(f"/proc/{pid}/stat")
        if stat:
            out.append((pid, stat[stat.index("(") + 1:stat.rindex(")")],
                        stat[stat.rindex(")") + 2:][:1]))
    return out


def left_to_init(env, script):
    """Runs script in a process of the sandbox that outlives this exec (its handler exits and
    leaves it to init), a moment later, so that the handler of this exec is gone by then."""
    r = env.sh(f"setsid sh -c '{script}' </dev/null >/dev/null 2>&1 &")
    assert r.rc == 0, r


def test_stopped_idle_handlers_are_replaced(env):
    """`kill -STOP -1` from a process of the sandbox stops every idle handler: init replaces
    them rather than counting them as waiting, so requests are still served, at once. (Init
    used to wait for one of them to come back, and the request waited in the listen queue for
    ever.) The process keeps running, as a busy sandbox's would."""
    left_to_init(env, "sleep 0.3; kill -STOP -1; exec tail -f /dev/null")
    assert pdk.wait_until(lambda: any(c == "tail" for _, c, _ in host_procs(env)), 10), \
        host_procs(env)
    t0 = time.monotonic()
    r = env.files("/workspace", timeout=3 * CTL_TIMEOUT_S)
    assert r.rc == 0, r
    assert env.read("/etc/hostname", timeout=3 * CTL_TIMEOUT_S).rc == 0
    assert env.exec("echo", "alive", timeout=3 * CTL_TIMEOUT_S).text == "alive\n"
    took = time.monotonic() - t0
    assert took < 5 * pdk.SLOWDOWN, f"three requests took {took:.1f}s"

    def stopped_handlers():
        return [p for p in host_procs(env) if p[1] in HANDLER_NAMES and p[2] == "T"]
    assert pdk.wait_until(lambda: not stopped_handlers(), 5), stopped_handlers()


def test_exec_whose_handler_is_stopped_fails_after_its_timeout(env):
    """A command that stops its own handler, which would have sent its result: the caller
    gives up the control socket's timeout after the command's own, and says why."""
    t0 = time.monotonic()
    r = env.sh("kill -STOP $PPID", opts=["--timeout", "1"], timeout=4 * CTL_TIMEOUT_S)
    took = time.monotonic() - t0
    assert r.rc not in (0, 124), r
    pdk.one_line_error(r, "no result")
    assert 1 + CTL_TIMEOUT_S - 1 <= took < 1 + CTL_TIMEOUT_S + 5 * pdk.SLOWDOWN, took
    assert env.exec("echo", "alive").text == "alive\n"


def test_read_whose_handler_is_stopped_fails_within_the_timeout(env):
    """A download whose handler a process of the sandbox stops midway fails once nothing came
    for the control socket's timeout, naming the operation: bytes that flow keep it going
    (8 GiB take longer than the timeout), a stall ends it."""
    env.sh_ok("truncate -s 8G /workspace/big")
    left_to_init(env, "sleep 0.3; while :; do for p in /proc/[0-9]*; do "
                      "read c < $p/comm && [ \"$c\" = paddock-handler ] && kill -STOP ${p#/proc/}; "
                      "done 2>/dev/null; sleep 0.01; done")
    assert pdk.wait_until(lambda: any(c == "sleep" for _, c, _ in host_procs(env)), 10)
    t0 = time.monotonic()
    try:
        p = subprocess.run(env.pd.argv("env", "read", env.id, "/workspace/big"),
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, env=env.pd.env,
                           timeout=4 * CTL_TIMEOUT_S * pdk.SLOWDOWN)
    except subprocess.TimeoutExpired:
        raise AssertionError("the read of a stopped handler's file never ended") from None
    took = time.monotonic() - t0
    err = p.stderr.decode(errors="replace")
    assert p.returncode != 0, err
    assert "read /workspace/big" in err and f"did not answer within {CTL_TIMEOUT_S} s" in err, err
    assert took < CTL_TIMEOUT_S + 5 * pdk.SLOWDOWN, took
