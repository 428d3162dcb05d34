#!/usr/bin/env python3
"""A peer that sends 64 MiB to pier echo without reading, waits, then reads: every byte
comes back in order, and the server's peak memory stays bounded, because pier stops
reading from a connection whose output queue is above the high water mark (256 KiB)
instead of buffering what the peer sends.

Measured on the development machine (x86-64, 2 cores): the Release server starts at about
2.0 MiB RSS and its VmHWM after the 64 MiB round trip is 0.22-0.34 MiB above that, with one
loop or two; the ASan+UBSan build starts at 7.5 MiB and peaks 1.3-1.4 MiB above. The bound,
PEAK_BOUND = 16 MiB above the start, leaves a wide margin for allocator and sanitizer slack
and still fails if the server held a quarter of the 64 MiB (let alone all of it) in memory.
"""
import hashlib
import os
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pierlib  # noqa: E402

TOTAL = 64 * 1024 * 1024
BLOCK = 64 * 1024
PEAK_BOUND = 16 * 1024 * 1024  # VmHWM growth allowed above the RSS at start

_base = bytes((i * 131 + (i >> 8) * 7) & 0xFF for i in range(BLOCK))


def block(i):
    """Block i of the stream: its index, then a fixed pattern. Any reordering, loss or
    duplication of data shows up as a wrong index or a byte mismatch at a known offset."""
    return struct.pack(">Q", i) + _base[8:]


class Backpressure(unittest.TestCase):
    def run_case(self, threads):
        with pierlib.Pier("echo", "--threads", threads) as srv:
            # warm up: one small echo, so the loop's buffers exist before measuring
            with srv.connect(30) as s:
                s.sendall(b"warm-up")
                self.assertEqual(pierlib.recv_exact(s, 7), b"warm-up")
            time.sleep(0.2)
            start = srv.rss()
            s = srv.connect(120)
            sent = hashlib.sha256()
            err = []

            def sender():
                try:
                    for i in range(TOTAL // BLOCK):
                        b = block(i)
                        sent.update(b)
                        s.sendall(b)
                except OSError as e:
                    err.append(e)

            t = threading.Thread(target=sender, daemon=True)
            t.start()
            # the peer does not read for a while: pier must stop reading, not buffer
            peak_during_pause = 0
            for _ in range(10):
                time.sleep(0.1)
                peak_during_pause = max(peak_during_pause, srv.rss()["rss"])
            self.assertTrue(t.is_alive(), "all 64 MiB were accepted while the peer read nothing: "
                            "something buffered the whole stream")
            # now read everything, checking every block in order
            got = hashlib.sha256()
            buf = bytearray()
            nblock = 0
            received = 0
            while received < TOTAL:
                chunk = s.recv(1 << 20)
                if not chunk:
                    self.fail("server closed after %d of %d bytes" % (received, TOTAL))
                received += len(chunk)
                got.update(chunk)
                buf += chunk
                while len(buf) >= BLOCK:
                    if buf[:BLOCK] != block(nblock):
                        idx = struct.unpack(">Q", bytes(buf[:8]))[0]
                        self.fail("block %d (offset %d) is wrong: starts with index %d"
                                  % (nblock, nblock * BLOCK, idx))
                    del buf[:BLOCK]
                    nblock += 1
            t.join(60)
            self.assertFalse(t.is_alive(), "sender still blocked after every byte came back")
            self.assertEqual(err, [])
            self.assertEqual(nblock, TOTAL // BLOCK)
            self.assertEqual(got.hexdigest(), sent.hexdigest())
            s.settimeout(2)
            s.sendall(b"still there")
            self.assertEqual(pierlib.recv_exact(s, 11), b"still there")
            s.close()
            end = srv.rss()
            growth = end["hwm"] - start["rss"]
            print("\n  --threads %s: RSS at start %.1f MiB, RSS while the peer did not read %.1f MiB, "
                  "VmHWM after 64 MiB %.1f MiB: peak growth %.2f MiB (bound %.0f MiB)"
                  % (threads, start["rss"] / 2**20, peak_during_pause / 2**20, end["hwm"] / 2**20,
                     growth / 2**20, PEAK_BOUND / 2**20))
            self.assertLess(growth, PEAK_BOUND, "server peak RSS grew by %.1f MiB for one peer sending 64 MiB "
                            "without reading" % (growth / 2**20))
            self.assertEqual(srv.stop(), 0, srv.stderr())

    def test_one_loop(self):
        self.run_case("1")

    def test_two_loops(self):
        self.run_case("2")


if __name__ == "__main__":
    pierlib.run_tests(globals())
