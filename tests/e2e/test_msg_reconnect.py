"""msg-clients keep going when the server goes away: it is stopped and started again on
the same port while they run, and they reconnect, resend what was not answered, and end
with every reply received and checked."""
# pier-test: threads (the server runs worker threads; CI runs this under TSan too)
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pierlib  # noqa: E402

PREFIX = "server has received msg, "


class Reconnect(unittest.TestCase):
    def test_load_clients_survive_a_restart(self):
        srv = pierlib.Pier("msg", "--workers", "2")
        port = srv.port
        # 10 connections x 2,000 messages paced at 2,000 msgs/s in all: about 10 s of traffic
        load = subprocess.Popen([pierlib.pier_bin(), "msg-client", "--port", str(port), "--conns", "10",
                                 "--count", "2000", "--rate", "2000", "--backoff-max", "0.3",
                                 "--timeout", "45"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(2.0)
            self.assertEqual(srv.stop(), 0, srv.stderr())
            first = srv.stderr()
            self.assertIsNone(load.poll(), "client gave up while the server was away")
            time.sleep(1.0)
            srv = pierlib.Pier("msg", port=port)  # on the loop this time
            out, err = load.communicate(timeout=50)
        finally:
            if load.poll() is None:
                load.kill()
        self.assertEqual(load.returncode, 0, out + err)
        self.assertIn("20000 of 20000 replies", out)
        self.assertIn(" 0 wrong", out)
        reconnects = int(out.split(" reconnects")[0].rsplit(" ", 1)[1])
        self.assertGreaterEqual(reconnects, 10, out)
        self.assertEqual(srv.stop(), 0, srv.stderr())
        # both servers did real work: the restart happened mid-run
        self.assertNotIn(" 0 handled", first)
        self.assertNotIn(" 0 handled", srv.stderr())

    def test_line_client_carries_on_after_restart(self):
        srv = pierlib.Pier("msg")
        port = srv.port
        cl = subprocess.Popen([pierlib.pier_bin(), "msg-client", "--port", str(port), "--backoff-max", "0.3",
                               "--timeout", "40"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            cl.stdin.write("one\ntwo\n")
            cl.stdin.flush()
            self.assertEqual(cl.stdout.readline().strip(), PREFIX + "one")
            self.assertEqual(cl.stdout.readline().strip(), PREFIX + "two")
            self.assertEqual(srv.stop(), 0, srv.stderr())
            cl.stdin.write("three\n")  # sent while the server is away: must not be lost
            cl.stdin.flush()
            time.sleep(0.8)
            srv = pierlib.Pier("msg", port=port)
            cl.stdin.write("four\n")
            cl.stdin.close()
            rest = cl.stdout.read()
            cl.wait(20)
        finally:
            if cl.poll() is None:
                cl.kill()
            srv.stop()
        self.assertEqual(rest.splitlines(), [PREFIX + "three", PREFIX + "four"], cl.stderr.read())
        self.assertEqual(cl.returncode, 0)

    def test_client_waits_for_a_server_that_starts_late(self):
        port = pierlib.free_port()
        load = subprocess.Popen([pierlib.pier_bin(), "msg-client", "--port", str(port), "--conns", "5",
                                 "--count", "100", "--backoff-max", "0.2", "--timeout", "20"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1.0)
            self.assertIsNone(load.poll(), "client gave up before the server came")
            with pierlib.Pier("msg", port=port) as srv:
                out, err = load.communicate(timeout=25)
                self.assertEqual(srv.stop(), 0)
        finally:
            if load.poll() is None:
                load.kill()
        self.assertEqual(load.returncode, 0, out + err)
        self.assertIn("500 of 500 replies", out)


if __name__ == "__main__":
    pierlib.run_tests(globals())
