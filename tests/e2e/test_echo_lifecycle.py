#!/usr/bin/env python3
"""pier echo over its life: graceful stop on SIGTERM with data in flight, later connections
served after the first one closes, peers that reset in a loop, bad flags, a port in use,
echo-client against a closed port, the idle timeout, and every command's --help.
"""
# pier-test: threads
import os
import re
import signal
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pierlib  # noqa: E402


def echo_once(srv, data, timeout=30.0):
    with srv.connect(timeout) as s:
        s.sendall(data)
        return pierlib.recv_exact(s, len(data))


def reset_close(s):
    """Closes with SO_LINGER 0: the kernel sends RST instead of FIN."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def one_line_error(test, r, *words):
    """r (a CompletedProcess) failed with exactly one non-empty line on stderr containing
    every one of words (case-insensitive)."""
    test.assertNotEqual(r.returncode, 0, "expected a non-zero exit; stderr: %r" % r.stderr)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    test.assertEqual(len(lines), 1, "expected one line on stderr, got: %r" % r.stderr)
    for w in words:
        test.assertIn(w.lower(), lines[0].lower(), "stderr line %r does not mention %r" % (lines[0], w))
    test.assertNotIn("listening", r.stderr)


class GracefulStop(unittest.TestCase):
    def run_case(self, threads):
        srv = pierlib.Pier("echo", "--threads", threads)
        try:
            size = 4 * 1024 * 1024
            data = os.urandom(size)
            s = srv.connect(30)
            t, err = pierlib.send_in_thread(s, data)
            time.sleep(0.5)  # data in flight: queued in pier and in both kernels, nothing read
            srv.signal(signal.SIGTERM)
            self.assertTrue(srv.wait_stderr("no longer accepting", 20), "no drain logged after SIGTERM:\n"
                            + srv.stderr())
            # pier no longer accepts new connections ...
            with self.assertRaises(OSError, msg="a new connection was accepted after SIGTERM"):
                with socket.create_connection((srv.host, srv.port), timeout=5) as n:
                    n.sendall(b"x")
                    if n.recv(1) == b"":
                        raise ConnectionResetError("closed")
            # ... but the open one gets every byte back, then the close
            got = bytearray()
            while True:
                try:
                    chunk = s.recv(1 << 20)
                except ConnectionResetError:
                    self.fail("connection reset after %d of %d bytes" % (len(got), size))
                if not chunk:
                    break
                got += chunk
            t.join(30)
            s.close()
            self.assertEqual(err, [], "sending failed")
            self.assertEqual(len(got), size, "after SIGTERM %d of %d bytes came back" % (len(got), size))
            self.assertTrue(bytes(got) == data, "bytes echoed during the graceful stop differ")
            code = srv.wait(10)
            self.assertIsNotNone(code, "server still running 10 s after SIGTERM with its last connection closed")
            self.assertEqual(code, 0, srv.stderr())
            log = srv.stderr()
            self.assertRegex(log, r"SIGTERM.*no longer accepting", log)
            self.assertIn("stopped cleanly", log)
        finally:
            srv.kill()

    def test_one_loop(self):
        self.run_case("1")

    def test_two_loops(self):
        self.run_case("2")

    def test_idle_server_stops_at_once(self):
        srv = pierlib.Pier("echo", "--threads", "2")
        idle = srv.connect(10)  # an idle connection must not hold up the stop
        t0 = time.monotonic()
        code = srv.stop(timeout=10)
        took = time.monotonic() - t0
        idle.close()
        self.assertEqual(code, 0, srv.stderr())
        self.assertLess(took, 8, "stop with one idle connection took %.1f s" % took)
        self.assertIn("stopped cleanly", srv.stderr())


class Lifetime(unittest.TestCase):
    def test_connections_after_the_first_one_closed(self):
        """The loop belongs to the server's owner: a connection closing must not free it, so
        every later connection is accepted and served (one loop: all on the same loop)."""
        for threads in ("1", "2"):
            with pierlib.Pier("echo", "--threads", threads) as srv:
                for i in range(30):
                    msg = b"connection %d" % i
                    self.assertEqual(echo_once(srv, msg), msg)
                    if i % 3 == 0:
                        time.sleep(0.05)  # let the close finish before the next accept
                # close styles: graceful, half-close first, reset
                s = srv.connect()
                s.shutdown(socket.SHUT_WR)
                self.assertEqual(s.recv(10), b"")
                s.close()
                s = srv.connect()
                s.sendall(b"abc")
                reset_close(s)
                time.sleep(0.1)
                self.assertEqual(echo_once(srv, b"still serving"), b"still serving")
                self.assertTrue(srv.alive(), srv.stderr())
                self.assertEqual(srv.stop(), 0, srv.stderr())

    def test_resets_in_a_loop_while_others_work(self):
        """200 peers connect and reset (SO_LINGER 0), some while pier has output queued for
        them, while two other clients keep echoing: the server survives and stays correct."""
        with pierlib.Pier("echo", "--threads", "2") as srv:
            stop = threading.Event()
            failures = []
            rounds = [0, 0]

            def worker(k):
                try:
                    with srv.connect(30) as s:
                        while not stop.is_set():
                            data = os.urandom(1 + (rounds[k] * 7919) % 50000)
                            s.sendall(data)
                            if pierlib.recv_exact(s, len(data)) != data:
                                failures.append("worker %d: bytes differ" % k)
                                return
                            rounds[k] += 1
                except Exception as e:  # noqa: BLE001
                    failures.append("worker %d: %r" % (k, e))

            workers = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(2)]
            for w in workers:
                w.start()
            big = os.urandom(512 * 1024)
            for i in range(200):
                s = srv.connect(30)
                kind = i % 4
                if kind == 1:
                    s.sendall(b"x" * 100)
                elif kind == 2:
                    # pier has output queued (we read nothing) when the reset arrives
                    s.setblocking(False)
                    try:
                        s.send(big)
                    except BlockingIOError:
                        pass
                    time.sleep(0.002)
                elif kind == 3:
                    s.sendall(b"y" * 1000)
                    s.recv(10)  # a read completed, more output pending
                reset_close(s)
            stop.set()
            for w in workers:
                w.join(60)
            self.assertEqual(failures, [])
            self.assertGreater(min(rounds), 0, "the working clients made no progress")
            self.assertTrue(srv.alive(), "server died; stderr:\n" + srv.stderr())
            self.assertEqual(echo_once(srv, b"after 200 resets"), b"after 200 resets")
            self.assertEqual(srv.stop(), 0, srv.stderr())


class Flags(unittest.TestCase):
    def test_bad_flags(self):
        for args in (["echo", "--bogus"], ["echo", "--port", "70000"], ["echo", "--threads", "x"],
                     ["echo", "--port"], ["echo", "--port", "-1"], ["echo", "--idle-timeout", "soon"],
                     ["echo", "stray"], ["echo-client", "--bogus"], ["echo-client", "--conns", "0"],
                     ["echo-client", "--size", "huge"], ["echo-client", "--port", "0"]):
            r = pierlib.run(args, input="", timeout=20)
            with self.subTest(args=args):
                one_line_error(self, r, "pier")

    def test_unknown_command(self):
        r = pierlib.run(["no-such-command"], timeout=20)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("unknown command", r.stderr)

    def test_port_in_use(self):
        """Another (non-SO_REUSEPORT) socket holds the port: pier cannot share it."""
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.bind(("127.0.0.1", 0))
        holder.listen(8)
        port = holder.getsockname()[1]
        try:
            r = pierlib.run(["echo", "--port", str(port)], timeout=20)
            one_line_error(self, r, "address already in use", str(port))
        finally:
            holder.close()

    def test_echo_client_closed_port(self):
        port = pierlib.free_port()
        r = pierlib.run(["echo-client", "--port", str(port)], input="hello\n", timeout=30)
        one_line_error(self, r, "cannot connect", str(port))
        self.assertEqual(r.stdout, "")
        r = pierlib.run(["echo-client", "--port", str(port), "--conns", "3", "--size", "64", "--seconds", "1"],
                        timeout=60)
        one_line_error(self, r, "cannot connect", str(port))

    def test_help(self):
        r = pierlib.run(["--help"], timeout=20)
        self.assertEqual(r.returncode, 0)
        self.assertIn("usage: pier", r.stdout)
        commands = re.findall(r"^  (\S+)\s", r.stdout, re.M)
        self.assertIn("echo", commands)
        self.assertIn("echo-client", commands)
        for cmd in commands:
            r = pierlib.run([cmd, "--help"], timeout=20)
            with self.subTest(cmd=cmd):
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertIn("usage: pier " + cmd, r.stdout)
                self.assertEqual(r.stderr, "")
        r = pierlib.run([], timeout=20)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("usage: pier", r.stderr)


class IdleTimeout(unittest.TestCase):
    def test_idle_connection_closed(self):
        with pierlib.Pier("echo", "--idle-timeout", "1", "--threads", "2") as srv:
            idle = srv.connect(30)
            self.assertEqual(echo_once(srv, b"ping"), b"ping")
            busy = srv.connect(30)
            t0 = time.monotonic()
            idle.settimeout(10)
            # the busy one talks every 0.3 s for 3 s: it must stay open throughout
            closed_at = None
            deadline = t0 + 3.0
            while time.monotonic() < deadline:
                busy.sendall(b"tick")
                self.assertEqual(pierlib.recv_exact(busy, 4), b"tick", "busy connection was closed")
                if closed_at is None:
                    idle.settimeout(0.3)
                    try:
                        if idle.recv(1) == b"":
                            closed_at = time.monotonic() - t0
                    except socket.timeout:
                        pass
                    except ConnectionResetError:
                        closed_at = time.monotonic() - t0
                else:
                    time.sleep(0.3)
            if closed_at is None:
                idle.settimeout(5)
                try:
                    self.assertEqual(idle.recv(1), b"", "idle connection got data")
                except socket.timeout:
                    self.fail("idle connection still open %.1f s after --idle-timeout 1" % (time.monotonic() - t0))
                except ConnectionResetError:
                    pass
                closed_at = time.monotonic() - t0
            self.assertGreater(closed_at, 0.5, "idle connection closed after only %.2f s" % closed_at)
            self.assertLess(closed_at, 5.0)
            busy.close()
            idle.close()
            self.assertEqual(echo_once(srv, b"after idle"), b"after idle")
            self.assertEqual(srv.stop(), 0, srv.stderr())


if __name__ == "__main__":
    pierlib.run_tests(globals())
