"""Helpers that drive the real paddock binary for the integration tests.

Everything goes through the CLI, the way a user would drive it; the host-side checks only read
what any administrator could look at (/proc, /sys/fs/cgroup, the data directory).
"""

import glob
import hashlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SANITIZED = os.environ.get("PADDOCK_SANITIZED") == "1"
# Generous per-call timeouts: a hung paddock must fail the test, never hang the suite.
SLOWDOWN = 3 if SANITIZED else 1
ID_RE = re.compile(r"^env_[0-9A-Za-z]{26}$")

# Docker's default capability set: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
# NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP.
DOCKER_DEFAULT_CAPS = 0x00000000A80425FB
# What a sandbox keeps: that set without NET_RAW (13).
SANDBOX_CAPS = DOCKER_DEFAULT_CAPS & ~(1 << 13)

GiB = 1 << 30
MiB = 1 << 20


def paddock_bin():
    return Path(os.environ.get("PADDOCK_BIN") or ROOT / "build" / "paddock").resolve()


def probe_bin():
    p = os.environ.get("PADDOCK_PROBE")
    return Path(p).resolve() if p else paddock_bin().parent / "probe"


class Result:
    """The outcome of one paddock invocation."""

    def __init__(self, argv, rc, out, err, elapsed):
        self.argv, self.rc, self.out, self.err, self.elapsed = argv, rc, out, err, elapsed

    @property
    def text(self):
        return self.out.decode("utf-8", "replace")

    @property
    def errtext(self):
        return self.err.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.out)

    def __repr__(self):
        def cut(b):
            s = b.decode("utf-8", "replace")
            return s if len(s) < 2000 else s[:1000] + f"...[{len(s)} chars]..." + s[-800:]

        return (f"<paddock {' '.join(map(str, self.argv[1:]))!r}: rc={self.rc} "
                f"({self.elapsed:.2f}s)\n  stdout={cut(self.out)!r}\n  stderr={cut(self.err)!r}>")


def one_line_error(res, *needles):
    """Asserts res failed with exactly one non-empty stderr line mentioning one of needles."""
    assert res.rc != 0, res
    lines = [l for l in res.errtext.splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one error line: {res}"
    if needles:
        low = lines[0].lower()
        assert any(n.lower() in low for n in needles), f"error should mention {needles}: {res}"
    return lines[0]


class Paddock:
    """One data directory and the paddock CLI pointed at it."""

    def __init__(self, data_dir):
        self.data = Path(data_dir)
        self.ids = set()
        self.init_pids = set()
        env = dict(os.environ)
        env.pop("PADDOCK_DATA_DIR", None)
        env["PADDOCK_STORAGE_SIZE"] = "2G"
        self.env = env

    # ---- raw invocation ----

    def argv(self, *args, data_dir=True):
        a = [str(paddock_bin())]
        if data_dir:
            a += ["--data-dir", str(self.data)]
        return a + [x if isinstance(x, bytes) else str(x) for x in args]

    def run(self, *args, input=None, timeout=120, env=None, pass_fds=(), data_dir=True,
            stdin=None):
        argv = self.argv(*args, data_dir=data_dir)
        if isinstance(input, str):
            input = input.encode()
        t0 = time.monotonic()
        try:
            p = subprocess.run(argv, input=input,
                               stdin=stdin if stdin is not None else
                               (None if input is not None else subprocess.DEVNULL),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               timeout=timeout * SLOWDOWN, env=env or self.env,
                               pass_fds=pass_fds)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"paddock {args!r} did not finish within {timeout * SLOWDOWN}s; "
                                 f"stdout={e.stdout!r:.500} stderr={e.stderr!r:.500}") from None
        return Result(argv, p.returncode, p.stdout, p.stderr, time.monotonic() - t0)

    def ok(self, *args, **kw):
        r = self.run(*args, **kw)
        assert r.rc == 0, r
        return r

    # ---- environments ----

    def create(self, *opts, **kw):
        r = self.ok("env", "create", "--json", *opts, **kw)
        info = r.json()
        assert ID_RE.match(info["id"]), r
        self.ids.add(info["id"])
        if isinstance(info.get("init_pid"), int):
            self.init_pids.add(info["init_pid"])
        return Env(self, info)

    def ls(self):
        r = self.ok("env", "ls", "--json")
        data = r.json()
        assert isinstance(data, list), r
        for e in data:
            if isinstance(e.get("init_pid"), int):
                self.init_pids.add(e["init_pid"])
        return data

    def info(self, env_id):
        for e in self.ls():
            if e["id"] == env_id:
                return e
        return None

    # ---- teardown and leak checks ----

    def teardown(self):
        """Runs `system teardown`, then checks that nothing of this data dir is left on the host.
        Whatever is left is cleaned up by force and reported as a failure."""
        problems = []
        if self.data.exists():
            try:
                for e in json.loads(self.run("env", "ls", "--json", timeout=20).out or b"[]"):
                    self.ids.add(e["id"])
                    if isinstance(e.get("init_pid"), int):
                        self.init_pids.add(e["init_pid"])
            except (AssertionError, ValueError, KeyError, TypeError):
                pass
            self.ids.update(pooled_ids(self.data))
            try:
                r = self.run("system", "teardown",
                             timeout=int(os.environ.get("PADDOCK_TEST_TEARDOWN_TIMEOUT", "60")))
                if r.rc != 0:
                    problems.append(f"system teardown failed: {r}")
            except AssertionError as e:  # it hung
                problems.append(str(e))
        problems += force_cleanup(self.data, self.ids, self.init_pids)
        if problems:
            raise AssertionError("paddock left state behind:\n  " + "\n  ".join(problems))


class Env:
    """One environment of a Paddock."""

    def __init__(self, pd, info):
        self.pd, self.info, self.id = pd, info, info["id"]
        self.has_probe = False

    def __repr__(self):
        return f"<Env {self.id}>"

    def refresh(self):
        self.info = self.pd.info(self.id)
        return self.info

    @property
    def init_pid(self):
        return self.info["init_pid"]

    def exec(self, *argv, opts=(), **kw):
        return self.pd.run("env", "exec", self.id, *opts, "--", *argv, **kw)

    def sh(self, script, opts=(), **kw):
        return self.pd.run("env", "exec", self.id, *opts, "-c", script, **kw)

    def sh_ok(self, script, opts=(), **kw):
        r = self.sh(script, opts=opts, **kw)
        assert r.rc == 0, r
        return r

    def write(self, path, data, mode=None, **kw):
        opts = ["--mode", mode] if mode else []
        return self.pd.run("env", "write", self.id, path, *opts, input=data, **kw)

    def read(self, path, **kw):
        return self.pd.run("env", "read", self.id, path, **kw)

    def files(self, path=None, recursive=False, **kw):
        args = ["env", "files", self.id] + ([path] if path is not None else [])
        if recursive:
            args.append("--recursive")
        return self.pd.run(*args, "--json", **kw)

    def stop(self):
        return self.pd.ok("env", "stop", self.id)

    def start(self):
        r = self.pd.ok("env", "start", self.id)
        self.refresh()
        if isinstance(self.info.get("init_pid"), int):
            self.pd.init_pids.add(self.info["init_pid"])
        return r

    def rm(self):
        return self.pd.ok("env", "rm", self.id)

    # ---- the probe ----

    def push_probe(self):
        data = probe_bin().read_bytes()
        r = self.write("/workspace/probe", data, mode="0755")
        assert r.rc == 0, r
        self.has_probe = True

    def probe(self, *args, ok_rcs=(0,), **kw):
        if not self.has_probe:
            self.push_probe()
        r = self.exec("/workspace/probe", *args, **kw)
        assert r.rc in ok_rcs, r
        lines = r.text.strip().splitlines()
        assert lines, r
        return json.loads(lines[-1])


# ---------------------------------------------------------------- host-side observation

def read_text(path, default=""):
    try:
        with open(path, "r", errors="replace") as f:
            return f.read()
    except OSError:
        return default


def pid_alive(pid):
    """True when pid exists and is not a zombie."""
    stat = read_text(f"/proc/{pid}/stat")
    if not stat:
        return False
    state = stat[stat.rfind(")") + 2:][:1]
    return state not in ("Z", "X", "")


def wait_until(pred, timeout=10, interval=0.05):
    end = time.monotonic() + timeout * SLOWDOWN
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            return v
        time.sleep(interval)


def host_mounts():
    """Lines of the host's mount table (ours and pid 1's mount namespace)."""
    lines = read_text("/proc/self/mountinfo").splitlines()
    lines += read_text("/proc/1/mountinfo").splitlines()
    return lines


def mountinfo_mountpoint(line):
    return line.split()[4].replace("\\040", " ")


def loop_devices_backed_by(prefix):
    out = []
    for bf in glob.glob("/sys/block/loop*/loop/backing_file"):
        target = read_text(bf).strip()
        if target.startswith(str(prefix)):
            out.append((bf.split("/")[3], target))
    return out


def loop_holders(loops):
    """The processes whose mount namespace still mounts one of loops (pid, comm, mount point)."""
    held = []
    for mi in glob.glob("/proc/[0-9]*/mountinfo"):
        pid = mi.split("/")[2]
        for line in read_text(mi).splitlines():
            if any(f" /dev/{dev} " in line for dev, _ in loops):
                held.append((pid, read_text(f"/proc/{pid}/comm").strip(), line.split()[4]))
                break
    return held[:10]


def cgroup_dirs_for(env_id):
    pats = [f"/sys/fs/cgroup/*/paddock/{env_id}", f"/sys/fs/cgroup/paddock/{env_id}",
            f"/sys/fs/cgroup/*/*/paddock/{env_id}", f"/sys/fs/cgroup/*/paddock*/{env_id}*",
            f"/sys/fs/cgroup/paddock*/{env_id}*"]
    found = set()
    for p in pats:
        found.update(glob.glob(p))
    return sorted(found)


def procs_in_cgroup_of(env_id):
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit() and env_id in read_text(f"/proc/{d}/cgroup"):
            if pid_alive(int(d)):
                pids.append(int(d))
    return pids


def host_cgroup_paths(pid):
    """Maps controller -> host directory of pid's cgroup, v1 and v2 alike."""
    out = {}
    for line in read_text(f"/proc/{pid}/cgroup").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrls, path = parts
        if ctrls == "":
            for base in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
                if os.path.exists(base + "/cgroup.controllers"):
                    out.setdefault("v2", base + path)
                    break
        else:
            for c in ctrls.split(","):
                out[c] = f"/sys/fs/cgroup/{ctrls}{path}"
                if not os.path.isdir(out[c]):
                    out[c] = f"/sys/fs/cgroup/{c}{path}"
    return out


def cgroup_value(pid, v1_ctrl, v1_file, v2_file):
    """Reads a limit of pid's cgroup: the v1 file when that controller is on v1, else v2."""
    paths = host_cgroup_paths(pid)
    if v1_ctrl in paths and os.path.exists(os.path.join(paths[v1_ctrl], v1_file)):
        return read_text(os.path.join(paths[v1_ctrl], v1_file)).strip()
    if "v2" in paths and os.path.exists(os.path.join(paths["v2"], v2_file)):
        return read_text(os.path.join(paths["v2"], v2_file)).strip()
    return None


def pooled_ids(data_dir):
    """Ids of the warm pool's sandboxes (never listed), so the leak checks cover them too."""
    import sqlite3
    db_path = Path(data_dir) / "paddock.db"
    if not db_path.exists():
        return []
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
        try:
            return [r[0] for r in db.execute("SELECT id FROM environments WHERE state = 5")]
        finally:
            db.close()
    except sqlite3.Error:
        return []


def force_cleanup(data_dir, ids, init_pids):
    """Finds what is left of a data directory on the host, removes it, returns descriptions."""
    problems = []
    data = str(Path(data_dir).resolve())
    for pid in sorted(init_pids):
        if pid_alive(pid) and any(i in read_text(f"/proc/{pid}/cgroup") for i in ids):
            problems.append(f"sandbox init {pid} still alive")
    killed = []
    for env_id in sorted(ids):
        pids = procs_in_cgroup_of(env_id)
        if pids:
            problems.append(f"processes of {env_id} still alive: {pids}")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
    # The sandboxes' mount namespaces pin the storage: let them die before unmounting.
    wait_until(lambda: not any(pid_alive(p) for p in killed), 10)
    mps = sorted({mountinfo_mountpoint(l) for l in host_mounts() if data in l},
                 key=len, reverse=True)
    if mps:
        problems.append(f"mounts left: {mps}")
    for mp in mps:
        subprocess.run(["umount", "-l", mp], stderr=subprocess.DEVNULL)
    # The loop device detaches itself once the last user of the file system is gone, which may
    # trail the unmount: a sandbox's mount namespace dying, then btrfs closing (seconds on a
    # loaded machine). A device still there after 30 s is reported with whatever pins it.
    wait_until(lambda: not loop_devices_backed_by(data), 30)
    loops = loop_devices_backed_by(data)
    if loops:
        problems.append(f"loop devices left: {loops}, mounted in: {loop_holders(loops)}")
    for dev, _ in loops:
        subprocess.run(["losetup", "-d", f"/dev/{dev}"], stderr=subprocess.DEVNULL)
    for env_id in sorted(ids):
        dirs = cgroup_dirs_for(env_id)
        if dirs:
            problems.append(f"cgroups left for {env_id}: {dirs}")
        time.sleep(0.1) if dirs else None
        for d in sorted(dirs, key=len, reverse=True):
            for sub, _, _ in sorted(os.walk(d), key=lambda t: len(t[0]), reverse=True):
                try:
                    os.rmdir(sub)
                except OSError:
                    pass
    return problems


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def fnv64(data):
    h = 1469598103934665603
    for b in data:
        h ^= b
        h = (h * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def fnv64_file(path):
    with open(path, "rb") as f:
        return fnv64(f.read())


class Reader(threading.Thread):
    """Drains a pipe, keeping only the total size and a bounded prefix."""

    def __init__(self, pipe, keep=4 * MiB):
        super().__init__(daemon=True)
        self.pipe, self.keep, self.size, self.head = pipe, keep, 0, bytearray()
        self.start()

    def run(self):
        while True:
            chunk = self.pipe.read1(1 << 16) if hasattr(self.pipe, "read1") else self.pipe.read(1 << 16)
            if not chunk:
                break
            self.size += len(chunk)
            if len(self.head) < self.keep:
                self.head += chunk[: self.keep - len(self.head)]


def run_with_rusage(argv, env, timeout):
    """Runs argv, draining its output; returns (rc, stdout Reader, stderr Reader, rusage)."""
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    out, err = Reader(p.stdout), Reader(p.stderr)
    end = time.monotonic() + timeout * SLOWDOWN
    hwm = 0
    while True:
        # ru_maxrss after exec can report the forked Python parent's size; VmHWM is the
        # high-water mark of the program's own address space.
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        hwm = max(hwm, int(line.split()[1]))
        except OSError:
            pass
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid == p.pid:
            break
        if time.monotonic() > end:
            p.kill()
            pid, status, ru = os.wait4(p.pid, 0)
            p.returncode = -9
            raise AssertionError(f"{argv!r} did not finish within {timeout * SLOWDOWN}s")
        time.sleep(0.05)
    p.returncode = os.waitstatus_to_exitcode(status)
    out.join(10)
    err.join(10)
    return p.returncode, out, err, hwm


def memory_count(pid, needle):
    """How many times needle is in the readable mappings of process pid (under 4 GiB each: under
    ASan the larger ones are shadow memory)."""
    n, step = 0, 64 << 20
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            addr, perms = line.split()[:2]
            if not perms.startswith("r") or line.rstrip().endswith(("[vvar]", "[vsyscall]")):
                continue
            lo, hi = (int(x, 16) for x in addr.split("-"))
            if hi - lo > 4 << 30:
                continue
            tail = b""
            for at in range(lo, hi, step):
                try:
                    mem.seek(at)
                    piece = tail + mem.read(min(step, hi - at))
                except OSError:
                    break
                n += piece.count(needle)
                tail = piece[-(len(needle) - 1):]
    return n
