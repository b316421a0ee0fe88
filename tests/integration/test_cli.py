"""The CLI contract: ids, JSON shapes, limits and sizes, exec passthrough, exit codes, bad input."""

import concurrent.futures
import os
import subprocess
import time

import pytest

import pdk
from pdk import GiB, MiB, one_line_error

UNKNOWN_ID = "env_" + "a" * 26


# ------------------------------------------------------------------ create / ls / lifecycle

def test_create_prints_only_the_id(pd):
    r = pd.ok("env", "create")
    env_id = r.text.strip()
    assert pdk.ID_RE.match(env_id), r
    assert r.text == env_id + "\n", r
    pd.ids.add(env_id)
    listed = [e["id"] for e in pd.ls()]
    assert listed == [env_id]


def test_create_json_defaults(pd):
    env = pd.create()
    info = env.info
    assert info["state"] == "running", info
    assert info["network"] == "disabled", info
    lim = info["limits"]
    assert int(lim["memory"]) == 16 * GiB, info
    assert float(lim["cpus"]) == 4, info
    assert int(lim["pids"]) == 4096, info
    assert int(lim["disk"]) == 10 * GiB, info
    assert isinstance(info["init_pid"], int) and info["init_pid"] > 1, info
    assert pdk.pid_alive(info["init_pid"]), "init_pid is not a live host process"
    # ls reports the same object.
    listed = pd.info(env.id)
    assert listed["state"] == "running"
    assert listed["init_pid"] == info["init_pid"]
    assert listed["limits"] == info["limits"]


def test_create_with_limits_and_suffixes(pd):
    env = pd.create("--memory", "256M", "--cpus", "2", "--pids", "100", "--disk", "1G")
    lim = env.info["limits"]
    assert int(lim["memory"]) == 256 * MiB
    assert float(lim["cpus"]) == 2
    assert int(lim["pids"]) == 100
    assert int(lim["disk"]) == GiB
    other = pd.create("--memory", "1048576K", "--disk", "536870912")
    assert int(other.info["limits"]["memory"]) == GiB
    assert int(other.info["limits"]["disk"]) == 512 * MiB
    big = pd.create("--memory", "1T")
    assert int(big.info["limits"]["memory"]) == 1 << 40
    # The limits are what the kernel enforces, as seen from the host.
    mem = pdk.cgroup_value(env.init_pid, "memory", "memory.limit_in_bytes", "memory.max")
    assert mem is not None and int(mem) == 256 * MiB, mem
    pids = pdk.cgroup_value(env.init_pid, "pids", "pids.max", "pids.max")
    assert pids == "100", pids


def test_create_cpus_limit_visible_on_host(pd):
    env = pd.create("--cpus", "1")
    quota = pdk.cgroup_value(env.init_pid, "cpu", "cpu.cfs_quota_us", "cpu.max")
    assert quota is not None, "no cpu cgroup found for the sandbox's init"
    if " " in quota:  # v2: "max_us period_us"
        q, period = quota.split()
    else:
        q = quota
        period = pdk.cgroup_value(env.init_pid, "cpu", "cpu.cfs_period_us", "cpu.max")
    assert int(q) == int(period), (q, period)


@pytest.mark.parametrize("flag,value", [
    ("--memory", "12Q"), ("--memory", "-5"), ("--memory", ""), ("--memory", "1.5.G"),
    ("--memory", "99999999999999999999999G"), ("--disk", "abc"), ("--disk", "10X"),
    ("--pids", "lots"), ("--pids", "-1"), ("--cpus", "four"), ("--cpus", "-2"),
])
def test_create_rejects_malformed_limits(mpd, flag, value):
    before = mpd.ls()
    r = mpd.run("env", "create", flag, value)
    one_line_error(r, flag, flag.lstrip("-"))
    assert mpd.ls() == before, "a failed create must not leave an environment"


@pytest.mark.parametrize("network", ["everywhere", "allowlist"])
def test_create_rejects_bad_network(mpd, network):
    """"allowlist" names the API's mode, whose entries the CLI has no way to give: accepted, it
    stored an environment that said allowlist and got an open proxy."""
    before = mpd.ls()
    r = mpd.run("env", "create", "--network", network)
    one_line_error(r, "network")
    assert mpd.ls() == before


def test_stop_never_kills_a_process_that_is_not_the_sandbox(pd):
    """An environment's row names its init by pid and start time; after a reboot both can match
    a process of the host. `env stop` kills an init only if it is the first process of a pid
    namespace of its own: a host process written into the row (here a sleep of the test's)
    survives the stop, and the environment is stopped all the same."""
    import sqlite3
    env = pd.create("--network", "disabled")
    fake = subprocess.Popen(["sleep", "120"])
    try:
        start = int(open(f"/proc/{fake.pid}/stat").read().rsplit(")", 1)[1].split()[19])
        real = env.info.get("init_pid")
        db = sqlite3.connect(pd.data / "paddock.db", timeout=10)
        with db:
            n = db.execute("UPDATE environments SET init_pid = ?, init_start = ? WHERE id = ?",
                           (fake.pid, start, env.id)).rowcount
        db.close()
        assert n == 1
        r = pd.run("env", "stop", env.id)
        assert fake.poll() is None, "env stop killed a process that is not the sandbox's init"
        assert r.rc == 0, r
        mine = [x for x in pd.run("env", "ls", "--json").json() if x["id"] == env.id]
        assert mine and mine[0]["state"] == "stopped", mine
    finally:
        fake.kill()
        fake.wait()
        if real:
            try:
                os.kill(real, 9)   # the real init, which the row no longer named
            except OSError:
                pass


def test_create_network_open_is_accepted(pd):
    env = pd.create("--network", "open")
    assert env.info["network"] == "open"


def test_ls_plain_and_json_states(pd):
    a = pd.create()
    b = pd.create()
    r = pd.ok("env", "ls")
    assert a.id in r.text and b.id in r.text, r
    b.stop()
    states = {e["id"]: e["state"] for e in pd.ls()}
    assert states == {a.id: "running", b.id: "stopped"}
    b.start()
    assert pd.info(b.id)["state"] == "running"


def test_stop_start_gives_a_new_init(pd):
    env = pd.create()
    old = env.init_pid
    env.stop()
    assert pdk.wait_until(lambda: not pdk.pid_alive(old), 5), "old init still alive after stop"
    env.start()
    assert env.init_pid != old
    assert pdk.pid_alive(env.init_pid)
    r = env.exec("echo", "back")
    assert r.rc == 0 and r.text == "back\n", r


def test_exec_on_stopped_env(pd):
    """Exec on a stopped env either resumes it or fails with paddock's own error; never both."""
    env = pd.create()
    env.write("kept.txt", b"kept\n")
    env.stop()
    r = env.exec("cat", "/workspace/kept.txt")
    if r.rc == 0:
        assert r.text == "kept\n", r
        assert pd.info(env.id)["state"] == "running"
    else:
        assert r.rc == 125 and r.errtext.startswith("paddock: "), r
        assert pd.info(env.id)["state"] == "stopped"


def test_rm_running_and_stopped(pd):
    a = pd.create()
    b = pd.create()
    b.stop()
    a.rm()
    b.rm()
    assert pd.ls() == []
    r = a.exec("true")
    assert r.rc != 0, r


def test_data_dir_from_environment_variable(pd):
    env = dict(pd.env, PADDOCK_DATA_DIR=str(pd.data))
    r = pd.run("env", "create", env=env, data_dir=False)
    assert r.rc == 0, r
    env_id = r.text.strip()
    pd.ids.add(env_id)
    assert [e["id"] for e in pd.ls()] == [env_id]


def test_long_data_dir_path(tmp_path):
    """The data directory may be deep (unix socket paths are limited to 108 bytes)."""
    deep = tmp_path / ("d" * 60) / ("e" * 60) / ("f" * 60) / "data"
    p = pdk.Paddock(deep)
    try:
        env = p.create()
        r = env.exec("echo", "deep")
        assert r.rc == 0 and r.text == "deep\n", r
    finally:
        p.teardown()


def test_concurrent_creates_on_a_fresh_data_dir(pd):
    """The first use creates the storage; racing creators must all succeed."""
    with concurrent.futures.ThreadPoolExecutor(6) as ex:
        results = list(ex.map(lambda _: pd.run("env", "create"), range(6)))
    for r in results:
        assert r.rc == 0, r
    ids = {r.text.strip() for r in results}
    pd.ids.update(ids)
    assert len(ids) == 6
    assert {e["id"] for e in pd.ls()} == ids
    starts = set()
    for env_id in ids:
        r = pd.run("env", "exec", env_id, "--", "cat", "/proc/self/uid_map")
        assert r.rc == 0, r
        starts.add(int(r.text.split()[1]))
    assert len(starts) == 6, f"racing creates share a host uid range: {starts}"


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("cmd", [
    ["env", "exec", UNKNOWN_ID, "--", "true"],
    ["env", "stop", UNKNOWN_ID],
    ["env", "start", UNKNOWN_ID],
    ["env", "rm", UNKNOWN_ID],
    ["env", "read", UNKNOWN_ID, "x"],
    ["env", "files", UNKNOWN_ID],
])
def test_unknown_id(menv, cmd):
    r = menv.pd.run(*cmd)  # the data dir and an env exist; this id does not
    one_line_error(r, UNKNOWN_ID, "not found")


def test_unknown_id_write(menv):
    r = menv.pd.run("env", "write", UNKNOWN_ID, "x", input=b"data")
    one_line_error(r, UNKNOWN_ID, "not found")


@pytest.mark.parametrize("bad", ["../../etc", "env_../../x", "/etc/passwd", "", "env_" + "A" * 200])
def test_malformed_ids_are_rejected(menv, bad):
    for cmd in (["env", "exec", bad, "--", "true"], ["env", "rm", bad], ["env", "read", bad, "x"]):
        r = menv.pd.run(*cmd)
        assert r.rc != 0 and r.rc < 128, r
        assert r.err.strip(), r


def test_exec_unknown_id_is_paddock_failure(menv):
    r = menv.pd.run("env", "exec", UNKNOWN_ID, "--", "true")
    assert r.rc == 125, r
    line = one_line_error(r)
    assert line.startswith("paddock: "), r


@pytest.mark.parametrize("args", [
    [], ["bogus"], ["env"], ["env", "bogus"], ["env", "exec"], ["env", "create", "--bogus"],
    ["--log-level", "loud", "env", "ls"],
])
def test_usage_errors(mpd, args):
    r = mpd.run(*args)
    assert r.rc != 0 and r.rc < 128, r
    assert r.err.strip(), r


def test_exec_without_command(menv):
    r = menv.pd.run("env", "exec", menv.id)
    assert r.rc != 0 and r.rc < 128, r
    assert r.err.strip(), r


def test_log_level_accepted(menv):
    for level in ("error", "warn", "info", "debug"):
        r = menv.pd.run("--log-level", level, "env", "exec", menv.id, "--", "echo", "hi")
        assert r.rc == 0 and r.text == "hi\n", r


def test_help_mentions_network_open(mpd):
    texts = []
    for args in (["--help"], ["env", "create", "--help"], ["help"]):
        r = mpd.run(*args)
        texts.append(r.text + r.errtext)
    joined = "\n".join(texts)
    assert "--network" in joined, joined[:2000]


# ------------------------------------------------------------------ exec passthrough

def test_exec_stdout_stderr_exit(menv):
    r = menv.sh("echo out; echo err >&2; exit 3")
    assert r.rc == 3, r
    assert r.out == b"out\n", r
    assert r.err == b"err\n", r


@pytest.mark.parametrize("code", [0, 1, 2, 42, 126, 255])
def test_exec_exit_codes(menv, code):
    r = menv.sh(f"exit {code}")
    assert r.rc == code, r


@pytest.mark.parametrize("sig", [9, 15, 11, 6])
def test_exec_killed_by_signal(menv, sig):
    r = menv.sh(f"kill -{sig} $$")
    assert r.rc == 128 + sig, r


def test_exec_command_not_found(menv):
    r = menv.exec("/nonexistent/cmd")
    assert r.rc == 127, r
    assert r.err.strip(), r
    r = menv.exec("no-such-command-anywhere")
    assert r.rc == 127, r
    r = menv.sh("no-such-command-anywhere")
    assert r.rc == 127, r


def test_exec_argv_is_not_shell_interpreted(menv):
    args = ["a b", "", "'\"", "$HOME", "*", "x\ny", "ünï©ødé", "--", "-c"]
    r = menv.exec("printf", "[%s]\\n", *args)
    assert r.rc == 0, r
    assert r.text == "".join(f"[{a}]\n" for a in args), r


def test_exec_stdin_binary_roundtrip(menv):
    data = os.urandom(3 * MiB) + b"\0\0\n\0"
    r = menv.exec("cat", input=data)
    assert r.rc == 0, r
    assert r.out == data


def test_exec_large_stdin_counted(menv):
    r = menv.exec("wc", "-c", input=b"x" * (20 * MiB))
    assert r.rc == 0 and r.text.strip() == str(20 * MiB), r


def test_exec_empty_stdin_by_default(menv):
    r = menv.exec("cat")
    assert r.rc == 0 and r.out == b"", r


def test_exec_default_environment(menv):
    r = menv.sh('echo "$HOME"; echo "$PATH"; pwd; id -u')
    assert r.rc == 0, r
    home, path, cwd, uid = r.text.splitlines()
    assert home == "/root"
    assert "/usr/bin" in path.split(":")
    assert cwd == "/workspace"
    assert uid == "0"


def test_exec_host_environment_does_not_leak(menv):
    env = dict(menv.pd.env, PADDOCK_ITEST_SECRET="hunter2-do-not-leak")
    r = menv.pd.run("env", "exec", menv.id, "--", "env", env=env)
    assert r.rc == 0, r
    assert "hunter2-do-not-leak" not in r.text, r
    assert "PADDOCK_ITEST_SECRET" not in r.text, r


def test_exec_env_vars(menv):
    r = menv.exec("/workspace/probe", "env",
                  opts=["-e", "FOO=bar", "-e", "EMPTY=", "-e", "X=a=b c", "-e", "HOME=/tmp"])
    assert r.rc == 0, r
    env = r.json() if r.out.startswith(b"{") else None
    assert env, r
    e = env["env"]
    assert e["FOO"] == "bar"
    assert e["EMPTY"] == ""
    assert e["X"] == "a=b c"
    assert e["HOME"] == "/tmp"


def test_exec_cwd(menv):
    r = menv.exec("pwd", opts=["--cwd", "/tmp"])
    assert r.rc == 0 and r.text == "/tmp\n", r
    menv.sh_ok("mkdir -p /workspace/sub/dir")
    r = menv.exec("pwd", opts=["--cwd", "/workspace/sub/dir"])
    assert r.rc == 0 and r.text == "/workspace/sub/dir\n", r


def test_exec_cwd_missing(menv):
    r = menv.exec("pwd", opts=["--cwd", "/does/not/exist"])
    assert r.rc != 0, r
    assert r.err.strip(), r


def test_exec_timeout(menv):
    t0 = time.monotonic()
    r = menv.exec("sleep", "60", opts=["--timeout", "1"])
    assert r.rc == 124, r
    assert "timed out" in r.errtext, r
    assert time.monotonic() - t0 < 15 * pdk.SLOWDOWN, r


def test_exec_timeout_not_hit(menv):
    r = menv.sh("sleep 0.2; echo done", opts=["--timeout", "30"])
    assert r.rc == 0 and r.text == "done\n", r


def test_exec_timeout_with_background_holding_stdout(menv):
    """A background child that keeps stdout open must not keep exec alive past the timeout."""
    t0 = time.monotonic()
    r = menv.sh("sleep 100 & exec sleep 100", opts=["--timeout", "1"])
    assert r.rc == 124, r
    assert time.monotonic() - t0 < 15 * pdk.SLOWDOWN, r


def test_exec_max_output(menv):
    r = menv.sh("head -c 5000 /dev/zero; exit 7", opts=["--max-output", "1000"])
    assert r.rc == 7, r
    assert r.out == b"\0" * 1000, f"got {len(r.out)} bytes"
    assert "truncated" in r.errtext, r


def test_exec_max_output_stderr(menv):
    r = menv.sh("head -c 5000 /dev/zero >&2; echo ok", opts=["--max-output", "1K"])
    assert r.rc == 0 and r.out == b"ok\n", r
    assert "truncated" in r.errtext, r
    assert r.err.count(b"\0") == 1024, r


def test_exec_output_under_cap_has_no_note(menv):
    r = menv.sh("head -c 1000 /dev/zero", opts=["--max-output", "1000"])
    assert r.rc == 0 and len(r.out) == 1000, r
    assert "truncated" not in r.errtext, r


def test_exec_one_gib_of_output_is_capped_with_bounded_memory(menv):
    argv = menv.pd.argv("env", "exec", menv.id, "--max-output", "1M", "-c",
                        "head -c 1073741824 /dev/zero; head -c 1073741824 /dev/zero >&2; exit 5")
    t0 = time.monotonic()
    rc, out, err, hwm_kb = pdk.run_with_rusage(argv, menv.pd.env, timeout=240)
    elapsed = time.monotonic() - t0
    assert rc == 5, (rc, bytes(err.head[:500]))
    assert out.size == MiB, out.size
    assert b"truncated" in bytes(err.head), bytes(err.head[-500:])
    limit_kb = (400 if pdk.SANITIZED else 64) * 1024
    assert 0 < hwm_kb < limit_kb, f"paddock CLI peak RSS {hwm_kb} KiB for 2 GiB of output"
    # The environment is still usable.
    r = menv.exec("echo", "alive")
    assert r.rc == 0 and r.text == "alive\n", r
    print(f"2 GiB output capped in {elapsed:.1f}s, CLI peak RSS {hwm_kb} KiB")


def test_concurrent_execs_in_one_env(menv):
    n = 8

    def one(i):
        return menv.sh(f"sleep 1; head -c 300000 /dev/zero | tr '\\0' '{chr(97 + i)}'; exit {i}")

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        results = list(ex.map(one, range(n)))
    elapsed = time.monotonic() - t0
    for i, r in enumerate(results):
        assert r.rc == i, r
        assert r.out == chr(97 + i).encode() * 300000, f"exec {i}: output mixed or short"
    assert elapsed < 6 * pdk.SLOWDOWN, f"{n} parallel 1 s execs took {elapsed:.1f}s: not parallel"


def test_exec_stdin_and_output_interleave(menv):
    """A filter that writes while it still reads must not deadlock (pipes both ways)."""
    data = os.urandom(8 * MiB)
    r = menv.exec("cat", input=data, timeout=60)
    assert r.rc == 0 and r.out == data


# ------------------------------------------------------------------ files

def test_write_read_roundtrip_binary(menv):
    data = os.urandom(2 * MiB) + b"\0end"
    r = menv.write("blob.bin", data)
    assert r.rc == 0, r
    r = menv.read("blob.bin")
    assert r.rc == 0 and r.out == data
    r = menv.read("/workspace/blob.bin")
    assert r.rc == 0 and r.out == data
    r = menv.exec("sha256sum", "/workspace/blob.bin")
    assert r.text.split()[0] == pdk.sha256(data), r


def test_write_creates_parents_and_mode(menv):
    script = b"#!/bin/sh\necho tool-ran\n"
    r = menv.write("deep/er/still/tool.sh", script, mode="0755")
    assert r.rc == 0, r
    r = menv.exec("/workspace/deep/er/still/tool.sh")
    assert r.rc == 0 and r.text == "tool-ran\n", r
    r = menv.files("deep/er/still")
    assert r.rc == 0, r
    entries = {os.path.basename(e["path"]): e for e in r.json()}
    assert entries["tool.sh"]["mode"] == "0755", entries
    assert entries["tool.sh"]["type"] == "file"
    assert entries["tool.sh"]["size"] == len(script)


def test_write_default_mode_and_replace(menv):
    assert menv.write("replace.txt", b"first version, long\n").rc == 0
    assert menv.write("replace.txt", b"second\n").rc == 0
    assert menv.read("replace.txt").out == b"second\n"
    r = menv.exec("stat", "-c", "%a", "/workspace/replace.txt")
    assert r.text.strip() == "644", r


def test_write_empty_file(menv):
    assert menv.write("empty.txt", b"").rc == 0
    r = menv.read("empty.txt")
    assert r.rc == 0 and r.out == b"", r


def test_write_outside_workspace_absolute(menv):
    assert menv.write("/tmp/abs/file.txt", b"abs\n").rc == 0
    r = menv.exec("cat", "/tmp/abs/file.txt")
    assert r.text == "abs\n", r


def test_read_missing_and_directory(menv):
    one_line_error(menv.read("no/such/file"))
    menv.sh_ok("mkdir -p /workspace/adir")
    r = menv.read("adir")
    assert r.rc != 0, r
    assert r.err.strip()


@pytest.mark.parametrize("path", ["../etc/passwd", "/workspace/../etc/passwd", "a/../b",
                                  "..", "/..", "x/.."])
def test_dotdot_paths_rejected(menv, path):
    one_line_error(menv.read(path))
    one_line_error(menv.write(path, b"nope"))
    one_line_error(menv.files(path))


def test_dotdot_write_creates_nothing(menv):
    menv.write("../escaped-by-dotdot", b"nope")
    r = menv.exec("ls", "-a", "/")
    assert "escaped-by-dotdot" not in r.text, r


def test_files_listing(menv):
    menv.sh_ok("rm -rf /workspace/tree && mkdir -p /workspace/tree/sub/subsub && "
               "printf 12345 > /workspace/tree/five && ln -s five /workspace/tree/link && "
               "mkfifo /workspace/tree/fifo && echo x > /workspace/tree/sub/subsub/leaf && "
               "chmod 0600 /workspace/tree/five && touch -d @1600000000 /workspace/tree/five")
    r = menv.files("tree")
    assert r.rc == 0, r
    top = {e["path"]: e for e in r.json()}
    names = {os.path.basename(p) for p in top}
    assert names == {"five", "link", "fifo", "sub"}, top
    by = {os.path.basename(p): e for p, e in top.items()}
    assert by["five"]["type"] == "file" and by["five"]["size"] == 5
    assert by["five"]["mode"] == "0600"
    mt = by["five"]["mtime"]
    if isinstance(mt, str) and not mt.replace(".", "").isdigit():
        assert mt.startswith("2020-09-13"), mt  # an ISO 8601 time
    else:
        mt = float(mt)
        assert abs(mt - 1600000000) < 2 or abs(mt - 1600000000000) < 2000, mt  # s or ms
    assert by["link"]["type"] == "symlink"
    assert by["fifo"]["type"] == "other"
    assert by["sub"]["type"] == "dir"
    r = menv.files("tree", recursive=True)
    assert r.rc == 0, r
    paths = {e["path"] for e in r.json()}
    assert any(p.endswith("tree/sub/subsub/leaf") for p in paths), paths
    assert any(p.endswith("tree/sub/subsub") for p in paths), paths


def test_files_default_is_workspace(menv):
    menv.sh_ok("touch /workspace/at-top-level")
    r = menv.files()
    assert r.rc == 0, r
    assert any(os.path.basename(e["path"]) == "at-top-level" for e in r.json()), r


def test_files_plain_output(menv):
    menv.sh_ok("touch /workspace/plainly-listed")
    r = menv.pd.run("env", "files", menv.id)
    assert r.rc == 0 and "plainly-listed" in r.text, r


def test_files_missing_path(menv):
    one_line_error(menv.files("no/such/dir"))


def test_large_file_roundtrip(menv):
    data = os.urandom(24 * MiB)
    assert menv.write("large.bin", data, timeout=120).rc == 0
    r = menv.read("large.bin", timeout=120)
    assert r.rc == 0 and len(r.out) == len(data) and r.out == data


# ------------------------------------------------------------------ ordinary tools

def test_ordinary_tools_work(menv):
    r = menv.exec("python3", "-c", "import sys, os; print(sum(range(10)), os.getcwd())")
    assert r.rc == 0 and r.text == "45 /workspace\n", r
    if os.path.exists("/usr/bin/git"):
        r = menv.sh("cd /tmp && rm -rf g && git init -q g && cd g && git config user.email a@b && "
                    "git config user.name a && echo hi > f && git add f && "
                    "git commit -qm m && git log --oneline | wc -l")
        assert r.rc == 0 and r.text.strip() == "1", r
    if os.path.exists("/usr/bin/gcc"):
        menv.write("/tmp/hello.c", b'#include <stdio.h>\nint main(void){puts("compiled");return 0;}\n')
        r = menv.sh("gcc -O0 -o /tmp/hello /tmp/hello.c && /tmp/hello", timeout=120)
        assert r.rc == 0 and r.text == "compiled\n", r


def test_strace_and_gdb_work(menv):
    if not os.path.exists("/usr/bin/strace"):
        pytest.skip("strace is not installed on the host /usr")
    r = menv.sh("strace -f -o /tmp/trace echo traced && grep -c execve /tmp/trace")
    assert r.rc == 0, r
    assert r.text.startswith("traced\n"), r
    if os.path.exists("/usr/bin/gdb"):
        r = menv.exec("gdb", "-q", "-batch", "-ex", "run", "-ex", "info inferiors",
                      "--args", "/bin/echo", "under-gdb", timeout=120)
        assert r.rc == 0 and "under-gdb" in r.text, r


def test_read_offset_and_max(menv):
    data = bytes(range(256)) * 40
    assert menv.write("ranged.bin", data).rc == 0
    r = menv.pd.run("env", "read", menv.id, "ranged.bin", "--offset", "100", "--max", "50")
    assert r.rc == 0 and r.out == data[100:150], r
    r = menv.pd.run("env", "read", menv.id, "ranged.bin", "--offset", "10000")
    assert r.rc == 0 and r.out == data[10000:], r


# ------------------------------------------------------------------ stdin edge cases

@pytest.mark.parametrize("size", [1, 65536, 100 * 1024, MiB, 16 * MiB])
def test_exec_unread_stdin_keeps_exit_status(menv, size):
    """A command that never reads its stdin still reports its own exit status and output."""
    for _ in range(3):
        r = menv.sh("echo never-read; exit 3", input=b"x" * size)
        assert r.rc == 3 and r.out == b"never-read\n", r


@pytest.mark.parametrize("size", [65536, MiB, 16 * MiB])
def test_exec_stdin_closed_early_keeps_output(menv, size):
    """A command that stops reading early (head) keeps its output and exit status."""
    for _ in range(3):
        r = menv.exec("head", "-c", "5", input=b"y" * size)
        assert r.rc == 0 and r.out == b"yyyyy", r


def test_exec_huge_argv_fails_cleanly_or_works(menv):
    args = ["x" * 100000] * 15
    r = menv.exec("sh", "-c", 'echo "$#"', "sh", *args)
    if r.rc == 0:
        assert r.text == "15\n", r
    else:
        assert r.rc == 125, r
        one_line_error(r)


# ------------------------------------------------------------------ bytes that are not UTF-8

def test_exec_argv_non_utf8_bytes(menv):
    """Arguments are bytes: they arrive exactly, or the exec is refused; never altered."""
    r = menv.exec("printf", "%s|%s", b"\xff\xfe", b"ok")
    if r.rc == 0:
        assert r.out == b"\xff\xfe|ok", f"argument bytes altered: {r}"
    else:
        assert r.rc == 125, r
        one_line_error(r)


def test_exec_env_non_utf8_bytes(menv):
    r = menv.pd.run("env", "exec", menv.id, "-e", b"K=\xff\xfe", "--", "sh", "-c", 'printf %s "$K"')
    if r.rc == 0:
        assert r.out == b"\xff\xfe", f"environment value altered: {r}"
    else:
        assert r.rc == 125, r
        one_line_error(r)


def test_exec_shell_string_non_utf8(menv):
    r = menv.pd.run("env", "exec", menv.id, "-c", b"printf '\\377'; printf '%s' '\xfe'")
    if r.rc == 0:
        assert r.out == b"\xff\xfe", r
    else:
        assert r.rc == 125, r
        one_line_error(r)


def test_exec_cwd_non_utf8_is_not_ignored(menv):
    menv.sh_ok("mkdir -p /tmp/cwdtest")
    r = menv.pd.run("env", "exec", menv.id, "--cwd", b"/tmp/cwdtest/\xff", "--", "pwd")
    assert r.rc != 0, f"ran somewhere else instead of a missing (non-UTF-8) directory: {r}"
    menv.sh_ok("python3 -c \"import os; os.makedirs(b'/tmp/cwdtest/\\xff', exist_ok=True)\"")
    r = menv.pd.run("env", "exec", menv.id, "--cwd", b"/tmp/cwdtest/\xff", "--", "pwd")
    if r.rc == 0:
        assert r.out == b"/tmp/cwdtest/\xff\n", r
    else:
        one_line_error(r)


def test_files_lists_directory_with_non_utf8_names(menv):
    """A file name the sandbox makes up must not break listing the rest."""
    menv.write("names/good", b"")
    r = menv.exec("python3", "-c", "import os\n"
                  "for n in (b'bad\\xffname', b'new\\nline', b'tab\\tand \"quote\"'):\n"
                  "    open(b'/workspace/names/' + n, 'w').close()\n")
    assert r.rc == 0, r
    r = menv.files("names")
    assert r.rc == 0, f"listing failed because of a file name: {r}"
    names = {os.path.basename(e["path"]) for e in r.json()}
    assert "good" in names and len(names) == 4, names
    r = menv.pd.run("env", "files", menv.id, "names")
    assert r.rc == 0 and b"good" in r.out, r


def test_file_ops_on_non_utf8_path(menv):
    r = menv.pd.run("env", "write", menv.id, b"/workspace/w\xff", input=b"data")
    if r.rc == 0:
        r2 = menv.exec("cat", b"/workspace/w\xff")
        assert r2.rc == 0 and r2.out == b"data", f"written under another name: {r2}"
        r3 = menv.pd.run("env", "read", menv.id, b"/workspace/w\xff")
        assert r3.rc == 0 and r3.out == b"data", r3
    else:
        one_line_error(r)


# ------------------------------------------------------------------ lifecycle during exec

@pytest.mark.parametrize("action", ["stop", "rm"])
def test_stop_or_rm_during_exec_ends_it(pd, action):
    import subprocess
    env = pd.create()
    p = subprocess.Popen(pd.argv("env", "exec", env.id, "-c", "echo started; sleep 60"),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=pd.env)
    try:
        assert p.stdout.readline() == b"started\n"
        pd.ok("env", action, env.id)
        out, err = p.communicate(timeout=15 * pdk.SLOWDOWN)
    finally:
        p.kill()
    assert p.returncode != 0, (p.returncode, out, err)
    assert err.strip(), "the exec ended without saying why"


def test_concurrent_starts_make_one_sandbox(pd):
    """Racing `env start`s (or execs that resume) never leave two inits over the same files."""
    env = pd.create()

    def inits():
        return [p for p in pdk.procs_in_cgroup_of(env.id)
                if pdk.read_text(f"/proc/{p}/status").split("\nPPid:")[1].split()[0]
                not in {str(q) for q in pdk.procs_in_cgroup_of(env.id)}]

    for round_ in range(3):
        env.stop()
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            results = list(ex.map(lambda _: pd.run("env", "start", env.id), range(4)))
        for r in results:
            assert r.rc == 0 or r.errtext.startswith("paddock: "), r
        assert any(r.rc == 0 for r in results), results
        roots = inits()
        assert len(roots) == 1, f"round {round_}: {len(roots)} sandbox inits: {roots}"
        assert pd.info(env.id)["init_pid"] == roots[0]
    env.stop()
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda _: pd.run("env", "exec", env.id, "--", "true"), range(4)))
    roots = inits()
    assert len(roots) <= 1, f"{len(roots)} sandbox inits after racing execs: {roots}"


def test_sandbox_survives_kill_all_from_inside(menv):
    init = menv.refresh()["init_pid"]
    menv.sh("kill -9 -1; exit 4")  # kills paddock's own handler too: any clean result is fine
    # SEGV and friends too: sanitizer runtimes install handlers for them, which init must reset.
    sigs = "KILL STOP TERM INT HUP USR1 USR2 PIPE ALRM SEGV BUS FPE ILL ABRT"
    menv.sh(f"for s in {sigs}; do kill -$s 1; done; true")
    r = pdk.wait_until(lambda: menv.exec("echo", "alive").rc == 0, 10)
    assert r, "environment unusable after its processes were killed from inside"
    info = menv.refresh()
    assert info["state"] == "running" and info["init_pid"] == init, info
    assert pdk.pid_alive(init)
