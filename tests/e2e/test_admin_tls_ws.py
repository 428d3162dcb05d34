"""/metrics counts TLS handshakes (ok and failed) and WebSocket messages in and out:
`pier http --tls-cert ... --admin` with `pier ws-client` over wss:// to /ws/echo, then a
plain-text request to the HTTPS port, which is a failed handshake."""
import os
import socket
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tls"))
import pierlib  # noqa: E402
import tlslib  # noqa: E402
from admin_util import admin_port, wait_metric  # noqa: E402


def main():
    if not tlslib.have_openssl():
        print("SKIP: the openssl command is not installed (it makes the test certificates)")
        return
    with tlslib.Certs() as certs:
        cert, key = certs.leaf("admin.pem", "admin-key.pem", cn="localhost")
        srv = pierlib.Pier("http", "--tls-cert", cert, "--tls-key", key, "--admin", "127.0.0.1:0")
        try:
            aport = admin_port(srv)
            # pierlib's start-up probe connected and left without a word: no handshake
            url = "wss://localhost:%d/ws/echo" % srv.port
            r = pierlib.run(["ws-client", "--cafile", certs.ca, url], input="one\ntwo\nthree\n")
            pierlib.check(r.returncode == 0 and r.stdout == "one\ntwo\nthree\n",
                          "wss:// echoes (rc %d, %r, %r)" % (r.returncode, r.stdout, r.stderr))
            got = wait_metric(aport, 'pier_ws_messages_total{direction="in"}', 3)
            pierlib.check(got == 3, "3 WebSocket messages in (got %r)" % got)
            got = wait_metric(aport, 'pier_ws_messages_total{direction="out"}', 3)
            pierlib.check(got == 3, "3 WebSocket messages out (got %r)" % got)
            got = wait_metric(aport, 'pier_http_requests_total{method="GET",status="1xx"}', 1)
            pierlib.check(got == 1, "the upgrade is a GET answered 101 (got %r)" % got)
            got = wait_metric(aport, 'pier_tls_handshakes_total{result="ok"}', 1)
            pierlib.check(got == 1, "one TLS handshake ok (got %r)" % got)
            with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                reply = s.recv(4096)
            pierlib.check(reply.startswith(b"HTTP/1.1 400"), "plain HTTP to the HTTPS port: 400 (%r)" % reply[:40])
            got = wait_metric(aport, 'pier_tls_handshakes_total{result="failed"}', 1)
            pierlib.check(got == 1, "the plain-text request is a failed handshake (got %r)" % got)
        finally:
            code = srv.stop()
        pierlib.check(code == 0, "server exits 0 (got %r)" % code)
    pierlib.finish("test_admin_tls_ws")


if __name__ == "__main__":
    main()
