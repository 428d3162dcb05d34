"""Heartbeats: with --heartbeat S the server drops a connection silent for 3*S and keeps
one that pings; the msg-client pings when idle, and reconnects from a server that has
gone silent."""
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pierlib  # noqa: E402

S = 0.5  # heartbeat seconds used throughout


def frame(mid, body=b""):
    return struct.pack(">HH", mid, len(body)) + body


def seconds_until_closed(sock, limit):
    """Seconds until the peer closes (EOF or reset), or None if still open after limit."""
    t0 = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(4096):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    except socket.timeout:
        return None
    return time.monotonic() - t0


class ServerSide(unittest.TestCase):
    def test_silent_client_dropped_after_3s(self):
        with pierlib.Pier("msg", "--heartbeat", str(S)) as srv:
            s = srv.connect()
            took = seconds_until_closed(s, 6 * S)
            self.assertIsNotNone(took, "silent connection still open after 6*S")
            self.assertGreaterEqual(took, 3 * S - 0.1)
            self.assertLess(took, 3 * S + 1.0)
            self.assertTrue(srv.wait_stderr("silent for"), srv.stderr())
            self.assertEqual(srv.stop(), 0)
            self.assertIn("1 heartbeat timeouts", srv.stderr())

    def test_pinging_client_kept_then_dropped_when_it_stops(self):
        with pierlib.Pier("msg", "--heartbeat", str(S)) as srv:
            s = srv.connect()
            t_end = time.monotonic() + 6 * S  # twice the limit
            while time.monotonic() < t_end:
                s.sendall(frame(1))
                self.assertEqual(pierlib.recv_exact(s, 4), frame(2))
                time.sleep(S * 0.8)
            took = seconds_until_closed(s, 6 * S)  # now silent
            self.assertIsNotNone(took, "connection not dropped after the pings stopped")
            self.assertGreaterEqual(took, 3 * S - 0.5)

    def test_idle_msg_client_with_heartbeat_is_kept(self):
        with pierlib.Pier("msg", "--heartbeat", str(S)) as srv:
            cl = subprocess.Popen([pierlib.pier_bin(), "msg-client", "--port", str(srv.port), "--heartbeat", str(S),
                                   "--timeout", "20"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                time.sleep(8 * S)  # idle far beyond 3*S: only its pings keep it
                cl.stdin.write("still here\n")
                cl.stdin.close()
                out = cl.stdout.read()
                cl.wait(10)
                err = cl.stderr.read()
            finally:
                if cl.poll() is None:
                    cl.kill()
            self.assertEqual(out.strip(), "server has received msg, still here")
            self.assertEqual(cl.returncode, 0)
            self.assertEqual(srv.stop(), 0)
            self.assertIn(" 0 heartbeat timeouts", srv.stderr())
            # it connected once: no drop and reconnect hid in there
            self.assertNotIn("reconnecting", err)


class ClientSide(unittest.TestCase):
    def test_client_pings_and_leaves_a_silent_server(self):
        """A fake server that accepts and never answers: the client pings after S idle and
        reconnects after 3*S without a word."""
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(8)
        port = ls.getsockname()[1]
        accepted = []
        first_bytes = []

        def serve():
            ls.settimeout(15)
            try:
                while len(accepted) < 2:
                    c, _ = ls.accept()
                    accepted.append(time.monotonic())
                    c.settimeout(3 * S)
                    try:
                        first_bytes.append(c.recv(4))
                    except socket.timeout:
                        first_bytes.append(b"")
            except OSError:
                pass

        th = threading.Thread(target=serve)
        th.start()
        cl = subprocess.Popen([pierlib.pier_bin(), "msg-client", "--port", str(port), "--heartbeat", str(S),
                               "--backoff-max", "0.2", "--timeout", "15"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            th.join(15)
        finally:
            cl.kill()
            cl.wait()
            ls.close()
        self.assertEqual(len(accepted), 2, "client did not reconnect from a silent server")
        self.assertEqual(first_bytes[0], frame(1), "client did not ping when idle")
        gap = accepted[1] - accepted[0]
        self.assertGreaterEqual(gap, 3 * S - 0.1)
        self.assertLess(gap, 3 * S + 2.0)


if __name__ == "__main__":
    pierlib.run_tests(globals())
