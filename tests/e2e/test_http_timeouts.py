#!/usr/bin/env python3
"""pier http against slow and vanishing clients: a head dripped byte by byte is cut off by
the header timeout with 408, a body dripped byte by byte by the body timeout, idle keep-alive connections are closed, and clients that
vanish mid-request or mid-response leave the server serving everyone else."""
import os
import socket
import struct
import sys
import tempfile
import time

from pierlib import HttpServer, Reader, check, finish, request

root = tempfile.mkdtemp(prefix="pier-http-timeouts-")
with open(os.path.join(root, "big.bin"), "wb") as f:
    f.write(os.urandom(1 << 20) * 8)  # 8 MiB, far more than socket buffers hold

srv = HttpServer("--header-timeout", "2", "--keepalive-timeout", "3", "--root", root)


def healthy(what):
    resp = request(srv, "GET", "/plaintext")
    check(resp is not None and resp.status == 200 and resp.body == b"Hello, World!", "still serving after %s" % what)


def drip(s, t0, data):
    """Sends data a byte every 0.3 s until the server cuts it off or 6 s have passed since
    t0; returns whether it was cut, a reader of s, and the response (None: none came)."""
    cut = False
    for b in data:
        try:
            s.send(bytes([b]))
        except (BrokenPipeError, ConnectionResetError):
            cut = True
            break
        time.sleep(0.3)
        if time.time() - t0 > 6:
            break
    r = Reader(s)
    resp = None
    try:
        resp = r.response()
    except (ConnectionResetError, AssertionError):
        pass
    return cut, r, resp


# ---- slowloris: one byte every 0.3 s never completes a head within 2 s ----
s = srv.connect()
t0 = time.time()
cut, r, resp = drip(s, t0, b"GET /plaintext HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"s" * 100)
elapsed = time.time() - t0
check(resp is not None and resp.status == 408, "slow head answered 408 (%r, cut=%s)" % (resp, cut))
check(1.5 < elapsed < 5, "cut off after about the 2 s header timeout (%.1f s)" % elapsed)
check(r.closed(), "slow client's connection closed")
s.close()

# a client that connects and sends nothing is cut off by the same timeout
s = srv.connect()
t0 = time.time()
resp = Reader(s).response()
check(resp is not None and resp.status == 408 and 1.5 < time.time() - t0 < 5, "silent client gets 408 after ~2 s")
s.close()

# ---- keep-alive: an idle connection between requests is closed after 3 s, not 2 ----
s = srv.connect()
r = Reader(s)
s.sendall(b"GET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n")
check(r.response().status == 200, "first keep-alive request")
t0 = time.time()
time.sleep(2.5)  # past the header timeout: an idle connection is not a slow head
s.sendall(b"GET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n")
resp = r.response()
check(resp is not None and resp.status == 200, "a request after 2.5 s idle is served")
t0 = time.time()
check(r.closed(timeout=6), "idle keep-alive connection closed")
check(2.5 < time.time() - t0 < 5.5, "closed after about 3 s idle (%.1f s)" % (time.time() - t0))
s.close()

# ---- clients vanishing ----
# mid-head, mid-body (Content-Length and chunked), with a reset
for raw in [b"GET /plaintext HTTP/1.1\r\nHost: a\r\nX-Half",
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly part",
            b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc"]:
    for linger in (False, True):
        s = srv.connect()
        s.sendall(raw)
        if linger:  # close with RST
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
healthy("clients vanishing mid-request")

# mid-response: ask for 8 MiB and go away after a little of it, gently and with RST
for linger in (False, True):
    for _ in range(5):
        s = srv.connect()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: a\r\n\r\n")
        s.recv(1000)
        if linger:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
healthy("clients vanishing mid-response")

# pipelined requests whose reader vanishes while the answers are still queued
s = srv.connect()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: a\r\n\r\n" * 4)
time.sleep(0.2)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
healthy("a pipelining client vanishing")

# the whole file still arrives intact for a patient client
s = srv.connect(timeout=20)
s.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
resp = Reader(s).response()
with open(os.path.join(root, "big.bin"), "rb") as f:
    check(resp is not None and resp.body == f.read(), "8 MiB file arrives whole")
s.close()

check(srv.alive(), "server still running")
srv.stop()

# ---- a body dripped one byte every 0.3 s: each byte resets the 3 s idle timeout, and
# the head is long done, so only the 2 s body timeout (whole request) can cut it off ----
bsrv = HttpServer("--body-timeout", "2", "--header-timeout", "10", "--keepalive-timeout", "3")
for head in [b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n",
             b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n"]:
    s = bsrv.connect()
    t0 = time.time()
    s.sendall(head)
    cut, r, resp = drip(s, t0, b"x" * 100)
    elapsed = time.time() - t0
    what = "chunked" if b"chunked" in head else "Content-Length"
    check(resp is not None and resp.status == 408, "slow %s body answered 408 (%r, cut=%s)" % (what, resp, cut))
    check(1.5 < elapsed < 5, "slow %s body cut off after about the 2 s body timeout (%.1f s)" % (what, elapsed))
    check(r.closed(), "slow %s body's connection closed" % what)
    s.close()
# a body that arrives in time is served, and the timer does not carry over to the next
# request on the connection
s = bsrv.connect()
r = Reader(s)
for i in range(2):
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab")
    time.sleep(1.2)
    s.sendall(b"cde")
    resp = r.response()
    check(resp is not None and resp.status == 200 and resp.body == b"abcde", "body in time served (%d)" % i)
s.close()
check(bsrv.alive(), "body-timeout server still running")
bsrv.stop()
finish("test_http_timeouts")
