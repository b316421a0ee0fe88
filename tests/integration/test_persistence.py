"""Persistence: files survive stop/start, the death of init, of the creating process and of the
writing process; 100 stop/start cycles keep every file intact."""

import os
import signal
import sqlite3
import subprocess
import time

import pytest

import pdk
from pdk import MiB

MANIFEST = ("cd /workspace/p && find . -printf '%p %y %m %s %n %l\\n' | LC_ALL=C sort && "
            "find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum && "
            "sha256sum /root/.note /usr/local/share/persist.txt /etc/persist.conf && "
            "stat -c '%n %a %u %g' /root/.note /usr/local/share/persist.txt /etc/persist.conf")


def populate(env):
    """Writes a varied set of files (in and outside /workspace); returns their manifest."""
    blob = os.urandom(MiB + 17)
    assert env.write("p/plain.txt", b"plain text\n").rc == 0
    assert env.write("p/blob.bin", blob).rc == 0
    assert env.write("p/tool.sh", b"#!/bin/sh\necho tool\n", mode="0755").rc == 0
    env.sh_ok("cd /workspace/p && mkdir -p d1/d2/d3 && echo deep > d1/d2/d3/leaf && "
              "ln -s plain.txt link && ln -s /nonexistent dangling && ln plain.txt hard && "
              ": > empty && echo secret > private && chmod 0600 private && mkfifo fifo && "
              "mkdir -m 0700 closed && touch -d @1500000000 blob.bin && "
              "head -c 5000000 /dev/urandom > big && "
              "echo note > /root/.note && mkdir -p /usr/local/share && "
              "echo usr > /usr/local/share/persist.txt && echo conf > /etc/persist.conf && "
              "chmod 0640 /etc/persist.conf && chown 1000:1000 /root/.note")
    manifest = env.sh_ok(MANIFEST).text
    assert "./d1/d2/d3/leaf f" in manifest and "./link l" in manifest, manifest
    return manifest, blob


def check(env, manifest, blob):
    r = env.sh(MANIFEST)
    assert r.rc == 0, r
    assert r.text == manifest, f"files changed:\n--- before\n{manifest}\n--- after\n{r.text}"
    r = env.read("p/blob.bin")
    assert r.rc == 0 and r.out == blob


def test_files_survive_stop_start(pd):
    env = pd.create()
    manifest, blob = populate(env)
    env.stop()
    assert pd.info(env.id)["state"] == "stopped"
    env.start()
    check(env, manifest, blob)


def test_processes_do_not_survive_stop(pd):
    env = pd.create()
    env.push_probe()
    env.sh_ok("/workspace/probe daemonize /tmp/d.pids")
    env.stop()
    assert not pdk.procs_in_cgroup_of(env.id), "processes left after stop"
    env.start()
    names = {p["comm"] for p in env.probe("procs")["procs"]}
    assert "pdk_daemon" not in names, names


def test_init_killed_from_host(pd):
    env = pd.create()
    manifest, blob = populate(env)
    env.push_probe()
    env.sh_ok("/workspace/probe daemonize /tmp/d.pids")
    init = env.init_pid
    os.kill(init, signal.SIGKILL)
    # Once the host sees init dead (gone or a zombie), ls must say so.
    assert pdk.wait_until(lambda: not pdk.pid_alive(init), 10)
    time.sleep(0.2)
    info = pd.info(env.id)
    assert info["state"] == "stopped", f"init {init} is dead but ls shows: {info}"
    # Every process of the sandbox died with its init.
    assert pdk.wait_until(lambda: not pdk.procs_in_cgroup_of(env.id), 10), \
        pdk.procs_in_cgroup_of(env.id)
    env.start()
    assert env.init_pid != init
    check(env, manifest, blob)


def test_a_new_boot_forgets_the_inits_of_the_last(pd):
    """A stored init is a pid and a start time (ticks since boot). After a reboot both can name a
    process of the new boot, even the first process of a pid namespace of its own, as another
    runtime's container init is. The database keeps the boot its inits were recorded in, and a
    new boot forgets them: the environment reads stopped, the stranger is neither adopted nor
    killed, and a start makes a sandbox of its own."""
    import sqlite3
    env = pd.create()
    assert env.write("kept.txt", b"across the reboot\n").rc == 0
    env.stop()
    stranger = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "sleep", "600"])
    try:
        children = f"/proc/{stranger.pid}/task/{stranger.pid}/children"
        assert pdk.wait_until(lambda: pdk.read_text(children).strip(), 5)
        pid = int(pdk.read_text(children).split()[0])
        stat = pdk.read_text(f"/proc/{pid}/stat")
        start = int(stat[stat.rfind(")") + 2:].split()[19])
        assert os.stat(f"/proc/{pid}/ns/pid").st_ino != os.stat("/proc/self/ns/pid").st_ino
        # The row as the last boot left it, running, its init now naming the stranger.
        db = sqlite3.connect(pd.data / "paddock.db", timeout=10)
        try:
            with db:
                db.execute("UPDATE environments SET state = 1, init_pid = ?, init_start = ?"
                           " WHERE id = ?", (pid, start, env.id))
                n = db.execute("UPDATE meta SET value = 'an-earlier-boot'"
                               " WHERE key = 'boot_id'").rowcount
        finally:
            db.close()
        assert n == 1, "no boot recorded"
        # The first command of the new boot: a stop, which would kill an adopted init.
        env.stop()
        assert pdk.pid_alive(pid), "paddock killed a process of the new boot"
        info = pd.info(env.id)
        assert info["state"] == "stopped", info
        assert not info.get("init_pid"), info
        env.start()
        assert env.init_pid != pid
        assert env.read("kept.txt").out == b"across the reboot\n"
        assert pdk.pid_alive(pid)
    finally:
        stranger.kill()
        stranger.wait()


def test_a_sandbox_running_older_code_is_stopped_and_its_files_kept(pd):
    """A sandbox runs the code of the build that started it for as long as it runs. One
    started by a generation of paddock with a hole since closed (its row says so: here, as a
    row migrated from before generations were recorded) is stopped the first time a newer
    build looks at it, with one log line saying why; its files are kept, and its next use
    starts it with this build's code. A sandbox of the current generation is left running."""
    env = pd.create()
    assert env.write("kept.txt", b"across the upgrade\n").rc == 0
    env.sh_ok("setsid sleep 600 </dev/null >/dev/null 2>&1 &")
    old = env.init_pid
    db = sqlite3.connect(pd.data / "paddock.db", timeout=10)
    try:
        gen = db.execute("SELECT init_gen FROM environments WHERE id = ?", (env.id,)).fetchone()
        assert gen is not None and gen[0] >= 1, gen
        # The current generation: adopted as it is, its processes untouched.
        assert pd.info(env.id)["init_pid"] == old
        assert env.sh_ok("pgrep -x sleep").out.strip()
        with db:
            db.execute("UPDATE environments SET init_gen = 0 WHERE id = ?", (env.id,))
    finally:
        db.close()
    r = pd.run("env", "ls", "--json")
    assert r.rc == 0, r
    mine = [x for x in r.json() if x["id"] == env.id]
    assert mine and mine[0]["state"] == "stopped", mine
    assert "sandbox generation 0" in r.errtext and env.id in r.errtext, r.errtext
    assert pdk.wait_until(lambda: not pdk.pid_alive(old), 10), "the old init still runs"
    assert not pdk.procs_in_cgroup_of(env.id)
    # Its next use starts it afresh: files kept, the old processes gone, the generation current.
    assert env.read("kept.txt").out == b"across the upgrade\n"
    assert env.refresh()["init_pid"] != old
    assert env.sh("pgrep -x sleep").rc == 1
    db = sqlite3.connect(f"file:{pd.data / 'paddock.db'}?mode=ro", uri=True, timeout=10)
    try:
        assert db.execute("SELECT init_gen FROM environments WHERE id = ?",
                          (env.id,)).fetchone()[0] == gen[0]
    finally:
        db.close()


def test_a_create_that_died_is_never_started_by_a_waiter(pd):
    """A create holds its environment's lock until the row is done (a `paddock run` cloning a
    repository holds it for the clone). A request for that environment waits for the lock; when
    the creator dies and the lock comes free, the row still says creating and its sandbox may
    still run, half-filled. The waiter used to start a second sandbox on the same volume and
    mark the environment running. Now it finds a create that never finished: removed, the old
    sandbox with it, and the request answers that."""
    import fcntl
    env = pd.create()
    old = env.init_pid
    db = sqlite3.connect(pd.data / "paddock.db", timeout=10)
    try:
        with db:
            db.execute("UPDATE environments SET state = 0 WHERE id = ?", (env.id,))
    finally:
        db.close()
    lock = open(pd.data / "locks" / env.id, "a+")
    fcntl.flock(lock, fcntl.LOCK_EX)  # the creator, at work
    try:
        waiter = subprocess.Popen(pd.argv("env", "exec", env.id, "--", "true"),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=pd.env)
        time.sleep(0.5)
        assert waiter.poll() is None, "the request did not wait for the creator"
    finally:
        lock.close()  # the creator dies
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode != 0, out
    assert b"never finished" in err, err
    assert pdk.wait_until(lambda: not pdk.pid_alive(old), 10), "the creator's sandbox still runs"
    assert not pdk.procs_in_cgroup_of(env.id)
    assert env.id not in [x["id"] for x in pd.run("env", "ls", "--json").json()]
    assert not (pd.data / "envs" / env.id).exists()


def test_init_killed_then_rm(pd):
    env = pd.create()
    os.kill(env.init_pid, signal.SIGKILL)
    pdk.wait_until(lambda: not pdk.pid_alive(env.init_pid), 5)
    env.rm()
    assert pd.ls() == []


def test_sandbox_outlives_the_process_that_created_it(pd):
    env = pd.create()  # that CLI process has exited by now
    assert pdk.pid_alive(env.init_pid)
    env.write("made-by-first.txt", b"first\n")
    assert pd.info(env.id)["init_pid"] == env.init_pid
    assert env.read("made-by-first.txt").out == b"first\n"


def test_cli_killed_mid_exec(pd):
    env = pd.create()
    manifest, blob = populate(env)
    argv = pd.argv("env", "exec", env.id, "-c", "echo started; sleep 30")
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=pd.env)
    assert p.stdout.readline() == b"started\n"
    p.kill()
    p.wait()
    info = pd.info(env.id)
    assert info["state"] == "running" and info["init_pid"] == env.init_pid, info
    r = env.exec("echo", "still")
    assert r.rc == 0 and r.text == "still\n", r
    check(env, manifest, blob)


def test_files_survive_death_of_the_writer(pd):
    env = pd.create()
    r = env.sh("echo written-before-death > /workspace/w.txt; kill -9 $$")
    assert r.rc == 137, r
    assert env.read("w.txt").out == b"written-before-death\n"
    # A writer killed mid-stream leaves what it wrote.
    r = env.sh("head -c 3000000 /dev/zero > /workspace/partial; kill -9 $$")
    assert r.rc == 137, r
    r = env.exec("stat", "-c", "%s", "/workspace/partial")
    assert r.text.strip() == "3000000", r
    env.stop()
    env.start()
    assert env.read("w.txt").out == b"written-before-death\n"


@pytest.mark.parametrize("delay", [0.0, 0.005, 0.02, 0.08])
def test_create_killed_midway_leaves_consistent_state(pd, delay):
    pd.create()  # the storage exists; now interrupt a second create
    p = subprocess.Popen(pd.argv("env", "create", "--json"), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=pd.env)
    time.sleep(delay)
    p.kill()
    p.communicate()
    time.sleep(0.2)
    envs = pd.ls()
    for e in envs:
        pd.ids.add(e["id"])
        assert e["state"] in ("running", "stopped"), e
        if e["state"] == "running":
            assert pdk.pid_alive(e["init_pid"]), f"listed running but init is dead: {e}"
            r = pd.run("env", "exec", e["id"], "--", "true")
            assert r.rc == 0, r
    again = pd.create()
    r = again.exec("echo", "ok")
    assert r.rc == 0, r
    for e in envs:
        pd.ok("env", "rm", e["id"])


def test_an_unfinished_create_whose_volume_cannot_go_is_kept(pd):
    """A create that never finished (its row still "creating", its creator gone) is removed by
    the next reconcile; when its volume cannot be removed (here: immutable), the row stays and
    a warning says why, so the volume is not leaked; the next reconcile after that removes
    both."""
    env = pd.create()
    pd.ids.add(env.id)
    db = sqlite3.connect(str(pd.data / "paddock.db"), timeout=10)
    db.execute("UPDATE environments SET state = 0 WHERE id = ?", (env.id,))
    db.commit()
    db.close()
    vol = pd.data / "envs" / env.id
    subprocess.run(["chattr", "+i", str(vol)], check=True)
    try:
        r = pd.ok("env", "ls", "--json")
        assert vol.exists()
        assert "removing an unfinished create" in r.errtext and env.id in r.errtext, r
        db = sqlite3.connect(str(pd.data / "paddock.db"), timeout=10)
        rows = db.execute("SELECT state FROM environments WHERE id = ?", (env.id,)).fetchall()
        db.close()
        assert rows == [(0,)], rows
    finally:
        subprocess.run(["chattr", "-i", str(vol)], check=True)
    assert env.id not in [e["id"] for e in pd.ls()]
    assert not vol.exists()


@pytest.mark.slow
def test_100_stop_start_cycles(pd):
    env = pd.create()
    manifest, blob = populate(env)
    mounts_before = [l for l in pdk.host_mounts() if str(pd.data) in l]
    for i in range(100):
        env.stop()
        env.start()
        if i % 25 == 24:
            check(env, manifest, blob)
    check(env, manifest, blob)
    r = env.exec("echo", "after-100")
    assert r.rc == 0 and r.text == "after-100\n", r
    assert [l for l in pdk.host_mounts() if str(pd.data) in l] == mounts_before, \
        "mounts accumulate across stop/start"
    # Exactly one init, the current one, is alive.
    assert pdk.pid_alive(env.init_pid)
    assert len(pd.init_pids) >= 100
    alive = [p for p in pd.init_pids if p != env.init_pid and pdk.pid_alive(p)
             and env.id in pdk.read_text(f"/proc/{p}/cgroup")]
    assert not alive, f"old inits still alive: {alive}"
