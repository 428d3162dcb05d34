#!/usr/bin/env python3
"""10,000 idle connections to pier echo cost little memory: each one has echoed a byte (so
its read path ran) and then sits idle; pier keeps no per-connection read buffer for an idle
connection and frees an empty output queue, so what remains is the connection itself.

Measured on the development machine (x86-64, 2 loops), server RSS per connection:
  Release:    347 B connected and never used; 840-1020 B once it has echoed a byte and
              gone idle (the rest is mostly the output-queue array, 8 entries, which stays
              allocated after the queue empties);
  ASan+UBSan: 464 B and about 1590 B.
The bound, 2048 B (4096 B for sanitizer builds), leaves room for allocator slack and still
fails if each idle connection kept a read or write buffer of 4 KiB.

The test process needs N descriptors of its own (pier raises its own limit); it raises its
soft RLIMIT_NOFILE to the hard limit and skips, saying so, only if the hard limit is too low.
"""
import os
import resource
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pierlib  # noqa: E402

N = 10000
BOUND_PER_CONN = 2048            # bytes of server RSS per idle connection
BOUND_PER_CONN_SANITIZED = 4096  # the same under ASan/TSan, whose allocators add their own headers
TIME_LIMIT = 60.0      # for opening all N connections, however slow the machine


class IdleMemory(unittest.TestCase):
    def setUp(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        need = N + 256
        if hard != resource.RLIM_INFINITY and hard < need:
            self.skipTest("RLIMIT_NOFILE hard limit is %d; %d idle connections need %d descriptors in this "
                          "process (raise it with ulimit -Hn)" % (hard, N, need))
        if soft != resource.RLIM_INFINITY and soft < need:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def test_10000_idle_connections(self):
        with open(pierlib.pier_bin(), "rb") as f:
            image = f.read()
        sanitized = b"AddressSanitizer" in image or b"ThreadSanitizer" in image
        bound = BOUND_PER_CONN_SANITIZED if sanitized else BOUND_PER_CONN
        with pierlib.Pier("echo", "--threads", "2", "--quiet") as srv:
            # warm up, then measure
            for i in range(20):
                with srv.connect(30) as s:
                    s.sendall(b"w")
                    self.assertEqual(pierlib.recv_exact(s, 1), b"w")
            time.sleep(0.5)
            before = srv.rss()["rss"]
            socks = []
            t0 = time.monotonic()
            try:
                for i in range(N):
                    socks.append(socket.create_connection((srv.host, srv.port), timeout=30))
                    if time.monotonic() - t0 > TIME_LIMIT:
                        self.fail("only %d connections opened in %.0f s" % (len(socks), TIME_LIMIT))
                opened = time.monotonic() - t0
                time.sleep(1.0)
                fresh = srv.rss()["rss"]  # connected, never used
                # every connection echoes one byte, so each has been read from and written to
                for s in socks:
                    s.sendall(b"i")
                for k, s in enumerate(socks):
                    self.assertEqual(s.recv(1), b"i", "connection %d: no echo" % k)
                time.sleep(1.0)  # idle
                self.assertTrue(srv.alive(), srv.stderr())
                after = srv.rss()["rss"]
                per_conn = (after - before) / N
                print("\n  %d connections opened in %.1f s; server RSS %.1f MiB before, %.1f MiB with them open "
                      "and never used (%.0f bytes each), %.1f MiB once each had echoed a byte and gone idle: "
                      "%.0f bytes per idle connection (bound %d)"
                      % (N, opened, before / 2**20, fresh / 2**20, (fresh - before) / N, after / 2**20, per_conn,
                         bound))
                # all still open and served
                for k in (0, N // 2, N - 1):
                    socks[k].sendall(b"still")
                    self.assertEqual(pierlib.recv_exact(socks[k], 5), b"still")
            finally:
                for s in socks:
                    s.close()
            self.assertLess(per_conn, bound, "%.0f bytes of server memory per idle connection" % per_conn)
            self.assertEqual(srv.stop(timeout=60), 0, srv.stderr())


if __name__ == "__main__":
    pierlib.run_tests(globals())
