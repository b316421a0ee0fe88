#!/usr/bin/python3
"""Interleaved benchmark: direct vs relays, client in the sandbox netns ("ns:") and all in one
netns ("one:"). Usage: bench.py ROUNDS BYTES [clients=c,py] [modes=rw,splice,sk,skp] [extra relay args]
Env QUIET: max machine busy fraction before a round starts (default 0.08).
Env LO_SEG: the largest segment (GSO, IPv6 and IPv4) of the sandbox netns's lo, as paddock sets
it (src/sandbox/spawn.c; e.g. 524280); HOST_LO_SEG the same for the host's lo, restored to 65536
at the end. Unset: the kernel's default, 64 KiB."""
import os, sys, time, subprocess, statistics, json, signal

D = os.path.dirname(os.path.abspath(__file__))
NS = "/var/run/netns/sbx"
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
BYTES = int(float(sys.argv[2])) if len(sys.argv) > 2 else int(4e9)
CLIENTS = (sys.argv[3] if len(sys.argv) > 3 else "c,py").split(",")
MODES = (sys.argv[4] if len(sys.argv) > 4 else "rw,splice,sk,skp").split(",")
EXTRA = sys.argv[5].split() if len(sys.argv) > 5 else []
TOPOS = os.environ.get("TOPOS", "ns,one").split(",")
QUIET = float(os.environ.get("QUIET", "0.08"))
TCK = os.sysconf("SC_CLK_TCK")

def cpustat():
    with open("/proc/stat") as f:
        v = list(map(int, f.readline().split()[1:]))
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7], v[6], v[3] + v[4]  # busy, softirq, idle

def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read().rsplit(")", 1)[1].split()
    return int(s[11]) + int(s[12])  # utime + stime

def load1():
    return float(open("/proc/loadavg").read().split()[0])

def foreign_snapshot(mine):
    """utime+stime of every user process that is not ours (kernel threads excluded)"""
    snap = {}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in mine: continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(s[6]) & 0x00200000: continue  # PF_KTHREAD
        snap[d] = int(s[11]) + int(s[12])
    return snap

def foreign_delta(a, b):
    return sum(v - a[k] for k, v in b.items() if k in a)

def busy_frac(sec=1.0):
    b0, _, i0 = cpustat(); time.sleep(sec); b1, _, i1 = cpustat()
    return (b1 - b0) / max(1, (b1 - b0) + (i1 - i0))

procs = []
def start(args):
    p = subprocess.Popen(args, stderr=open(f"{D}/log_{len(procs)}.txt", "w"))
    procs.append(p); return p

def run_client(client, topo, port, connect):
    if client == "c":
        cmd = [f"{D}/cli"] + (["--netns", NS] if topo == "ns" else []) + (["--connect"] if connect else [])
    else:
        cmd = (["ip", "netns", "exec", "sbx"] if topo == "ns" else []) + ["/usr/bin/python3", f"{D}/cli.py"] + (["--connect"] if connect else [])
    ip = "127.0.0.1" if connect else "127.0.0.2"
    out = subprocess.run(cmd + [ip, str(port)], capture_output=True, text=True, timeout=120)
    f = out.stdout.split()
    if out.returncode != 0 or len(f) != 3 or int(f[0]) != BYTES:
        raise RuntimeError(f"client failed: {' '.join(cmd)}: {out.stdout.strip()} {out.stderr.strip()[-200:]}")
    return float(f[2])

def report(res, cpu, sysc, sirq, loads, fails, retries, configs, rounds_done):
    out = {"bytes": BYTES, "rounds": ROUNDS, "extra": EXTRA, "loads": loads, "fails": fails,
           **{n: {f"{k[0]}|{k[1]}": v for k, v in d.items()} for n, d in (("res", res), ("cpu", cpu), ("sys", sysc), ("sirq", sirq))}}
    fn = f"{D}/results_{STAMP}.json"
    json.dump(out, open(fn, "w"), indent=1)
    med = statistics.median
    for cl in CLIENTS:
        if not res[("direct", cl)]: continue
        d = med(res[("direct", cl)])
        print(f"\nclient={cl}  ({rounds_done} rounds, {BYTES/1e9:.1f} GB each; extra relay args: {' '.join(EXTRA) or '-'})")
        print(f"{'config':12} {'GB/s med':>8} {'min':>6} {'max':>6} {'ratio':>6} {'procCPU s/GB':>12} {'allCPU s/GB':>11} {'softirq s/GB':>12}")
        for name, _, _ in configs:
            v = res[(name, cl)]
            if not v: print(f"{name:12} all failed"); continue
            print(f"{name:12} {med(v):8.2f} {min(v):6.2f} {max(v):6.2f} {med(v)/d:6.2f} {med(cpu[(name, cl)]):12.3f} {med(sysc[(name, cl)]):11.3f} {med(sirq[(name, cl)]):12.3f}")
    print("failures:", fails, "discarded (contaminated) transfers:", retries[0])
    print("saved", fn)


STAMP = int(time.time())

def set_lo_seg(size, netns=None):
    """RTM_NEWLINK on lo (ifindex 1): IFLA_GSO_MAX_SIZE (41) and IFLA_GSO_IPV4_MAX_SIZE (63)."""
    import socket, struct
    body = struct.pack("BxHiII", 0, 0, 1, 0, 0) + b"".join(struct.pack("HHI", 8, t, size)
                                                          for t in (41, 63))
    code = (f"import socket; s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0); "
            f"s.bind((0, 0)); s.send({struct.pack('IHHII', 16 + len(body), 16, 5, 1, 0) + body!r}); "
            f"r = s.recv(4096); import struct; e = struct.unpack('i', r[16:20])[0]; "
            f"assert e == 0, f'setting lo segments: error {{e}}'")
    subprocess.run((["ip", "netns", "exec", netns] if netns else []) + [sys.executable, "-c", code],
                   check=True)

def main():
    subprocess.run(["ip", "netns", "add", "sbx"], stderr=subprocess.DEVNULL)
    subprocess.run(["ip", "-n", "sbx", "link", "set", "lo", "up"])
    set_lo_seg(int(os.environ.get("LO_SEG", "65536")), "sbx")  # the netns outlives a run
    if os.environ.get("HOST_LO_SEG"):
        set_lo_seg(int(os.environ["HOST_LO_SEG"]))
    src = start([f"{D}/src", "127.0.0.2", "9000", str(BYTES)])
    relays = {}
    port = 7100
    for topo in TOPOS:
        for m in MODES:
            port += 1
            mm = m.split("+")  # e.g. sk+--sndbuf+16777216
            args = [f"{D}/relay", mm[0], "127.0.0.1", str(port), "127.0.0.2", "9000"] + mm[1:] + EXTRA
            if topo == "ns": args += ["--netns", NS]
            relays[(topo, m)] = (start(args), port)
    time.sleep(0.5)
    configs = [("direct", None, None)] + [(f"{t}:{m}", t, m) for t in TOPOS for m in MODES]
    keys = [(c, cl) for c, _, _ in configs for cl in CLIENTS]
    res, cpu, sysc, sirq = ({k: [] for k in keys} for _ in range(4))
    loads, fails, retries = [], {}, [0]
    for r in range(ROUNDS):
        for _ in range(90):
            b = busy_frac(1.0)
            if b < QUIET: break
            print(f"  round {r}: machine {b*100:.0f}% busy (load {load1()}), waiting", flush=True)
            time.sleep(4)
        loads.append((load1(), round(b, 3)))
        order = configs if r % 2 == 0 else list(reversed(configs))
        for cl in CLIENTS:
            for name, topo, m in order:
                if topo is None:
                    pid, port, connect = src.pid, 9000, False
                else:
                    p, port = relays[(topo, m)]; pid, connect = p.pid, True
                mine = {os.getpid(), src.pid} | {p.pid for p, _ in relays.values()}
                for attempt in range(4):
                    for _ in range(200):  # wait for a quiet machine before every transfer
                        if busy_frac(0.5) < QUIET: break
                        time.sleep(3)
                    f0 = foreign_snapshot(mine); t0 = time.time()
                    c0 = proc_cpu(pid); s0 = cpustat()
                    try:
                        gbs = run_client(cl, topo or "one", port, connect)
                    except Exception as e:
                        print(f"  FAIL {name} {cl}: {e}", flush=True)
                        fails[f"{name}|{cl}"] = fails.get(f"{name}|{cl}", 0) + 1
                        gbs = None
                        time.sleep(6)
                        break
                    fd = foreign_delta(f0, foreign_snapshot(mine)) / TCK / (2 * (time.time() - t0))
                    if fd < 0.05: break
                    retries[0] += 1
                    print(f"  {name} {cl}: {gbs:.2f} GB/s discarded, others used {fd*100:.0f}% of the CPUs", flush=True)
                if gbs is None: continue
                time.sleep(0.05)
                c1 = proc_cpu(pid); s1 = cpustat()
                gb = BYTES / 1e9
                res[(name, cl)].append(gbs)
                cpu[(name, cl)].append((c1 - c0) / TCK / gb)
                sysc[(name, cl)].append((s1[0] - s0[0]) / TCK / gb)
                sirq[(name, cl)].append((s1[1] - s0[1]) / TCK / gb)
        print(f"round {r} done: load before {loads[-1][0]} busy {loads[-1][1]*100:.0f}%, load after {load1()}", flush=True)
        report(res, cpu, sysc, sirq, loads, fails, retries, configs, r + 1)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))
try:
    main()
finally:
    for p in procs:
        p.kill()
    if os.environ.get("HOST_LO_SEG"):
        set_lo_seg(65536)
