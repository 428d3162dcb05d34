#!/usr/bin/env python3
"""pier http under pipelining, single-byte splits, many concurrent keep-alive connections
and a short wrk load: every response arrives, whole and in request order. Two server
threads, so the TSan run takes it too (pier-test: threads)."""
import os
import selectors
import shutil
import subprocess
import sys
import time

from pierlib import HttpServer, Reader, check, finish

srv = HttpServer("--threads", "2")


def echo_req(body, close=False):
    return (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n"
            % (len(body), b"Connection: close\r\n" if close else b"")) + body


# ---- 200 pipelined requests in one send, answered in order ----
s = srv.connect()
batch = b"".join(echo_req(b"req-%03d" % i) for i in range(200))
s.sendall(batch)
r = Reader(s)
bodies = [r.response() for _ in range(200)]
check(all(b is not None for b in bodies), "all 200 pipelined responses arrived")
check([b.body for b in bodies if b] == [b"req-%03d" % i for i in range(200)], "pipelined responses in order")
s.close()

# mixed methods, a chunked body, HEAD and an error in the middle: everything before the
# error is answered, the error closes, nothing after it is answered
s = srv.connect()
s.sendall(b"GET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n"
          b"HEAD /plaintext HTTP/1.1\r\nHost: a\r\n\r\n"
          b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
          b"GET /json HTTP/1.1\r\nHost: a\r\n\r\n"
          b"GET /bad HTTP/1.1\r\nHost: a\r\nBad Field: x\r\n\r\n"
          b"GET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n")
r = Reader(s)
got = [r.response(), r.response(head_request=True), r.response(), r.response(), r.response()]
check([g.status if g else None for g in got] == [200, 200, 200, 200, 400], "mixed pipeline statuses %r" % got)
check(got[2] is not None and got[2].body == b"abc", "chunked body inside a pipeline")
check(got[3] is not None and got[3].body.startswith(b'{"message"'), "json after chunked")
check(r.closed() and r.response() is None, "nothing answered after the bad request")
s.close()

# ---- the same pipeline sent one byte at a time ----
s = srv.connect()
reqs = [b"GET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n", echo_req(b"split body"),
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nabcd\r\n0\r\nT: 1\r\n\r\n",
        b"GET /json HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"]
for byte in b"".join(reqs):
    s.send(bytes([byte]))
r = Reader(s)
got = [r.response() for _ in reqs]
check([g.body if g else None for g in got] ==
      [b"Hello, World!", b"split body", b"abcd", b'{"message":"Hello, World!"}'], "byte-at-a-time pipeline")
check(r.closed(), "closed after Connection: close")
s.close()

# a body in two halves with a pause between them
s = srv.connect()
s.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello")
time.sleep(0.2)
s.sendall(b"world")
resp = Reader(s).response()
check(resp is not None and resp.body == b"helloworld", "body in two writes")
s.close()

# ---- several hundred concurrent keep-alive connections, each sending 5 requests ----
N, PER = 300, 5
sel = selectors.DefaultSelector()
conns = []
for i in range(N):
    c = srv.connect()
    c.setblocking(False)
    state = {"sock": c, "reader": Reader(c), "sent": 0, "done": 0, "i": i, "bad": 0}
    conns.append(state)
    sel.register(c, selectors.EVENT_READ, state)


def send_next(st):
    st["sock"].setblocking(True)
    st["sock"].sendall(echo_req(b"c%d-r%d" % (st["i"], st["sent"])))
    st["sock"].setblocking(False)
    st["sent"] += 1


for st in conns:
    send_next(st)
deadline = time.time() + 40
remaining = N
while remaining and time.time() < deadline:
    for key, _ in sel.select(timeout=1):
        st = key.data
        rd = st["reader"]
        try:
            data = st["sock"].recv(65536)
        except BlockingIOError:
            continue
        if not data:
            st["bad"] += 1
            sel.unregister(st["sock"])
            remaining -= 1
            continue
        rd.buf += data
        while b"\r\n\r\n" in rd.buf:
            head, rest = rd.buf.split(b"\r\n\r\n", 1)
            length = int([ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")][0])
            if len(rest) < length:
                break
            if rest[:length] != b"c%d-r%d" % (st["i"], st["done"]):
                st["bad"] += 1
            rd.buf = rest[length:]
            st["done"] += 1
            if st["done"] == PER:
                sel.unregister(st["sock"])
                remaining -= 1
                break
            send_next(st)
check(remaining == 0, "all %d connections finished (%d left)" % (N, remaining))
check(sum(st["done"] for st in conns) == N * PER, "all %d keep-alive requests answered" % (N * PER))
check(sum(st["bad"] for st in conns) == 0, "every response matched its request")
for st in conns:
    st["sock"].close()

# ---- a short load check with wrk, when it is installed ----
if shutil.which("wrk"):
    out = subprocess.run(["wrk", "-t1", "-c64", "-d2s", "http://127.0.0.1:%d/plaintext" % srv.port],
                         capture_output=True, text=True, timeout=30).stdout
    rps = [float(ln.split()[1]) for ln in out.splitlines() if ln.startswith("Requests/sec")]
    errs = [ln for ln in out.splitlines() if "Non-2xx" in ln or "Socket errors" in ln]
    check(rps and rps[0] > 1000, "wrk: more than 1000 requests/s (%s)" % (rps or out))
    check(not errs, "wrk: no errors (%s)" % errs)
    print("wrk /plaintext, 64 connections, 2 s: %.0f requests/s" % (rps[0] if rps else 0))

check(srv.alive(), "server still running")
srv.stop()
finish("test_http_pipeline")
