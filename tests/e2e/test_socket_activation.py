"""systemd socket activation: pier serves on the listening socket it is given
(LISTEN_FDS=1, LISTEN_PID its own pid, fd 3) instead of binding one. The test binds the
socket, queues a request on it before pier even runs (proof that pier serves on that
very socket, not on a new one bound to the same port), then execs pier through a small
Python wrapper that sets LISTEN_PID after fork, as systemd does. Also: a socket for
another address is closed with a warning while pier binds its own port, and the
variables do not leak to pier's children: an upgrade after activation hands the socket
on by pier's own variable."""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import httpload  # noqa: E402
import pierlib  # noqa: E402
from test_upgrade import alive, read_pid, wait_gone, wait_pid_change  # noqa: E402

# fd 3 in the exec'd program, LISTEN_PID its own pid: only known after the fork
WRAPPER = r"""
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.set_inheritable(3, True)
env = dict(os.environ, LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="http")
os.execve(sys.argv[2], sys.argv[2:], env)
"""

GET = b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n"


def listening_socket(port=0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    return s


def activated(sock, *args):
    """Starts pier ARGS with sock as its only activated socket; returns (Popen, stderr file)."""
    err = tempfile.TemporaryFile()
    argv = [sys.executable, "-c", WRAPPER, str(sock.fileno()), pierlib.pier_bin()] + [str(a) for a in args]
    proc = subprocess.Popen(argv, pass_fds=[sock.fileno()], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=err)
    return proc, err


def text(f):
    f.seek(0)
    return f.read().decode("utf-8", "replace")


def wait_text(f, what, timeout=15.0):
    deadline = time.monotonic() + timeout
    while what not in text(f) and time.monotonic() < deadline:
        time.sleep(0.02)
    return what in text(f)


class SocketActivation(unittest.TestCase):
    def test_serves_on_the_given_socket(self):
        sock = listening_socket()
        port = sock.getsockname()[1]
        early = socket.create_connection(("127.0.0.1", port), timeout=20)  # queued in the backlog
        early.sendall(GET)
        proc, err = activated(sock, "http", "--host", "127.0.0.1", "--port", port, "--threads", "2")
        sock.close()  # pier holds the only copy now
        try:
            resp = pierlib.Reader(early).response()
            self.assertIsNotNone(resp, "the request queued before pier ran is answered:\n" + text(err))
            self.assertEqual((resp.status, resp.body), (200, b"Hello, World!"))
            # both loops share the one socket: many connections all get answers
            load = httpload.Load("127.0.0.1", port, keepalive=1, fresh=2).start()
            ok = load.wait_more(300)
            st = load.stop()
            self.assertTrue(ok, text(err))
            self.assertEqual(st.failures, [])
            self.assertNotIn("matches no server", text(err))
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(15), 0, text(err))
            with self.assertRaises(OSError, msg="the socket is gone with pier"):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
        finally:
            early.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def test_two_processes_share_one_socket(self):
        """Several processes on one port: each is given the same socket (as systemd does
        for every service that names one socket unit in Sockets=). One drains and exits
        while the other goes on serving, and nothing fails."""
        sock = listening_socket()
        port = sock.getsockname()[1]
        a, aerr = activated(sock, "http", "--host", "127.0.0.1", "--port", port)
        b, berr = activated(sock, "http", "--host", "127.0.0.1", "--port", port)
        sock.close()
        try:
            for err in (aerr, berr):  # both run (and watch their signals) before SIGTERM
                self.assertTrue(wait_text(err, "http: listening on 127.0.0.1:%d" % port), text(err))
            load = httpload.Load("127.0.0.1", port, keepalive=2, fresh=2).start()
            try:
                self.assertTrue(load.wait_more(300), text(aerr) + text(berr))
                a.send_signal(signal.SIGTERM)
                self.assertEqual(a.wait(15), 0, text(aerr))
                self.assertTrue(load.wait_more(300), "the other process serves on: " + text(berr))
            finally:
                st = load.stop()
            print("two processes, one socket:", st)
            self.assertEqual(st.failures, [])
        finally:
            for p in (a, b):
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    p.wait(15)
        self.assertEqual(b.returncode, 0, text(berr))

    def test_socket_for_another_address_is_closed(self):
        other = listening_socket()
        port = pierlib.free_port()
        proc, err = activated(other, "http", "--host", "127.0.0.1", "--port", port)
        other_port = other.getsockname()[1]
        other.close()
        try:
            self.assertTrue(pierlib.wait_port("127.0.0.1", port, 20, proc), text(err))
            self.assertTrue(wait_text(err, "inherited listening socket 127.0.0.1:%d (fd 3) matches no server: closed"
                                      % other_port), text(err))
            with self.assertRaises(OSError, msg="the unused socket was closed"):
                socket.create_connection(("127.0.0.1", other_port), timeout=5).close()
        finally:
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(15), 0, text(err))

    def test_upgrade_after_activation(self):
        tmp = tempfile.TemporaryDirectory()
        pid_file = os.path.join(tmp.name, "pier.pid")
        sock = listening_socket()
        port = sock.getsockname()[1]
        proc, err = activated(sock, "http", "--host", "127.0.0.1", "--port", port, "--pid-file", pid_file)
        sock.close()
        new = None
        try:
            self.assertEqual(read_pid(pid_file), proc.pid, text(err))
            proc.send_signal(signal.SIGUSR2)
            new = wait_pid_change(pid_file, proc.pid)
            self.assertIsNotNone(new, text(err))
            self.assertEqual(proc.wait(30), 0, text(err))
            with open("/proc/%d/environ" % new, "rb") as f:
                env = f.read().split(b"\0")
            # what the old process passed at exec: its own sockets, not systemd's variables
            self.assertFalse([e for e in env if e.startswith(b"LISTEN_")], "no LISTEN_* passed on")
            self.assertTrue([e for e in env if e.startswith(b"PIER_LISTEN_FDS=")], env)
            with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
                s.sendall(GET)
                self.assertEqual(pierlib.Reader(s).response().status, 200)
        finally:
            if new and alive(new):
                os.kill(new, signal.SIGTERM)
                wait_gone(new)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            tmp.cleanup()


if __name__ == "__main__":
    pierlib.run_tests(globals())
