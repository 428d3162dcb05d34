#!/usr/bin/env python3
"""pier http against mutated requests for a bounded time: valid requests with bytes
changed, inserted, deleted and spliced, sent whole or in small pieces, read or reset.
The server must answer or close each connection, never crash, and serve a clean request
afterwards (under ASan, any memory error kills it and fails this test). Two server
threads (pier-test: threads)."""
import os
import random
import socket
import struct
import sys
import tempfile
import time

from pierlib import HttpServer, check, finish, request

SECONDS = float(os.environ.get("PIER_GARBAGE_SECONDS", "12"))
root = tempfile.mkdtemp(prefix="pier-http-garbage-")
with open(os.path.join(root, "f.txt"), "wb") as f:
    f.write(b"x" * 100000)
srv = HttpServer("--root", root, "--max-body", "2000", "--threads", "2")

seeds = [
    b"GET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nT: 1\r\n\r\n",
    b"GET /static/f.txt HTTP/1.1\r\nHost: a\r\nRange: bytes=0-100\r\n\r\n",
    b"HEAD /json HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET /static/%2e%2e/x HTTP/1.1\r\nHost: a\r\nIf-None-Match: *\r\n\r\n",
    b"GET http://a/static/ HTTP/1.1\r\nHost: a\r\nIf-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n",
]
rng = random.Random(int(os.environ.get("PIER_GARBAGE_SEED", "7")))


def mutate(b):
    b = bytearray(b)
    for _ in range(rng.randint(0, 4)):
        op = rng.random()
        i = rng.randrange(len(b) + 1)
        if op < 0.3 and b:
            b[min(i, len(b) - 1)] = rng.randrange(256)
        elif op < 0.5:
            b[i:i] = bytes([rng.choice(b"\r\n :;,%0aF\t\x00")])
        elif op < 0.7 and b:
            del b[min(i, len(b) - 1)]
        elif op < 0.85:
            b[i:i] = rng.choice(seeds)
        else:
            b[i:i] = b[rng.randrange(len(b) + 1):][:rng.randint(1, 40)]
    return bytes(b)


t0 = time.time()
n = 0
while time.time() - t0 < SECONDS:
    try:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=2)
    except OSError as e:
        check(False, "connect failed after %d connections: %s" % (n, e))
        break
    data = b"".join(mutate(rng.choice(seeds)) for _ in range(rng.randint(1, 6)))
    try:
        step = rng.choice([len(data), 1, 7, 64])
        for i in range(0, len(data), step):
            s.sendall(data[i:i + step])
        if rng.random() < 0.3:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif rng.random() < 0.5:
            s.settimeout(0.2)
            try:
                while s.recv(65536):
                    pass
            except OSError:
                pass
    except OSError:
        pass
    s.close()
    n += 1

print("%d mutated connections in %.0f s" % (n, time.time() - t0))
check(n > 100, "more than 100 connections tried (%d)" % n)
check(srv.alive(), "server alive after the garbage")
resp = request(srv, "GET", "/plaintext")
check(resp is not None and resp.status == 200 and resp.body == b"Hello, World!", "a clean request is served")
srv.stop()
finish("test_http_garbage")
