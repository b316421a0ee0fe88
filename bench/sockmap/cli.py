# python client like the bench: raw socket, recv_into a 1 MiB buffer
import socket, sys, time
args = sys.argv[1:]
do_connect = False
if args and args[0] == "--connect":
    do_connect = True; args = args[1:]
ip, port = args[0], int(args[1])
s = socket.create_connection((ip, port))
if do_connect:
    s.sendall(b"CONNECT 127.0.0.2:9000 HTTP/1.1\r\nHost: 127.0.0.2:9000\r\n\r\n")
    h = b""
    while not h.endswith(b"\r\n\r\n"):
        c = s.recv(1)
        if not c: raise SystemExit("eof in head")
        h += c
    assert h.startswith(b"HTTP/1.1 200"), h
buf = bytearray(1 << 20); mv = memoryview(buf)
got = 0
t0 = time.monotonic()
while True:
    n = s.recv_into(mv)
    if n == 0: break
    got += n
dt = time.monotonic() - t0
s.close()
print(got, "%.4f" % dt, "%.3f" % (got / dt / 1e9))
