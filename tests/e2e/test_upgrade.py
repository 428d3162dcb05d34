"""SIGUSR2 upgrades pier in place under load: a new copy of the binary starts on the same
listening sockets, the old one drains and exits 0, the pid file names the new one, and
no request fails (the retry rule of httpload.py applies: a request that crossed the
close of an idle keep-alive connection is sent again, as RFC 9112 lets clients do).
Done twice in a row, so the copy that an upgrade started can itself be upgraded.
Also: pier http's drain closes an idle keep-alive connection but answers the first
request of one accepted just before it; and pier echo upgrades too (its old connection
is closed by the old process's drain, new ones are echoed by the new process)."""
# pier-test: threads (two loops per process)
import os
import signal
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import httpload  # noqa: E402
import pierlib  # noqa: E402


def read_pid(path, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                text = f.read()
            if text.endswith("\n"):
                return int(text)
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    return None


def alive(pid):
    """True while pid runs (a zombie counts as gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid, timeout=30.0):
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not alive(pid)


def wait_pid_change(path, old, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = read_pid(path, 1.0)
        if pid and pid != old:
            return pid
        time.sleep(0.02)
    return None


class Upgrade(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.pid_file = os.path.join(self.tmp.name, "pier.pid")
        self.orphans = []

    def tearDown(self):
        # the upgraded copies are not our children: stop whatever still runs
        for pid in self.orphans + [read_pid(self.pid_file, 0.1)]:
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.tmp.cleanup()

    def upgrade(self, pid):
        os.kill(pid, signal.SIGUSR2)
        new = wait_pid_change(self.pid_file, pid)
        self.assertIsNotNone(new, "the pid file never named a new process")
        self.orphans.append(new)
        self.assertTrue(alive(new), "the new process %d runs" % new)
        return new

    def test_http_under_load(self):
        srv = pierlib.Pier("http", "--threads", "2", "--pid-file", self.pid_file)
        self.assertEqual(read_pid(self.pid_file), srv.pid, "the pid file names the first process")
        load = httpload.Load(srv.host, srv.port, keepalive=3, fresh=2).start()
        try:
            self.assertTrue(load.wait_more(200), "traffic flows before the upgrade")
            first = self.upgrade(srv.pid)
            self.assertEqual(srv.wait(30), 0, "the old process exits 0 after its drain:\n" + srv.stderr())
            self.assertEqual(read_pid(self.pid_file, 1.0), first, "the old one left the new one's pid file")
            self.assertTrue(load.wait_more(200), "the new process serves")
            second = self.upgrade(first)
            self.assertTrue(wait_gone(first), "the first new process exits after the second upgrade")
            self.assertTrue(load.wait_more(200), "the second new process serves")
        finally:
            st = load.stop()
        print("load through two upgrades:", st)
        self.assertEqual(st.failures, [], "no request fails")
        self.assertGreater(st.reused, 0)
        self.assertGreater(st.fresh, 0)
        log = srv.stderr()
        self.assertIn("SIGUSR2: the new process %d listens" % first, log)
        self.assertIn("SIGUSR2: the new process %d listens" % second, log)
        self.assertEqual(log.count("stopped cleanly"), 2, log)
        os.kill(second, signal.SIGTERM)
        self.assertTrue(wait_gone(second), "the last process stops on SIGTERM")
        self.assertFalse(os.path.exists(self.pid_file), "its owner removes the pid file at exit")

    def test_pid_file_errors(self):
        out = pierlib.run(["http", "--port", "0", "--pid-file"], timeout=30)
        self.assertEqual(out.returncode, 2)
        self.assertIn("pier http: --pid-file wants a file name", out.stderr)
        bad = os.path.join(self.tmp.name, "no", "such", "dir", "pier.pid")
        out = pierlib.run(["echo", "--port", "0", "--pid-file", bad], timeout=30)
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertIn("cannot write pid file %s: No such file or directory" % bad, out.stderr)

    def test_http_drain_answers_new_connection(self):
        """The drain that SIGUSR2 and SIGTERM start closes a keep-alive connection that
        is between requests, but answers the first request of one accepted just before
        (nobody would send that request again), with Connection: close."""
        srv = pierlib.Pier("http", "--threads", "1")
        get = b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n"
        fresh = srv.connect()  # accepted before the others (one listener, FIFO), no request yet
        partial = srv.connect()
        partial.sendall(get)
        self.assertEqual(pierlib.Reader(partial).response().status, 200)
        partial.sendall(get[:10])  # the next request, half sent
        used = srv.connect()
        used.sendall(get)  # answered after the loop has read partial's bytes (one loop, in order)
        self.assertEqual(pierlib.Reader(used).response().status, 200)
        srv.signal(signal.SIGTERM)
        self.assertEqual(used.recv(100), b"", "the idle keep-alive connection is closed at once")
        partial.sendall(get[10:])
        resp = pierlib.Reader(partial).response()
        self.assertEqual((resp.status, resp.header("Connection")), (200, "close"), "a half-sent request is answered")
        partial.close()
        fresh.sendall(get)
        resp = pierlib.Reader(fresh).response()
        self.assertEqual((resp.status, resp.body), (200, b"Hello, World!"), "the new connection is answered")
        self.assertEqual(resp.header("Connection"), "close")
        self.assertEqual(fresh.recv(100), b"", "and then closed")
        self.assertEqual(srv.wait(15), 0, srv.stderr())
        fresh.close()
        used.close()

    def test_echo_old_connection_drains_new_ones_served(self):
        srv = pierlib.Pier("echo", "--threads", "2", "--pid-file", self.pid_file)
        before = srv.connect()
        before.sendall(b"before\n")
        self.assertEqual(pierlib.recv_exact(before, 7), b"before\n")
        new = self.upgrade(srv.pid)
        # the old process drains: it closes its connections once it has flushed them
        self.assertEqual(before.recv(100), b"", "the old process closes its connection at the drain")
        self.assertEqual(srv.wait(30), 0, srv.stderr())
        for i in range(20):
            with srv.connect() as s:
                s.sendall(b"after %d\n" % i)
                want = b"after %d\n" % i
                self.assertEqual(pierlib.recv_exact(s, len(want)), want, "the new process echoes")
        before.close()
        os.kill(new, signal.SIGTERM)
        self.assertTrue(wait_gone(new))


if __name__ == "__main__":
    pierlib.run_tests(globals())
