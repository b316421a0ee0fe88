"""Isolation, checked from inside the sandbox with the probe (and from the host where the host is
the natural observer)."""

import errno
import json
import os
import shutil
import socket
import subprocess
import threading
import uuid

import pytest

import pdk

# Results of a blocked call (an errno from the filter or the kernel's own permission check, or
# death by SIGSYS); "OK" means the kernel did it.
BLOCKED = {"EPERM", "EACCES", "ENOSYS", "SIGNAL_31"}


# ------------------------------------------------------------------ ids and namespaces

def test_uid_map_is_not_identity(menv):
    r = menv.probe("uidmap")
    for key in ("uid_map", "gid_map"):
        ranges = r[key]
        assert ranges, f"{key} is empty: {r}"
        total = 0
        for inside, outside, count in ranges:
            assert outside != inside or outside >= 65536, f"{key} identity mapping: {r}"
            assert not (outside <= 0 < outside + count), f"{key} maps host root: {r}"
            assert count < 4294967295, f"{key} maps the whole id space: {r}"
            total += count
        assert total <= 65536, f"{key} maps more than 65536 ids: {r}"
    assert r["uid"] == 0 and r["euid"] == 0, r


def test_each_env_has_its_own_id_range(pd):
    a, b = pd.create(), pd.create()
    ra, rb = a.probe("uidmap"), b.probe("uidmap")
    for key in ("uid_map", "gid_map"):
        sa = [(o, o + c) for _, o, c in ra[key]]
        sb = [(o, o + c) for _, o, c in rb[key]]
        for lo1, hi1 in sa:
            for lo2, hi2 in sb:
                assert hi1 <= lo2 or hi2 <= lo1, f"{key} ranges overlap: {ra} {rb}"


def test_sandbox_root_is_unprivileged_on_host(menv):
    """The host sees the sandbox's processes running as a high, non-root uid."""
    status = pdk.read_text(f"/proc/{menv.init_pid}/status")
    uids = next(l for l in status.splitlines() if l.startswith("Uid:")).split()[1:]
    assert all(int(u) != 0 for u in uids), f"sandbox init runs as host root: {uids}"
    # A long-running process started by exec is equally unprivileged.
    menv.sh_ok("/workspace/probe daemonize /tmp/uidcheck.pids")
    r = menv.exec("cat", "/tmp/uidcheck.pids")
    inner = int(r.text.split()[0])
    host_pids = [int(d) for d in os.listdir("/proc") if d.isdigit()
                 and pdk.read_text(f"/proc/{d}/comm").strip() == "pdk_daemon"
                 and menv.id in pdk.read_text(f"/proc/{d}/cgroup")]
    assert host_pids, f"daemon (inner pid {inner}) not found on the host by cgroup"
    for hp in host_pids:
        st = pdk.read_text(f"/proc/{hp}/status")
        u = next(l for l in st.splitlines() if l.startswith("Uid:")).split()[1:]
        assert all(int(x) != 0 for x in u), f"sandbox process {hp} is host root"
    menv.sh("kill -9 $(cat /tmp/uidcheck.pids)")


def test_files_written_inside_are_owned_by_the_mapped_uid_on_host(pd):
    env = pd.create()
    marker = f"owned-{uuid.uuid4().hex}"
    env.sh_ok(f"echo x > /workspace/{marker}")
    found = []
    for root, dirs, files in os.walk(pd.data / "envs" / env.id):
        if marker in files:
            found.append(os.path.join(root, marker))
    if not found:
        pytest.skip("the environment's files are not stored as plain files under DATA/envs/<id>")
    umap = env.probe("uidmap")["uid_map"]
    root_outside = next(o for i, o, c in umap if i == 0)
    for f in found:
        st = os.stat(f)
        assert st.st_uid == root_outside and st.st_uid != 0, (f, st.st_uid, umap)


def test_base_image_files_look_root_owned(menv):
    r = menv.probe("stat", "/usr/bin/env", "/usr/lib", "/etc/passwd")
    for path, st in r["paths"].items():
        assert st["exists"], r
        assert st["uid"] == 0 and st["gid"] == 0, f"{path} not root-owned inside: {r}"


def test_namespaces_differ_from_host(menv):
    for ns in ("user", "mnt", "pid", "net", "uts", "ipc", "cgroup"):
        host = os.readlink(f"/proc/self/ns/{ns}")
        inner = os.readlink(f"/proc/{menv.init_pid}/ns/{ns}")
        assert host != inner, f"sandbox shares the host's {ns} namespace"


def test_hostname(menv):
    r = menv.probe("hostname")
    assert r["hostname"] and r["hostname"] != socket.gethostname(), r
    before = socket.gethostname()
    menv.sh("hostname evil-rename 2>/dev/null; true")
    assert socket.gethostname() == before


# ------------------------------------------------------------------ processes

def test_no_host_process_visible(menv, tmp_path):
    marker = tmp_path / "hostmark_zq"
    shutil.copy("/bin/sleep", marker)
    host_proc = subprocess.Popen([str(marker), "60"])
    try:
        r = menv.probe("procs")
        comms = {p["comm"] for p in r["procs"]}
        assert "hostmark_zq" not in comms, r
        assert "pytest" not in comms and "python3" not in comms, r
        pids = {p["pid"] for p in r["procs"]}
        assert 1 in pids, r
        assert len(r["procs"]) < 20, f"too many processes visible: {r}"
    finally:
        host_proc.kill()
        host_proc.wait()


def test_other_envs_processes_invisible(pd):
    a, b = pd.create(), pd.create()
    a.push_probe()
    a.sh_ok("/workspace/probe daemonize /tmp/d.pids")
    r = b.probe("procs")
    assert "pdk_daemon" not in {p["comm"] for p in r["procs"]}, r


# ------------------------------------------------------------------ host secrets

@pytest.fixture
def host_markers(tmp_path):
    """Unique files planted in host places a sandbox must not see; removed afterwards."""
    tag = uuid.uuid4().hex[:12]
    made = []
    places = {"/root": f".paddock-itest-{tag}", "/var/tmp": f"paddock-itest-{tag}",
              "/run": f"paddock-itest-{tag}", "/tmp": f"paddock-itest-{tag}"}
    if os.path.isdir("/home"):
        places["/home"] = f"paddock-itest-{tag}"
    for d, name in places.items():
        p = os.path.join(d, name)
        with open(p, "w") as f:
            f.write("host-secret\n")
        made.append(p)
    tp = tmp_path / f"tmpmark-{tag}"
    tp.write_text("host-secret\n")
    made.append(str(tp))
    yield made
    for p in made:
        try:
            os.unlink(p)
        except OSError:
            pass


def test_host_secrets_invisible(menv, host_markers):
    data = str(menv.pd.data)
    env_dir = os.path.join(data, "envs", menv.id)
    r = menv.probe("paths", *host_markers, data, env_dir, os.path.join(env_dir, "ctl.sock"),
                   os.path.dirname(data))
    paths = r["paths"]
    for m in host_markers + [data, env_dir, os.path.join(env_dir, "ctl.sock")]:
        assert not paths[m]["exists"], f"host path {m} visible inside: {paths[m]}"
    # Host /etc/shadow: absent, or at least not the host's file.
    sh = paths["/etc/shadow"]
    if sh["exists"] and "fnv" in sh:
        assert sh["fnv"] != pdk.fnv64_file("/etc/shadow"), "host /etc/shadow readable inside"
    if os.path.exists("/etc/gshadow") and paths["/etc/gshadow"].get("fnv"):
        assert paths["/etc/gshadow"]["fnv"] != pdk.fnv64_file("/etc/gshadow")
    # /root and /home hold nothing of the host's.
    for d in ("/root", "/home", "/var", "/run", "/tmp"):
        if paths[d]["exists"] and paths[d]["type"] == "dir":
            host_entries = set(os.listdir(d)) if os.path.isdir(d) else set()
            leaked = set(paths[d]["entries"]) & host_entries - {"tmp", "run", "lock", "log", "cache",
                                                                 "lib", "empty", "spool", "mail",
                                                                 "opt", "local", "backups", "shm"}
            assert not leaked, f"host entries of {d} visible inside: {sorted(leaked)}"


def test_host_unix_sockets_invisible(menv, tmp_path):
    tag = uuid.uuid4().hex[:12]
    listeners = []
    paths = [str(tmp_path / "host.sock"), f"/run/paddock-itest-{tag}.sock", f"@paddock-itest-{tag}"]
    try:
        for p in paths:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind("\0" + p[1:] if p.startswith("@") else p)
            s.listen(5)
            listeners.append(s)
        # Every named socket the host has open, too.
        host_socks = set()
        for line in pdk.read_text("/proc/net/unix").splitlines()[1:]:
            f = line.split()
            if len(f) >= 8 and f[7].startswith("/"):
                host_socks.add(f[7])
        for p in paths:
            r = menv.probe("connect-unix", p, ok_rcs=(0, 1))
            assert r["connect"] != "OK", f"connected to host socket {p} from inside"
        host_socks = sorted(host_socks)[:200]
        if host_socks:
            r = menv.probe("stat", *host_socks)
            for p, st in r["paths"].items():
                assert not (st["exists"] and st["type"] == "socket"), f"host socket {p} visible"
    finally:
        for s in listeners:
            s.close()
        try:
            os.unlink(f"/run/paddock-itest-{tag}.sock")
        except OSError:
            pass


def test_minimal_dev(menv):
    r = menv.probe("paths", "/dev/vda", "/dev/sda", "/dev/mem", "/dev/kmem", "/dev/kmsg",
                   "/dev/loop0", "/dev/loop-control", "/dev/kvm", "/dev/port", "/dev/fuse",
                   "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty")
    p = r["paths"]
    for dangerous in ("/dev/vda", "/dev/sda", "/dev/mem", "/dev/kmem", "/dev/kmsg", "/dev/loop0",
                      "/dev/loop-control", "/dev/kvm", "/dev/port"):
        assert not p[dangerous]["exists"], f"{dangerous} exists inside: {p[dangerous]}"
    for needed in ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"):
        assert p[needed]["exists"] and p[needed]["type"] == "chr", f"{needed}: {p[needed]}"
    blk = [e for e in p["/dev"]["entries"]] if p["/dev"]["exists"] else []
    assert not [e for e in blk if e.startswith(("sd", "vd", "nvme", "loop", "dm-", "xvd"))], blk
    r = menv.sh("echo x > /dev/null && head -c 4 /dev/zero | wc -c && head -c 8 /dev/urandom | wc -c")
    assert r.rc == 0 and r.text.splitlines() == ["4", "8"], r
    assert menv.probe("write", "/dev/full", "x", ok_rcs=(1,))["write"] == "ENOSPC"


def test_kernel_tunables_not_writable(menv):
    targets = ["/proc/sysrq-trigger", "/proc/sys/kernel/core_pattern", "/proc/sys/vm/drop_caches",
               "/proc/sys/kernel/hostname", "/proc/sys/kernel/modprobe",
               "/sys/kernel/uevent_helper", "/sys/fs/cgroup/cgroup.procs",
               "/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/power/state"]
    r = menv.probe("openw", *targets)
    for t in targets:
        # The hostname belongs to the sandbox's own uts namespace; the rest are host-global.
        if t == "/proc/sys/kernel/hostname":
            continue
        assert r[t] != "OK", f"{t} is writable from inside: {r}"


def test_cgroup_namespace(menv):
    r = menv.probe("cgroup")
    for line in r["cgroup"]:
        path = line.split(":", 2)[2]
        assert "paddock" not in path and menv.id not in path, f"host cgroup path visible: {r}"


# ------------------------------------------------------------------ kernel attack surface

REQUIRED_BLOCKED = [
    "mount", "umount2", "pivot_root", "swapon", "swapoff",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "bpf", "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd",
    "open_by_handle_at", "io_uring_setup", "io_uring_enter", "io_uring_register", "setns",
    "unshare_user", "unshare_mnt", "unshare_pid", "unshare_net", "unshare_uts", "unshare_ipc",
    "unshare_cgroup", "unshare_time", "clone_user", "clone_mnt", "clone_pid", "clone_net",
    "clone_uts", "clone_ipc", "clone_cgroup", "clone3_user", "clone3_mnt", "clone3_pid",
    "clone3_net", "clone3_uts", "clone3_ipc", "clone3_cgroup", "clone3_time",
]


def test_dangerous_syscalls_blocked(menv):
    r = menv.probe("seccomp")
    bad = {k: r[k] for k in REQUIRED_BLOCKED if r.get(k) not in BLOCKED}
    assert not bad, f"not blocked (errno other than {sorted(BLOCKED)}): {bad}\nall: {r}"
    assert r["tiocsti"] != "OK", r
    assert r["mknod_blk"] != "OK", f"a block device node could be created and opened: {r}"
    # Controls: ordinary process creation still works.
    assert r["getpid"] == "OK" and r["fork"] == "OK", r


def test_no_nested_user_namespace(menv):
    r = menv.probe("userns")
    for k in ("unshare", "clone", "clone3"):
        assert r[k] != "OK", f"nested user namespace via {k}: {r}"
    r = menv.sh("unshare -U -r true 2>&1; echo rc=$?")
    assert "rc=0" not in r.text, r


def test_tiocsti_blocked(menv):
    r = menv.probe("tiocsti")
    assert not r["tiocsti"].startswith("SETUP_FAILED"), f"could not open a pty inside: {r}"
    assert r["tiocsti"] in BLOCKED | {"EIO"}, r


def test_capabilities_and_no_new_privs(menv):
    r = menv.probe("caps")
    assert r["NoNewPrivs"] == "1", r
    assert r["Seccomp"] == "2", r
    for k in ("CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"):
        v = int(r[k], 16)
        assert v & ~pdk.SANDBOX_CAPS == 0, f"{k}={r[k]} exceeds docker's default set less NET_RAW"
    eff = int(r["CapEff"], 16)
    # SYS_ADMIN MODULE PTRACE RAWIO NET_ADMIN NET_RAW PERFMON BPF
    for cap in (21, 16, 19, 17, 12, 13, 38, 39):
        assert not eff & (1 << cap), f"capability {cap} present: {r}"


RAW_SOCKETS = r'''
import json, socket
out = {}
for name, fam, kind, proto in [("inet_raw_icmp", socket.AF_INET, socket.SOCK_RAW, 1),
                               ("inet_raw_tcp", socket.AF_INET, socket.SOCK_RAW, 6),
                               ("inet6_raw", socket.AF_INET6, socket.SOCK_RAW, 58),
                               ("packet_raw", socket.AF_PACKET, socket.SOCK_RAW, 0x0300),
                               ("packet_dgram", socket.AF_PACKET, socket.SOCK_DGRAM, 0x0300)]:
    try:
        socket.socket(fam, kind, proto).close(); out[name] = 0
    except OSError as e:
        out[name] = e.errno
print(json.dumps(out))
'''


def test_no_raw_or_packet_sockets(menv):
    """Without CAP_NET_RAW there is no raw IP socket and no AF_PACKET socket, the surface of
    several kernel escalations from user namespaces; the probe as root of the sandbox."""
    r = menv.pd.run("env", "exec", menv.id, "--", "python3", "-c", RAW_SOCKETS)
    assert r.rc == 0, r
    out = json.loads(r.text.strip().splitlines()[-1])
    if out["inet6_raw"] == errno.EAFNOSUPPORT:  # a kernel booted with ipv6.disable=1
        out["inet6_raw"] = errno.EPERM
    assert out == dict.fromkeys(out, errno.EPERM) and len(out) == 5, out


def test_only_std_fds_in_fresh_exec(menv, tmp_path):
    leak = open(tmp_path / "leaky-host-file", "w")
    try:
        argv = menv.pd.argv("env", "exec", menv.id, "--", "/workspace/probe", "fds")
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=menv.pd.env,
                           pass_fds=(leak.fileno(),), timeout=60 * pdk.SLOWDOWN)
        assert p.returncode == 0, p
        fds = json.loads(p.stdout)["fds"]
        assert sorted(f["fd"] for f in fds) == [0, 1, 2], fds
        assert not any("leaky-host-file" in f["target"] for f in fds), fds
    finally:
        leak.close()


def test_no_fds_leak_into_sandbox_init(pd, tmp_path):
    """An fd the creating process holds (not close-on-exec) must not end up in the sandbox."""
    leak = open(tmp_path / "leaky-at-create", "w")
    try:
        argv = pd.argv("env", "create", "--json")
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=pd.env,
                           pass_fds=(leak.fileno(),), timeout=60 * pdk.SLOWDOWN)
        assert p.returncode == 0, p
        info = json.loads(p.stdout)
        pd.ids.add(info["id"])
        pd.init_pids.add(info["init_pid"])
    finally:
        leak.close()
    init = info["init_pid"]
    targets = []
    for fd in os.listdir(f"/proc/{init}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{init}/fd/{fd}"))
        except OSError:
            pass
    assert not any("leaky-at-create" in t for t in targets), targets
    data = str(pd.data.resolve())
    assert not [t for t in targets if t.startswith(data)], \
        f"sandbox init holds host files of the data dir open: {targets}"
    env = pdk.Env(pd, info)
    r = env.probe("fds")
    assert sorted(f["fd"] for f in r["fds"]) == [0, 1, 2], r
    # From inside, init's descriptors are either unreadable or point at nothing of the host.
    r = env.probe("fds", "1")
    if "fds" in r:
        leaked = [f for f in r["fds"] if f["target"].startswith("/") and
                  not f["target"].startswith("/dev/")]
        assert not leaked, f"init's fds visible from inside: {r}"


# ------------------------------------------------------------------ network

def _listener(family, addr):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 0))
    s.listen(16)
    s.settimeout(0.2)
    hits = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                c, peer = s.accept()
                hits.append(peer)
                c.close()
            except (socket.timeout, OSError):
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    return s, hits, stop, t


@pytest.mark.parametrize("network", ["disabled", "default"])
def test_host_loopback_listener_unreachable(pd, network):
    opts = ["--network", "disabled"] if network == "disabled" else []
    env = pd.create(*opts)
    s4, hits4, stop4, t4 = _listener(socket.AF_INET, "127.0.0.1")
    servers = [(s4, stop4, t4)]
    try:
        port = s4.getsockname()[1]
        r = env.probe("connect", f"127.0.0.1:{port}", ok_rcs=(0, 1))
        assert r["connect"] != "OK", f"reached the host's 127.0.0.1:{port} from inside"
        if socket.has_ipv6:
            try:
                s6, hits6, stop6, t6 = _listener(socket.AF_INET6, "::1")
                servers.append((s6, stop6, t6))
                r = env.probe("connect", f"[::1]:{s6.getsockname()[1]}", ok_rcs=(0, 1))
                assert r["connect"] != "OK", "reached the host's [::1] from inside"
                assert not hits6
            except OSError:
                pass
        assert not hits4, f"host listener got connections: {hits4}"
    finally:
        for s, stop, t in servers:
            stop.set()
            t.join(2)
            s.close()


def test_only_loopback_interface_and_no_routes(menv):
    r = menv.probe("net")
    assert set(r["ifaces"]) <= {"lo"}, r
    assert not [x for x in r["ipv4_routes"] if x[0] != "lo"], r
    assert not [x for x in r["ipv6_routes"] if x[0] != "lo"], r


def test_loopback_inside_works(menv):
    script = ("import socket,threading\n"
              "s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(1)\n"
              "p=s.getsockname()[1]\n"
              "t=threading.Thread(target=lambda: s.accept()[0].sendall(b'pong')); t.start()\n"
              "c=socket.create_connection(('127.0.0.1',p)); print(c.recv(4).decode())\n")
    r = menv.exec("python3", "-c", script, opts=["--timeout", "20"])
    assert r.rc == 0 and r.text == "pong\n", r


# ------------------------------------------------------------------ the base image is shared

@pytest.fixture
def usr_marker():
    """A file in the host's /usr (the base image's lower layer), removed afterwards."""
    d = f"/usr/share/paddock-itest-{uuid.uuid4().hex[:12]}"
    os.makedirs(d)
    for name in ("orig", "victim"):
        with open(os.path.join(d, name), "w") as f:
            f.write("original\n")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_base_image_cannot_be_changed_for_others(pd, usr_marker):
    passwd_before = open("/etc/passwd", "rb").read()
    a, b = pd.create(), pd.create()
    orig = os.path.join(usr_marker, "orig")
    orig_mode = os.stat(orig).st_mode & 0o777
    # In A: create, modify, delete base-image files and extend /etc/passwd.
    ra = a.probe("write", "/usr/bin/paddock-itest-new", "new\n", ok_rcs=(0, 1))
    a.probe("write", orig, "changed by A\n", ok_rcs=(0, 1))
    a.probe("append", "/etc/passwd", "paddockitest:x:4242:4242::/:/bin/sh\n", ok_rcs=(0, 1))
    victim = os.path.join(usr_marker, "victim")
    a.sh(f"ln -s / {usr_marker}/planted; chmod 777 {orig}; rm -f {victim}; true")
    try:
        # The host is unaffected.
        assert not os.path.exists("/usr/bin/paddock-itest-new"), "A's write reached host /usr/bin"
        assert open(orig).read() == "original\n", "A's write reached the host's /usr"
        assert not os.path.lexists(os.path.join(usr_marker, "planted"))
        assert os.stat(orig).st_mode & 0o777 == orig_mode
        assert os.path.exists(victim), "A's rm reached the host's /usr"
        assert open("/etc/passwd", "rb").read() == passwd_before, "host /etc/passwd changed"
        # B is unaffected.
        rb = b.probe("stat", "/usr/bin/paddock-itest-new", orig, "/etc/passwd", victim,
                     os.path.join(usr_marker, "planted"))["paths"]
        assert not rb["/usr/bin/paddock-itest-new"]["exists"], rb
        assert rb[orig]["exists"] and rb[orig]["fnv"] == pdk.fnv64(b"original\n"), rb
        assert not rb[os.path.join(usr_marker, "planted")]["exists"], rb
        assert rb[victim]["exists"], rb
        assert rb[orig]["mode"] == f"{orig_mode:04o}", rb
        r = b.read("/etc/passwd")
        assert r.rc == 0 and b"paddockitest" not in r.out, r
        # A new environment is unaffected too.
        c = pd.create()
        rc_ = c.probe("stat", orig)["paths"][orig]
        assert rc_["fnv"] == pdk.fnv64(b"original\n"), rc_
        # And A sees its own changes only if its write succeeded (copy-up into its upper).
        if ra["write"] == "OK":
            assert a.read("/usr/bin/paddock-itest-new").out == b"new\n"
    finally:
        if open("/etc/passwd", "rb").read() != passwd_before:
            with open("/etc/passwd", "wb") as f:
                f.write(passwd_before)
        try:
            os.unlink("/usr/bin/paddock-itest-new")
        except OSError:
            pass


def test_compat_syscall_entry_points_blocked(menv):
    """The i386 (int 0x80) and x32 entry points must not bypass the filter."""
    r = menv.probe("compat")
    if "skipped" in r:
        pytest.skip(f"compat ABIs: {r['skipped']}")
    bad = {k: v for k, v in r.items() if k != "i386_getpid" and v not in BLOCKED | {"SIGNAL_11"}}
    assert not bad, f"reachable through a compat entry point: {bad}\nall: {r}"


def test_paddock_processes_cannot_be_traced(menv):
    """Nothing in the sandbox can ptrace paddock's own processes (init, handlers) or reach the
    host binary they run from through /proc/PID/exe."""
    menv.sh_ok("/workspace/probe daemonize /tmp/trace-target.pids")
    r = menv.probe("ptrace")
    ours = {"pdk_daemon", "pdk_sleeper", "sh", "probe"}
    theirs = [p for p in r["procs"] if p["comm"] not in ours]
    assert theirs, f"expected paddock's init among the processes: {r}"
    for p in theirs:
        assert p["attach"] != "OK", f"ptrace attach to {p['comm']} (pid {p['pid']}) worked: {r}"
        assert p["exe_write"] != "OK" and p["exe_read"] != "OK", f"/proc/{p['pid']}/exe: {r}"
    # Our own processes stay traceable (strace and gdb work).
    own = [p for p in r["procs"] if p["comm"] == "pdk_daemon"]
    assert own and own[0]["attach"] == "OK", r
    menv.sh("kill -9 $(cat /tmp/trace-target.pids)")


def test_data_dir_path_not_revealed_by_process_list(menv):
    """The data directory's host path does not leak through /proc (e.g. init's command line)."""
    data = str(menv.pd.data)
    r = menv.probe("procs")
    leaks = [p for p in r["procs"] if data in p.get("cmdline", "")]
    assert not leaks, f"host data dir path visible in /proc/PID/cmdline inside: {leaks}"
    r = menv.probe("mounts")
    leaks = [m for m in r["mounts"] if data in m["source"] or data in m["options"]
             or data in m["root"]]
    assert not leaks, f"host data dir path visible in mountinfo: {leaks}"


def test_environments_isolated_from_each_other(pd):
    """Two sandboxes share no loopback, abstract socket, SysV IPC, hostname or /tmp."""
    a, b = pd.create(), pd.create()
    server = ("import socket, sys, time\n"
              "s = socket.socket(); s.bind(('127.0.0.1', 47001)); s.listen(5)\n"
              "u = socket.socket(socket.AF_UNIX); u.bind('\\0paddock-itest-abs'); u.listen(5)\n"
              "open('/tmp/ready', 'w').close(); time.sleep(30)\n")
    a.sh_ok(f"python3 -c \"{server}\" >/dev/null 2>&1 </dev/null & "
            "for i in $(seq 100); do [ -e /tmp/ready ] && break; sleep 0.05; done; "
            "[ -e /tmp/ready ]")
    assert a.probe("connect", "127.0.0.1:47001", ok_rcs=(0, 1))["connect"] == "OK", \
        "control: the listener is reachable inside its own sandbox"
    assert b.probe("connect", "127.0.0.1:47001", ok_rcs=(0, 1))["connect"] != "OK"
    assert b.probe("connect-unix", "@paddock-itest-abs", ok_rcs=(0, 1))["connect"] != "OK"
    assert not b.probe("stat", "/tmp/ready")["paths"]["/tmp/ready"]["exists"]
    assert a.probe("hostname")["hostname"] != b.probe("hostname")["hostname"]
    if os.path.exists("/usr/bin/ipcmk"):
        a.sh_ok("ipcmk -M 4096 >/dev/null")
        r = b.exec("ipcs", "-m")
        assert r.rc == 0 and "0x" not in r.text, f"A's shared memory visible in B: {r}"
    a.sh("pkill -f paddock-itest-abs; true")
