"""SIGTERM and SIGINT drain pier msg: it stops accepting, the messages it has read are
answered and flushed, and it exits 0. Checked with a client pipelining thousands of
messages when the signal comes: it receives an unbroken, in-order run of correct replies
(one for every message the server reports handled), then EOF."""
# pier-test: threads (the server runs worker threads; CI runs this under TSan too)
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pierlib  # noqa: E402

PREFIX = "server has received msg, "


def req(data):
    body = json.dumps({"id": 1001, "data": data}, separators=(",", ":")).encode()
    return struct.pack(">HH", 1001, len(body)) + body


def read_all_replies(sock):
    """Every reply until EOF, as data strings; stops at a reset too."""
    buf = b""
    sock.settimeout(20)
    try:
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            buf += chunk
    except ConnectionResetError:
        pass
    out, off = [], 0
    while off + 4 <= len(buf):
        mid, n = struct.unpack(">HH", buf[off:off + 4])
        if off + 4 + n > len(buf):
            break
        assert mid == 1001, mid
        out.append(json.loads(buf[off + 4:off + 4 + n])["data"])
        off += 4 + n
    assert off == len(buf), "a torn frame at the end: replies were not flushed whole"
    return out


class Drain(unittest.TestCase):
    def drain_under_load(self, signo, *args):
        with pierlib.Pier("msg", *args) as srv:
            s = srv.connect()
            n = 200000
            datas = ["d%d" % i for i in range(n)]
            stream = b"".join(req(d) for d in datas)

            def send():
                try:
                    s.sendall(stream)
                except OSError:
                    pass  # the server stopped reading: expected

            th = threading.Thread(target=send)
            th.start()
            mid, blen = struct.unpack(">HH", pierlib.recv_exact(s, 4))  # the server is busy answering
            first = json.loads(pierlib.recv_exact(s, blen))["data"]
            srv.signal(signo)
            t0 = time.monotonic()
            rest = read_all_replies(s)
            code = srv.wait(20)
            th.join(10)
            self.assertEqual(code, 0, srv.stderr())
            self.assertLess(time.monotonic() - t0, 15)
            replies = [first] + rest
            got = len(replies)
            self.assertGreater(got, 1)
            for i, d in enumerate(replies):
                self.assertEqual(d, PREFIX + datas[i], "reply %d out of order or wrong" % i)
            err = srv.stderr()
            handled = int(err.split(" handled")[0].rsplit(" ", 1)[1])
            self.assertEqual(handled, got, "every handled message must have its reply flushed")
            s.close()

    def test_sigterm_on_loop(self):
        self.drain_under_load(signal.SIGTERM)

    def test_sigterm_with_workers(self):
        self.drain_under_load(signal.SIGTERM, "--workers", "2")

    def test_sigint_with_workers_and_two_loops(self):
        self.drain_under_load(signal.SIGINT, "--workers", "2", "--threads", "2")

    def test_idle_server_stops_at_once_and_refuses_new_connections(self):
        with pierlib.Pier("msg", "--workers", "1") as srv:
            idle = srv.connect()
            t0 = time.monotonic()
            srv.signal(signal.SIGTERM)
            self.assertEqual(srv.wait(10), 0, srv.stderr())
            self.assertLess(time.monotonic() - t0, 3)
            idle.settimeout(5)
            self.assertEqual(idle.recv(10), b"")  # closed gracefully
            with self.assertRaises(OSError):
                socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()


if __name__ == "__main__":
    pierlib.run_tests(globals())
