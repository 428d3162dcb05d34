"""pier msg under load and against raw frames: 100 clients x 1,000 messages with order
checked (on the loop and on workers), frames split and coalesced anywhere, unknown ids,
oversize frames and bad ids closing only their own connection."""
# pier-test: threads (the server runs worker threads; CI runs this under TSan too)
import json
import os
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pierlib  # noqa: E402

PREFIX = "server has received msg, "


def frame(mid, body):
    if isinstance(body, str):
        body = body.encode()
    return struct.pack(">HH", mid, len(body)) + body


def req(data):
    return frame(1001, json.dumps({"id": 1001, "data": data}, separators=(",", ":")))


def read_frame(sock):
    mid, n = struct.unpack(">HH", pierlib.recv_exact(sock, 4))
    return mid, pierlib.recv_exact(sock, n)


def reply_data(body):
    o = json.loads(body)
    assert o["id"] == 1001, o
    return o["data"]


def closed_by_peer(sock, timeout=5.0):
    """True if the peer closes (EOF or reset) within timeout, reading whatever comes first."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


class Load(unittest.TestCase):
    def run_load(self, *server_args):
        with pierlib.Pier("msg", *server_args) as srv:
            r = pierlib.run(["msg-client", "--port", str(srv.port), "--conns", "100", "--count", "1000",
                             "--timeout", "40"], timeout=50)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("100000 of 100000 replies", r.stdout)
            self.assertIn(" 0 wrong", r.stdout)
            self.assertEqual(srv.stop(), 0, srv.stderr())
            self.assertIn("100000 handled", srv.stderr())

    def test_100_clients_1000_msgs_on_loop(self):
        self.run_load()

    def test_100_clients_1000_msgs_on_workers(self):
        self.run_load("--workers", "3")

    def test_two_loops_and_workers(self):
        self.run_load("--threads", "2", "--workers", "2")

    def test_raw_echo_load(self):
        """id 1002 comes back byte for byte, in order, on the loop and on workers."""
        for args in ([], ["--workers", "2"]):
            with pierlib.Pier("msg", *args) as srv:
                r = pierlib.run(["msg-client", "--port", str(srv.port), "--conns", "20", "--count", "2000",
                                 "--size", "300", "--raw", "--timeout", "30"], timeout=40)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertIn("40000 of 40000 replies", r.stdout)
                self.assertEqual(srv.stop(), 0)


class Frames(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = pierlib.Pier("msg", "--workers", "2")

    @classmethod
    def tearDownClass(cls):
        code = cls.srv.stop()
        assert code == 0, (code, cls.srv.stderr())

    def test_split_and_coalesced_frames_keep_order(self):
        """One stream of 300 requests written in odd-sized pieces; replies come in order."""
        s = self.srv.connect()
        datas = ["m%d-%s" % (i, "x" * (i % 50)) for i in range(300)]
        stream = b"".join(req(d) for d in datas)
        cuts = [1, 2, 3, 5, 7, 11, 64, 333, 4096]
        off, k = 0, 0
        while off < len(stream):
            n = cuts[k % len(cuts)]
            s.sendall(stream[off:off + n])
            off += n
            k += 1
            if k % 40 == 0:
                time.sleep(0.001)  # let some pieces arrive on their own
        for d in datas:
            mid, body = read_frame(s)
            self.assertEqual(mid, 1001)
            self.assertEqual(reply_data(body), PREFIX + d)
        s.close()

    def test_ping_gets_pong(self):
        s = self.srv.connect()
        s.sendall(frame(1, b""))
        self.assertEqual(read_frame(s), (2, b""))
        s.close()

    def test_unknown_id_keeps_connection(self):
        s = self.srv.connect()
        s.sendall(frame(77, b"nobody handles this") + frame(4000, b"") + req("after"))
        mid, body = read_frame(s)
        self.assertEqual((mid, reply_data(body)), (1001, PREFIX + "after"))
        s.close()
        self.assertTrue(self.srv.wait_stderr("unknown id 77"), self.srv.stderr())

    def test_oversize_frame_closes_only_its_connection(self):
        good = self.srv.connect()
        bad = self.srv.connect()
        good.sendall(req("before"))
        self.assertEqual(reply_data(read_frame(good)[1]), PREFIX + "before")
        # a header announcing 2049 bytes is refused at once, before any body arrives
        bad.sendall(req("fine first") + struct.pack(">HH", 1001, 2049))
        self.assertEqual(reply_data(read_frame(bad)[1]), PREFIX + "fine first")
        self.assertTrue(closed_by_peer(bad), "oversize frame did not close the connection")
        good.sendall(req("after"))
        self.assertEqual(reply_data(read_frame(good)[1]), PREFIX + "after")
        self.assertTrue(self.srv.wait_stderr("length over the maximum"), self.srv.stderr())
        good.close()
        bad.close()

    def test_max_size_body_is_accepted(self):
        s = self.srv.connect()
        # 2048-byte body exactly: JSON around a 2000-odd byte string
        data = "y" * (2048 - len(json.dumps({"id": 1001, "data": ""}, separators=(",", ":"))))
        f = req(data)
        self.assertEqual(len(f), 4 + 2048)
        s.sendall(f)
        s.sendall(req("short"))
        # the reply to the 2048-byte message would be over 2048 itself: it is not sent,
        # and the connection carries on
        mid, body = read_frame(s)
        self.assertEqual(reply_data(body), PREFIX + "short")
        s.close()

    def test_id_zero_closes_only_its_connection(self):
        good = self.srv.connect()
        bad = self.srv.connect()
        bad.sendall(frame(0, b"x"))
        self.assertTrue(closed_by_peer(bad))
        good.sendall(req("still here"))
        self.assertEqual(reply_data(read_frame(good)[1]), PREFIX + "still here")
        good.close()
        bad.close()

    def test_bad_json_is_ignored(self):
        s = self.srv.connect()
        s.sendall(frame(1001, b"{not json") + frame(1001, b'{"data": 5}') + req("ok"))
        self.assertEqual(reply_data(read_frame(s)[1]), PREFIX + "ok")
        s.close()

    def test_many_clients_in_threads_interleave_safely(self):
        """20 raw clients in parallel, each pipelining 200 messages."""
        errors = []

        def client(i):
            try:
                s = self.srv.connect()
                datas = ["t%d-%d" % (i, k) for k in range(200)]
                s.sendall(b"".join(req(d) for d in datas))
                for d in datas:
                    got = reply_data(read_frame(s)[1])
                    if got != PREFIX + d:
                        errors.append((i, d, got))
                        break
                s.close()
            except Exception as e:  # noqa: BLE001
                errors.append((i, repr(e)))

        ts = [threading.Thread(target=client, args=(i,)) for i in range(20)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        self.assertEqual(errors, [])


class Wide(unittest.TestCase):
    def test_wide_frames_with_big_bodies(self):
        with pierlib.Pier("msg", "--wide", "--max-body", "200000") as srv:
            s = srv.connect()
            data = "w" * 100000
            body = json.dumps({"id": 1001, "data": data}, separators=(",", ":")).encode()
            s.sendall(struct.pack(">HI", 1001, len(body)) + body)
            mid, n = struct.unpack(">HI", pierlib.recv_exact(s, 6))
            self.assertEqual(mid, 1001)
            self.assertEqual(reply_data(pierlib.recv_exact(s, n)), PREFIX + data)
            s.close()
            self.assertEqual(srv.stop(), 0)


if __name__ == "__main__":
    pierlib.run_tests(globals())
