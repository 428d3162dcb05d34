"""`pier ws-client URL` against `pier http`'s /ws/echo: stdin lines go out as text
messages (masked, or the server would fail the connection) and the echoes are printed in
order, a line of 100 kB included; the end of stdin closes with 1000 and exit 0. Errors are
clear: a bad URL (exit 2), an unreachable server, a refused handshake, and a 101 whose
Sec-WebSocket-Accept does not match the key (exit 1). Over TLS: wss:// to `pier http
--tls-cert`, the certificate checked against a CA file."""
import os
import socket
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tls"))
import pierlib  # noqa: E402
import tlslib  # noqa: E402
from pierlib import check  # noqa: E402


def echo_lines(port):
    lines = ["line %d" % i for i in range(300)] + ["", "é € 😀", "x" * 100000, "last"]
    r = pierlib.run(["ws-client", "ws://127.0.0.1:%d/ws/echo" % port], input="\n".join(lines) + "\n")
    check(r.returncode == 0, "ws-client exits 0 after a normal close (rc %d, %r)" % (r.returncode, r.stderr))
    got = r.stdout.split("\n")
    check(got[-1] == "", "the output ends with a newline")
    check(got[:-1] == lines, "every line echoed once, in order (%d of %d lines)" % (len(got) - 1, len(lines)))


def errors(port):
    r = pierlib.run(["ws-client", "http://127.0.0.1:%d/" % port], input="")
    check(r.returncode == 2 and "bad URL" in r.stderr, "a bad URL is a usage error (%r)" % r.stderr)
    r = pierlib.run(["ws-client", "ws://127.0.0.1:%d/" % pierlib.free_port()], input="")
    check(r.returncode == 1 and "cannot connect" in r.stderr, "an unreachable server is named (%r)" % r.stderr)
    r = pierlib.run(["ws-client", "ws://127.0.0.1:%d/no/such/path" % port], input="")
    check(r.returncode == 1 and "refused the WebSocket handshake" in r.stderr,
          "a refused handshake is named (%r)" % r.stderr)
    r = pierlib.run(["ws-client", "--help"])
    check(r.returncode == 0 and "usage: pier ws-client" in r.stdout, "--help")


def wrong_accept():
    """A server that answers 101 with an accept for another key."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve():
        c, _ = srv.accept()
        try:
            c.recv(4096)
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
            c.recv(4096)
        except OSError:
            pass  # the client resets: that is its refusal
        c.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    r = pierlib.run(["ws-client", "ws://127.0.0.1:%d/" % srv.getsockname()[1]], input="", timeout=20)
    check(r.returncode == 1 and "refused the WebSocket handshake" in r.stderr,
          "a 101 with the wrong Sec-WebSocket-Accept is refused (%r)" % r.stderr)
    t.join(10)
    srv.close()


def wss():
    if not tlslib.have_openssl():
        print("test_ws_client_tool: wss:// skipped, the openssl command is not installed")
        return
    with tlslib.Certs() as certs:
        cert, key = certs.leaf("ws.pem", "ws-key.pem", cn="localhost")
        with pierlib.Pier("http", "--tls-cert", cert, "--tls-key", key) as srv:
            url = "wss://localhost:%d/ws/echo" % srv.port
            r = pierlib.run(["ws-client", "--cafile", certs.ca, url], input="over tls\nsecond\n")
            check(r.returncode == 0 and r.stdout == "over tls\nsecond\n",
                  "wss:// echoes with a trusted certificate (rc %d, %r, %r)" % (r.returncode, r.stdout, r.stderr))
            r = pierlib.run(["ws-client", url], input="x\n")
            check(r.returncode == 1 and "cannot connect" in r.stderr,
                  "wss:// refuses a certificate it cannot trust (%r)" % r.stderr)


def run():
    srv = pierlib.HttpServer("--threads", "2")
    try:
        echo_lines(srv.port)
        errors(srv.port)
    finally:
        srv.stop()
    wrong_accept()
    wss()
    pierlib.finish("test_ws_client_tool")


if __name__ == "__main__":
    run()
