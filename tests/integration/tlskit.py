"""Small test upstreams on 127.0.0.2 for the egress tests: a test CA and server certificates made
with the openssl CLI, and threaded HTTP(S) servers that record what they were sent."""

import http.server
import json
import ssl
import subprocess
import threading

HOST = "127.0.0.2"


def serve(httpd):
    """Runs an http.server in a daemon thread; returns it (call .shutdown() to stop)."""
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def make_ca(tmp):
    """A test CA in tmp: returns (ca.pem, ca.key)."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
                    "-days", "2", "-subj", "/CN=paddock test CA"],
                   check=True, capture_output=True, cwd=tmp)
    return tmp / "ca.pem", tmp / "ca.key"


def make_cert(tmp, name):
    """A server certificate for name signed by the CA in tmp: returns (cert, key)."""
    run = lambda *a: subprocess.run(a, check=True, capture_output=True, cwd=tmp)  # noqa: E731
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
    (tmp / f"{name}.ext").write_text(f"subjectAltName=DNS:{name}\n")
    run("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return tmp / f"{name}.pem", tmp / f"{name}.key"


def tls_wrap(httpd, cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    return httpd


class Echo(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the request's headers as JSON and keeps them in .seen."""
    seen = None

    def log_message(self, *a):
        pass

    def do_GET(self):
        self.seen.append(dict(self.headers))
        body = json.dumps(dict(self.headers)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def echo_server(port=0, cert=None, key=None):
    """A header-echoing server on HOST (TLS when cert is given); .seen lists what it got."""
    seen = []
    handler = type("EchoH", (Echo,), {"seen": seen})
    httpd = http.server.ThreadingHTTPServer((HOST, port), handler)
    if cert is not None:
        tls_wrap(httpd, cert, key)
    httpd.seen = seen
    return serve(httpd)
