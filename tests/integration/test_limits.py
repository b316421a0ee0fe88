"""Limits: pids, memory and disk caps hold inside the sandbox only; a timeout kills a whole tree."""

import concurrent.futures
import os
import time

import pytest

import pdk
from pdk import MiB


def wait_exec_ok(env, timeout=20):
    """Polls until a trivial exec works again (a bomb's processes may take a moment to go)."""
    last = None
    end = time.monotonic() + timeout * pdk.SLOWDOWN
    while time.monotonic() < end:
        last = env.exec("echo", "alive")
        if last.rc == 0 and last.text == "alive\n":
            return last
        time.sleep(0.3)
    raise AssertionError(f"environment did not recover: {last}")


# ------------------------------------------------------------------ pids

def test_fork_stops_at_pids_cap(pd):
    env = pd.create("--pids", "64")
    assert pdk.cgroup_value(env.init_pid, "pids", "pids.max", "pids.max") == "64"
    r = env.probe("forkbomb", "10000")
    assert r["errno"] == "EAGAIN", r
    assert 0 < r["forked"] < 64, r
    wait_exec_ok(env)
    # Again, to show the cap was not consumed by leftovers.
    r2 = env.probe("forkbomb", "10000")
    assert abs(r2["forked"] - r["forked"]) <= 3, (r, r2)


def test_shell_fork_bomb_is_contained(pd):
    other = pd.create()
    env = pd.create("--pids", "128")
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        # `exec sleep` needs no fork, so the exec lasts until the timeout kills the whole tree.
        # The bomb starts in the one background job the shell forks (`f &`): run in the shell
        # itself, `f | f &` forks twice there, and under load the second fork could find the
        # pids already taken by the first, so the shell itself died with "Cannot fork".
        fut = ex.submit(env.sh, "f() { f | f & }; f & exec sleep 100", opts=["--timeout", "4"],
                        timeout=120)
        time.sleep(1.5)
        # Meanwhile the host and the other environment are fine.
        r = other.exec("echo", "unaffected", timeout=30)
        assert r.rc == 0 and r.text == "unaffected\n", r
        bomb = fut.result()
    assert bomb.rc == 124, bomb
    wait_exec_ok(env, timeout=30)
    # The pids of the bomb are gone: only a handful of processes remain.
    procs = env.probe("procs")["procs"]
    assert len(procs) < 10, procs


# ------------------------------------------------------------------ memory

def test_memory_bomb_is_oom_killed_inside_only(pd):
    other = pd.create()
    env = pd.create("--memory", "64M")
    mem = pdk.cgroup_value(env.init_pid, "memory", "memory.limit_in_bytes", "memory.max")
    assert mem is not None and int(mem) == 64 * MiB, mem
    init_before = env.init_pid
    env.push_probe()
    r = env.exec("/workspace/probe", "membomb", "2048", timeout=120)
    assert r.rc == 137, f"memory bomb was not SIGKILLed (exit 137 expected): {r}"
    # The sandbox survives: same init, still running, usable.
    assert pdk.pid_alive(init_before)
    info = pd.info(env.id)
    assert info["state"] == "running" and info["init_pid"] == init_before, info
    wait_exec_ok(env)
    r = env.sh("head -c 10000000 /dev/zero | wc -c")
    assert r.rc == 0 and r.text.strip() == "10000000", r
    r = other.exec("echo", "fine")
    assert r.rc == 0 and r.text == "fine\n", r


def test_memory_bomb_in_shell_subprocess(pd):
    """A bomb that is a grandchild of the exec is killed just the same; the exec reports it."""
    env = pd.create("--memory", "96M")
    r = env.exec("python3", "-c",
                 "import subprocess,sys\n"
                 "p=subprocess.run([sys.executable,'-c','b=[]\\nwhile True: b.append(bytearray(1<<20))'])\n"
                 "print('child', p.returncode)\n", timeout=120)
    assert r.rc == 0 and r.text == "child -9\n", r
    wait_exec_ok(env)


# ------------------------------------------------------------------ disk

def _disk_free(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_disk_filler_hits_cap(pd):
    env = pd.create("--disk", "64M")
    other = pd.create()
    host_free = _disk_free(str(pd.data))
    r = env.probe("diskfill", "/workspace/fill", "1024", timeout=180)
    assert r["errno"] in ("ENOSPC", "EDQUOT"), r
    assert r["written"] <= 128 * MiB, f"wrote {r['written']} bytes under a 64 MiB cap: {r}"
    assert r["written"] >= 16 * MiB, f"cap hit far too early: {r}"
    # The host's file system has barely moved (the storage image is sparse and bounded).
    assert host_free - _disk_free(str(pd.data)) < 512 * MiB
    # The other environment still writes fine.
    r = other.write("ok.bin", os.urandom(8 * MiB))
    assert r.rc == 0, r
    # The shell sees the usual error message; freeing space makes the env usable again.
    r = env.sh("dd if=/dev/urandom of=/workspace/fill2 bs=1M count=200 2>&1")
    assert r.rc != 0 and ("No space" in r.text or "Disk quota exceeded" in r.text), r
    env.sh_ok("rm -f /workspace/fill /workspace/fill2 && sync")
    r = pdk.wait_until(lambda: env.write("after.txt", b"x" * 100000).rc == 0, 20)
    assert r, "could not write after freeing space"
    assert env.read("after.txt").out == b"x" * 100000


def test_disk_cap_covers_whole_root(pd):
    """Writes outside /workspace (e.g. /root, /usr/local) count against the same cap."""
    env = pd.create("--disk", "64M")
    r1 = env.probe("diskfill", "/root/fill", "60", timeout=120)
    r2 = env.probe("diskfill", "/usr/local/fill", "1024", timeout=120)
    assert r2["errno"] in ("ENOSPC", "EDQUOT"), (r1, r2)
    assert r1["written"] + r2["written"] <= 128 * MiB, (r1, r2)


def test_write_op_hits_disk_cap_cleanly(pd):
    env = pd.create("--disk", "32M")
    r = env.write("big.bin", os.urandom(64 * MiB), timeout=120)
    assert r.rc != 0, "wrote 64 MiB into a 32 MiB environment"
    pdk.one_line_error(r)
    env.sh_ok("rm -f /workspace/big.bin; ls /workspace")
    assert env.write("small.txt", b"fits\n").rc == 0


# ------------------------------------------------------------------ timeout kills the tree

def _alive_inside(env, pids):
    """Which of pids (sandbox pids) are alive and not zombies, seen from a second exec."""
    procs = env.probe("procs")["procs"]
    by_pid = {p["pid"]: p for p in procs}
    return [by_pid[p] for p in pids if p in by_pid and by_pid[p]["state"] not in ("Z", "X")]


def test_timeout_kills_whole_tree_including_daemons(pd):
    env = pd.create()
    env.push_probe()
    script = ("/workspace/probe daemonize /tmp/tree.pids; "
              "(trap '' TERM HUP INT; /workspace/probe sleeper pdk_sub & echo $! >> /tmp/tree.pids; "
              " wait) & "
              "setsid /workspace/probe sleeper pdk_setsid & echo $! >> /tmp/tree.pids; "
              "sleep 100 & echo $! >> /tmp/tree.pids; "
              "echo $$ >> /tmp/tree.pids; sleep 0.3; echo started; wait")
    t0 = time.monotonic()
    r = env.sh(script, opts=["--timeout", "2"], timeout=60)
    elapsed = time.monotonic() - t0
    assert r.rc == 124, r
    assert "timed out" in r.errtext, r
    assert "started" in r.text, r
    assert elapsed < 15 * pdk.SLOWDOWN, f"timeout took {elapsed:.1f}s"
    pids = [int(x) for x in env.read("/tmp/tree.pids").text.split()]
    assert len(pids) >= 4, pids
    if not pdk.wait_until(lambda: not _alive_inside(env, pids), 5):
        pytest.fail(f"processes survived the timeout: {_alive_inside(env, pids)}")
    names = {p["comm"] for p in env.probe("procs")["procs"]}
    assert not names & {"pdk_daemon", "pdk_sub", "pdk_setsid", "sleep"}, names


def test_never_ending_command_with_closed_stdio(pd):
    env = pd.create()
    r = env.sh("exec >/dev/null 2>&1 </dev/null; while :; do :; done", opts=["--timeout", "1"],
               timeout=60)
    assert r.rc == 124, r
    busy = lambda: [p for p in env.probe("procs")["procs"] if p["comm"] == "sh"]  # noqa: E731
    if not pdk.wait_until(lambda: not busy(), 5):
        pytest.fail(f"busy loop still running after the timeout: {busy()}")


def test_exec_while_pids_exhausted(pd):
    """While a bomb holds every pid, a new exec fails cleanly (or waits) instead of hanging, and
    the sandbox's init survives."""
    env = pd.create("--pids", "48")
    env.push_probe()
    init = env.init_pid
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        fut = ex.submit(env.exec, "/workspace/probe", "forkbomb", "10000", "4", timeout=60)
        time.sleep(1.5)
        r = env.exec("echo", "squeezed-in", timeout=30)
        if r.rc != 0:
            assert r.rc == 125, r
            pdk.one_line_error(r)
        else:
            assert r.text == "squeezed-in\n", r
        bomb = fut.result()
    assert bomb.rc == 0, bomb
    assert pdk.pid_alive(init), "the sandbox's init died while pids were exhausted"
    assert pd.info(env.id)["init_pid"] == init
    wait_exec_ok(env)


def test_detached_fork_bomb_recovered_by_stop(pd):
    """A bomb left running after its exec returned is contained, and stop/start recovers."""
    other = pd.create()
    env = pd.create("--pids", "96")
    env.write("keep.txt", b"kept\n")
    r = env.sh("f() { f | f & }; f; exit 0", timeout=60)
    assert r.rc in (0, 2), r
    time.sleep(1)
    r = other.exec("echo", "unaffected", timeout=30)
    assert r.rc == 0 and r.text == "unaffected\n", r
    t0 = time.monotonic()
    env.stop()
    assert time.monotonic() - t0 < 20 * pdk.SLOWDOWN
    assert not pdk.procs_in_cgroup_of(env.id)
    env.start()
    wait_exec_ok(env)
    assert env.read("keep.txt").out == b"kept\n"
