"""Cleanup: after `env rm` (and `system teardown`) nothing of the environment is left on the host:
no mount, cgroup, process or file."""

import os
import signal

import pytest

import pdk


def leftovers(pd, env_id, init_pid):
    found = []
    mounts = [l for l in pdk.host_mounts() if env_id in l]
    if mounts:
        found.append(f"mounts: {mounts}")
    cg = pdk.cgroup_dirs_for(env_id)
    if cg:
        found.append(f"cgroup dirs: {cg}")
    procs = pdk.procs_in_cgroup_of(env_id)
    if procs:
        found.append(f"processes: {procs}")
    if init_pid and pdk.pid_alive(init_pid) and env_id in pdk.read_text(f"/proc/{init_pid}/cgroup"):
        found.append(f"init {init_pid} alive")
    if (pd.data / "envs" / env_id).exists():
        found.append(f"directory {pd.data / 'envs' / env_id}")
    named = []
    for root, dirs, files in os.walk(pd.data):
        named += [os.path.join(root, n) for n in dirs + files if env_id in n]
    if named:
        found.append(f"files named after the env: {named}")
    return found


def busy_env(pd):
    """An environment with files, a daemon, a process sitting in /workspace and an open file."""
    env = pd.create()
    env.push_probe()
    env.write("data/file.txt", b"content\n")
    env.sh_ok("/workspace/probe daemonize /tmp/d.pids")
    env.sh_ok("cd /workspace/data && setsid sh -c 'exec 3</workspace/data/file.txt; "
              "exec /workspace/probe sleeper pdk_holder' >/dev/null 2>&1 </dev/null &")
    pdk.wait_until(lambda: len(pdk.procs_in_cgroup_of(env.id)) >= 3, 5)
    return env


def test_rm_running_env_leaves_nothing(pd):
    env = busy_env(pd)
    keep = pd.create()
    init = env.init_pid
    env.rm()
    assert pdk.wait_until(lambda: not leftovers(pd, env.id, init), 5), leftovers(pd, env.id, init)
    assert env.id not in [e["id"] for e in pd.ls()]
    pdk.one_line_error(env.exec("true"), env.id, "not found")
    # The other environment is untouched.
    r = keep.exec("echo", "kept")
    assert r.rc == 0 and r.text == "kept\n", r


def test_rm_stopped_env_leaves_nothing(pd):
    env = busy_env(pd)
    init = env.init_pid
    env.stop()
    env.rm()
    assert not leftovers(pd, env.id, init), leftovers(pd, env.id, init)


def test_rm_crashed_env_leaves_nothing(pd):
    env = busy_env(pd)
    init = env.init_pid
    os.kill(init, signal.SIGKILL)
    env.rm()
    assert pdk.wait_until(lambda: not leftovers(pd, env.id, init), 5), leftovers(pd, env.id, init)


def test_rm_twice(pd):
    env = pd.create()
    env.rm()
    r = pd.run("env", "rm", env.id)
    pdk.one_line_error(r, env.id, "not found")


def test_system_teardown_removes_everything(pd):
    a = busy_env(pd)
    b = pd.create()
    b.stop()
    c = pd.create()
    inits = [a.init_pid, c.init_pid]
    pd.ok("system", "teardown")
    data = str(pd.data.resolve())
    assert not [l for l in pdk.host_mounts() if data in l], "mounts left after teardown"
    assert not pdk.loop_devices_backed_by(data), "loop device left after teardown"
    for env in (a, b, c):
        assert not pdk.cgroup_dirs_for(env.id), env
        assert not pdk.procs_in_cgroup_of(env.id), env
    for pid in inits:
        assert not pdk.pid_alive(pid) or a.id not in pdk.read_text(f"/proc/{pid}/cgroup")
    # The data is still there: a later command mounts the storage again and sees the envs.
    ids = {e["id"]: e["state"] for e in pd.ls()}
    assert set(ids) == {a.id, b.id, c.id}, ids
    assert all(s == "stopped" for s in ids.values()), ids
    a.start()
    assert a.read("data/file.txt").out == b"content\n"


def test_teardown_on_unused_data_dir(pd):
    r = pd.run("system", "teardown")
    assert r.rc == 0, r


@pytest.mark.slow
def test_many_create_rm_cycles_leak_nothing(pd):
    keep = pd.create()
    data = str(pd.data)
    mounts_before = [l for l in pdk.host_mounts() if data in l]
    for _ in range(40):
        env = pd.create()
        env.exec("true")
        init = env.init_pid
        env.rm()
        assert not leftovers(pd, env.id, init)
    assert [l for l in pdk.host_mounts() if data in l] == mounts_before
    assert [e["id"] for e in pd.ls()] == [keep.id]
