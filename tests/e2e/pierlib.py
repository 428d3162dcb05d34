"""Shared helpers for pier's end-to-end tests (Python 3 stdlib only).

    import pierlib
    with pierlib.Pier("echo", "--threads", "2") as srv:
        s = srv.connect()
        ...
        code = srv.stop()          # SIGTERM, wait, return the exit code

    pierlib.run_tests(globals())   # at the bottom of a test file: unittest, exit 1 on failure

The binary comes from $PIER_BIN (ctest sets it), else build/pier under the repository root.
"""
import os
import signal as _signal
import socket
import subprocess
import sys
import tempfile
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


def recv_exact(sock, n):
    """Reads exactly n bytes; raises EOFError if the peer closes first (socket timeouts apply)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("peer closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return bytes(buf)


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


def run_tests(g):
    """Runs every unittest.TestCase in the module whose globals() is g; exits 1 on failure."""
    module = sys.modules[g["__name__"]]
    suite = unittest.defaultTestLoader.loadTestsFromModule(module)
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    sys.exit(0 if result.wasSuccessful() else 1)
