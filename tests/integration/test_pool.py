"""The warm pool (`paddock serve --warm-pool N`): sandboxes started ahead of demand that creates
claim. What is checked from outside: the server keeps N pooled sandboxes (rows in state
"pooled" in the data directory's database, each with a live init); no list of the API or the
CLI shows them and no lookup finds them; a create takes one (its id was a pooled one) and gets
the limits it asked for (cgroup files on the host, the disk cap from inside); the pool refills;
`system teardown` removes it; a pooled sandbox whose init died is removed, never shown; with the
pool off, creates start new sandboxes."""

import json
import os
import signal
import sqlite3

import pdk
from apiserver import *  # noqa: F401,F403 (fixtures)

POOLED = 5  # enum store_env_state


def pooled(pd):
    """The pooled rows of pd's database, oldest first (the order claims try them): id -> init
    pid."""
    db = sqlite3.connect(f"file:{pd.data / 'paddock.db'}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute("SELECT id, init_pid FROM environments WHERE state = ?"
                          " ORDER BY created_ms, id", (POOLED,)).fetchall()
    finally:
        db.close()
    return dict(rows)


def live_pool(pd, n, timeout=20):
    """Waits until pd has exactly n pooled sandboxes, all with a live init; returns them."""
    def ready():
        p = pooled(pd)
        return p if len(p) == n and all(pdk.pid_alive(x) for x in p.values()) else None
    p = pdk.wait_until(ready, timeout)
    assert p, f"wanted {n} live pooled sandboxes, have {pooled(pd)}"
    for env_id, pid in p.items():   # for the teardown's leak checks
        pd.ids.add(env_id)
        pd.init_pids.add(pid)
    return p


def cgroup_file(pid, controller, name):
    return pdk.read_text(f"{pdk.host_cgroup_paths(pid)[controller]}/{name}").strip()


def test_pool_is_kept_and_never_listed(pd):
    s = serve(pd, args=["--warm-pool", "2"])
    try:
        pool = live_pool(pd, 2)
        h = s.http(s.make_key("rw", scopes=("environments",)))
        assert h.ids() == [], "pooled sandboxes must not be listed by the API"
        assert pd.ls() == [], "pooled sandboxes must not be listed by env ls"
        for env_id in pool:
            assert_error_shape(h.get_env(env_id), 404)
            assert_error_shape(h.delete(f"/v1beta/environments/{env_id}"), 404)
            r = pd.run("env", "exec", env_id, "--", "/bin/true")
            assert r.rc != 0, r
            pdk.one_line_error(r, "no environment")
        # A pooled sandbox has run nothing: its init (and the idle spare) is all there is.
        for env_id in pool:
            assert len(pdk.procs_in_cgroup_of(env_id)) <= 2, pdk.procs_in_cgroup_of(env_id)
    finally:
        finish(s)


def test_claim_gets_requested_limits_and_pool_refills(pd):
    s = serve(pd, args=["--warm-pool", "2"])
    try:
        pool = live_pool(pd, 2)
        # The CLI claims from the pool the server keeps.
        e = pd.create("--pids", "64", "--memory", "96M", "--cpus", "0.5", "--disk", "32M")
        assert e.id in pool, f"{e.id} is not one of the pooled {sorted(pool)}"
        info = e.refresh()
        assert info["state"] == "running", info
        assert info["limits"]["pids"] == 64 and info["limits"]["disk"] == 32 << 20, info
        pid = pool[e.id]
        assert info["init_pid"] == pid, info
        assert cgroup_file(pid, "pids", "pids.max") == "64"
        mem = cgroup_file(pid, "memory", "memory.limit_in_bytes") or \
            cgroup_file(pid, "memory", "memory.max")
        assert mem == str(96 << 20), mem
        # It works as a new environment: its own hostname, a fresh workspace.
        r = e.sh_ok("hostname; ls -A /workspace | wc -l")
        assert r.text.split() == [e.id, "0"], r
        # The disk cap asked for holds (32M).
        r = e.sh("dd if=/dev/zero of=/workspace/big bs=1M count=64 2>&1; sync")
        assert r.rc != 0 or b"No space" in r.out or b"quota" in r.out.lower(), r
        e.sh("rm -f /workspace/big")
        # The pool is back to two, without the claimed one.
        after = live_pool(pd, 2)
        assert e.id not in after
        assert set(pool) - {e.id} <= set(after)
        # The API lists exactly the claimed environment.
        h = s.http(s.make_key("rw", scopes=("environments",)))
        assert h.ids() == [e.id]
        # API creates claim too, and the egress hook gives a networked one its proxy.
        before = set(live_pool(pd, 2))
        got = h.create({})
        assert got["id"] in before, got
        r = pd.run("env", "exec", got["id"], "--", "python3", "-c",
                   "import socket; socket.create_connection(('127.0.0.1', 3128), 5); print('ok')")
        assert r.rc == 0 and r.text.strip() == "ok", r
    finally:
        finish(s)


def test_teardown_removes_the_pool(pd):
    s = serve(pd, args=["--warm-pool", "3"])
    pool = live_pool(pd, 3)
    finish(s)
    # The pool outlives its server (the next one adopts it) ...
    assert set(live_pool(pd, 3)) == set(pool)
    # ... until teardown, whose leak checks (processes, cgroups, mounts) then run.
    r = pd.run("system", "teardown")
    assert r.rc == 0, r
    assert pooled(pd) == {}
    for env_id, pid in pool.items():
        assert not pdk.pid_alive(pid)
        assert pdk.cgroup_dirs_for(env_id) == []
        assert not (pd.data / "envs" / env_id).exists()


def test_dead_pooled_sandbox_is_removed_not_shown(pd):
    s = serve(pd, args=["--warm-pool", "2"])
    pool = live_pool(pd, 2)
    s.kill(signal.SIGKILL)
    victim, pid = next(iter(pooled(pd).items()))   # the oldest: the first a claim tries
    os.kill(pid, signal.SIGKILL)
    assert pdk.wait_until(lambda: not pdk.pid_alive(pid), 10)
    assert pd.ls() == []
    # A CLI create meets the dead one, removes it, and claims the live one.
    e = pd.create()
    assert e.id != victim and e.id in pool, (e.id, pool)
    assert victim not in pooled(pd)
    assert not (pd.data / "envs" / victim).exists()
    assert pdk.cgroup_dirs_for(victim) == []
    # With none left, a create starts a new sandbox (and the CLI never refills).
    e2 = pd.create()
    assert e2.id not in pool
    assert pooled(pd) == {}
    e2.sh_ok("true")
    # A restarted server refills the pool; the users' environments are untouched.
    s.start()
    try:
        live_pool(pd, 2)
        assert sorted(x["id"] for x in pd.ls()) == sorted([e.id, e2.id])
    finally:
        finish(s)


def test_refiller_removes_pooled_sandbox_that_died(pd):
    s = serve(pd, args=["--warm-pool", "1"])
    try:
        (victim, pid), = live_pool(pd, 1).items()
        os.kill(pid, signal.SIGKILL)
        # The refiller's next pass (at most a second away) replaces it.
        assert pdk.wait_until(lambda: victim not in pooled(pd) and len(pooled(pd)) == 1, 15)
        live_pool(pd, 1)
        assert not (pd.data / "envs" / victim).exists()
        assert pdk.cgroup_dirs_for(victim) == []
    finally:
        finish(s)


def test_pool_disabled(pd):
    s = serve(pd, args=["--warm-pool", "0"])
    try:
        h = s.http(s.make_key("rw", scopes=("environments",)))
        got = h.create({})
        pdk.wait_until(lambda: False, 1.5)   # a refiller, if any, would have run by now
        assert pooled(pd) == {}
        r = pd.run("env", "exec", got["id"], "--", "/bin/true")
        assert r.rc == 0, r
        pd.ids.add(got["id"])
    finally:
        finish(s)
    r = pd.run("serve", "--warm-pool", "lots")
    assert r.rc != 0
    pdk.one_line_error(r, "--warm-pool")


def test_a_pool_of_another_build_is_never_handed_out(pd):
    """A sandbox carries the seccomp filter, mounts and init of the binary that started it.
    Pooled rows are stamped with the build id of that binary; a server or CLI of another
    build (here: a stamp rewritten as after an upgrade) removes them instead of claiming."""
    s = serve(pd, args=["--warm-pool", "2"])
    try:
        pool = live_pool(pd, 2)
    finally:
        finish(s)
    db = sqlite3.connect(str(pd.data / "paddock.db"), timeout=10)
    try:
        stamps = [json.loads(c)["_pool_build"] for (c,) in
                  db.execute("SELECT config FROM environments WHERE state = ?", (POOLED,))]
        assert len(stamps) == 2 and all(len(x) >= 16 for x in stamps), stamps
        with db:
            db.execute("UPDATE environments SET config = ? WHERE state = ?",
                       ('{"_pool_build": "0123456789abcdef-old"}', POOLED))
    finally:
        db.close()
    # The CLI (same build as the server) takes none of them: it starts a new sandbox, and the
    # old build's pooled sandboxes are gone, processes and all.
    e = pd.create()
    assert e.id not in pool, e.id
    for env_id, pid in pool.items():
        assert pdk.wait_until(lambda: not pdk.pid_alive(pid), 10), f"{env_id} still runs"
    assert not set(pooled(pd)) & set(pool), pooled(pd)
    # A server of this build refills with its own.
    s = serve(pd, args=["--warm-pool", "2"])
    try:
        fresh = live_pool(pd, 2)
        assert not set(fresh) & set(pool)
    finally:
        finish(s)
