"""What the admin tests (test_admin_*.py) share: a pier server with --admin on an
ephemeral port, whose port is read back from its start-up line, and plain HTTP GETs."""
import os
import re
import socket
import time

import pierlib


def admin_port(srv, timeout=20.0):
    """The admin port that srv logged ("admin: ... on HOST:PORT")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(r"admin: [^\n]* on [^ \n]*:(\d+)", srv.stderr())
        if m:
            return int(m.group(1))
        time.sleep(0.02)
    raise pierlib.PierError("no admin line; stderr:\n" + srv.stderr())


def get(port, path, timeout=20):
    """GET path on 127.0.0.1:port with Connection: close: (status, headers dict, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode())
        r = pierlib.Reader(s).response()
    if r is None:
        raise AssertionError("no response to GET %s" % path)
    return r.status, {k: v[0] for k, v in r.headers.items()}, r.body


def metric(text, name):
    """The value of the sample `name` (with its labels) in a /metrics text (str or
    bytes), or None if it is not there."""
    if isinstance(text, bytes):
        text = text.decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def wait_metric(port, name, want, timeout=10.0):
    """Scrapes until the sample `name` equals want (or, for a callable want, until
    want(value) holds) or timeout seconds pass; returns the last value seen."""
    ok = want if callable(want) else (lambda v: v == want)
    got = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = metric(get(port, "/metrics")[2], name)
        if ok(got):
            break
        time.sleep(0.02)
    return got


def output_dir():
    """The tests' output folder under the build directory (screenshots and the like)."""
    build = os.environ.get("PIER_BUILD") or os.path.join(pierlib.REPO, "build")
    d = os.path.join(build, "test-output")
    os.makedirs(d, exist_ok=True)
    return d
