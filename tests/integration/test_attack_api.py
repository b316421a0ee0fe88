"""Attacks on `paddock serve` from the API and from inside a sandbox: hostile archives given to
an extracting upload, planted links and odd files in the snapshot, path tricks on the file
routes, ownership across `from_environment`, and a sandbox process going after its init and the
daemon's secrets. Every test checks that the host is untouched and that the API answers with the
documented 4xx.

Host-side checks use unique tokens in every hostile name, then look for them on the host
(`/`, `/tmp`, `/etc`, the data directory), so a file that escaped anywhere is found.
"""

import hashlib
import http.client
import io
import os
import secrets
import stat
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

import pdk
from apiserver import *  # noqa: F401,F403 (fixtures)
from apiserver import ApiServer, assert_error_shape, assert_names, finish, MISSING_ID

V = "v1beta"
GiB = pdk.GiB


# ----------------------------------------------------------------------------- helpers

def tok():
    return "pdkatk" + secrets.token_hex(5)


def tar_bytes(entries, fmt=tarfile.PAX_FORMAT):
    """entries: (TarInfo, data or None). Returns the tar as bytes."""
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=fmt) as t:
        for ti, data in entries:
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    return b.getvalue()


def t_reg(name, data=b"x", mode=0o644):
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), mode, 1700000000
    return ti, data


def t_dir(name, mode=0o755):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, mode, 1700000000
    return ti, None


def t_sym(name, target):
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, target, 0o777
    return ti, None


def t_hard(name, target):
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = tarfile.LNKTYPE, target
    return ti, None


def t_dev(name, typ, major, minor):
    ti = tarfile.TarInfo(name)
    ti.type, ti.devmajor, ti.devminor, ti.mode = typ, major, minor, 0o666
    return ti, None


def t_pax(name, pax_path, data=b"pax"):
    """A member whose ustar name is benign and whose pax `path` record says otherwise."""
    ti, data = t_reg(name, data)
    ti.pax_headers = {"path": pax_path}
    return ti, data


def zip_symlink(name):
    zi = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
    zi.create_system = 3  # unix
    zi.external_attr = (stat.S_IFLNK | 0o777) << 16
    return zi


def zip_bytes(members):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        for name, data in members:
            if not isinstance(name, zipfile.ZipInfo):
                name = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            z.writestr(name, data)
    return b.getvalue()


def sh(pd, env_id, script, timeout=60):
    return pd.run("env", "exec", env_id, "--", "sh", "-c", script, timeout=timeout)


def sh_ok(pd, env_id, script, timeout=60):
    r = sh(pd, env_id, script, timeout=timeout)
    assert r.rc == 0, r
    return r


def new_env(api, body=None):
    e = api.http.create(body if body is not None else {})
    api.pd.ids.add(e["id"])
    return e["id"]


def file_sha(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError as e:
        return f"<{e.__class__.__name__}>"


def host_hits(token, data_dir):
    """Every host path (in /, /tmp, /etc, /root, /work/main and the whole data dir) whose name
    holds token."""
    hits = []
    for d in ("/", "/tmp", "/etc", "/root", "/var/tmp", str(pdk.ROOT)):
        try:
            hits += [os.path.join(d, n) for n in os.listdir(d) if token in n]
        except OSError:
            pass
    for top, dirs, files in os.walk(data_dir):
        hits += [os.path.join(top, n) for n in dirs + files if token in n]
    return hits


def api_names(api, env_id, path):
    """The names the API lists in directory path (404 counts as empty)."""
    r = api.http.files(env_id, path, query="recursive=true")
    if r.status == 404:
        return []
    assert r.status == 200, r
    return sorted(f["path"] for f in r.json()["files"])


def sandbox_ls(api, env_id, path):
    """`ls -A` inside the sandbox: the entries of path (empty when it is missing)."""
    r = sh(api.pd, env_id, f"ls -A1 {path} 2>/dev/null; true")
    assert r.rc == 0, r
    return [l for l in r.text.splitlines() if l]


class Counting:
    """A file-like view of a response that counts bytes, looks for needles across chunk borders
    and keeps nothing else."""

    def __init__(self, resp, needles):
        self.resp, self.needles, self.n, self.tail, self.found = resp, needles, 0, b"", set()
        self.keep = max(len(n) for n in needles) if needles else 0

    def read(self, size=-1):
        data = self.resp.read(size if size and size > 0 else 1 << 20)
        if data:
            self.n += len(data)
            window = self.tail + data
            for nd in self.needles:
                if nd in window:
                    self.found.add(nd)
            self.tail = window[-self.keep:] if self.keep else b""
        return data


def snapshot_stream(api, env_id, timeout=300):
    conn = http.client.HTTPConnection(api.server.host, api.server.port,
                                      timeout=timeout * pdk.SLOWDOWN)
    conn.request("GET", f"/{V}/files/environment-{env_id}:download?alt=media",
                 headers={"x-goog-api-key": api.key})
    return conn, conn.getresponse()


# ======================================================= 1. hostile archives, extract=true

def hostile_cases(t):
    """(id, archive bytes, names the error may give, host paths that must not appear)."""
    return [
        ("dotdot", tar_bytes([t_reg("ok1"), t_reg(f"../{t}-escape")]),
         (f"../{t}-escape",), []),
        ("absolute", tar_bytes([t_reg("ok1"), t_reg(f"/{t}/path"), t_reg(f"/tmp/{t}-abs")]),
         (f"/{t}/path",), [f"/{t}", f"/tmp/{t}-abs"]),
        ("inner-dotdot", tar_bytes([t_dir("a"), t_reg(f"a/../../{t}-x")]),
         (f"a/../../{t}-x",), []),
        ("symlink-abs-then-through", tar_bytes([t_sym("link", "/etc"),
                                                t_reg("link/passwd", f"{t}\n".encode())]),
         ("'link'", "link/passwd"), []),
        ("symlink-up-then-through", tar_bytes([t_sym("l", "../../.."),
                                               t_reg(f"l/tmp/{t}-pwned")]),
         ("'l'", f"l/tmp/{t}-pwned"), [f"/tmp/{t}-pwned"]),
        ("symlink-deep-up", tar_bytes([t_dir("d"), t_dir("d/e"), t_sym("d/e/up", "../../../x")]),
         ("d/e/up",), []),
        ("hardlink-abs", tar_bytes([t_hard(f"{t}-h", "/etc/shadow")]),
         (f"{t}-h",), []),
        ("hardlink-up", tar_bytes([t_reg("ok1"), t_hard(f"{t}-h2", "../x")]),
         (f"{t}-h2",), []),
        ("zip-dotdot", zip_bytes([("ok.txt", b"ok"), (f"../{t}-evil", b"evil")]),
         (f"../{t}-evil",), []),
        ("zip-backslash-dotdot", zip_bytes([("ok.txt", b"ok"), (f"..\\{t}-evil2", b"evil")]),
         (f"{t}-evil2",), []),
        ("zip-absolute", zip_bytes([("ok.txt", b"ok"), (f"/tmp/{t}-zabs", b"evil")]),
         (f"/tmp/{t}-zabs",), [f"/tmp/{t}-zabs"]),
        ("zip-symlink-abs", zip_bytes([("ok.txt", b"ok"), (zip_symlink("zlink"), b"/etc"),
                                       ("zlink/passwd", f"{t}\n".encode())]),
         ("zlink",), []),
        ("pax-path-dotdot", tar_bytes([t_reg("ok1"), t_pax("benign", f"../{t}-pax")]),
         (f"../{t}-pax",), []),
        ("gnu-longname-dotdot", tar_bytes([t_reg("ok1"), t_reg("../" + "n" * 120 + t)],
                                          fmt=tarfile.GNU_FORMAT),
         ("../nnnn",), []),
    ]


CASE_IDS = [c[0] for c in hostile_cases("t")]


@pytest.fixture(scope="module")
def xenv(mapi):
    """One environment that the extraction attacks aim at."""
    return new_env(mapi)


@pytest.mark.parametrize("case", CASE_IDS)
def test_hostile_archive_is_refused_and_writes_nothing(mapi, xenv, case):
    t = tok()
    _, data, names, host_paths = next(c for c in hostile_cases(t) if c[0] == case)
    target = f"workspace/x-{case}"
    passwd_before = mapi.http.download(xenv, "etc/passwd")
    assert passwd_before.status == 200, passwd_before
    host_before = {p: file_sha(p) for p in ("/etc/passwd", "/etc/shadow")}
    ws_before = api_names(mapi, xenv, "workspace")

    r = mapi.http.upload(xenv, target, data, query="extract=true")
    assert_names(r, *names, status=400)

    # Nothing in the target, seen through the API and from inside.
    assert api_names(mapi, xenv, target) == [], r
    assert sandbox_ls(mapi, xenv, "/" + target) == []
    # Nothing new anywhere in /workspace but the (empty) target directory itself.
    ws_after = api_names(mapi, xenv, "workspace")
    assert set(ws_after) - set(ws_before) <= {target}, (ws_before, ws_after)
    assert not any(t in n for n in ws_after)
    # The sandbox's own /etc/passwd and /tmp are as they were.
    assert mapi.http.download(xenv, "etc/passwd").body == passwd_before.body
    assert not [n for n in sandbox_ls(mapi, xenv, "/tmp") if t in n]
    assert sh(mapi.pd, xenv, f"ls -d /{t} 2>/dev/null").text.strip() == ""
    # And the host.
    for p in host_paths:
        assert not os.path.lexists(p), p
    assert host_hits(t, mapi.pd.data) == []
    assert {p: file_sha(p) for p in host_before} == host_before


def test_hostile_archive_gzip_and_upload_at_root(mapi, xenv):
    """The same checks hold for a compressed archive, and for an archive extracted at `/`."""
    import gzip
    t = tok()
    data = gzip.compress(tar_bytes([t_reg("fine"), t_reg(f"../../{t}")]))
    r = mapi.http.upload(xenv, "workspace/gz-target", data, query="extract=true")
    assert_names(r, f"../../{t}", status=400)
    assert api_names(mapi, xenv, "workspace/gz-target") == []
    r = mapi.http.upload(xenv, "", tar_bytes([t_reg(f"tmp/{t}-ok"), t_reg(f"/{t}-abs")]),
                         query="extract=true")
    assert_names(r, f"/{t}-abs", status=400)
    assert not [n for n in sandbox_ls(mapi, xenv, "/tmp") if t in n]
    assert host_hits(t, mapi.pd.data) == []


def test_benign_archive_extracts_exactly(mapi, xenv):
    t = tok()
    target = f"workspace/good-{t}"
    entries = [t_dir("d", 0o750), t_dir("d/e", 0o700),
               t_reg("top.txt", b"top\n", 0o640),
               t_reg("d/run.sh", b"#!/bin/sh\necho run\n", 0o755),
               t_reg("d/e/deep.bin", bytes(range(256)) * 4, 0o600),
               t_reg("empty", b"", 0o444),
               t_sym("lnk", "d/run.sh"),
               t_sym("d/e/up", "../../top.txt"),
               t_hard("d/hard.txt", "top.txt")]
    r = mapi.http.upload(xenv, target, tar_bytes(entries), query="extract=true")
    assert r.status == 200, r
    out = sh_ok(mapi.pd, xenv,
                f"cd /{target} && find . -mindepth 1 | sort | while read f; do "
                "stat -c '%n|%F|%a|%s|%u:%g' \"$f\"; done; readlink lnk; readlink d/e/up; "
                "cat lnk; cat d/e/up; stat -c %i top.txt d/hard.txt").text.splitlines()
    want = ["./d|directory|750", "./d/e|directory|700", "./d/e/deep.bin|regular file|600|1024",
            "./d/e/up|symbolic link|777", "./d/hard.txt|regular file|640|4",
            "./d/run.sh|regular file|755|19", "./empty|regular empty file|444|0",
            "./lnk|symbolic link|777", "./top.txt|regular file|640|4"]
    got = []
    for l in out[:9]:
        f = l.split("|")
        assert f[-1] == "0:0", out  # extracted as the sandbox's root
        got.append("|".join(f[:3] if f[1] in ("directory", "symbolic link") else f[:4]))
    assert got == want, out
    assert out[9:13] == ["d/run.sh", "../../top.txt", "#!/bin/sh", "echo run"], out
    assert out[13] == "top", out
    assert out[14] == out[15], f"the hard link is not one inode: {out}"
    got_list = api_names(mapi, xenv, target)
    assert got_list == sorted(f"{target}/{p}" for p in
                              ["d", "d/e", "d/e/deep.bin", "d/e/up", "d/hard.txt", "d/run.sh",
                               "empty", "lnk", "top.txt"]), got_list
    r = mapi.http.download(xenv, f"{target}/d/e/deep.bin")
    assert r.status == 200 and r.body == bytes(range(256)) * 4, r


def test_symlink_chain_that_leaves_the_target_is_refused(mapi, xenv):
    t = tok()
    target = f"workspace/chain-{t}"
    r = mapi.http.upload(xenv, target, tar_bytes([t_sym("s", "."),
                                                  t_sym("t", "s/s/s/../../..")]),
                         query="extract=true")
    escaped = sh(mapi.pd, xenv, f"readlink -f /{target}/t 2>/dev/null").text.strip()
    assert_names(r, "'t'", "s/s/s", status=400)
    assert api_names(mapi, xenv, target) == [], escaped


@pytest.mark.parametrize("case", ["missing-target", "through-symlink", "char-device",
                                  "block-device", "whiteout"])
def test_archive_failing_in_the_write_pass_is_400_and_leaves_nothing(mapi, xenv, case):
    """Also device nodes: the kernel refuses mknod in the sandbox's user namespace (so the host
    is safe), but the refusal comes in the write pass, as a 500 after earlier entries."""
    t = tok()
    target = f"workspace/half-{case}-{t}"
    entries = {"missing-target": [t_reg(f"{t}-first"), t_hard(f"{t}-h", "no-such-member")],
               "through-symlink": [t_sym("d", "sub"), t_reg("sub/f"), t_hard(f"{t}-h", "d/f")],
               "char-device": [t_reg(f"{t}-first"), t_dev("mem", tarfile.CHRTYPE, 1, 1)],
               "block-device": [t_reg(f"{t}-first"), t_dev("sda", tarfile.BLKTYPE, 8, 0)],
               "whiteout": [t_reg(f"{t}-first"), t_dev("wh", tarfile.CHRTYPE, 0, 0)]}
    r = mapi.http.upload(xenv, target, tar_bytes(entries[case]), query="extract=true")
    left = api_names(mapi, xenv, target)
    assert r.status == 400, (r, left)
    assert left == [], r
    assert not [l for l in sandbox_ls(mapi, xenv, "/" + target) if l in ("mem", "sda", "wh")]


# An environment's files before an extraction over them: path -> content (None: a directory,
# ("->", target): a symlink).
EXISTING = {"a.txt": b"old a\n", "dir": None, "dir/b.txt": b"old b\n", "keep.txt": b"keep\n",
            "plain": b"a file where the archive has a directory\n", "lnk": ("->", "a.txt"),
            "full": None, "full/x.txt": b"x\n"}


def plant_existing(api, env_id, target):
    script = [f"rm -rf /{target}", f"mkdir -p /{target}", f"cd /{target}"]
    for p, v in EXISTING.items():
        if v is None:
            script.append(f"mkdir -p {p}")
        elif isinstance(v, tuple):
            script.append(f"ln -s {v[1]} {p}")
        else:
            script.append(f"printf '%s' '{v.decode()}' > {p}")
    sh_ok(api.pd, env_id, " && ".join(script))
    return tree_of(api, env_id, target)


def tree_of(api, env_id, target):
    """Every path under target, seen from inside, with its type and content or link target."""
    out = sh_ok(api.pd, env_id,
                f"cd /{target} && find . -mindepth 1 | sort | while read f; do "
                "if [ -L \"$f\" ]; then echo \"$f L $(readlink \"$f\")\"; "
                "elif [ -d \"$f\" ]; then echo \"$f D\"; "
                "else echo \"$f F $(od -An -tx1 \"$f\" | tr -d ' \\n')\"; fi; done").text
    return out.splitlines()


def late_bad_member():
    """Members that replace every existing file (and turn the file `plain` into a directory),
    then a last member whose data is bad."""
    return [("a.txt", b"new a\n"), ("dir/b.txt", b"new b\n"), ("new/n.txt", b"new\n"),
            ("plain/", None), ("plain/inner.txt", b"inner\n"), ("lnk", b"a file now\n")]


def zip_with_bad_last(kind):
    b = io.BytesIO()
    last = ("last.bin", b"compressible " * 4000)
    with zipfile.ZipFile(b, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in late_bad_member() + [last]:
            if data is None:
                z.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), b"")
                continue
            z.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data,
                       compress_type=zipfile.ZIP_DEFLATED if kind == "zip-bad-deflate"
                       else zipfile.ZIP_STORED)
        zi = z.getinfo(last[0])
    data = bytearray(b.getvalue())
    start = zi.header_offset + 30 + len(zi.filename.encode()) + len(zi.extra)
    if kind == "zip-bad-deflate":
        # Garbage in the middle of the deflate stream: zlib refuses it, or the CRC does.
        mid = start + zi.compress_size // 2
        data[mid:mid + 64] = b"\xff" * 64
    else:
        # Stored data that no longer matches the CRC both directories give.
        data[start + 100] ^= 0x55
    return bytes(data)


def tar_with_bad_last(kind):
    members = [t_dir(n.rstrip("/")) if d is None else t_reg(n, d) for n, d in late_bad_member()]
    if kind == "tar-truncated":
        # The last member's data stops half-way, and the archive with it.
        raw = tar_bytes(members + [t_reg("last.bin", bytes(range(256)) * 64)])
        return raw[:raw.index(b"last.bin") + 1024 + 4000]
    if kind == "tar-name-too-long":
        # A name no file system takes: only creating it finds that out.
        return tar_bytes(members + [t_reg("last.bin-" + "n" * 300, b"long\n")])
    # A file where the environment has a directory that is not empty.
    return tar_bytes(members + [t_reg("full", b"not a directory\n")])


@pytest.mark.parametrize("kind,status,names", [
    ("zip-bad-deflate", 400, ("last.bin",)), ("zip-bad-crc", 400, ("last.bin",)),
    ("tar-truncated", 400, ("archive",)), ("tar-name-too-long", 400, ("last.bin-nnn",)),
    ("tar-dir-in-the-way", 400, ("full",))])
def test_archive_failing_late_leaves_existing_files_untouched(mapi, xenv, kind, status, names):
    """An archive found bad only while its last member is written: the files it would have
    replaced keep their content, and nothing of it (no temporary either) stays behind."""
    target = f"workspace/late-{kind}"
    before = plant_existing(mapi, xenv, target)
    data = zip_with_bad_last(kind) if kind.startswith("zip") else tar_with_bad_last(kind)
    r = mapi.http.upload(xenv, target, data, query="extract=true")
    assert_names(r, *names, status=status)
    after = tree_of(mapi, xenv, target)
    assert after == before, (r, before, after)
    for p, v in EXISTING.items():
        if isinstance(v, bytes):
            assert mapi.http.download(xenv, f"{target}/{p}").body == v, p


def test_extract_over_existing_files_replaces_them(mapi, xenv):
    target = "workspace/late-ok"
    plant_existing(mapi, xenv, target)
    members = [(n, b"" if d is None else d) for n, d in late_bad_member()]
    r = mapi.http.upload(xenv, target, zip_bytes(members), query="extract=true")
    assert r.status == 200, r
    got = tree_of(mapi, xenv, target)
    hexof = lambda b: b.hex()  # noqa: E731
    assert got == ["./a.txt F " + hexof(b"new a\n"), "./dir D", "./dir/b.txt F " + hexof(b"new b\n"),
                   "./full D", "./full/x.txt F " + hexof(b"x\n"), "./keep.txt F " + hexof(b"keep\n"), "./lnk F " + hexof(b"a file now\n"),
                   "./new D", "./new/n.txt F " + hexof(b"new\n"), "./plain D",
                   "./plain/inner.txt F " + hexof(b"inner\n")], got
    # A tar over the result: a later member of the same name wins, a hard link follows the
    # member it names, and a symlink replaces a file.
    r = mapi.http.upload(xenv, target, tar_bytes([t_reg("a.txt", b"first\n"),
                                                   t_hard("hard", "a.txt"),
                                                   t_reg("a.txt", b"second\n"),
                                                   t_sym("keep.txt", "a.txt"),
                                                   t_dir("dir", 0o700)]),
                         query="extract=true")
    assert r.status == 200, r
    out = sh_ok(mapi.pd, xenv, f"cd /{target} && cat a.txt hard && readlink keep.txt && "
                "stat -c %a dir && ls -A dir plain && ls -A | grep -c paddock; true").text
    assert out.splitlines() == ["second", "first", "a.txt", "700", "dir:", "b.txt", "",
                                "plain:", "inner.txt", "0"], out


def test_empty_directory_in_the_way_of_a_file_is_replaced(mapi, xenv):
    """As libarchive did: an empty directory where the archive has a file gives way to it. One
    with files in it is refused with a 400 (not 409: sending it again would not help), and the
    archive's other entries, the empty directory among them, are not applied either."""
    target = "workspace/empty-in-the-way"
    sh_ok(mapi.pd, xenv, f"rm -rf /{target} && mkdir -p /{target}/e /{target}/sub/e2 "
          f"/{target}/full && echo keep > /{target}/full/k && chmod 0700 /{target}/e")
    before = tree_of(mapi, xenv, target)
    r = mapi.http.upload(xenv, target, tar_bytes([t_reg("e", b"one\n"), t_reg("full", b"no\n")]),
                         query="extract=true")
    assert_names(r, "full", status=400)
    assert r.json()["error"]["status"] == "INVALID_ARGUMENT", r
    assert tree_of(mapi, xenv, target) == before
    # A file where the archive has entries inside (and no directory entry): 400 too.
    r = mapi.http.upload(xenv, target, tar_bytes([t_reg("e", b"one\n"), t_reg("full/k/x", b"x")]),
                         query="extract=true")
    assert_names(r, "full/k", status=400)
    assert tree_of(mapi, xenv, target) == before
    r = mapi.http.upload(xenv, target, tar_bytes([t_reg("e", b"one\n"), t_reg("sub/e2", b"two\n"),
                                                  t_reg("sub/f", b"f\n")]),
                         query="extract=true")
    assert r.status == 200, r
    hexof = lambda b: b.hex()  # noqa: E731
    assert tree_of(mapi, xenv, target) == [
        "./e F " + hexof(b"one\n"), "./full D", "./full/k F " + hexof(b"keep\n"), "./sub D",
        "./sub/e2 F " + hexof(b"two\n"), "./sub/f F " + hexof(b"f\n")]


class Zeros(io.RawIOBase):
    """n zero bytes, read without holding them."""

    def __init__(self, n):
        self.left = n

    def readable(self):
        return True

    def readinto(self, b):
        k = min(len(b), self.left)
        b[:k] = bytes(k)
        self.left -= k
        return k


def tgz_with_big_tail(entries, big=256 << 20):
    """entries, then a member of big zero bytes: the write pass takes a while, the upload not."""
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w:gz", compresslevel=1, format=tarfile.PAX_FORMAT) as t:
        for ti, data in entries:
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
        ti, _ = t_reg("big.bin", b"")
        ti.size = big
        t.addfile(ti, io.BufferedReader(Zeros(big)))
    return b.getvalue()


def in_sandbox_during(api, env_id, script):
    """Runs script inside the sandbox in a thread; returns a function that waits for its
    result."""
    box = {}
    th = threading.Thread(target=lambda: box.setdefault("r", sh(api.pd, env_id, script,
                                                                timeout=120)))
    th.start()

    def wait():
        th.join(150)
        return box.get("r")
    return wait


WAIT_FOR_TEMP = ("n=0; until ls -A | grep -q paddock-extract; do n=$((n+1)); "
                 "[ $n -gt 12000 ] && exit 3; sleep 0.005; done")


def test_directory_swapped_in_during_the_write_pass_is_not_hidden(mapi, xenv):
    """A symlink the archive replaces with a directory is swapped, by a process of the sandbox
    while the archive is written, for a directory with the user's files. The commit must not
    exchange that directory away to a temporary name: 409, the user's directory where it was,
    and nothing of the archive in place."""
    target = "workspace/swap-dir"
    sh_ok(mapi.pd, xenv, f"rm -rf /{target} && mkdir -p /{target} && cd /{target} && "
          "echo a > a.txt && ln -s a.txt lnk")
    wait = in_sandbox_during(mapi, xenv, f"cd /{target} && {WAIT_FOR_TEMP}; "
                             "rm lnk && mkdir lnk && echo mine > lnk/mine && echo swapped")
    data = tgz_with_big_tail([t_dir("lnk"), t_reg("lnk/in.txt", b"in\n"),
                              t_reg("a.txt", b"new a\n")])
    r = mapi.http.upload(xenv, target, data, query="extract=true")
    swapped = wait()
    assert swapped is not None and swapped.text.strip() == "swapped", (swapped, r)
    assert_names(r, "lnk", status=409)
    hexof = lambda b: b.hex()  # noqa: E731
    assert tree_of(mapi, xenv, target) == ["./a.txt F " + hexof(b"a\n"), "./lnk D",
                                           "./lnk/mine F " + hexof(b"mine\n")]


def test_extraction_whose_caller_gave_up_is_rolled_back(mapi, xenv):
    """The handler is stopped from inside the sandbox during the write pass for longer than the
    caller waits (10 s without a frame): the caller answers 504, and the handler, continued,
    must not commit an archive whose result nobody learns."""
    target = "workspace/gave-up"
    sh_ok(mapi.pd, xenv, f"rm -rf /{target} && mkdir -p /{target} && echo old > /{target}/a.txt")
    # The extracting handler is the busy one that is not serving this shell (its parent).
    stop = (f"cd /{target} && {WAIT_FOR_TEMP}; h=; for p in /proc/[0-9]*; do "
            "[ \"$(cat $p/comm 2>/dev/null)\" = paddock-handler ] && [ ${p#/proc/} != $PPID ] "
            "&& h=\"$h ${p#/proc/}\"; done; [ $(echo $h | wc -w) = 1 ] || exit 4; "
            "kill -STOP $h; sleep 13; kill -CONT $h; echo stopped $h")
    wait = in_sandbox_during(mapi, xenv, stop)
    data = tgz_with_big_tail([t_reg("a.txt", b"new\n"), t_reg("b.txt", b"b\n")])
    r = mapi.http.upload(xenv, target, data, query="extract=true")
    stopped = wait()
    assert stopped is not None and stopped.text.startswith("stopped"), (stopped, r)
    assert r.status == 504, r
    deadline = time.monotonic() + 60 * pdk.SLOWDOWN
    while True:  # the continued handler finishes (or undoes) its work
        left = sandbox_ls(mapi, xenv, "/" + target)
        if not any("paddock-extract" in n for n in left) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert left == ["a.txt"], left
    assert mapi.http.download(xenv, f"{target}/a.txt").body == b"old\n"


def test_rolled_back_commit_leaves_base_files_and_empty_directories_as_they_were(mapi):
    """A commit undone (a process of the sandbox makes a directory where the archive puts a
    file) after it had replaced a file only the base image has, and an empty directory of the
    environment: no copy of the base file stays in the environment's own layer (an exchange
    would have copied it up, data and all), and the empty directory comes back with its owner,
    mode and times. Extracted again without the race, the archive replaces the base file."""
    env_id = new_env(mapi)
    t = tok()
    base = "etc/ethertypes"
    upper = mapi.pd.data / "envs" / env_id / "upper" / "root"
    assert not (upper / base).exists()
    old = mapi.http.download(env_id, base).body
    assert old
    sh_ok(mapi.pd, env_id, f"mkdir /etc/e-{t} && chown 1000:1000 /etc/e-{t} && "
          f"chmod 0750 /etc/e-{t} && touch -d @1600000000 /etc/e-{t}")
    meta = f"stat -c '%u %g %a %Y %F' /etc/e-{t}"
    before = sh_ok(mapi.pd, env_id, meta).text
    wait = in_sandbox_during(mapi, env_id, f"cd /etc && {WAIT_FOR_TEMP}; "
                             f"mkdir z-{t} && echo mine > z-{t}/f && echo raced")
    data = tgz_with_big_tail([t_reg("ethertypes", b"new\n"), t_reg(f"e-{t}", b"file\n"),
                              t_reg(f"z-{t}", b"z\n")])
    r = mapi.http.upload(env_id, "etc", data, query="extract=true")
    raced = wait()
    assert raced is not None and raced.text.strip() == "raced", (raced, r)
    assert_names(r, f"z-{t}", status=409)
    assert mapi.http.download(env_id, base).body == old
    assert not os.path.lexists(upper / base), "a copy of the base file stayed in the layer"
    assert sh_ok(mapi.pd, env_id, meta).text == before
    assert not [n for n in sandbox_ls(mapi, env_id, "/etc") if "paddock" in n and t not in n
                and n.startswith(".")]
    r = mapi.http.upload(env_id, "etc", tar_bytes([t_reg("ethertypes", b"new\n")]),
                         query="extract=true")
    assert r.status == 200, r
    assert mapi.http.download(env_id, base).body == b"new\n"
    assert (upper / base).read_bytes() == b"new\n"


# ============================================================ 2. the snapshot, planted links

def _make_host_marker():
    t = tok()
    path = Path(f"/root/paddock-marker-{t}")
    marker = f"HOSTMARKER-{t}-{secrets.token_hex(8)}".encode()
    path.write_bytes(marker + b"\n")
    return path, marker


def test_snapshot_carries_links_as_links_and_no_host_content(mapi):
    env_id = new_env(mapi)
    mpath, marker = _make_host_marker()
    try:
        before = os.lstat(mpath)
        host_shadow = Path("/etc/shadow").read_bytes() if os.path.exists("/etc/shadow") else b""
        deep = "/".join(["d"] * 100)
        sh_ok(mapi.pd, env_id, f"""set -e
            mkdir -p /workspace/p && cd /workspace/p
            ln -s /etc/shadow shadowlink
            ln -s /proc/1/root rootlink
            ln -s / slash
            ln -s {mpath} markerlink
            ln -s /proc/self/environ envlink
            mkfifo fifo
            : > empty
            printf 'nl' > "$(printf 'new\\nline')"
            echo owned > u1000 && chown 1000:1000 u1000
            echo rootfile > r0
            mkdir -p deep/{deep} && echo bottom > deep/{deep}/f
            ln r0 r0hard
        """)
        conn, resp = snapshot_stream(mapi, env_id)
        try:
            assert resp.status == 200, resp.status
            assert resp.getheader("content-type", "").startswith("application/x-tar")
            body = resp.read()
        finally:
            conn.close()
        after = os.lstat(mpath)
    finally:
        mpath.unlink()
    assert marker not in body, "a host file's content is in the snapshot"
    for line in host_shadow.splitlines():
        if len(line) > 8:
            assert line not in body, "the host's /etc/shadow is in the snapshot"
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:") as tf:
        members = {m.name: m for m in tf.getmembers()}
        deepf = tf.extractfile(members[f"workspace/p/deep/{deep}/f"]).read()
        nl = tf.extractfile(members["workspace/p/new\nline"]).read()
    assert deepf == b"bottom\n" and nl == b"nl"
    links = {"shadowlink": "/etc/shadow", "rootlink": "/proc/1/root", "slash": "/",
             "markerlink": str(mpath), "envlink": "/proc/self/environ"}
    for name, target in links.items():
        m = members[f"workspace/p/{name}"]
        assert m.issym() and m.linkname == target and m.size == 0, (name, m.type, m.linkname)
    assert members["workspace/p/fifo"].isfifo()
    assert members["workspace/p/empty"].isreg() and members["workspace/p/empty"].size == 0
    u = members["workspace/p/u1000"]
    assert (u.uid, u.gid) == (1000, 1000), (u.uid, u.gid)
    for name in ("workspace/p/r0", "workspace/p", "workspace/p/slash", "workspace/p/fifo"):
        assert (members[name].uid, members[name].gid) == (0, 0), (name, members[name].uid)
    h = members["workspace/p/r0hard"]
    assert h.islnk() or (h.isreg() and h.size == len(b"rootfile\n")), h.type
    # Owners are the sandbox's, never the host's id range.
    assert max(max(m.uid, m.gid) for m in members.values()) < 65536
    # Nothing from the host's file system: every entry is a file the environment made, or one
    # paddock put into it (hosts, hostname, the egress trust files).
    assert all(n.startswith(("workspace", "etc/host", "etc/paddock", "usr"))
               or n in ("workspace", "etc") for n in members), sorted(members)[:50]
    # The host file the link names is untouched.
    assert (after.st_uid, after.st_mode, after.st_size) == \
        (before.st_uid, before.st_mode, before.st_size)


def test_snapshot_with_a_non_utf8_name_completes(mapi):
    env_id = new_env(mapi)
    sh_ok(mapi.pd, env_id, "mkdir -p /workspace/n && echo before > /workspace/n/a && "
                           "printf 'bin' > \"/workspace/n/$(printf 'x\\377\\376y')\" && "
                           "echo after > /workspace/n/z")
    conn, resp = snapshot_stream(mapi, env_id)
    try:
        assert resp.status == 200, resp.status
        try:
            body = resp.read()
        except http.client.IncompleteRead as e:
            raise AssertionError(f"snapshot cut off after {len(e.partial)} bytes") from None
    finally:
        conn.close()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:", encoding="utf-8",
                      errors="surrogateescape") as tf:
        names = tf.getnames()
    assert "workspace/n/a" in names and "workspace/n/z" in names, names
    assert any(n.startswith("workspace/n/x") and n.endswith("y") for n in names), names


def test_snapshot_of_a_sparse_1gib_file_streams_its_full_size(mapi):
    """~1.5 s here, ~7 s under ASan: 1 GiB of zeros through the sandbox and the server."""
    env_id = new_env(mapi)
    mpath, marker = _make_host_marker()
    try:
        sh_ok(mapi.pd, env_id, f"mkdir -p /workspace/s && truncate -s 1G /workspace/s/sparse && "
                               f"ln -s {mpath} /workspace/s/m && echo tail > /workspace/s/zz")
        conn, resp = snapshot_stream(mapi, env_id, timeout=600)
        try:
            assert resp.status == 200, resp.status
            stream = Counting(resp, [marker])
            seen = {}
            with tarfile.open(fileobj=stream, mode="r|") as tf:
                for m in tf:  # stream mode: member data is read past, never kept
                    seen[m.name] = (m.type, m.size, m.linkname)
            while stream.read(1 << 20):
                pass
        finally:
            conn.close()
    finally:
        mpath.unlink()
    assert seen["workspace/s/sparse"] == (tarfile.REGTYPE, GiB, ""), seen.get("workspace/s/sparse")
    assert seen["workspace/s/m"] == (tarfile.SYMTYPE, 0, str(mpath))
    assert "workspace/s/zz" in seen
    assert stream.n >= GiB, stream.n
    assert marker not in stream.found


# ========================================================== 3. file API path attacks (raw)

@pytest.fixture(scope="module")
def penv(mapi):
    env_id = new_env(mapi, {"sources": [
        {"type": "inline", "target": "/workspace/a.txt", "content": "alpha\n"}]})
    sh_ok(mapi.pd, env_id, "ln -s / /workspace/hostlink && ln -s /proc/1/root /workspace/initroot"
                           " && ln -s /etc /workspace/etclink")
    return env_id


TRAVERSALS = [
    "../../etc/passwd",
    "workspace/../../etc/passwd",
    "%2e%2e/%2e%2e/etc/passwd",
    "workspace/%2E%2E/%2e%2E/etc/passwd",
    "workspace%2f..%2f..%2fetc%2fpasswd",
    "workspace/.%2e/.%2e/etc/passwd",
    "workspace/./a.txt",
    "workspace/%2e/a.txt",
    "..",
    "%2e%2e",
    "workspace/..",
]


@pytest.mark.parametrize("path", TRAVERSALS)
@pytest.mark.parametrize("media", [True, False])
def test_traversal_in_file_paths_is_400(mapi, penv, path, media):
    r = mapi.http.get(f"/{V}/environments/{penv}/files/{path}" + ("?alt=media" if media else ""))
    assert_names(r, "path", "..", status=400)
    assert b"root:" not in r.body


@pytest.mark.parametrize("path", ["workspace/%00x", "workspace/a%00.txt", "%00", "workspace/%zz",
                                  "workspace/%2", "workspace/a.txt%"])
def test_nul_and_bad_escapes_are_400(mapi, penv, path):
    for p in (f"/{V}/environments/{penv}/files/{path}",
              f"/{V}/environments/{penv}/files/{path}?alt=media"):
        assert_error_shape(mapi.http.get(p), 400)
    r = mapi.http.upload_start(penv, path, 3)
    assert_error_shape(r, 400)


def test_upload_traversal_is_400_and_writes_nothing(mapi, penv):
    t = tok()
    for path in (f"../../tmp/{t}", f"%2e%2e/%2e%2e/tmp/{t}", f"workspace%2f..%2f..%2ftmp%2f{t}",
                 f"workspace/../{t}"):
        r = mapi.http.upload_start(penv, path, 3)
        assert_names(r, "path", "..", status=400)
        r = mapi.http.upload_start(penv, path, 3, query="extract=true")
        assert_names(r, "path", "..", status=400)
    assert not [n for n in sandbox_ls(mapi, penv, "/tmp") if t in n]
    assert host_hits(t, mapi.pd.data) == []


def test_long_and_deep_paths_are_400(mapi, penv):
    for path in ("a" * 5000, "workspace/" + "b" * 5000, "a/" * 2500, "%61" * 5000):
        r = mapi.http.get(f"/{V}/environments/{penv}/files/{path}?alt=media")
        assert_names(r, "path", "longer", status=(400, 414, 431))
        r = mapi.http.upload_start(penv, path, 1)
        assert r.status in (400, 414, 431), r
    assert mapi.http.get("/healthz").status == 200


@pytest.mark.parametrize("op", ["download", "list", "upload", "extract"])
def test_overlong_name_is_400(mapi, penv, op):
    path = "workspace/" + "c" * 300
    if op == "download":
        r = mapi.http.download(penv, path)
    elif op == "list":
        r = mapi.http.files(penv, path)
    elif op == "upload":
        r = mapi.http.upload(penv, path, b"x")
    else:
        r = mapi.http.upload(penv, path, tar_bytes([t_reg("a")]), query="extract=true")
    assert mapi.http.get("/healthz").status == 200
    assert r.status in (400, 404), r


def test_download_of_a_tty_link_is_400(mapi, penv):
    sh_ok(mapi.pd, penv, "ln -sf /dev/tty /workspace/special-tty")
    r = mapi.http.download(penv, "workspace/special-tty")
    assert_error_shape(r, 400)


def test_encoded_slashes_and_doubled_slashes_stay_in_the_sandbox(mapi, penv):
    sandbox_passwd = sh_ok(mapi.pd, penv, "cat /etc/passwd").out
    for path in ("etc%2fpasswd", "%2fetc%2fpasswd", "/etc//passwd", "etc/passwd/", "//etc/passwd"):
        r = mapi.http.get(f"/{V}/environments/{penv}/files/{path}?alt=media")
        assert r.status == 200, r
        assert r.body == sandbox_passwd, path


def test_symlink_to_root_in_the_sandbox_gives_the_sandbox_view(mapi, penv):
    t = tok()
    host_shadow = file_sha("/etc/shadow")
    # The sandbox has no /etc/shadow: through the link there is none either.
    r = mapi.http.download(penv, "workspace/hostlink/etc/shadow")
    assert r.status == 404, r
    if os.path.exists("/etc/shadow"):
        assert Path("/etc/shadow").read_bytes()[:20] not in r.body
    r = mapi.http.download(penv, "workspace/etclink/shadow")
    assert r.status == 404, r
    # What is there is the sandbox's.
    for p in ("workspace/hostlink/etc/hostname", "workspace/hostlink/etc/passwd"):
        r = mapi.http.download(penv, p)
        assert r.status == 200, r
        assert r.body == sh_ok(mapi.pd, penv, "cat /" + p.split("/", 2)[2]).out, p
    assert penv.encode() in mapi.http.download(penv, "workspace/hostlink/etc/hostname").body
    # Through init's root the kernel refuses (init is not dumpable): never the host's files.
    r = mapi.http.download(penv, "workspace/initroot/etc/hostname")
    assert r.status in (403, 404), r
    assert Path("/etc/hostname").read_bytes() not in r.body
    r = mapi.http.files(penv, "workspace/initroot/")
    assert r.status != 200 or all(not f["path"].startswith("workspace/initroot/root")
                                  for f in r.json()["files"]), r
    # The link itself lists as a link; a directory through it lists the sandbox's.
    r = mapi.http.files(penv, "workspace/hostlink/")
    assert r.status == 200, r
    assert [(f["path"], f["type"]) for f in r.json()["files"]] == \
        [("workspace/hostlink", "symlink")], r
    r = mapi.http.files(penv, "workspace/hostlink/etc")
    assert r.status == 200, r
    names = {f["name"] for f in r.json()["files"]}
    assert names == set(sandbox_ls(mapi, penv, "/etc")), names
    assert "shadow" not in names
    # An upload through the link lands in the sandbox's /tmp, never the host's.
    r = mapi.http.upload(penv, f"workspace/hostlink/tmp/{t}-pwned", b"pwned\n")
    assert r.status == 200, r
    assert sh_ok(mapi.pd, penv, f"cat /tmp/{t}-pwned").out == b"pwned\n"
    assert not os.path.lexists(f"/tmp/{t}-pwned")
    r = mapi.http.upload(penv, f"workspace/etclink/{t}-etc", b"etc\n")
    assert r.status == 200, r
    assert sh_ok(mapi.pd, penv, f"cat /etc/{t}-etc").out == b"etc\n"
    assert not os.path.lexists(f"/etc/{t}-etc")
    # Extraction through the link: also inside the sandbox.
    r = mapi.http.upload(penv, f"workspace/hostlink/tmp/{t}-x",
                         tar_bytes([t_reg("inner", b"in\n")]), query="extract=true")
    assert r.status == 200, r
    assert sh_ok(mapi.pd, penv, f"cat /tmp/{t}-x/inner").out == b"in\n"
    assert file_sha("/etc/shadow") == host_shadow
    # On the host, the files exist only inside this environment's own upper layer.
    own = str(mapi.pd.data / "envs" / penv / "upper" / "root") + "/"
    hits = host_hits(t, mapi.pd.data)
    assert hits and all(h.startswith(own) for h in hits), hits
    assert not [n for n in os.listdir("/tmp") if t in n]


def test_bad_environment_ids_in_paths_are_404(mapi, penv):
    for eid in ("..", "%2e%2e", "..%2f..%2fetc", "env_" + "0" * 26, penv + "x", penv[:-1],
                "environments%2f..%2f" + penv, "%2fetc", "*"):
        for p in (f"/{V}/environments/{eid}/files/workspace/a.txt?alt=media",
                  f"/{V}/environments/{eid}", f"/{V}/files/environment-{eid}:download?alt=media"):
            r = mapi.http.get(p)
            assert r.status in (400, 404), r
            assert b"alpha" not in r.body


@pytest.mark.parametrize("name,target,status", [
    ("fifo", None, 400), ("zero", "/dev/zero", 400), ("urandom", "/dev/urandom", 400),
    ("selfmem", "/proc/self/mem", 403), ("initenv", "/proc/1/environ", 403),
    ("kcore", "/proc/kcore", 404), ("dir", "/etc", 400)])
def test_special_files_never_stream_or_hang(mapi, penv, name, target, status):
    """A planted FIFO, device or /proc link: the download answers at once with a 4xx."""
    path = f"/workspace/special-{name}"
    sh_ok(mapi.pd, penv, f"rm -f {path}; " + (f"mkfifo {path}" if target is None
                                              else f"ln -s {target} {path}"))
    t0 = time.monotonic()
    r = mapi.http.get(f"/{V}/environments/{penv}/files{path}?alt=media", timeout=20)
    assert time.monotonic() - t0 < 10 * pdk.SLOWDOWN
    assert_error_shape(r, status)
    assert len(r.body) < 1000


def test_upload_session_of_another_project_is_404(mapi, penv):
    t = tok()
    other_key = mapi.server.make_key("attack-up-" + secrets.token_hex(3),
                                     scopes=("environments",), project="attack-up")
    other = mapi.server.http(other_key)
    sess = mapi.http.session_path(mapi.http.upload_start(penv, f"workspace/{t}.txt", 5))
    for cmd in ("upload, finalize", "query", "upload"):
        r = other.upload_chunk(sess, b"evil!", 0, command=cmd)
        assert_error_shape(r, 404)
    # Another project's key cannot start one on this environment either, nor read it.
    assert_error_shape(other.upload_start(penv, f"workspace/{t}-2.txt", 1), 404)
    assert_error_shape(other.download(penv, "workspace/a.txt"), 404)
    assert_error_shape(other.get(f"/{V}/files/environment-{penv}:download?alt=media"), 404)
    # The session is still the owner's, untouched.
    r = mapi.http.upload_chunk(sess, b"mine\n", 0, finalize=True)
    assert r.status == 200, r
    assert mapi.http.download(penv, f"workspace/{t}.txt").body == b"mine\n"
    assert other.download(penv, f"workspace/{t}.txt").status == 404


# ============================================================== 4. from_environment, owners

def _stats(pd, env_id, names):
    out = sh_ok(pd, env_id, "cd /workspace/f && stat -c '%n %u %g %a %h %F' "
                + " ".join(names)).text.splitlines()
    return out


def _host_owner_range(vol):
    """(min, max) of every uid and gid in the volume, without following links."""
    ids = set()
    for top, dirs, files in os.walk(vol):
        for n in dirs + files:
            if top == str(vol) and n == "ctl.sock":
                continue  # init's control socket: the host's root, by design (SANDBOX.md)
            st = os.lstat(os.path.join(top, n))
            ids.update((st.st_uid, st.st_gid))
    st = os.lstat(vol)
    ids.update((st.st_uid, st.st_gid))
    return min(ids), max(ids)


def test_from_environment_keeps_owners_modes_and_shifts_host_ids(mapi):
    pd = mapi.pd
    src = new_env(mapi)
    mpath, _ = _make_host_marker()
    try:
        shadow_before = os.lstat("/etc/shadow") if os.path.exists("/etc/shadow") else None
        marker_before = os.lstat(mpath)
        sh_ok(pd, src, f"""set -e
            mkdir -p /workspace/f && cd /workspace/f
            echo root > rootfile
            echo user > u1000 && chown 1000:1000 u1000
            mkdir udir && chown 1000:1000 udir && chmod 0750 udir
            cp /bin/true su && chmod 4755 su
            cp /bin/true sg && chgrp 1000 sg && chmod 2755 sg
            echo h > h1 && ln h1 h2
            ln -s rootfile sl
            ln -s /etc/shadow shadowlink
            ln -s {mpath} markerlink
            chown -h 1000:1000 shadowlink markerlink
        """)
        names = ["rootfile", "u1000", "udir", "su", "sg", "h1", "h2", "sl", "shadowlink",
                 "markerlink"]
        want = _stats(pd, src, names)
        r = mapi.http.post(f"/{V}/environments",
                           json_body={"from_environment": f"environments/{src}"})
        assert r.status == 200, r
        cp = r.json()["id"]
        pd.ids.add(cp)
        assert cp != src
        # Inside, the copy is the same: owners, modes (set-id bits kept), links.
        assert _stats(pd, cp, names) == want
        got = {l.split()[0]: l.split()[1:] for l in want}
        assert got["su"][:3] == ["0", "0", "4755"], want
        assert got["sg"][:3] == ["0", "1000", "2755"], want
        assert got["u1000"][:2] == ["1000", "1000"] and got["udir"][:3] == ["1000", "1000", "750"]
        assert got["h1"][3] == "2", want
        ino = sh_ok(pd, cp, "cd /workspace/f && stat -c %i h1 h2 && readlink sl shadowlink"
                    ).text.split()
        assert ino[0] == ino[1] and ino[2:] == ["rootfile", "/etc/shadow"], ino
        assert sh_ok(pd, cp, "/workspace/f/su && cat /workspace/f/h2").text == "h\n"
        # The host: each volume only holds owners of its own id range, and the ranges differ.
        vs, vc = pd.data / "envs" / src, pd.data / "envs" / cp
        assert (vs / "upper" / "root" / "workspace" / "f" / "rootfile").exists(), \
            sorted(os.listdir(pd.data / "envs"))
        smin, smax = _host_owner_range(vs)
        cmin, cmax = _host_owner_range(vc)
        assert smax - smin < 65536 and cmax - cmin < 65536, (smin, smax, cmin, cmax)
        assert smax < cmin or cmax < smin, f"id ranges overlap: {(smin, smax)} {(cmin, cmax)}"
        assert smin > 0 and cmin > 0, "a volume file is owned by the host's root"
        for n in names:
            hs = os.lstat(vs / "upper" / "root" / "workspace" / "f" / n)
            hc = os.lstat(vc / "upper" / "root" / "workspace" / "f" / n)
            assert hs.st_mode == hc.st_mode, n
            assert hc.st_uid - cmin == hs.st_uid - smin and hc.st_uid != hs.st_uid, n
            assert hc.st_gid - cmin == hs.st_gid - smin, n
        hsu = os.lstat(vc / "upper" / "root" / "workspace" / "f" / "su")
        assert hsu.st_mode & stat.S_ISUID and hsu.st_uid == cmin and hsu.st_uid != 0
        # The host files the planted links name are untouched by the owner shift.
        if shadow_before is not None:
            now = os.lstat("/etc/shadow")
            assert (now.st_uid, now.st_gid, now.st_mode) == \
                (shadow_before.st_uid, shadow_before.st_gid, shadow_before.st_mode)
        now = os.lstat(mpath)
        assert (now.st_uid, now.st_gid, now.st_mode) == \
            (marker_before.st_uid, marker_before.st_gid, marker_before.st_mode)
    finally:
        mpath.unlink()
    # Copy and source are independent both ways.
    sh_ok(pd, cp, "echo copy > /workspace/f/rootfile && echo new > /workspace/f/only-copy && "
                  "echo hc >> /workspace/f/h1")
    sh_ok(pd, src, "echo src > /workspace/f/u1000 && echo new > /workspace/f/only-src")
    assert sh_ok(pd, src, "cat /workspace/f/rootfile /workspace/f/h2").text == "root\nh\n"
    assert sh_ok(pd, cp, "cat /workspace/f/u1000 /workspace/f/h2").text == "user\nh\nhc\n"
    assert sh(pd, src, "test -e /workspace/f/only-copy").rc != 0
    assert sh(pd, cp, "test -e /workspace/f/only-src").rc != 0
    # The copy's writes are made by its own root (host-side: its own range).
    hc = os.lstat(pd.data / "envs" / cp / "upper" / "root" / "workspace" / "f" / "only-copy")
    assert hc.st_uid == cmin


def test_from_environment_never_follows_a_planted_etc(mapi):
    """A sandbox that makes its /etc a link to a host directory, then is copied: the copy is
    refused with a 400 that names /etc, and the host directory and what is in it keep their
    modes and contents (the server writes the copy's /etc/hosts and /etc/hostname as the
    host's root)."""
    pd = mapi.pd
    src = new_env(mapi)
    t = tok()
    victim = Path(f"/root/paddock-victim-{t}")
    victim.mkdir(mode=0o700)
    try:
        (victim / "hosts").write_text(f"HOSTMARKER-{t}\n")
        (victim / "hosts").chmod(0o600)
        before = [(p.name, p.stat().st_mode, p.stat().st_uid, p.read_bytes())
                  for p in sorted(victim.iterdir())]
        vmode = victim.stat().st_mode
        sh_ok(pd, src, f"rm -rf /etc && ln -s {victim} /etc")
        vols = set(user_volumes(pd))
        r = mapi.http.post(f"/{V}/environments",
                           json_body={"from_environment": f"environments/{src}"})
        assert_error_shape(r, 400)
        assert "/etc" in r.json()["error"]["message"], r.json()
        assert victim.stat().st_mode == vmode
        assert [(p.name, p.stat().st_mode, p.stat().st_uid, p.read_bytes())
                for p in sorted(victim.iterdir())] == before
        assert set(user_volumes(pd)) <= vols, "the refused copy left its volume"
    finally:
        for p in victim.iterdir():
            p.unlink()
        victim.rmdir()


def test_from_environment_never_empties_where_a_planted_work_link_points(mapi):
    """The volume's directory belongs to the sandbox's root, so a sandbox that once reached it
    (test_hostside's /proc/self/fd links did) could make its work/ a link. A copy empties the
    source's overlay scratch, work/root and work/usr, as the host's root: through such a link
    it emptied whatever host directory the link named. The copy is refused now, and the
    directory keeps its files. (The link is planted here from the host: the way in from the
    sandbox is closed.)"""
    pd = mapi.pd
    src = new_env(mapi)
    t = tok()
    victim = Path(f"/root/paddock-victim-{t}")
    vol = pd.data / "envs" / src
    moved = vol / f"work.{t}"
    try:
        for sub in ("root", "usr"):
            (victim / sub).mkdir(parents=True)
            (victim / sub / "keep.txt").write_text(f"MARKER-{t}\n")
        os.rename(vol / "work", moved)
        os.symlink(victim, vol / "work")
        vols = set(user_volumes(pd))
        r = mapi.http.post(f"/{V}/environments",
                           json_body={"from_environment": f"environments/{src}"})
        assert r.status >= 400, r
        for sub in ("root", "usr"):
            assert (victim / sub / "keep.txt").read_text() == f"MARKER-{t}\n"
        assert set(user_volumes(pd)) <= vols, "the refused copy left its volume"
    finally:
        if (vol / "work").is_symlink():
            (vol / "work").unlink()
            os.rename(moved, vol / "work")
        for sub in ("root", "usr"):
            if (victim / sub / "keep.txt").exists():
                (victim / sub / "keep.txt").unlink()
            if (victim / sub).exists():
                (victim / sub).rmdir()
        victim.rmdir()


def test_from_environment_with_a_fifo_for_hosts_does_not_hang(mapi):
    """A sandbox that leaves FIFOs where the server writes its copy's /etc/hosts (the name and
    the server's temporary names) is copied all the same, and the copy has its own hosts."""
    pd = mapi.pd
    src = new_env(mapi)
    pid = mapi.server.proc.pid
    sh_ok(pd, src, f"cd /etc && rm -f hosts && mkfifo hosts hosts.tmp.{pid} "
                   f"hostname.tmp.{pid}")
    r = mapi.http.post(f"/{V}/environments",
                       json_body={"from_environment": f"environments/{src}"}, timeout=30)
    assert r.status == 200, r
    cp = r.json()["id"]
    pd.ids.add(cp)
    assert cp in sh_ok(pd, cp, "cat /etc/hosts").text


def user_volumes(pd):
    """The volumes under envs/ but for the warm pool's (the server refills its pool after a
    create, at any moment of a test)."""
    return sorted(set(os.listdir(pd.data / "envs")) - set(pdk.pooled_ids(pd.data)))


def test_from_environment_of_another_project_or_missing_is_404(mapi):
    pd = mapi.pd
    other_key = mapi.server.make_key("attack-other-" + secrets.token_hex(3),
                                     scopes=("environments",), project="attack-other")
    other = mapi.server.http(other_key)
    theirs = other.create({"sources": [
        {"type": "inline", "target": "/workspace/secret.txt", "content": "theirs\n"}]})["id"]
    pd.ids.add(theirs)
    vols_before = user_volumes(pd)
    ids_before = sorted(mapi.http.ids())
    for ref in (f"environments/{theirs}", theirs, MISSING_ID, f"environments/{MISSING_ID}"):
        r = mapi.http.post(f"/{V}/environments", json_body={"from_environment": ref})
        assert_error_shape(r, 404)
        assert theirs not in r.text or ref.endswith(theirs), r
    for ref in ("environments/../" + theirs, "../" + theirs, "environments/", "",
                "env_" + "0" * 25, theirs + "/../x"):
        r = mapi.http.post(f"/{V}/environments", json_body={"from_environment": ref})
        assert r.status in (400, 404), r
    assert sorted(mapi.http.ids()) == ids_before
    assert user_volumes(pd) == vols_before
    assert theirs in {e["id"] for e in pd.ls()}
    assert len(pd.ls()) == len(set(ids_before) | {theirs})
    # The other project still sees its file, unchanged.
    r = other.download(theirs, "workspace/secret.txt")
    assert r.status == 200 and r.body == b"theirs\n", r


def test_from_environment_of_a_too_deep_tree_fails_cleanly(mapi):
    """A source deeper than the owner shift walks (512 levels) is refused with a 4xx and leaves
    no volume or row behind; the source is unharmed."""
    pd = mapi.pd
    src = new_env(mapi)
    sh_ok(pd, src, "cd /workspace && for i in $(seq 600); do mkdir d && cd d; done && "
                   "echo bottom > f")
    vols_before = user_volumes(pd)
    ids_before = sorted(e["id"] for e in pd.ls())
    r = mapi.http.post(f"/{V}/environments", json_body={"from_environment": src}, timeout=120)
    if r.status == 200:  # a copy that works is fine too, as long as it is whole
        pd.ids.add(r.json()["id"])
        deep = "/".join(["d"] * 600)
        assert sh_ok(pd, r.json()["id"], f"cat /workspace/{deep}/f").text == "bottom\n"
        return
    assert 400 <= r.status < 500, r
    assert_error_shape(r)
    assert user_volumes(pd) == vols_before
    assert sorted(e["id"] for e in pd.ls()) == ids_before
    deep = "/".join(["d"] * 600)
    assert sh_ok(pd, src, f"cat /workspace/{deep}/f").text == "bottom\n"


# ========================================================= 5. the sandbox against its init

def test_sandbox_cannot_ptrace_or_read_init_nor_find_the_key(pd):
    secret = "PDKSECRET" + secrets.token_hex(12)
    server = ApiServer(pd, env={**pd.env, "PADDOCK_ATTACK_SECRET": secret}).start()
    try:
        key = server.make_key("attack-rw")
        h = server.http(key)
        env_id = h.create({})["id"]
        pd.ids.add(env_id)
        # The patterns go in a file, so they never appear in a command line or environment.
        r = h.upload(env_id, "workspace/.pat", f"{key}\n{secret}\n".encode())
        assert r.status == 200, r
        r = sh(pd, env_id, """
            cat /proc/1/environ >/dev/null 2>&1; echo environ=$?
            ls /proc/1/fd >/dev/null 2>&1; echo fd=$?
            readlink /proc/1/root >/dev/null 2>&1; echo root=$?
            readlink /proc/1/exe >/dev/null 2>&1; echo exe=$?
            head -c1 /proc/1/mem >/dev/null 2>&1; echo mem=$?
            cat /proc/1/maps >/dev/null 2>&1 && test -s /proc/1/maps; echo maps=$?
            timeout 20 strace -p 1 -o /dev/null >/dev/null 2>&1; echo strace=$?
            timeout 30 gdb -nx -batch -p 1 -ex 'info registers rip' -ex 'x/s $sp' >/tmp/gdb.out 2>&1
            grep -c 'ptrace: Operation not permitted' /tmp/gdb.out
            grep -c '^rip' /tmp/gdb.out; true
        """, timeout=90)
        assert r.rc == 0, r
        res = r.text.split()
        kv = dict(x.split("=") for x in res[:7])
        assert all(v != "0" for v in kv.values()), r
        assert res[7] != "0" and res[8] == "0", f"gdb attached to init: {r}"
        r = sh(pd, env_id, "grep -rlaF -f /workspace/.pat /proc/[0-9]*/environ "
               "/proc/[0-9]*/cmdline /etc /tmp /root /home /var /run /workspace "
               "2>/dev/null; echo ---; env; true", timeout=90)
        assert r.rc == 0, r
        hits, _, envout = r.text.partition("---\n")
        # The pattern file itself is the positive control: grep does find what is there.
        assert hits.split() == ["/workspace/.pat"], r
        assert key not in envout and secret not in envout, r
        # Not through any file route either.
        for p in ("proc/1/environ", "proc/self/environ", "proc/1/cmdline"):
            r = h.download(env_id, p)
            assert key.encode() not in r.body and secret.encode() not in r.body, r
        conn, resp = snapshot_stream(server_api(server, key), env_id)
        try:
            body = resp.read()
        finally:
            conn.close()
        assert resp.status == 200
        # Only in workspace/.pat, which holds them.
        assert body.count(secret.encode()) == 1 and body.count(key.encode()) == 1
    finally:
        finish(server)


def server_api(server, key):
    class A:
        pass
    a = A()
    a.server, a.key = server, key
    return a


def test_a_link_in_place_of_the_control_socket_is_not_followed(mapi):
    """The server reaches a sandbox through DATA/envs/ID/ctl.sock, in a directory that belongs to
    the sandbox's root. A link put there (from the host here; the ways in from the sandbox are
    closed) used to be followed, sending this environment's requests, as the host's root, to
    whatever socket it named: here a socket of the test's own that records a connection. Now
    the request fails, naming the control socket, and nothing connects."""
    import socket as sk
    pd = mapi.pd
    eid = new_env(mapi)
    vol = pd.data / "envs" / eid
    t = tok()
    lure = Path(f"/tmp/paddock-lure-{t}.sock")
    ls = sk.socket(sk.AF_UNIX, sk.SOCK_STREAM)
    ls.bind(str(lure))
    ls.listen(4)
    ls.settimeout(0.5)
    moved = vol / f"ctl.sock.{t}"
    try:
        os.rename(vol / "ctl.sock", moved)
        os.symlink(lure, vol / "ctl.sock")
        r = mapi.http.get(f"/{V}/environments/{eid}/files/workspace")
        assert r.status >= 400, r
        with pytest.raises(sk.timeout):
            ls.accept()
    finally:
        if (vol / "ctl.sock").is_symlink():
            (vol / "ctl.sock").unlink()
            os.rename(moved, vol / "ctl.sock")
        ls.close()
        lure.unlink()
    assert mapi.http.get(f"/{V}/environments/{eid}/files/workspace").status == 200
