"""Shared pieces of the fault scenarios: running a pier process with faults, and many
non-blocking client connections at once whose received bytes are checked afterwards.

Python 3 standard library only.
"""
import errno
import os
import random
import re
import selectors
import signal
import socket
import subprocess
import tempfile
import time

SANITIZER_MARKS = (b"ERROR: AddressSanitizer", b"ERROR: LeakSanitizer", b"runtime error:",
                   b"WARNING: ThreadSanitizer", b"AddressSanitizer:DEADLYSIGNAL")
FAULTS_LINE = re.compile(rb"pier-faults: (\d+) faults injected \(seed (\d+), rate ([0-9.e+-]+)\):?([^\n]*)")
LISTENING = re.compile(rb"listening on [^ ]*:(\d+)")


class Failure(Exception):
    """A scenario found a bug: what, and the evidence."""


def sanitizer_env(extra=None):
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0:halt_on_error=1:detect_stack_use_after_return=0"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    env["LSAN_OPTIONS"] = "report_objects=0"
    for k in list(env):
        if k.startswith("PIER_FAULT_"):
            del env[k]
    if extra:
        env.update({k: str(v) for k, v in extra.items()})
    return env


def check_stderr(name, err):
    """Raises Failure with the report if a sanitizer spoke. Returns the faults injected."""
    for mark in SANITIZER_MARKS:
        i = err.find(mark)
        if i >= 0:
            raise Failure("%s: sanitizer report:\n%s" % (name, err[max(0, i - 200):i + 6000].decode(errors="replace")))
    m = FAULTS_LINE.search(err)
    return (int(m.group(1)), m.group(4).decode().strip()) if m else (None, "")


class Pier:
    """A pier process with its stderr in a file. faults: None (no injection) or a dict of
    PIER_FAULT_* values; START and STOP files are provided here (faults begin on
    start_faults() unless start_now)."""

    def __init__(self, binary, args, name, faults=None, start_now=False, listen=True, stdin=subprocess.DEVNULL):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="pier-faults-")
        self.start_file = os.path.join(self.dir, "start")
        self.stop_file = os.path.join(self.dir, "stop")
        extra = {}
        if faults is not None:
            extra = {"PIER_FAULT_" + k.upper(): v for k, v in faults.items()}
            if not start_now:
                extra["PIER_FAULT_START"] = self.start_file
            extra["PIER_FAULT_STOP"] = self.stop_file
        self.errpath = os.path.join(self.dir, "stderr")
        self.outpath = os.path.join(self.dir, "stdout")
        self.err_f = open(self.errpath, "wb")
        self.out_f = open(self.outpath, "wb")
        self.args = [binary] + list(args)
        self.proc = subprocess.Popen(self.args, stdin=stdin, stdout=self.out_f, stderr=self.err_f,
                                     env=sanitizer_env(extra))
        self.port = None
        self.faults = None
        self.fault_detail = ""
        self.returncode = None
        if listen:
            self.wait_listening()

    def stderr(self):
        with open(self.errpath, "rb") as f:
            return f.read()

    def stdout(self):
        with open(self.outpath, "rb") as f:
            return f.read()

    def wait_listening(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = LISTENING.search(self.stderr())
            if m:
                self.port = int(m.group(1))
                return self.port
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        check_stderr(self.name, self.stderr())
        raise Failure("%s: not listening (exit %s):\n%s" % (self.name, self.proc.poll(),
                                                            self.stderr()[-3000:].decode(errors="replace")))

    def start_or_give_up(self):
        """True once the server listens; False if it gave up starting, which must be clean:
        exit 1 with a reason on stderr. Anything else (no port and no exit, another exit
        code, a silent exit, a sanitizer report) is a Failure."""
        try:
            self.wait_listening(timeout=20)
            return True
        except Failure:
            if self.proc.poll() is None:
                raise
        code = self.wait(10)
        if code != 1 or not self.stderr().strip():
            raise Failure("%s: start-up failed with exit %s, want 1 with a reason:\n%s" % (
                self.name, code, self.stderr()[-800:].decode(errors="replace")))
        return False

    def start_faults(self):
        open(self.start_file, "w").close()

    def stop_faults(self):
        """No fault is injected once the stop file exists (each looks for it first)."""
        open(self.stop_file, "w").close()

    def alive(self):
        return self.proc.poll() is None

    def wait(self, timeout):
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)  # for a core or stack, if anyone looks
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            raise Failure("%s: hang: did not exit within %.0f s\n%s" % (self.name, timeout,
                                                                      self.stderr()[-3000:].decode(errors="replace")))
        finally:
            self.err_f.close()
            self.out_f.close()
        self.faults, self.fault_detail = check_stderr(self.name, self.stderr())
        return self.returncode

    def terminate(self, timeout=30.0, codes=(0,)):
        """SIGTERM, then the exit must be clean: one of codes, no sanitizer report."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.wait(timeout)
        if code not in codes:
            raise Failure("%s: exit code %s after SIGTERM (want %s)\n%s" % (
                self.name, code, codes, self.stderr()[-3000:].decode(errors="replace")))
        if b"connections still open after" in self.stderr():
            # the clients read everything and close within seconds: a drain that runs
            # into its deadline is stuck on the server's side
            raise Failure("%s: the drain after SIGTERM did not finish\n%s" % (
                self.name, self.stderr()[-3000:].decode(errors="replace")))
        return code

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.err_f.close()
        self.out_f.close()


# ---- many client connections on one selector ----

class Conn:
    """One client connection: sends `chunks` in order (one send call each, after `gap`
    seconds each), half-closes after the last if `shut_wr`, and reads until EOF, a reset,
    `enough(received)` or the deadline. outcome: eof, reset, enough, timeout, refused."""

    def __init__(self, addr, chunks, shut_wr=False, enough=None, timeout=15.0, gap=0.0, tag=None):
        self.addr = addr
        self.chunks = list(chunks)
        self.shut_wr = shut_wr
        self.enough = enough
        self.timeout = timeout
        self.gap = gap
        self.tag = tag
        self.recv = bytearray()
        self.sent = 0
        self.outcome = None
        self.sock = None
        self.next_send = 0.0
        self.deadline = 0.0
        self.wrote_all = False

    def start(self, sel, now):
        self.deadline = now + self.timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        err = self.sock.connect_ex(self.addr)
        if err not in (0, errno.EINPROGRESS):
            self.finish(sel, "refused")
            return
        sel.register(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self)

    def finish(self, sel, outcome):
        if self.outcome:
            return
        self.outcome = outcome
        try:
            sel.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()

    def want_write(self, now):
        return not self.wrote_all and now >= self.next_send

    def on_write(self, sel, now):
        while self.chunks:
            c = self.chunks[0]
            try:
                n = self.sock.send(c)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.ECONNREFUSED,) and self.sent == 0 and not self.recv:
                    self.finish(sel, "refused")
                else:
                    self.wrote_all = True  # the peer reset or closed: read what came
                return
            self.sent += n
            if n < len(c):
                self.chunks[0] = c[n:]
                return
            self.chunks.pop(0)
            if self.gap and self.chunks:
                self.next_send = now + self.gap
                return
        self.wrote_all = True
        if self.shut_wr:
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def on_read(self, sel):
        try:
            data = self.sock.recv(262144)
        except BlockingIOError:
            return
        except ConnectionRefusedError:
            self.finish(sel, "refused")
            return
        except OSError:
            self.finish(sel, "reset")
            return
        if not data:
            self.finish(sel, "eof")
            return
        self.recv += data
        if self.enough and self.enough(self.recv):
            self.finish(sel, "enough")


def run_conns(conns, parallel=8, seconds=None, overall=120.0):
    """Runs the connections, at most `parallel` at a time. conns is a list, or with
    `seconds` a function that makes the next one, called until that time has passed.
    Returns the connections, each finished."""
    sel = selectors.DefaultSelector()
    t0 = time.monotonic()
    if seconds is None:
        todo = list(reversed(conns))
        make = todo.pop
        more = lambda now: bool(todo)  # noqa: E731
    else:
        make = conns
        more = lambda now: now - t0 < seconds  # noqa: E731
    done, live = [], []
    end = t0 + overall
    while live or more(time.monotonic()):
        now = time.monotonic()
        while more(now) and len(live) < parallel:
            c = make()
            done.append(c)
            c.start(sel, now)
            if not c.outcome:
                live.append(c)
        for c in live:
            if not c.outcome:
                ev = selectors.EVENT_READ | (selectors.EVENT_WRITE if c.want_write(now) else 0)
                sel.modify(c.sock, ev, c)
        wait = 0.05
        for c in live:
            if not c.wrote_all and c.next_send > now:
                wait = min(wait, c.next_send - now)
        for key, mask in sel.select(timeout=max(wait, 0)):
            c = key.data
            now = time.monotonic()
            if mask & selectors.EVENT_WRITE and not c.outcome:
                c.on_write(sel, now)
            if mask & selectors.EVENT_READ and not c.outcome:
                c.on_read(sel)
        now = time.monotonic()
        for c in live:
            if not c.outcome and (now > c.deadline or now > end):
                c.finish(sel, "timeout")
        live = [c for c in live if not c.outcome]
    sel.close()
    return done


def split(rng, data, max_piece):
    """data cut into pieces of 1..max_piece bytes."""
    out, i = [], 0
    while i < len(data):
        n = rng.randint(1, max_piece)
        out.append(bytes(data[i:i + n]))
        i += n
    return out


def describe_mismatch(got, want, at):
    lo = max(0, at - 60)
    return "at byte %d:\n  got  %r\n  want %r" % (at, bytes(got[lo:at + 80]), bytes(want[lo:at + 80]))


def first_diff(a, b):
    n = min(len(a), len(b))
    lo, hi = 0, n
    if a[:n] == b[:n]:
        return n
    while hi - lo > 1:  # a[:lo] == b[:lo], a[:hi] != b[:hi]
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def seeded(seed, salt):
    return random.Random(seed * 1000003 + salt)
