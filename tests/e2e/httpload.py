"""A bounded HTTP/1.1 load client for the restart and scale-out tests (stdlib only).

    load = httpload.Load("127.0.0.1", port, keepalive=2, fresh=2, source="127.0.0.2")
    load.start()
    ... restart, upgrade, drain ...
    st = load.stop()          # a Stats: ok, failures (a list of strings), retried, reused

Keep-alive workers send requests one after another on one connection and open a new one
when the server says Connection: close. Fresh workers open a connection per request.

What counts as a failure: any request that does not end in a whole 200 response with
the expected body, except this one case, which RFC 9112 section 9.3.1 lets a client
retry and which every browser and HTTP library does retry: a request sent on a
connection already used for an earlier request, which the server closed without a
single byte of response (the server closed it as idle while the request was on its
way). That request is sent again once on a new connection, counted in `retried`; if
the retry fails too, it is a failure. A fresh connection gets no such second chance.
"""
import socket
import threading
import time


class Stats:
    def __init__(self):
        self.ok = 0
        self.retried = 0
        self.reused = 0
        self.fresh = 0
        self.failures = []
        self.lock = threading.Lock()

    def add(self, **kw):
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def fail(self, what):
        with self.lock:
            if len(self.failures) < 50:
                self.failures.append(what)
            else:
                self.failures.append("...")
                self.failures = self.failures[:51]

    def __repr__(self):
        return ("ok=%d (keep-alive reuses %d, fresh connections %d), retried idle-closed=%d, failures=%d %s"
                % (self.ok, self.reused, self.fresh, self.retried, len(self.failures), self.failures[:5]))


class _Empty(Exception):
    """The connection closed before any byte of the response."""


def _read_response(sock):
    """Reads one response; returns (status, headers dict, body). Raises _Empty when the
    connection closed before its first byte, OSError/ValueError when cut later."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        try:
            chunk = sock.recv(65536)
        except OSError as e:
            if not buf:
                raise
            raise ValueError("%s inside the response head" % type(e).__name__)
        if not chunk:
            if not buf:
                raise _Empty()
            raise ValueError("connection closed inside the response head after %r" % buf[:80])
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "-1"))
    if n < 0:
        raise ValueError("no Content-Length in %r" % head[:200])
    while len(body) < n:
        try:
            chunk = sock.recv(65536)
        except OSError as e:
            raise ValueError("%s inside the body" % type(e).__name__)
        if not chunk:
            raise ValueError("connection closed inside the body (%d of %d bytes)" % (len(body), n))
        body += chunk
    return status, headers, body[:n]


class Load:
    def __init__(self, host, port, keepalive=2, fresh=2, path="/plaintext", expect=b"Hello, World!",
                 timeout=10.0, pause=0.0, source=None):
        self.addr = (host, port)
        self.source = (source, 0) if source else None
        self.path = path
        self.expect = expect
        self.timeout = timeout
        self.pause = pause
        self.stats = Stats()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._keepalive, daemon=True) for _ in range(keepalive)]
        self.threads += [threading.Thread(target=self._fresh, daemon=True) for _ in range(fresh)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(self.timeout * 3)
        return self.stats

    def count(self):
        return self.stats.ok

    def wait_more(self, n, timeout=30.0):
        """Waits until n more requests have succeeded (proof that traffic flows)."""
        goal = self.stats.ok + n
        deadline = time.monotonic() + timeout
        while self.stats.ok < goal and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.stats.ok >= goal

    def _connect(self):
        s = socket.create_connection(self.addr, timeout=self.timeout, source_address=self.source)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def _request(self, close=False):
        return ("GET %s HTTP/1.1\r\nHost: pier\r\n%s\r\n"
                % (self.path, "Connection: close\r\n" if close else "")).encode()

    def _check(self, status, body, where):
        if status != 200 or body != self.expect:
            self.stats.fail("%s: status %d body %r" % (where, status, body[:60]))
            return False
        return True

    def _one_fresh(self, where):
        """One request on a new connection. Returns True if it succeeded (counted)."""
        try:
            with self._connect() as s:
                s.sendall(self._request(close=True))
                status, _, body = _read_response(s)
        except (_Empty, OSError, ValueError) as e:
            self.stats.fail("%s: %s" % (where, type(e).__name__ + ": " + str(e)))
            return False
        if self._check(status, body, where):
            self.stats.add(ok=1, fresh=1)
            return True
        return False

    def _fresh(self):
        while not self.stopping.is_set():
            self._one_fresh("fresh connection")
            if self.pause:
                time.sleep(self.pause)

    def _keepalive(self):
        sock, used = None, 0
        while not self.stopping.is_set():
            try:
                if sock is None:
                    sock, used = self._connect(), 0
                sock.sendall(self._request())
                status, headers, body = _read_response(sock)
            except (_Empty, ConnectionResetError, BrokenPipeError) as e:
                # no byte of a response: only a reused connection may be retried
                sock.close() if sock else None
                sock = None
                if used == 0:
                    self.stats.fail("keep-alive, new connection: %s" % type(e).__name__)
                elif self._one_fresh("keep-alive retry"):
                    self.stats.add(retried=1)
                continue
            except (OSError, ValueError) as e:
                self.stats.fail("keep-alive: %s: %s" % (type(e).__name__, e))
                sock.close() if sock else None
                sock = None
                continue
            if self._check(status, body, "keep-alive"):
                self.stats.add(ok=1, reused=1 if used else 0)
            used += 1
            if headers.get("connection", "").lower() == "close":
                sock.close()
                sock = None
            if self.pause:
                time.sleep(self.pause)
        if sock:
            sock.close()
