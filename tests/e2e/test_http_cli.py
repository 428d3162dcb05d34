#!/usr/bin/env python3
"""The `pier http` command itself: help, bad flags and a busy port give one clear line and
a non-zero exit; --max-conns bounds open connections; --access-log writes the common log
format; SIGTERM exits 0."""
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

from pierlib import pier_bin, HttpServer, Reader, check, finish, request


def run(*args):
    p = subprocess.run([pier_bin(), "http"] + list(args), capture_output=True, text=True, timeout=10)
    return p.returncode, p.stdout, p.stderr


rc, out, err = run("--help")
check(rc == 0 and out.startswith("usage: pier http") and "--root DIR" in out, "--help prints usage, exits 0")
for args, what in [(["--bogus"], "unknown flag"), (["--port", "70000"], "bad port"),
                   (["--threads", "x"], "bad thread count"), (["--max-body", "0"], "zero max body"),
                   (["--root", "/nonexistent/dir"], "missing root"), (["stray"], "stray argument")]:
    rc, out, err = run(*args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    check(rc == 2, "%s: exit 2 (got %d)" % (what, rc))
    check(len(lines) == 1 and lines[0].startswith("pier http:"), "%s: one clear line (%r)" % (what, err))

# a port held by another socket (no SO_REUSEPORT): refused with one line, non-zero exit
holder = socket.socket()
holder.bind(("127.0.0.1", 0))
holder.listen(1)
busy = holder.getsockname()[1]
rc, out, err = run("--port", str(busy))
check(rc != 0, "busy port: non-zero exit (got %d)" % rc)
check(re.search(r"cannot listen on 127\.0\.0\.1:%d" % busy, err) is not None, "busy port: says so (%r)" % err)
holder.close()

# ---- --max-conns and --access-log ----
log = os.path.join(tempfile.mkdtemp(prefix="pier-http-cli-"), "access.log")
srv = HttpServer("--max-conns", "4", "--access-log", log)
held = []
for _ in range(4):
    s = srv.connect()
    s.sendall(b"GET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n")
    r = Reader(s)
    check(r.response().status == 200, "connection within the limit is served")
    held.append(s)
extra = srv.connect()
extra.sendall(b"GET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n")
rd = Reader(extra)
try:
    resp = rd.response()
except (ConnectionResetError, AssertionError):
    resp = None
check(resp is None and rd.closed(), "a fifth connection over --max-conns 4 is closed unanswered")
extra.close()
for s in held:
    s.close()
time.sleep(0.3)
resp = request(srv, "GET", "/json")
check(resp is not None and resp.status == 200, "served again once connections closed")
request(srv, "POST", "/echo", {"Content-Type": "text/plain"}, b"12345")
request(srv, "GET", "/missing?x=1")
srv.stop()

with open(log) as f:
    lines = f.read().splitlines()
clf = re.compile(r'^127\.0\.0\.1 - - \[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000\] "([^"]*)" (\d{3}) (\d+)$')
parsed = [clf.match(ln) for ln in lines]
check(len(lines) >= 7 and all(parsed), "access log lines are in common log format: %r" % lines[:3])
entries = [(m.group(1), m.group(2), m.group(3)) for m in parsed if m]
check(("GET /plaintext HTTP/1.1", "200", "13") in entries, "plaintext logged with status and size")
check(("POST /echo HTTP/1.1", "200", "5") in entries, "echo logged")
check(("GET /missing?x=1 HTTP/1.1", "404", "14") in entries, "404 logged with its target")
finish("test_http_cli")
