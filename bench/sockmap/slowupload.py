#!/usr/bin/python3
"""The sandbox uploads to an upstream that never reads: how much can it push into the host?
Usage: slowupload.py MODE [seconds]"""
import os, socket, subprocess, time, sys, threading
D = os.path.dirname(os.path.abspath(__file__)); MODE = sys.argv[1]; SECS = float(sys.argv[2]) if len(sys.argv) > 2 else 4
def avail():
    return int([l for l in open("/proc/meminfo") if l.startswith("MemAvailable")][0].split()[1]) // 1024
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); ls.bind(("127.0.0.2", 9400)); ls.listen(1)
held = []
threading.Thread(target=lambda: held.append(ls.accept()), daemon=True).start()  # accepts, never reads
rel = subprocess.Popen([f"{D}/relay", MODE, "127.0.0.1", "7401", "127.0.0.2", "9400"], stderr=subprocess.DEVNULL)
time.sleep(0.4)
m0 = avail()
s = socket.create_connection(("127.0.0.1", 7401)); s.sendall(b"CONNECT x:1 HTTP/1.1\r\n\r\n")
h = b""
while not h.endswith(b"\r\n\r\n"): h += s.recv(1)
s.setblocking(False)
buf = b"u" * (1 << 20); sent = 0; t0 = time.time()
while time.time() - t0 < SECS and sent < 3_000_000_000:
    try: sent += s.send(buf)
    except BlockingIOError: time.sleep(0.001)
print(f"{MODE}: the client pushed {sent/1e6:.0f} MB in {SECS:.0f} s into an upstream that never reads; MemAvailable -{m0-avail()} MiB")
s.close(); rel.kill(); time.sleep(0.5)
