#!/usr/bin/env python3
"""pier echo end to end over 127.0.0.1: byte-exact echo from 1 B to 1 MiB, 500 concurrent
connections, full duplex at 8 MiB, the peer's half-close, and pier echo-client in both its
interactive and load modes. The server runs with two loops (and once with one).
"""
# pier-test: threads
import os
import re
import selectors
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pierlib  # noqa: E402

TIMEOUT = 60.0  # per socket operation: generous, so a slow (or sanitized) machine does not fail


def exchange(sock, data, timeout=120.0):
    """Sends data from a thread while reading the same number of bytes back on this one, so
    neither side waits on the other however large data is. Returns what came back."""
    t, err = pierlib.send_in_thread(sock, data)
    try:
        back = pierlib.recv_exact(sock, len(data))
    finally:
        t.join(timeout)
    if err:
        raise err[0]
    if t.is_alive():
        raise AssertionError("sender still blocked after every byte came back")
    return back


class EchoCase:
    """The tests, run against one server per subclass (THREADS loops)."""
    THREADS = "2"

    @classmethod
    def setUpClass(cls):
        cls.srv = pierlib.Pier("echo", "--threads", cls.THREADS)

    @classmethod
    def tearDownClass(cls):
        code = cls.srv.stop(timeout=20)
        err = cls.srv.stderr()
        if code != 0:
            raise AssertionError("pier echo exited %s after SIGTERM; stderr:\n%s" % (code, err))
        if "stopped cleanly" not in err:
            raise AssertionError("pier echo did not log 'stopped cleanly'; stderr:\n%s" % err)

    def setUp(self):
        self.assertTrue(self.srv.alive(), "server died earlier; stderr:\n" + self.srv.stderr())

    def test_logs_listening(self):
        self.assertIn("listening on 127.0.0.1:%d" % self.srv.port, self.srv.stderr())

    def test_sizes_byte_exact_one_connection(self):
        with self.srv.connect(TIMEOUT) as s:
            for size in (1, 100, 64 * 1024, 1024 * 1024):
                data = os.urandom(size)
                back = exchange(s, data)
                self.assertEqual(len(back), size)
                self.assertTrue(back == data, "echo of %d random bytes differs" % size)

    def test_sizes_byte_exact_fresh_connections(self):
        for size in (1, 100, 64 * 1024, 1024 * 1024):
            with self.srv.connect(TIMEOUT) as s:
                data = os.urandom(size)
                self.assertTrue(exchange(s, data) == data, "echo of %d random bytes differs" % size)

    def test_500_concurrent_connections(self):
        """500 connections open at once, each sending 3 rounds of a message of its own
        (1 B .. 16 KiB) interleaved with all the others, driven by one selector."""
        n, rounds = 500, 3
        sel = selectors.DefaultSelector()
        socks = []
        try:
            for i in range(n):
                s = self.srv.connect(TIMEOUT)
                s.setblocking(False)
                socks.append(s)
            state = {}
            for i, s in enumerate(socks):
                msgs = [os.urandom(1 + (i * 37 + r * 1009) % (16 * 1024)) for r in range(rounds)]
                state[s] = {"msgs": msgs, "round": 0, "out": memoryview(msgs[0]), "in": bytearray()}
                sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, state[s])
            done = 0
            deadline = time.monotonic() + 120
            while done < n:
                self.assertLess(time.monotonic(), deadline, "500-connection exchange stalled: %d/%d done" % (done, n))
                for key, ev in sel.select(timeout=5):
                    s, st = key.fileobj, key.data
                    if ev & selectors.EVENT_WRITE and st["out"]:
                        try:
                            k = s.send(st["out"])
                            st["out"] = st["out"][k:]
                        except BlockingIOError:
                            pass
                    if ev & selectors.EVENT_READ:
                        try:
                            chunk = s.recv(65536)
                        except BlockingIOError:
                            chunk = None
                        if chunk == b"":
                            self.fail("server closed connection %d early" % socks.index(s))
                        if chunk:
                            st["in"] += chunk
                    want = st["msgs"][st["round"]]
                    self.assertLessEqual(len(st["in"]), len(want), "more bytes came back than were sent")
                    if len(st["in"]) == len(want):
                        self.assertTrue(bytes(st["in"]) == want, "connection %d round %d differs"
                                        % (socks.index(s), st["round"]))
                        st["round"] += 1
                        st["in"] = bytearray()
                        if st["round"] == rounds:
                            sel.unregister(s)
                            done += 1
                        else:
                            st["out"] = memoryview(st["msgs"][st["round"]])
                            sel.modify(s, selectors.EVENT_READ | selectors.EVENT_WRITE, st)
                    elif not st["out"]:
                        sel.modify(s, selectors.EVENT_READ, st)
        finally:
            sel.close()
            for s in socks:
                s.close()
        # and the server still serves afterwards
        with self.srv.connect(TIMEOUT) as s:
            self.assertEqual(exchange(s, b"after 500"), b"after 500")

    def test_full_duplex_8mib(self):
        """8 MiB sent while reading concurrently: every byte back in order, nothing deadlocks."""
        data = os.urandom(8 * 1024 * 1024)
        with self.srv.connect(TIMEOUT) as s:
            back = exchange(s, data, timeout=180)
        self.assertEqual(len(back), len(data))
        self.assertTrue(back == data, "8 MiB full-duplex echo differs")

    def test_half_close_echoes_everything_then_closes(self):
        """The peer sends, then shutdown(SHUT_WR): every byte comes back, then EOF. The FIN
        often arrives together with the last data (same epoll wake-up), so each size is
        tried several times, with the send and the half-close on a thread right after
        each other, as a client that is done talking does."""
        for size in (1, 1000, 100 * 1000, 300 * 1024, 1024 * 1024):
            for attempt in range(5):
                data = os.urandom(size)
                with self.srv.connect(15.0) as s:
                    t = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)), daemon=True)
                    t.start()
                    got = bytearray()
                    try:
                        while True:
                            chunk = s.recv(1 << 20)
                            if not chunk:
                                break
                            got += chunk
                            self.assertLessEqual(len(got), size, "more bytes came back than were sent")
                    except socket.timeout:
                        got_timeout = True
                    else:
                        got_timeout = False
                    if got_timeout:
                        self.fail("%d B then SHUT_WR (attempt %d): %d bytes came back, then no EOF within "
                                  "15 s: the server never closed" % (size, attempt + 1, len(got)))
                    t.join(TIMEOUT)
                self.assertEqual(len(got), size)
                self.assertTrue(bytes(got) == data, "half-close echo of %d bytes differs" % size)

    def test_echo_client_interactive(self):
        lines = "hello\nworld\n\n  spaces and\ttabs  \n" + "x" * 100000 + "\n\u00e9t\u00e9 utf-8\nlast line, no newline"
        r = pierlib.run(["echo-client", "--port", str(self.srv.port)], input=lines, timeout=120)
        self.assertEqual(r.returncode, 0, "echo-client failed; stderr:\n" + r.stderr)
        self.assertEqual(r.stdout, lines, "echo-client did not print its input back exactly")

    def test_echo_client_load(self):
        r = pierlib.run(["echo-client", "--port", str(self.srv.port), "--conns", "20", "--size", "256",
                         "--seconds", "1"], timeout=120)
        self.assertEqual(r.returncode, 0, "echo-client load failed; stdout:\n%s\nstderr:\n%s" % (r.stdout, r.stderr))
        m = re.search(r"messages=(\d+).*errors=(\d+)", r.stdout)
        self.assertIsNotNone(m, "no 'messages=N ... errors=N' line in:\n" + r.stdout)
        self.assertGreater(int(m.group(1)), 0, r.stdout)
        self.assertEqual(int(m.group(2)), 0, r.stdout)
        self.assertIn("conns=20", r.stdout)

    def test_echo_client_load_threads(self):
        r = pierlib.run(["echo-client", "--port", str(self.srv.port), "--conns", "8", "--size", "4096",
                         "--seconds", "1", "--threads", "2"], timeout=120)
        self.assertEqual(r.returncode, 0, "echo-client load failed; stdout:\n%s\nstderr:\n%s" % (r.stdout, r.stderr))
        m = re.search(r"messages=(\d+).*errors=(\d+)", r.stdout)
        self.assertIsNotNone(m, r.stdout)
        self.assertGreater(int(m.group(1)), 0, r.stdout)
        self.assertEqual(int(m.group(2)), 0, r.stdout)


class EchoTwoLoops(EchoCase, unittest.TestCase):
    THREADS = "2"


class EchoOneLoop(EchoCase, unittest.TestCase):
    THREADS = "1"


if __name__ == "__main__":
    pierlib.run_tests(globals())
