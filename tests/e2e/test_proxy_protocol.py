#!/usr/bin/env python3
"""pier http|echo|msg --proxy-protocol, spoken to with raw sockets: v1 and v2 headers
(TLVs, LOCAL, UNKNOWN, IPv6) followed by the protocol's bytes, and the client address in
the access log; malformed headers closed one by one while a keep-alive connection next to
them goes on being served; a header too slow dropped at --proxy-timeout; --proxy-from
refusing other sources; a PROXY header before a TLS handshake; the counts at exit.
The server runs two loops.
"""
# pier-test: threads
import os
import socket
import ssl
import struct
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tls"))
import pierlib  # noqa: E402
from pierlib import check  # noqa: E402
import tlslib  # noqa: E402

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
GET = b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n"
GET_CLOSE = b"GET /plaintext HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def v1(src, dst="127.0.0.1", sport=51000, dport=80):
    proto = "TCP6" if ":" in src else "TCP4"
    return ("PROXY %s %s %s %d %d\r\n" % (proto, src, dst, sport, dport)).encode()


def v2(cmd=1, fam=1, proto=1, block=b"", tlvs=b"", length=None):
    body = block + tlvs
    n = len(body) if length is None else length
    return SIG + bytes([0x20 | cmd, fam << 4 | proto]) + struct.pack(">H", n) + body


def inet(src, dst, sport, dport):
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack(">HH", sport, dport)


def inet6(src, dst, sport, dport):
    return (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
            + struct.pack(">HH", sport, dport))


SILENT = 200
TLVS = b"\x01\x00\x02h2" + b"\x05\x00\x04abcd" + b"\x04\x00\x00"  # ALPN, unique id, NOOP


def closed_without_reply(sock, timeout=30):
    """True once the server closes sock (EOF or reset) having sent nothing."""
    sock.settimeout(timeout)
    got = b""
    try:
        while True:
            d = sock.recv(4096)
            if not d:
                break
            got += d
    except (ConnectionResetError, BrokenPipeError):
        pass
    except socket.timeout:
        return False
    return got == b""


def served(sock):
    """One keep-alive request on an open connection: True for a 200 Hello, World!"""
    sock.sendall(GET)
    r = pierlib.Reader(sock).response()
    return r is not None and r.status == 200 and r.body == b"Hello, World!"


def log_clients(path):
    with open(path) as f:
        return [line.split(" ", 1)[0] for line in f if line.strip()]


def test_good_headers(log):
    srv = pierlib.HttpServer("--threads", "2", "--proxy-protocol", "--access-log", log)
    cases = [
        (v1("203.0.113.7"), "203.0.113.7"),
        (v1("2001:db8::5", "2001:db8::1"), "2001:db8::5"),
        (v2(block=inet("198.51.100.9", "10.0.0.1", 4444, 80), tlvs=TLVS), "198.51.100.9"),
        (v2(fam=2, block=inet6("2001:db8::42", "2001:db8::1", 50000, 80)), "2001:db8::42"),
        (v2(cmd=0, fam=0, proto=0), "127.0.0.1"),          # LOCAL: a health check
        (b"PROXY UNKNOWN\r\n", "127.0.0.1"),
        (v2(fam=3, block=bytes(216)), "127.0.0.1"),        # unix: the socket's own address
    ]
    for hdr, _ in cases:
        resp, r = pierlib.exchange(srv, hdr + GET_CLOSE)
        check(resp is not None and resp.status == 200, "a request after %r is served" % hdr[:20])
        r.sock.close()
    # the header in one send and the request in another, the header itself cut in two
    s = srv.connect()
    hdr = v1("192.0.2.33")
    s.sendall(hdr[:9])
    time.sleep(0.05)
    s.sendall(hdr[9:])
    time.sleep(0.05)
    check(served(s), "a header sent in pieces, then a request")
    check(served(s), "and a second request on the same connection")
    s.close()
    srv.stop()
    got = log_clients(log)
    want = [c for _, c in cases] + ["192.0.2.33", "192.0.2.33"]
    check(sorted(got) == sorted(want), "access log shows the clients from the headers: %s" % got)
    check("5 ok, 3 local; closed: 0 bad" in srv.stderr(), "exit counts:\n%s" % srv.stderr()[-600:])


BAD = [
    ("v1 bad address", b"PROXY TCP4 1.2.3 127.0.0.1 1 2\r\n"),
    ("v1 address of the wrong family", b"PROXY TCP4 ::1 127.0.0.1 1 2\r\n"),
    ("v1 bad port", b"PROXY TCP4 1.2.3.4 127.0.0.1 70000 2\r\n"),
    ("v1 LF without CR", b"PROXY TCP4 1.2.3.4 127.0.0.1 1 2\n"),
    ("v1 over 107 bytes", b"PROXY UNKNOWN " + b"f" * 120 + b"\r\n"),
    ("v2 length short of its addresses", v2(block=inet("1.2.3.4", "5.6.7.8", 1, 2)[:11])),
    ("v2 unknown family", v2(fam=4, block=bytes(12))),
    ("v2 unknown protocol", v2(proto=3, block=bytes(12))),
    ("v2 version 3", b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + bytes(12)),
    ("v2 TLV past the length", v2(block=inet("1.2.3.4", "5.6.7.8", 1, 2), tlvs=b"\x05\x00\x09abc")),
    ("no header", GET),
    ("a TLS ClientHello", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"),
]


def test_bad_headers():
    srv = pierlib.HttpServer("--threads", "2", "--proxy-protocol")
    keep = srv.connect()
    keep.sendall(v1("192.0.2.1"))
    check(served(keep), "the keep-alive connection is served")
    for what, raw in BAD:
        s = srv.connect()
        s.sendall(raw + GET)
        check(closed_without_reply(s), "%s: closed without a reply" % what)
        s.close()
        check(served(keep), "after %s, the other connection is still served" % what)
    keep.close()
    srv.stop()
    err = srv.stderr()
    check("proxy: closed a connection from 127.0.0.1" in err and "not a valid PROXY header" in err,
          "a log line names the cause:\n%s" % err[-800:])
    check("1 ok, 0 local; closed: %d bad" % len(BAD) in err, "every bad header counted:\n%s" % err[-600:])


def test_slow_and_silent():
    srv = pierlib.HttpServer("--proxy-protocol", "--proxy-timeout", "1")
    keep = srv.connect()
    keep.sendall(v1("192.0.2.1"))
    check(served(keep), "the keep-alive connection is served")
    slow = srv.connect()
    slow.sendall(b"PROXY TCP4 192.0.2.2 ")
    silent = [srv.connect() for _ in range(SILENT)]
    check(served(keep), "the other connection is served while %d wait for their headers" % (SILENT + 1))
    check(closed_without_reply(slow), "a header that stops half-way is dropped at the deadline")
    check(all(closed_without_reply(s) for s in silent), "connections that send nothing are dropped at the deadline")
    check(served(keep), "the other connection is still served")
    for s in [keep, slow] + silent:
        s.close()
    srv.stop()
    check("closed: 0 bad, %d timeout" % (SILENT + 1) in srv.stderr(),
          "all counted as timeouts:\n%s" % srv.stderr()[-600:])
    check("no whole PROXY header in time" in srv.stderr(), "a log line says why")


def test_proxy_from():
    srv = pierlib.HttpServer("--proxy-protocol", "--proxy-from", "10.0.0.0/8,fd00::/8")
    try:
        s = srv.connect()
        s.sendall(v1("203.0.113.7") + GET)
        check(closed_without_reply(s), "a source outside --proxy-from is closed, valid header or not")
        s.close()
    except (ConnectionResetError, BrokenPipeError):
        pass  # refused so fast that the connect or the send saw the reset
    srv.stop()
    check("1 refused" in srv.stderr(), "and counted as refused:\n%s" % srv.stderr()[-600:])

    srv = pierlib.HttpServer("--proxy-protocol", "--proxy-from", "10.0.0.0/8, 127.0.0.0/8,::1")
    s = srv.connect()
    s.sendall(v1("203.0.113.7"))
    check(served(s), "a source inside --proxy-from is served")
    s.close()
    srv.stop()

    ipv6_sources()

    p = pierlib.run(["http", "--port", "0", "--proxy-protocol", "--proxy-from", "10.0.0.0/8,10.1.2.3/40"])
    check(p.returncode == 2 and "'10.1.2.3/40' is not one" in p.stderr and p.stderr.count("\n") == 1,
          "a bad CIDR is one line naming it: %r" % p.stderr)
    p = pierlib.run(["echo", "--port", "0", "--proxy-from", "10.0.0.0/8"])
    check(p.returncode == 2 and "need --proxy-protocol" in p.stderr, "--proxy-from alone: %r" % p.stderr)


def ipv6_sources():
    """An IPv6 listener: --proxy-from takes IPv6 CIDRs and keeps IPv4 ones apart."""
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        print("skip: IPv6 part (no ::1 on this machine)")
        return
    for allow, ok in (("fd00::/8,::1/128", True), ("127.0.0.1,fd00::/8", False)):
        srv = pierlib.Pier("echo", "--proxy-protocol", "--proxy-from", allow, host="::1")
        try:
            s = srv.connect()
            s.sendall(v1("2001:db8::9", "::1") + b"ping")
        except (ConnectionResetError, BrokenPipeError):
            s = None  # refused so fast that the connect or the send saw the reset
        if ok:
            check(s is not None and pierlib.recv_exact(s, 4) == b"ping", "--proxy-from %s lets ::1 in" % allow)
        else:
            check(s is None or closed_without_reply(s), "--proxy-from %s keeps ::1 out" % allow)
        if s:
            s.close()
        check(srv.stop() == 0, "echo on ::1 exits 0")


def test_tls_after_header(log):
    if not tlslib.have_openssl():
        print("skip: TLS part (no openssl command, or pier built without TLS)")
        return
    with tlslib.Certs() as certs:
        srv = pierlib.HttpServer("--proxy-protocol", "--access-log", log, *certs.server_flags())
        ctx = certs.client_context()
        for hdr in (v1("203.0.113.99"), v2(block=inet("203.0.113.98", "10.0.0.1", 1, 443), tlvs=TLVS)):
            raw = srv.connect()
            raw.sendall(hdr)  # the PROXY header first, in the clear; then the handshake
            tls = ctx.wrap_socket(raw, server_hostname="localhost")
            tls.sendall(GET_CLOSE)
            data = pierlib.recv_until_eof(tls)
            check(data.startswith(b"HTTP/1.1 200") and data.endswith(b"Hello, World!"),
                  "HTTPS after a PROXY header: %r" % data[:40])
            tls.close()
        raw = srv.connect()
        try:
            tls = ctx.wrap_socket(raw, server_hostname="localhost")  # no header: refused
            tls.close()
            check(False, "a handshake without a PROXY header fails")
        except (ssl.SSLError, ConnectionResetError, OSError):
            pass
        srv.stop()
        check(log_clients(log) == ["203.0.113.99", "203.0.113.98"], "the log has the header's clients")


def echo_and_msg():
    srv = pierlib.Pier("echo", "--threads", "2", "--proxy-protocol")
    s = srv.connect()
    s.sendall(v2(block=inet("198.51.100.1", "10.0.0.1", 1, 2), tlvs=TLVS) + b"hello")
    check(pierlib.recv_exact(s, 5) == b"hello", "echo: exactly the bytes after the header come back")
    s.close()
    s = srv.connect()
    s.sendall(b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\nhello")
    check(closed_without_reply(s), "echo: a bad header is closed")
    s.close()
    check(srv.stop() == 0, "echo exits 0")
    check("1 ok, 0 local; closed: 1 bad" in srv.stderr(), "echo counts:\n%s" % srv.stderr()[-400:])

    srv = pierlib.Pier("msg", "--proxy-protocol")
    s = srv.connect()
    frame = struct.pack(">HH", 1002, 5) + b"hello"  # id 1002: echoed as it is
    s.sendall(v1("203.0.113.50") + frame)
    check(pierlib.recv_exact(s, len(frame)) == frame, "msg: a frame after the header is answered")
    s.close()
    s = srv.connect()
    s.sendall(frame)
    check(closed_without_reply(s), "msg: a frame without a header is closed")
    s.close()
    check(srv.stop() == 0, "msg exits 0")
    check("1 ok, 0 local; closed: 1 bad" in srv.stderr(), "msg counts:\n%s" % srv.stderr()[-400:])


def main():
    with tempfile.TemporaryDirectory(prefix="pier-proxy-") as d:
        test_good_headers(os.path.join(d, "access.log"))
        test_bad_headers()
        test_slow_and_silent()
        test_proxy_from()
        test_tls_after_header(os.path.join(d, "tls.log"))
        echo_and_msg()
    pierlib.finish("test_proxy_protocol")


if __name__ == "__main__":
    main()
