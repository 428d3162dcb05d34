#!/usr/bin/env python3
"""pier echo --tls-cert/--tls-key against real TLS clients: Python's ssl module byte-exact
from 1 B to 8 MiB and on 1,000 connections open at once, session resumption by ticket in
TLS 1.2 and 1.3, openssl s_client for the protocol
versions (1.1 refused; 1.2 and 1.3 accepted), a stalled handshake dropped after the
default 10 s, random bytes and plain text answered with an error while the server goes on
serving, and pier echo-client --tls (right and wrong host name, load mode). The server
runs two loops.
"""
# pier-test: threads
import os
import resource
import select
import socket
import ssl
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tls"))
import pierlib  # noqa: E402
import tlslib  # noqa: E402

TIMEOUT = 60.0
CONNS = 1000


def exchange(sock, data):
    """Sends data while reading it back, on this one thread (an SSL socket must not be used
    by two threads at once), so neither side waits on the other however large data is."""
    sock.setblocking(False)
    back = bytearray()
    off = 0
    deadline = time.monotonic() + TIMEOUT
    try:
        while len(back) < len(data):
            if time.monotonic() > deadline:
                raise TimeoutError("echo of %d bytes: %d back" % (len(data), len(back)))
            progress = False
            if off < len(data):
                try:
                    off += sock.send(data[off:off + (1 << 18)])
                    progress = True
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    pass
            try:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise EOFError("peer closed after %d of %d bytes" % (len(back), len(data)))
                back += chunk
                progress = True
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                pass
            if not progress:
                select.select([sock], [sock] if off < len(data) else [], [], 1.0)
    finally:
        sock.setblocking(True)
        sock.settimeout(TIMEOUT)
    return bytes(back)


@unittest.skipUnless(tlslib.have_openssl(), "the openssl command is not installed")
class TlsEcho(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.certs = tlslib.Certs()
        cls.srv = pierlib.Pier("echo", "--threads", "2", *cls.certs.server_flags())
        cls.ctx = cls.certs.client_context()

    @classmethod
    def tearDownClass(cls):
        code = cls.srv.stop()
        cls.certs.close()
        assert code == 0, "exit %s; stderr:\n%s" % (code, cls.srv.stderr())

    def tls(self, name="localhost"):
        raw = socket.create_connection(("127.0.0.1", self.srv.port), timeout=TIMEOUT)
        return self.ctx.wrap_socket(raw, server_hostname=name)

    def test_sizes_byte_exact(self):
        with self.tls() as s:
            self.assertIn(s.version(), ("TLSv1.3",))
            for size in (1, 100, 16383, 16384, 16385, 100000, 1 << 20, 8 << 20):
                data = os.urandom(size)
                self.assertEqual(exchange(s, data), data, "size %d" % size)

    def test_many_connections(self):
        # 1,000 TLS connections open at once on the server's two loops, each echoing its
        # own message byte-exact; the descriptors come from the hard limit
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < CONNS + 100:
            self.skipTest("RLIMIT_NOFILE hard limit is %d; %d connections need more" % (hard, CONNS))
        if soft != resource.RLIM_INFINITY and soft < CONNS + 100:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        conns = []
        try:
            for _ in range(CONNS):
                conns.append(self.tls())
            msgs = [os.urandom(1000 + i) for i in range(len(conns))]
            for s, m in zip(conns, msgs):
                s.sendall(m)
            for s, m in zip(conns, msgs):
                self.assertEqual(pierlib.recv_exact(s, len(m)), m)
        finally:
            for s in conns:
                s.close()

    def test_resumption(self):
        # tickets: a second connection resumes the first one's session, in 1.3 and 1.2
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            ctx = self.certs.client_context()
            ctx.maximum_version = version
            raw = socket.create_connection(("127.0.0.1", self.srv.port), timeout=TIMEOUT)
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                self.assertEqual(exchange(s, b"one"), b"one")  # the 1.3 tickets come with it
                session = s.session
                self.assertFalse(s.session_reused)
            raw = socket.create_connection(("127.0.0.1", self.srv.port), timeout=TIMEOUT)
            with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
                self.assertEqual(exchange(s, b"two"), b"two")
                self.assertTrue(s.session_reused, version)

    def test_versions(self):
        code, out = tlslib.s_client(self.srv.port, "-tls1_1", data=b"x")
        self.assertNotEqual(code, 0, out)
        for flag, name in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
            code, out = tlslib.s_client(self.srv.port, flag, "-CAfile", self.certs.ca, "-verify_return_error")
            self.assertEqual(code, 0, out)
            self.assertRegex(out, r"(Protocol\s*:|New,) " + name + r"\b")
            self.assertIn("Verify return code: 0 (ok)", out)

    def test_tls12_ciphers_are_aead_with_forward_secrecy(self):
        # a non-AEAD or non-ECDHE suite alone is refused
        for suite in ("AES128-SHA", "ECDHE-RSA-AES128-SHA", "AES128-GCM-SHA256"):
            code, out = tlslib.s_client(self.srv.port, "-tls1_2", "-cipher", suite, data=b"x")
            self.assertNotEqual(code, 0, suite + ": " + out)
        code, out = tlslib.s_client(self.srv.port, "-tls1_2", "-CAfile", self.certs.ca,
                                    "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305")
        self.assertEqual(code, 0, out)

    def assert_serving(self):
        with self.tls() as s:
            self.assertEqual(exchange(s, b"still here"), b"still here")

    def test_garbage_and_plain_text(self):
        for junk in (os.urandom(2000), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x00\x05hello"):
            with socket.create_connection(("127.0.0.1", self.srv.port), timeout=TIMEOUT) as s:
                s.sendall(junk)
                try:
                    back = pierlib.recv_until_eof(s, limit=1 << 16)
                except ConnectionResetError:
                    back = b""
                self.assertNotIn(junk[:20], back)  # never echoed as if it were data
            self.assert_serving()

    def test_stalled_handshake_dropped(self):
        s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=30)
        s.sendall(b"\x16\x03\x01")  # the start of a record, and then nothing
        start = time.monotonic()
        try:
            self.assertEqual(s.recv(100), b"")
        except ConnectionResetError:
            pass
        s.close()
        self.assertGreater(time.monotonic() - start, 5)  # the default is 10 s
        self.assertTrue(self.srv.wait_stderr("timed out"), self.srv.stderr())
        self.assert_serving()

    def test_echo_client(self):
        port = str(self.srv.port)
        p = pierlib.run(["echo-client", "--port", port, "--tls", "--cafile", self.certs.ca,
                         "--servername", "localhost"], input="hello\nworld\n")
        self.assertEqual((p.returncode, p.stdout), (0, "hello\nworld\n"), p.stderr)
        p = pierlib.run(["echo-client", "--port", port, "--tls", "--cafile", self.certs.ca,
                         "--servername", "wrong.example"], input="hello\n")
        self.assertEqual(p.returncode, 1)
        self.assertIn("certificate was rejected", p.stderr)
        self.assertIn("hostname mismatch", p.stderr)
        p = pierlib.run(["echo-client", "--port", port, "--tls"], input="hello\n")  # system CAs only
        self.assertEqual(p.returncode, 1)
        self.assertIn("certificate was rejected", p.stderr)
        p = pierlib.run(["echo-client", "--port", port, "--tls", "--insecure"], input="hi\n")
        self.assertEqual((p.returncode, p.stdout), (0, "hi\n"), p.stderr)
        p = pierlib.run(["echo-client", "--port", port, "--tls", "--cafile", self.certs.ca,
                         "--conns", "20", "--size", "5000", "--seconds", "1", "--threads", "2"])
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertRegex(p.stdout, r"conns=20 size=5000 .* errors=0")

    def test_bad_flags(self):
        p = pierlib.run(["echo", "--tls-cert", self.certs.cert])
        self.assertEqual(p.returncode, 2)
        self.assertIn("go together", p.stderr)
        p = pierlib.run(["echo", "--port", "0", "--tls-cert", self.certs.cert, "--tls-key", "/nonexistent"])
        self.assertEqual(p.returncode, 1)
        self.assertIn("cannot use certificate", p.stderr)
        p = pierlib.run(["echo-client", "--insecure"])
        self.assertEqual(p.returncode, 2)


if __name__ == "__main__":
    pierlib.run_tests(globals())
