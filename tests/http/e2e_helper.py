"""Helpers for the HTTP end-to-end tests (tests/e2e/test_http_*.py): start `pier http` on
a free port of 127.0.0.1, speak raw bytes to it, read responses, and fail loudly.

Python standard library only. Every socket has a timeout, so no test can hang."""
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

PIER_BIN = os.environ.get("PIER_BIN") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "build", "pier")

failures = []
checks = [0]


def check(cond, what):
    """Records a failed expectation (the test goes on, and exits non-zero at the end)."""
    checks[0] += 1
    if not cond:
        failures.append(what)
        print("FAIL:", what, flush=True)
    return cond


def finish(name):
    if failures:
        print("%s: %d failure(s)" % (name, len(failures)))
        sys.exit(1)
    print("%s: ok (%d checks)" % (name, checks[0]))
    sys.exit(0)


class Server:
    """`pier http --port 0 ...`; the port is read from its start-up log line."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([PIER_BIN, "http", "--port", "0"] + list(args),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.log = []
        self.port = None
        deadline = time.time() + 10
        while time.time() < deadline:
            line = self.proc.stderr.readline().decode(errors="replace")
            if not line:
                break
            self.log.append(line)
            m = re.search(r"http: listening on [^ ]*:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            self.proc.kill()
            raise SystemExit("pier http did not start: %s" % "".join(self.log))
        # keep draining stderr so the server can never block on a full pipe
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line.decode(errors="replace"))

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        """SIGTERM, then expect a clean exit within 10 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = "killed after 15 s"
        check(rc == 0, "server exits 0 on SIGTERM (got %s); log tail:\n%s" % (rc, "".join(self.log[-20:])))

    def connect(self, timeout=10):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s


class Response:
    def __init__(self, status, reason, headers, body, raw_head):
        self.status = status
        self.reason = reason
        self.headers = headers  # lower-case name -> list of values
        self.body = body
        self.raw_head = raw_head

    def header(self, name):
        v = self.headers.get(name.lower())
        return v[0] if v else None

    def __repr__(self):
        return "<%d %s %r>" % (self.status, self.reason, self.body[:60])


class Reader:
    """Reads HTTP responses from a socket, keeping what is left over between them."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.eof = False

    def _fill(self):
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _until(self, sep):
        while sep not in self.buf:
            if not self._fill():
                return None
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def _exactly(self, n):
        while len(self.buf) < n:
            if not self._fill():
                return None
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self, head_request=False):
        """The next response, or None at EOF before one."""
        head = self._until(b"\r\n\r\n")
        if head is None:
            return None
        lines = head.decode("latin-1").split("\r\n")
        m = re.match(r"HTTP/1\.1 (\d{3}) (.*)", lines[0])
        if not m:
            raise AssertionError("bad status line %r" % lines[0])
        status = int(m.group(1))
        headers = {}
        for line in lines[1:]:
            if line:
                k, v = line.split(":", 1)
                headers.setdefault(k.strip().lower(), []).append(v.strip())
        body = b""
        if status == 100:
            return Response(status, m.group(2), headers, b"", head)
        te = headers.get("transfer-encoding", [""])[0].lower()
        if head_request or status in (204, 304):
            pass
        elif te == "chunked":
            while True:
                size_line = self._until(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    self._until(b"\r\n")
                    break
                body += self._exactly(size)
                self._exactly(2)
        elif "content-length" in headers:
            body = self._exactly(int(headers["content-length"][0]))
        else:
            while self._fill():
                pass
            body, self.buf = self.buf, b""
        return Response(status, m.group(2), headers, body, head)

    def closed(self, timeout=3):
        """True if the peer closes (EOF or reset) within timeout with nothing more sent."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return not self.buf
                self.buf += data
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False


def exchange(server, raw, head_request=False, timeout=10):
    """Sends raw bytes on a new connection; returns (first response or None, reader)."""
    s = server.connect(timeout)
    s.sendall(raw)
    r = Reader(s)
    return r.response(head_request), r


def request(server, method, path, headers=None, body=b""):
    h = "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n" % (method, path)
    for k, v in (headers or {}).items():
        h += "%s: %s\r\n" % (k, v)
    if body:
        h += "Content-Length: %d\r\n" % len(body)
    h += "Connection: close\r\n\r\n"
    resp, r = exchange(server, h.encode() + body, head_request=(method == "HEAD"))
    r.sock.close()
    return resp
