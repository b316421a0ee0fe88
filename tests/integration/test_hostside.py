"""Host-side safety: symlinks planted inside a sandbox never make paddock's file operations, stop,
start or rm touch a host path. The targets are marker files of the test's own, so a failure shows up
as a changed marker and never damages the machine."""

import os

import pytest

import pdk

ORIGINAL = b"HOST-ORIGINAL\n"


def snapshot(root):
    """Every path under root with its type, size, mode, owner and (for files) content hash."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            entry = (st.st_mode, st.st_uid, st.st_gid, st.st_size)
            if os.path.isfile(p) and not os.path.islink(p):
                entry += (pdk.sha256(open(p, "rb").read()),)
            snap[os.path.relpath(p, root)] = entry
    st = os.lstat(root)
    snap["."] = (st.st_mode, st.st_uid, st.st_gid)
    return snap


@pytest.fixture
def host(tmp_path):
    """A host directory with marker files that no sandbox operation may touch."""
    d = tmp_path / "hostside"
    (d / "sub").mkdir(parents=True)
    (d / "marker.txt").write_bytes(ORIGINAL)
    (d / "sub" / "inner.txt").write_bytes(ORIGINAL)
    for name in ("resolv", "hosts", "hostname", "passwd"):
        (d / f"etc-{name}").write_bytes(ORIGINAL)
    os.chmod(d / "marker.txt", 0o640)
    return d


def plant_links(env, host, data):
    env.sh_ok(
        f"ln -sfn / /workspace/root_link && "
        f"ln -sfn {host} /workspace/host_dir_link && "
        f"ln -sfn {host}/marker.txt /workspace/marker_link && "
        f"ln -sfn {data} /workspace/data_link && "
        f"ln -sfn {data}/envs/{env.id} /workspace/env_dir_link && "
        f"ln -sfn ../../../../../../../../{str(host).lstrip('/')} /workspace/relative_link")


def assert_host_intact(host, before, data, env_id):
    after = snapshot(host)
    assert after == before, f"host directory changed: {set(after.items()) ^ set(before.items())}"
    for p in (data / "pwned", data / "envs" / "pwned", data / "envs" / env_id / "pwned"):
        assert not os.path.lexists(p), f"{p} was created on the host"


def test_write_through_planted_symlinks(pd, host):
    env = pd.create()
    plant_links(env, host, pd.data)
    before = snapshot(host)
    targets = [
        "marker_link", "host_dir_link/marker.txt", "host_dir_link/new-file",
        "host_dir_link/sub/inner.txt", f"root_link{host}/marker.txt", f"root_link{host}/new2",
        "relative_link/marker.txt", f"/workspace/root_link{host}/sub/new3",
        "data_link/pwned", "data_link/envs/pwned", "env_dir_link/pwned",
        f"{host}/marker.txt", f"{host}/created-abs",
    ]
    for t in targets:
        env.write(t, b"PWNED\n")  # may succeed inside the sandbox or fail; never on the host
        env.write(t, b"PWNED\n", mode="0777")
    assert_host_intact(host, before, pd.data, env.id)


def test_read_through_planted_symlinks(pd, host):
    env = pd.create()
    plant_links(env, host, pd.data)
    for t in ("marker_link", "host_dir_link/marker.txt", f"root_link{host}/marker.txt",
              "relative_link/marker.txt", f"{host}/marker.txt"):
        r = env.read(t)
        assert ORIGINAL not in r.out, f"read {t} returned the host's file: {r}"
    shadow = open("/etc/shadow", "rb").read()
    for t in ("root_link/etc/shadow", "/etc/shadow"):
        r = env.read(t)
        assert r.rc != 0 or r.out != shadow, f"read {t} returned the host's /etc/shadow"
    db_names = set(os.listdir(pd.data))
    for t in ("data_link", "env_dir_link"):
        r = env.files(t)
        if r.rc == 0:
            names = {os.path.basename(e["path"]) for e in r.json()}
            assert not names & db_names, f"files {t} listed the host's data dir: {names}"


def test_files_through_planted_symlinks(pd, host):
    env = pd.create()
    plant_links(env, host, pd.data)
    for t in ("host_dir_link", f"root_link{host}", "relative_link", str(host)):
        r = env.files(t, recursive=True)
        if r.rc == 0:
            names = {os.path.basename(e["path"]) for e in r.json()}
            assert "marker.txt" not in names and "inner.txt" not in names, \
                f"files {t} listed the host directory: {names}"
    # Listing a link to / shows the link itself, or the sandbox's root: never the host's.
    r = env.files("root_link")
    assert r.rc == 0, r
    names = {os.path.basename(e["path"]) for e in r.json()}
    assert names == {"root_link"} or "workspace" in names, names


def test_rm_with_planted_symlinks_leaves_host_intact(pd, host):
    survivor = pd.create()
    survivor.write("keep.txt", b"keep\n")
    env = pd.create()
    plant_links(env, host, pd.data)
    # Hard links and nested links inside the environment, too.
    env.sh_ok("mkdir -p /workspace/nest/a && ln -s / /workspace/nest/a/up && "
              "ln -s /workspace /workspace/nest/self && echo x > /workspace/nest/f && "
              "ln /workspace/nest/f /workspace/nest/hard")
    before = snapshot(host)
    usr_before = sorted(os.listdir("/usr/bin"))[:50]
    env.rm()
    assert_host_intact(host, before, pd.data, env.id)
    assert sorted(os.listdir("/usr/bin"))[:50] == usr_before
    assert os.path.exists("/etc/passwd") and os.path.exists("/usr/bin/true")
    assert survivor.read("keep.txt").out == b"keep\n"
    r = survivor.exec("echo", "still-here")
    assert r.rc == 0 and r.text == "still-here\n", r


def test_stopped_rm_with_planted_symlinks(pd, host):
    env = pd.create()
    plant_links(env, host, pd.data)
    before = snapshot(host)
    env.stop()
    env.rm()
    assert_host_intact(host, before, pd.data, env.id)


def test_replaced_system_paths_survive_stop_start(pd, host):
    """The sandbox replaces directories and /etc files that paddock itself prepares with links to
    host paths; restarting and removing the environment must not follow them on the host."""
    env = pd.create()
    # Whatever paddock mounts over is busy and stays; the rest becomes a link to a host path.
    env.sh(f"rm -rf /workspace 2>/dev/null && ln -s {host} /workspace; "
           f"for f in resolv.conf hosts hostname passwd; do "
           f"  rm -f /etc/$f 2>/dev/null && ln -s {host}/etc-$f /etc/$f; done; "
           f"rm -rf /tmp 2>/dev/null && ln -s {host} /tmp; true", opts=["--cwd", "/"])
    before = snapshot(host)
    env.stop()
    r = pd.run("env", "start", env.id)
    if r.rc == 0:
        env.refresh()
        env.exec("sh", "-c", "echo PWNED > /workspace/pwned-by-start; ls /workspace", opts=["--cwd", "/"])
        env.write("/etc/hosts", b"PWNED\n")
        env.read("/etc/hosts")
    else:
        pdk.one_line_error(r)
    assert_host_intact(host, before, pd.data, env.id)
    assert not (host / "pwned-by-start").exists()
    env.stop() if r.rc == 0 else None
    pd.run("env", "start", env.id)
    pd.ok("env", "rm", env.id)
    assert_host_intact(host, before, pd.data, env.id)


def test_workspace_link_to_root_and_file_ops(pd):
    """/workspace replaced by a link to / resolves inside the sandbox for relative paths."""
    env = pd.create()
    env.sh("rm -rf /workspace && ln -s / /workspace", opts=["--cwd", "/"])
    r = env.read("etc/shadow")
    if r.rc == 0:
        assert r.out != open("/etc/shadow", "rb").read(), "read the host's /etc/shadow"
    r = env.files()
    if r.rc == 0:
        host_only = set(os.listdir("/")) - {"bin", "boot", "dev", "etc", "home", "lib", "lib32",
                                            "lib64", "libx32", "media", "mnt", "opt", "proc",
                                            "root", "run", "sbin", "srv", "sys", "tmp", "usr",
                                            "var", "workspace", "lost+found"}
        names = {os.path.basename(e["path"]) for e in r.json()}
        assert not names & host_only, f"listing shows host-only top-level entries: {names & host_only}"


def test_other_host_users_cannot_reach_environments(tmp_path):
    """With a data dir an admin made world-readable (mkdir's 0755), an unprivileged host user can
    neither drive a sandbox through its control socket nor read its files."""
    import subprocess
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    pd = pdk.Paddock(data)
    try:
        env = pd.create()
        env.write("secret.txt", b"sandbox-secret\n")
        socks = [os.path.join(r, f) for r, _, fs in os.walk(data / "envs" / env.id)
                 for f in fs if f.endswith(".sock")]
        files = [os.path.join(r, f) for r, _, fs in os.walk(data / "envs" / env.id)
                 for f in fs if f == "secret.txt"]
        assert socks or files, "found neither the control socket nor the file under DATA/envs/<id>"
        # /proc/self/fd/N reaches the data dir past pytest's private parent directories, so only
        # the permissions paddock itself set are tested.
        fd = os.open(data, os.O_PATH | os.O_DIRECTORY)
        try:
            rel = lambda p: f"/proc/self/fd/{fd}/" + os.path.relpath(p, data)  # noqa: E731
            script = ("import socket, sys\n"
                      "for p in sys.argv[1:]:\n"
                      "    try:\n"
                      "        if p.endswith('.sock'):\n"
                      "            s = socket.socket(socket.AF_UNIX); s.connect(p); print('OPEN', p)\n"
                      "        else:\n"
                      "            open(p, 'rb').read(); print('OPEN', p)\n"
                      "    except OSError as e:\n"
                      "        print('DENIED', p, e.errno)\n")
            r = subprocess.run(["/usr/bin/python3", "-c", script] + [rel(p) for p in socks + files],
                               capture_output=True, user=65534, group=65534, pass_fds=(fd,),
                               timeout=30)
        finally:
            os.close(fd)
        assert r.returncode == 0, r
        assert "OPEN" not in r.stdout.decode(), r.stdout.decode()
    finally:
        pd.teardown()


def test_rm_file_through_planted_symlinks(pd, host):
    env = pd.create()
    probe = pd.run("env", "rm-file", env.id, "does-not-exist")
    if probe.rc != 0 and ("usage" in probe.errtext.lower() or "unknown" in probe.errtext.lower()):
        pytest.skip(f"no env rm-file command: {probe.errtext.strip()}")
    plant_links(env, host, pd.data)
    before = snapshot(host)
    for t in ("host_dir_link", "host_dir_link/marker.txt", "marker_link", f"root_link{host}",
              f"root_link{host}/marker.txt", "relative_link/sub", str(host), f"{host}/marker.txt",
              "data_link", "env_dir_link", "data_link/paddock.db"):
        pd.run("env", "rm-file", env.id, t)
        pd.run("env", "rm-file", env.id, t, "--recursive")
    assert_host_intact(host, before, pd.data, env.id)
    assert (pd.data / "paddock.db").exists()
    # The links themselves were removed, not what they point to.
    r = env.exec("ls", "-a", "/workspace")
    assert r.rc == 0, r
    r = env.exec("echo", "alive")
    assert r.rc == 0, r


def test_handler_descriptors_lead_nowhere_outside_the_sandbox(pd):
    """Every handler holds the layer's upper directories open (descriptors 5 and 6, for the
    snapshot), and follows /proc/self/fd/N like any path a caller names. A link planted at
    /proc/self/fd/5/../.. used to reach the volume's own directory on the host (ctl.sock, work/,
    upper/): paddock's reads, listings, writes and deletes went there. Now the descriptors are
    the roots of detached read-only mounts, where ".." goes nowhere: the volume directory stays
    as it was, and nothing written reaches it."""
    env = pd.create()
    vol = pd.data / "envs" / env.id
    r = env.sh("for n in 5 6; do ln -s /proc/self/fd/$n/../.. /workspace/v$n; "
               "ln -s /proc/self/fd/$n/.. /workspace/u$n; done")
    assert r.rc == 0, r
    before = sorted(os.listdir(vol))
    assert "ctl.sock" in before and "work" in before, before
    for link in ("v5", "v6", "u5", "u6"):
        r = env.files(f"/workspace/{link}")
        if r.rc == 0:
            names = {os.path.basename(e["path"]) for e in r.json()}
            assert not names & {"ctl.sock", "work", "upper", "root", "usr"} or \
                "workspace" in names, f"{link} listed the volume directory: {names}"
        env.write(f"/workspace/{link}/pwned", b"PWNED\n")
        env.files(f"/workspace/{link}/work", recursive=True)
    assert sorted(os.listdir(vol)) == before
    assert not any(p.name == "pwned" for p in vol.rglob("pwned")), list(vol.rglob("pwned"))
    # The layer still snapshots and counts: the descriptors still serve what they are for.
    r = env.sh("echo kept > /workspace/after.txt")
    assert r.rc == 0, r
    assert env.read("/workspace/after.txt").out == b"kept\n"


@pytest.mark.parametrize("entry,link", [
    ("upper", "upper.moved"),        # the volume's layer directory, to one beside it
    ("work", "work.moved"),          # the overlay's scratch
    ("upper/root/proc", "/"),        # the sandbox's own tree: where /proc is mounted
])
def test_a_start_follows_no_link_planted_in_the_volume(pd, entry, link):
    """A sandbox's start mounts onto and from directories of its volume, and onto entries of
    the sandbox's own tree (/usr, /proc, /dev): all of them the sandbox's root may shape, and
    the mounts used to follow a link in their place (the overlay's upperdir, a move_mount
    target, the proc mount point). A link there now makes the start fail, naming the entry,
    and changes nothing; with the link gone the environment starts, its files intact. (The
    links are planted from the host while the environment is stopped.)"""
    env = pd.create()
    assert env.write("/workspace/kept.txt", b"kept\n").rc == 0
    env.stop()
    vol = pd.data / "envs" / env.id
    place = vol / entry
    moved = place.with_name(place.name + ".moved") if not link.startswith("/") else None
    if moved is not None:
        os.rename(place, moved)
    elif place.exists():
        place.rmdir()
    os.symlink(link if moved is None else moved.name, place)
    try:
        r = pd.run("env", "start", env.id)
        assert r.rc != 0, "a start went through a link planted in the volume"
        named = "proc" if entry.endswith("proc") else f"{entry}/root"
        pdk.one_line_error(r, f"open {named} without following a link")
        assert pd.info(env.id)["state"] == "stopped"
    finally:
        place.unlink()
        if moved is not None:
            os.rename(moved, place)
    env.start()
    assert env.read("/workspace/kept.txt").out == b"kept\n"
