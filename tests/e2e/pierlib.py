"""Shared helpers for pier's end-to-end tests (Python 3 stdlib only).

    import pierlib
    with pierlib.Pier("echo", "--threads", "2") as srv:
        s = srv.connect()
        ...
        code = srv.stop()          # SIGTERM, wait, return the exit code

    pierlib.run_tests(globals())   # at the bottom of a test file: unittest, exit 1 on failure

HTTP tests speak raw bytes and record expectations as they go:

    srv = pierlib.HttpServer("--root", root)   # pier http on an ephemeral port
    resp = pierlib.request(srv, "GET", "/plaintext")
    pierlib.check(resp.status == 200, "plaintext answers")
    srv.stop()                                  # also checks the exit code is 0
    pierlib.finish("test_name")                 # exit 1 if any check failed

The binary comes from $PIER_BIN (ctest sets it), else build/pier under the repository root.
"""
import os
import re
import signal as _signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))


def pier_bin():
    """Path of the pier binary: $PIER_BIN, else <repo>/build/pier."""
    path = os.environ.get("PIER_BIN") or os.path.join(REPO, "build", "pier")
    if not os.access(path, os.X_OK):
        raise RuntimeError("pier binary not found at %s (set PIER_BIN or build first)" % path)
    return path


def free_port(host="127.0.0.1"):
    """A TCP port that was free a moment ago (bind to 0, read it, close)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host, port, timeout=20.0, proc=None):
    """Waits until host:port accepts a TCP connection. Returns True, or False on timeout or
    when proc (a Popen) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def run(args, input=None, timeout=60, env=None):
    """Runs `pier ARGS...` to completion. Returns CompletedProcess with text stdout/stderr."""
    return subprocess.run([pier_bin()] + list(args), input=input, capture_output=True, text=True,
                          timeout=timeout, env=env)


class PierError(RuntimeError):
    pass


class Pier:
    """A running `pier CMD --host H --port P ARGS...`, its stdout and stderr captured to temp
    files. port=None picks a free port (retrying if it was taken in the meantime)."""

    def __init__(self, cmd, *args, host="127.0.0.1", port=None, start_timeout=20.0, env=None,
                 port_flag=True):
        self.cmd = cmd
        self.args = [str(a) for a in args]
        self.host = host
        self.port = port
        self.env = env
        self.port_flag = port_flag
        self.proc = None
        self.returncode = None
        self._err = None
        self._out = None
        self._start(start_timeout)

    # -- lifecycle --
    def _start(self, start_timeout):
        attempts = 1 if self.port is not None else 5
        fixed = self.port
        last = ""
        for _ in range(attempts):
            port = fixed if fixed is not None else free_port(self.host)
            argv = [pier_bin(), self.cmd]
            if self.port_flag:
                argv += ["--host", self.host, "--port", str(port)]
            argv += self.args
            self._err = tempfile.TemporaryFile()
            self._out = tempfile.TemporaryFile()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err,
                                         env=self.env)
            self.port = port
            self.argv = argv
            if wait_port(self.host, port, start_timeout, self.proc):
                return
            if self.proc.poll() is None:  # alive but never listened
                self.kill()
                raise PierError("%s: not accepting on %s:%d after %.0f s; stderr:\n%s"
                                % (" ".join(argv), self.host, port, start_timeout, self.stderr()))
            self.returncode = self.proc.returncode
            last = self.stderr()
            if "in use" not in last.lower():
                break
        raise PierError("%s exited %s before accepting; stderr:\n%s" % (" ".join(self.argv), self.returncode, last))

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def signal(self, signo):
        if self.proc.poll() is None:
            self.proc.send_signal(signo)

    def wait(self, timeout=15.0):
        """Waits for exit; returns the exit code, or None if still running after timeout."""
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def stop(self, timeout=15.0, signo=_signal.SIGTERM):
        """Sends signo (SIGTERM), waits up to timeout, kills if still running. Returns the exit
        code (negative: killed by that signal; a kill after the timeout gives -9)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signo)
            if self.wait(timeout) is None:
                self.kill()
        self.returncode = self.proc.returncode
        return self.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.returncode = self.proc.wait()
        return self.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.stop(timeout=5.0)

    def __del__(self):
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        except Exception:
            pass

    # -- output --
    @staticmethod
    def _read(f):
        f.flush()
        f.seek(0)
        return f.read().decode("utf-8", "replace")

    def stderr(self):
        """Everything the process wrote to stderr so far."""
        return self._read(self._err)

    def stdout(self):
        return self._read(self._out)

    def wait_stderr(self, text, timeout=10.0):
        """Waits until stderr contains text. Returns True/False."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.stderr():
                return True
            time.sleep(0.05)
        return text in self.stderr()

    # -- clients --
    def connect(self, timeout=30.0):
        """A blocking socket connected to the server, with timeout set for every operation."""
        s = socket.create_connection((self.host, self.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def rss(self):
        return rss(self.pid)


def rss(pid):
    """{'rss': VmRSS, 'hwm': VmHWM} of a process, in bytes, from /proc/PID/status."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                out["rss"] = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                out["hwm"] = int(line.split()[1]) * 1024
    return out


def end_process(proc, timeout):
    """Ends a program a test started beside pier (a Popen): SIGTERM, then SIGKILL if it has
    not exited within timeout seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def curl(*args, max_time=60):
    """Runs curl -sS with args, giving it max_time seconds; returns its exit code, stdout
    (bytes) and stderr (text)."""
    p = subprocess.run(["curl", "-sS", "--max-time", str(max_time)] + list(args), capture_output=True,
                       timeout=max_time + 30)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


def recv_exact(sock, n):
    """Reads exactly n bytes; raises EOFError if the peer closes first (socket timeouts apply)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("peer closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return bytes(buf)


def send_in_thread(sock, data):
    """Starts sock.sendall(data) on a daemon thread, so that the caller can read meanwhile.
    Returns the thread and a list that gets the OSError the send raised, if any."""
    err = []

    def sender():
        try:
            sock.sendall(data)
        except OSError as e:
            err.append(e)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    return t, err


def recv_until_eof(sock, limit=1 << 30):
    """Reads until the peer closes (recv returns b''); raises if more than limit bytes arrive."""
    buf = bytearray()
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            raise AssertionError("more than %d bytes before EOF" % limit)


# ---- checks that record a failure and go on (the test exits non-zero at the end) ----

failures = []
checks = [0]


def check(cond, what):
    """Records a failed expectation; returns cond."""
    checks[0] += 1
    if not cond:
        failures.append(what)
        print("FAIL:", what, flush=True)
    return cond


def finish(name):
    """Exits 1 if any check failed, else 0, with a summary line."""
    if failures:
        print("%s: %d failure(s)" % (name, len(failures)))
        sys.exit(1)
    print("%s: ok (%d checks)" % (name, checks[0]))
    sys.exit(0)


# ---- HTTP ----

class HttpServer(Pier):
    """`pier http --host 127.0.0.1 --port 0 ARGS...`: the kernel picks the port, read back
    from the server's start-up line, so no probe connection is ever made. stop() checks
    (with check()) that the server exits 0."""

    def __init__(self, *args, start_timeout=20.0, env=None):
        super().__init__("http", *args, port=0, start_timeout=start_timeout, env=env)

    def _start(self, start_timeout):
        self.argv = [pier_bin(), "http", "--host", self.host, "--port", "0"] + self.args
        self._err = tempfile.TemporaryFile()
        self._out = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err,
                                     env=self.env)
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            m = re.search(r"http: listening on [^ ]*:(\d+)", self.stderr())
            if m:
                self.port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        raise PierError("%s did not start; stderr:\n%s" % (" ".join(self.argv), self.stderr()))

    def stop(self, timeout=15.0, signo=_signal.SIGTERM):
        rc = super().stop(timeout, signo)
        check(rc == 0, "server exits 0 on SIGTERM (got %s); stderr tail:\n%s"
              % (rc, "".join(self.stderr().splitlines(True)[-20:])))
        return rc


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
    """One request on its own connection (Connection: close); the response or None."""
    h = "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n" % (method, path)
    for k, v in (headers or {}).items():
        h += "%s: %s\r\n" % (k, v)
    if body:
        h += "Content-Length: %d\r\n" % len(body)
    h += "Connection: close\r\n\r\n"
    resp, r = exchange(server, h.encode() + body, head_request=(method == "HEAD"))
    r.sock.close()
    return resp


def run_tests(g):
    """Runs every unittest.TestCase in the module whose globals() is g; exits 1 on failure."""
    module = sys.modules[g["__name__"]]
    suite = unittest.defaultTestLoader.loadTestsFromModule(module)
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    sys.exit(0 if result.wasSuccessful() else 1)
