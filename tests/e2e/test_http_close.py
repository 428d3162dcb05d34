#!/usr/bin/env python3
"""How pier http ends a connection, as a client sees it.

A request that asks to close (Connection: close, or HTTP/1.0 without keep-alive) and has
nothing after it gets its whole response and a FIN, and the server is done with the
connection at once, without waiting for the client's FIN: its socket is closed (a byte
the client sends then is answered with a reset) and /metrics counts no open connection,
while the client still holds its socket. The same over TLS, with close_notify.

A close of the server's own with the client's input unread behind it (a 400 with
garbage after it, a 413 for a large body, a Connection: close request with another
pipelined behind it) still lingers: the client reads the whole response, then a FIN,
never a reset before it.
"""
import os
import select
import socket
import ssl
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tls"))
import pierlib  # noqa: E402
import tlslib  # noqa: E402
from admin_util import admin_port, wait_metric  # noqa: E402

CLOSE = b"GET /plaintext HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
HTTP10 = b"GET /plaintext HTTP/1.0\r\nHost: x\r\n\r\n"


def response_then_fin(sock):
    """(response, how the stream ended after it: 'fin' or 'reset')."""
    r = pierlib.Reader(sock)
    try:
        resp = r.response()
        while sock.recv(65536):
            pass
        return resp, "fin"
    except ConnectionResetError:
        return None, "reset"


def reset_answers_a_byte(sock, timeout=10.0):
    """Sends one byte on a connection whose FIN came; True if a reset answers it: the
    server's socket is closed. While a server lingers it reads and drops the byte, and no
    reset ever comes."""
    os.write(sock.fileno(), b"X")
    p = select.poll()
    p.register(sock.fileno(), 0)  # POLLERR and POLLHUP are always reported
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in p.poll(timeout * 1000))


def closes_at_once(port, raw, wrap=None, what=""):
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    if wrap:
        s = wrap(s)
    try:
        s.sendall(raw)
        resp, end = response_then_fin(s)
        pierlib.check(resp is not None and resp.status == 200 and resp.body == b"Hello, World!",
                      "%s: the whole response (got %r)" % (what, resp))
        pierlib.check(end == "fin", "%s: then a FIN, not a reset" % what)
        pierlib.check(reset_answers_a_byte(s),
                      "%s: the server closed its socket without waiting for the client's FIN" % what)
    finally:
        s.close()


def sender(sock, data):
    """Sends data from a thread, as a client that writes its whole request before it reads."""
    def run():
        try:
            sock.sendall(data)
        except OSError:
            pass  # a server that stopped reading early; what the reader sees is the test
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def lingers(port, raw, status, what):
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        t = sender(s, raw)
        resp, end = response_then_fin(s)
        pierlib.check(resp is not None and resp.status == status,
                      "%s: the whole %d response (got %r, %s)" % (what, status, resp, end))
        pierlib.check(end == "fin", "%s: then a FIN, not a reset" % what)
        t.join(20)
    finally:
        s.close()


def plain():
    srv = pierlib.Pier("http", "--admin", "127.0.0.1:0")
    try:
        aport = admin_port(srv)
        closes_at_once(srv.port, CLOSE, what="Connection: close")
        closes_at_once(srv.port, HTTP10, what="HTTP/1.0")
        # the connection count, while the client still holds its socket
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
        s.sendall(CLOSE)
        resp, end = response_then_fin(s)
        pierlib.check(end == "fin" and resp is not None and resp.status == 200, "a third request answered")
        got = wait_metric(aport, "pier_connections_open", 0)
        pierlib.check(got == 0, "no connection open while the client holds its socket (got %r)" % got)
        s.close()

        big = 4 << 20
        lingers(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % big + b"a" * big,
                413, "a body over the limit")
        lingers(srv.port, b"BAD\x01 / HTTP/1.1\r\n\r\n" + b"b" * (1 << 20), 400, "garbage")
        lingers(srv.port, CLOSE + b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n" * 20000, 200,
                "Connection: close with requests pipelined behind it")
        closes_at_once(srv.port, CLOSE, what="Connection: close after the others")
    finally:
        srv.stop()


def tls():
    if not tlslib.have_openssl():
        print("skipping the TLS part: the openssl command is missing or pier was built without TLS")
        return
    with tlslib.Certs() as certs:
        srv = pierlib.Pier("http", *certs.server_flags(), "--admin", "127.0.0.1:0")
        try:
            aport = admin_port(srv)
            ctx = certs.client_context()

            def wrap(s):
                # a TLS end without close_notify raises instead of reading as a clean end
                return ctx.wrap_socket(s, server_hostname="localhost", suppress_ragged_eofs=False)
            s = wrap(socket.create_connection(("127.0.0.1", srv.port), timeout=20))
            try:
                s.sendall(CLOSE)
                resp, end = response_then_fin(s)
                pierlib.check(resp is not None and resp.body == b"Hello, World!", "TLS: the whole response")
                pierlib.check(end == "fin", "TLS: then close_notify and a FIN")
                pierlib.check(reset_answers_a_byte(s), "TLS: the server closed its socket at once")
                got = wait_metric(aport, "pier_connections_open", 0)
                pierlib.check(got == 0, "TLS: no connection open while the client holds its socket (got %r)"
                              % got)
            except ssl.SSLEOFError:
                pierlib.check(False, "TLS: the stream ended without close_notify")
            finally:
                s.close()
        finally:
            code = srv.stop()
            pierlib.check(code == 0, "the TLS server exits 0 (got %r)" % code)


if __name__ == "__main__":
    plain()
    tls()
    pierlib.finish("test_http_close")
