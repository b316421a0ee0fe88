"""The environment lifecycle the server's janitor drives (docs/API.md): active -> idle (sandbox
stopped, files kept) -> offline -> expired (files deleted, the record kept), with processes still
running counting as activity, any use resuming an idle or offline environment, and file counts
refreshed after changes. The timings are made short with the server's flags."""

import random
import signal
import threading
import time

import pytest

from apiserver import *  # noqa: F401,F403
from apiserver import ApiServer, Api, finish
import pdk


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout * SLOWDOWN
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last={last!r}")


def state(api, env_id):
    r = api.http.get(f"/v1beta/environments/{env_id}")
    assert r.status == 200, r
    return r.json()


def serving(pd, *args):
    """An Api on a server started with args, finished when the test is."""
    server = ApiServer(pd, args=list(args)).start()
    try:
        yield Api(server)
    finally:
        finish(server)


@pytest.fixture
def fast(pd):
    """A server whose environments idle after 2 s, go offline after 4 s, expire after 8 s."""
    yield from serving(pd, "--idle-after", "2s", "--offline-after", "4s", "--expire-after", "8s")


@pytest.mark.slow
def test_idle_offline_expired_and_resume(fast):
    api = fast
    e = api.http.create({"sources": [{"type": "inline", "target": "/workspace/keep.txt",
                                       "content": "kept"}]})
    eid = e["id"]
    assert e["state"] == "running" and e["status"] == "active"

    # Idle: the sandbox stops, the files stay; the CLI sees it stopped.
    wait_for(lambda: state(api, eid)["state"] == "idle", 15, "idle")
    assert {e["id"]: e for e in api.pd.ls()}[eid]["state"] == "stopped"
    assert state(api, eid)["status"] == "active"

    # Offline, still active on the wire, and any use resumes it with its files.
    wait_for(lambda: state(api, eid)["state"] == "offline", 15, "offline")
    r = api.http.get(f"/v1beta/environments/{eid}/files/workspace/keep.txt?alt=media")
    assert r.status == 200 and r.body == b"kept", r
    assert state(api, eid)["state"] == "running"

    # Left alone past expiry: files deleted, the record kept as expired.
    wait_for(lambda: state(api, eid)["status"] == "expired", 30, "expired")
    got = state(api, eid)
    assert got["state"] == "expired" and got["file_count"] == "0"
    r = api.http.get(f"/v1beta/environments/{eid}/files/workspace/keep.txt?alt=media")
    assert r.status == 404, r
    assert "expired" in r.json()["error"]["message"]
    assert not (api.pd.data / "envs" / eid).exists()
    # An expired environment can still be deleted (the record goes).
    assert api.http.delete(f"/v1beta/environments/{eid}").status == 200
    assert api.http.get(f"/v1beta/environments/{eid}").status == 404


@pytest.mark.slow
def test_running_process_counts_as_activity(fast):
    api = fast
    eid = api.http.create()["id"]
    # A background process that outlives the exec keeps the environment active.
    api.pd.ok("env", "exec", eid, "-c", "setsid sleep 6 >/dev/null 2>&1 < /dev/null &")
    time.sleep(4 * SLOWDOWN)
    assert state(api, eid)["state"] == "running"
    # Once it ends, the environment idles.
    wait_for(lambda: state(api, eid)["state"] == "idle", 20, "idle after the process ended")


def test_file_counts_follow_changes(api):
    eid = api.http.create({"sources": [{"type": "inline", "target": "/workspace/a.txt",
                                         "content": "12345"}]})["id"]
    first = state(api, eid)
    n0, b0 = int(first["file_count"]), int(first["size_bytes"])
    assert n0 >= 1 and b0 >= 5
    api.pd.ok("env", "exec", eid, "-c", "head -c 100000 /dev/zero > /workspace/z.bin")
    got = wait_for(lambda: (lambda s: s if int(s["file_count"]) == n0 + 1 else None)(
        state(api, eid)), 15, "the janitor to recount")
    assert int(got["size_bytes"]) == b0 + 100000


def test_cli_and_server_share_environments(api):
    eid = api.http.create()["id"]
    # The CLI drives the server's environment, and the server sees what it wrote.
    api.pd.ok("env", "exec", eid, "-c", "echo from-cli > /workspace/c.txt")
    r = api.http.get(f"/v1beta/environments/{eid}/files/workspace/c.txt?alt=media")
    assert r.status == 200 and r.body == b"from-cli\n"
    # A stop from the CLI is seen as idle; a file call resumes it.
    api.pd.ok("env", "stop", eid)
    assert state(api, eid)["state"] == "idle"
    r = api.http.get(f"/v1beta/environments/{eid}/files/workspace?recursive=true")
    assert r.status == 200 and any(f["path"] == "workspace/c.txt" for f in r.json()["files"])
    assert state(api, eid)["state"] == "running"


def test_env_vars_reach_commands(api):
    # A variable naming a credential needs the credential, and holds only a placeholder.
    r = api.http.create({"env": {"SECRET": {"credential": "cred_x"}}}, ok=False)
    assert r.status == 400 and "cred_x" in r.json()["error"]["message"]
    ck = api.server.make_key("creds", scopes=("credentials",))
    r = api.server.http(ck).post("/v1beta/credentials", json_body={
        "type": "environment_variable", "id": "cred_x", "value": "s3cr3t-value",
        "injection_location": "header", "trusted_domains": ["api.example.com"]})
    assert r.status == 200, r
    eid = api.http.create({"env": {"GREETING": "hello world", "N": {"value": "7"},
                                   "SECRET": {"credential": "cred_x"}}})["id"]
    r = api.pd.ok("env", "exec", eid, "-c", 'echo "$GREETING|$N|$SECRET"')
    greeting, n, secret = r.text.rstrip("\n").split("|")
    assert (greeting, n) == ("hello world", "7")
    assert secret.startswith("paddock-credential-") and "s3cr3t" not in r.text
    r = api.pd.ok("env", "exec", eid, "-e", "N=8", "-c", 'echo "$N"')
    assert r.text == "8\n"


def test_listing_never_takes_a_finishing_create_for_a_dead_one(api):
    """A list reconciles rows it finds "creating" whose creator has gone. A creator that
    finishes between the list's read and its lock attempt must not have its environment
    removed under it (CI once lost an environment's files exactly so). The window is the time
    the list spends on the rows before the new one, so the list is made long first: on the
    unfixed code every run lost several of the 30."""
    import concurrent.futures
    import threading

    ids = [api.http.create()["id"] for _ in range(30)]
    stop = threading.Event()

    def lister():
        n = 0
        while not stop.is_set():
            r = api.http.get("/v1beta/environments?page_size=100")
            assert r.status == 200, r
            n += 1
        return n

    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        listers = [ex.submit(lister) for _ in range(2)]
        try:
            fresh = [api.http.create()["id"] for _ in range(30)]
        finally:
            stop.set()
        assert all(f.result() > 0 for f in listers)
    api.pd.ids.update(ids + fresh)
    lost = [eid for eid in fresh if api.http.get(f"/v1beta/environments/{eid}").status != 200]
    assert not lost, f"environments removed while their create finished: {lost}"
    for eid in fresh:
        assert state(api, eid)["state"] == "running", eid
        assert api.pd.ok("env", "exec", eid, "-c", "echo alive").text == "alive\n", eid


# ------------------------------------------------ handlers stopped from inside the sandbox

CTL_TIMEOUT_S = 10  # PROTO_TIMEOUT_MS in src/sandbox/sandbox_int.h


def comms(env_id):
    """The names of the sandbox's processes, read from the host (not through the sandbox)."""
    return [pdk.read_text(f"/proc/{pid}/comm").strip() for pid in pdk.procs_in_cgroup_of(env_id)]


def left_to_init(api, env_id, script):
    """Runs script a moment later in a process of the sandbox left to its init."""
    api.pd.ok("env", "exec", env_id, "-c",
              f"setsid sh -c '{script}' </dev/null >/dev/null 2>&1 &")


def test_stopped_handlers_stall_neither_requests_nor_the_server(api):
    """A busy environment whose idle handlers a process inside stopped (`kill -STOP -1`): its
    requests are answered, the janitor goes on counting its files, another environment is
    served and SIGTERM stops the server. (The requests and the janitor's count, on the
    server's main thread, used to wait for ever in the listen queue.)"""
    # Counted at create (a source changes the count), so the janitor's recount is seen below.
    a = api.http.create({"sources": [{"type": "inline", "target": "/workspace/a.txt",
                                       "content": "12345"}]})["id"]
    b = api.http.create()["id"]
    n0 = int(state(api, a)["file_count"])
    assert n0 >= 1
    left_to_init(api, a, "sleep 0.3; kill -STOP -1; exec tail -f /dev/null")
    wait_for(lambda: "tail" in comms(a), 10, "the process that stops the handlers")
    r = api.http.get(f"/v1beta/environments/{a}/files/workspace", timeout=3 * CTL_TIMEOUT_S)
    assert r.status == 200, r
    r = api.http.upload(a, "workspace/n.txt", b"12345")
    assert r.status == 200, r
    wait_for(lambda: int(state(api, a)["file_count"]) == n0 + 1, 15, "the janitor to recount")
    r = api.http.get(f"/v1beta/environments/{b}/files/workspace?recursive=true")
    assert r.status == 200, r
    api.server.proc.send_signal(signal.SIGTERM)
    assert api.server.proc.wait(10 * SLOWDOWN) == 0


def warned_once_then_sigterm(api, stalled, since):
    """Three more passes of the janitor repeat no stalled line; SIGTERM then ends the server
    at once."""
    time.sleep(6 * SLOWDOWN)
    assert len([l for l in api.server.log_lines(since) if stalled(l)]) == 1, \
        api.server.log_lines(since)
    t0 = time.monotonic()
    api.server.proc.send_signal(signal.SIGTERM)
    assert api.server.proc.wait(10 * SLOWDOWN) == 0
    assert time.monotonic() - t0 < 3 * SLOWDOWN


@pytest.mark.slow
def test_janitor_backs_off_an_environment_whose_count_stalls(api):
    """A process inside stops every handler that takes a connection, so the janitor's count of
    that busy environment gets no answer: it gives up after the control socket's timeout, says
    so once and leaves that count alone for a while. Meanwhile other environments are served,
    and SIGTERM stops the server at once."""
    a = api.http.create()["id"]
    b = api.http.create()["id"]
    # Enough files that a count outlasts a round of the process that stops the handlers.
    api.pd.ok("env", "exec", a, "-c", "mkdir /workspace/m && cd /workspace/m && "
              "seq 50000 | xargs touch", timeout=120)
    since = len(api.server.log_lines())
    left_to_init(api, a, "sleep 0.3; while :; do for p in /proc/[0-9]*; do "
                         "read c < $p/comm && [ \"$c\" = paddock-handler ] && "
                         "kill -STOP ${p#/proc/}; done 2>/dev/null; sleep 0.01; done")

    def stalled(line):
        return a in line and "count" in line
    hits = api.server.wait_log(stalled, since=since, timeout=3 * CTL_TIMEOUT_S)
    assert hits, "the janitor never gave up on the stalled count:\n" + \
        "\n".join(api.server.log_lines(since)[-20:])
    assert f"did not answer within {CTL_TIMEOUT_S} s" in hits[0], hits
    assert "not counted again" in hits[0], hits
    r = api.http.get(f"/v1beta/environments/{b}/files/workspace")
    assert r.status == 200, r
    warned_once_then_sigterm(api, stalled, since)


COUNT_DEADLINE_S = 60  # ENV_COUNT_DEADLINE_MS in src/env/env.c


@pytest.fixture
def idling(pd):
    """A server whose environments idle after 4 s."""
    yield from serving(pd, "--idle-after", "4s")


@pytest.mark.slow
def test_janitor_count_has_a_deadline_keep_alives_do_not_extend(idling):
    """A process inside a busy environment stops the handler that counts its files and lets
    it go for a moment every few seconds: each time it sends a keep-alive, which restarts the
    control socket's 10 s timeout, and the count advances a few milliseconds. The janitor
    gives that count up at its deadline, says so once and goes on: another environment idles
    by its timeout, and SIGTERM stops the server at once. (The main loop used to stay in the
    count for as long as the process kept at it.)"""
    api = idling
    a = api.http.create()["id"]
    # Enough files that a count needs many of the stopper's short windows, in directories
    # small enough that reading one (silent: no keep-alive) takes far less than a window.
    api.pd.ok("env", "exec", a, "-c", "mkdir /workspace/m && cd /workspace/m && "
              "for d in $(seq 400); do mkdir $d && (cd $d && seq 500 | xargs touch); done",
              timeout=180)
    since = len(api.server.log_lines())
    # For 3 s, every 5 ms: stop each handler at work (state R or D; idle ones wait in S). Then
    # let them all go for 10 ms: the busy one sends a keep-alive and walks on a little. The
    # process itself keeps the environment busy, so the janitor counts it again and again.
    left_to_init(api, a, "sleep 0.3; "
                         "now() { read u x < /proc/uptime; echo ${u%.*}${u#*.}; }; "
                         "hs() { for p in /proc/[0-9]*; do "
                         "read c < $p/comm && [ \"$c\" = paddock-handler ] && "
                         "read x y s z < $p/stat && "
                         "[ $1 = all -o \"$s\" = R -o \"$s\" = D ] && "
                         "echo ${p#/proc/}; done 2>/dev/null; }; "
                         "while :; do e=$(($(now) + 300)); while [ $(now) -lt $e ]; do "
                         "kill -STOP $(hs busy) 2>/dev/null; sleep 0.005; done; "
                         "kill -CONT $(hs all) 2>/dev/null; sleep 0.01; done")
    time.sleep(4 * SLOWDOWN)  # the janitor starts counting a, and the loop catches it
    b = api.http.create()["id"]
    wait_for(lambda: state(api, b)["state"] == "idle", COUNT_DEADLINE_S + 30,
             "the janitor to idle another environment")

    def stalled(line):
        return a in line and "count" in line
    hits = api.server.wait_log(stalled, since=since, timeout=5)
    assert hits, "no warning about the count:\n" + "\n".join(api.server.log_lines(since)[-20:])
    assert f"limit of {COUNT_DEADLINE_S} s" in hits[0], hits
    assert "not counted again" in hits[0], hits
    assert state(api, a)["state"] == "running"
    warned_once_then_sigterm(api, stalled, since)


@pytest.fixture
def brisk(pd):
    """A server whose environments idle after 0.2 s: the janitor stops one on nearly every pass."""
    yield from serving(pd, "--idle-after", "0.2s")


@pytest.mark.slow
def test_uses_racing_idle_stops_all_succeed(brisk):
    """The janitor stops idle sandboxes while file reads keep arriving at random moments. A use
    that looked at the row just before a stop used to find its sandbox killed under it: a 500
    "receive a frame from sandbox init: Connection reset by peer" (one in ~200 reads here
    before env_use() took the environment's lock). Every read must get its file, and the
    sandboxes must really have been stopped and resumed along the way."""
    api = brisk
    eids = [api.http.create({"sources": [{"type": "inline", "target": "/workspace/k.txt",
                                          "content": "kept"}]})["id"] for _ in range(3)]
    since = len(api.server.log_lines())
    bad, reads = [], []

    def reader(eid):
        rng = random.Random(eid)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            r = api.http.get(f"/v1beta/environments/{eid}/files/workspace/k.txt?alt=media")
            reads.append(eid)
            if r.status != 200 or r.body != b"kept":
                bad.append((eid, r.status, r.body[:300]))
            time.sleep(rng.uniform(0.15, 1.1))

    threads = [threading.Thread(target=reader, args=(e,)) for e in eids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad, bad
    stops = [ln for ln in api.server.log_lines(since) if "idle: sandbox stopped" in ln]
    assert len(stops) >= 10, f"the janitor stopped only {len(stops)} sandboxes in {len(reads)} reads"
