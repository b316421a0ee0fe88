#!/usr/bin/python3
"""A client that stops reading: does the relay keep pulling from upstream (no backpressure)?
Samples kernel memory while the client sleeps. Usage: slowreader.py MODE [seconds]"""
import os, socket, subprocess, time, sys, re
D = os.path.dirname(os.path.abspath(__file__)); MODE = sys.argv[1]; SECS = int(sys.argv[2]) if len(sys.argv) > 2 else 8
def meminfo():
    m = dict(l.split(":", 1) for l in open("/proc/meminfo"))
    return int(m["MemAvailable"].split()[0]) // 1024
def tcpmem():
    for l in open("/proc/net/sockstat"):
        if l.startswith("TCP:"):
            return int(re.search(r"mem (\d+)", l).group(1)) * 4 // 1024  # pages -> MiB
src = subprocess.Popen([f"{D}/src", "127.0.0.2", "9300", str(int(3e9))])
rel = subprocess.Popen([f"{D}/relay", MODE, "127.0.0.1", "7301", "127.0.0.2", "9300"] + sys.argv[3:], stderr=open(f"{D}/slow_relay.log", "w"))
time.sleep(0.4)
m0, t0 = meminfo(), tcpmem()
s = socket.create_connection(("127.0.0.1", 7301))
s.sendall(b"CONNECT x:1 HTTP/1.1\r\n\r\n")
h = b""
while not h.endswith(b"\r\n\r\n"): h += s.recv(1)
print(f"start: MemAvailable {m0} MiB, TCP mem {t0} MiB")
for i in range(SECS):
    time.sleep(1)
    ss = subprocess.run(["ss", "-tin", "dst", "127.0.0.2:9300"], capture_output=True, text=True).stdout
    rx = re.search(r"bytes_received:(\d+)", ss)
    print(f"t={i+1}s MemAvailable {meminfo()} MiB (-{m0-meminfo()}), TCP mem {tcpmem()} MiB, relay upstream bytes_received {int(rx.group(1))/1e6 if rx else 0:.0f} MB", flush=True)
    if m0 - meminfo() > 6000:
        print("stopping: > 6 GB eaten"); break
s.close(); rel.kill(); src.kill(); time.sleep(1)
print(f"after close: MemAvailable {meminfo()} MiB, TCP mem {tcpmem()} MiB")
