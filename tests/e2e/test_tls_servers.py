#!/usr/bin/env python3
"""pier http and pier msg with --tls-cert/--tls-key against real clients: curl --cacert
(plaintext, keep-alive, a 5 MB static file that goes out through read+encrypt since the
kernel here has no TLS offload, byte-exact), a plain HTTP request on the HTTPS port
answered with a 400 that says so, ALPN with openssl s_client, and a message round trip
over Python's ssl.
"""
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tls"))
import pierlib  # noqa: E402
import tlslib  # noqa: E402


@unittest.skipUnless(tlslib.have_openssl() and shutil.which("curl"), "openssl or curl is not installed")
class TlsHttp(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.certs = tlslib.Certs()
        cls.root = tempfile.mkdtemp(prefix="pier-tls-www-")
        cls.big = os.urandom(5 * 1000 * 1000 + 7)
        with open(os.path.join(cls.root, "big.bin"), "wb") as f:
            f.write(cls.big)
        cls.srv = pierlib.Pier("http", "--root", cls.root, *cls.certs.server_flags())
        cls.url = "https://localhost:%d" % cls.srv.port

    @classmethod
    def tearDownClass(cls):
        code = cls.srv.stop()
        cls.certs.close()
        shutil.rmtree(cls.root, ignore_errors=True)
        assert code == 0, "exit %s; stderr:\n%s" % (code, cls.srv.stderr())

    def test_curl(self):
        code, out, err = pierlib.curl("--cacert", self.certs.ca, self.url + "/plaintext", self.url + "/json")
        self.assertEqual(code, 0, err)
        self.assertEqual(out, b'Hello, World!{"message":"Hello, World!"}')

    def test_curl_refuses_without_the_ca(self):
        code, out, err = pierlib.curl(self.url + "/plaintext")
        self.assertNotEqual(code, 0)

    def test_static_file_over_tls(self):
        code, out, err = pierlib.curl("--cacert", self.certs.ca, self.url + "/static/big.bin")
        self.assertEqual(code, 0, err)
        self.assertEqual(len(out), len(self.big))
        self.assertTrue(out == self.big, "the file came back different")
        code, out, err = pierlib.curl("--cacert", self.certs.ca, "-r", "1000-1999", self.url + "/static/big.bin")
        self.assertEqual(out, self.big[1000:2000])

    def test_plain_http_on_the_https_port(self):
        with socket.create_connection(("127.0.0.1", self.srv.port), timeout=30) as s:
            s.sendall(b"GET /plaintext HTTP/1.1\r\nHost: localhost\r\n\r\n")
            reply = pierlib.recv_until_eof(s, limit=4096)
        self.assertTrue(reply.startswith(b"HTTP/1.1 400 "), reply)
        self.assertIn(b"HTTPS only", reply)
        code, out, err = pierlib.curl("--cacert", self.certs.ca, self.url + "/plaintext")  # still serving
        self.assertEqual(out, b"Hello, World!")

    def test_alpn(self):
        code, out = tlslib.s_client(self.srv.port, "-alpn", "h2,http/1.1", "-CAfile", self.certs.ca)
        self.assertEqual(code, 0, out)
        self.assertIn("ALPN protocol: http/1.1", out)
        code, out = tlslib.s_client(self.srv.port, "-alpn", "h2", "-CAfile", self.certs.ca)
        self.assertEqual(code, 0, out)  # nothing in common: no ALPN, not a failure
        self.assertIn("No ALPN negotiated", out)


@unittest.skipUnless(tlslib.have_openssl() and shutil.which("curl"), "openssl or curl is not installed")
class TlsReload(unittest.TestCase):
    def subject(self, port, ctx):
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return dict(x[0] for x in s.getpeercert()["subject"])["commonName"]

    def test_sighup_reloads_under_load(self):
        with tlslib.Certs() as certs:
            cert, key = certs.leaf("live.pem", "live-key.pem", cn="localhost")
            with pierlib.Pier("http", "--tls-cert", cert, "--tls-key", key) as srv:
                ctx = certs.client_context()
                self.assertEqual(self.subject(srv.port, ctx), "localhost")
                url = "https://localhost:%d/plaintext" % srv.port
                # curl runs requests, each on a new connection, while the files change
                args = ["curl", "-sS", "--cacert", certs.ca, "--fail", "-w", "%{http_code}\\n"]
                for _ in range(300):
                    args += ["-o", "/dev/null", url]
                load = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                keep = ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=30),
                                       server_hostname="localhost")
                for i in range(5):
                    certs.leaf("next.pem", "next-key.pem", cn="localhost")
                    os.replace(os.path.join(certs.dir, "next.pem"), cert)
                    os.replace(os.path.join(certs.dir, "next-key.pem"), key)
                    srv.signal(signal.SIGHUP)
                    deadline = time.monotonic() + 10
                    while srv.stderr().count("certificate and key reloaded") <= i and time.monotonic() < deadline:
                        time.sleep(0.02)
                out, err = load.communicate(timeout=120)
                codes = out.decode().split()
                self.assertEqual(load.returncode, 0, err)
                self.assertEqual(codes, ["200"] * 300)
                self.assertEqual(srv.stderr().count("certificate and key reloaded"), 5, srv.stderr())
                # a connection made before the reloads still works
                keep.sendall(b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n")
                self.assertIn(b"Hello, World!", keep.recv(4096))
                keep.close()
                # bad files: the last good certificate stays
                with open(cert, "w") as f:
                    f.write("not a certificate\n")
                srv.signal(signal.SIGHUP)
                self.assertTrue(srv.wait_stderr("old one stays in use", 10), srv.stderr())
                self.assertEqual(self.subject(srv.port, ctx), "localhost")
                self.assertEqual(srv.stop(), 0)


@unittest.skipUnless(tlslib.have_openssl(), "the openssl command is not installed")
class TlsSni(unittest.TestCase):
    """Several certificate/key pairs on one port (--tls-cert/--tls-key repeated), chosen by
    the name the client asks for; the first pair when none names it."""

    def test_pair_chosen_by_server_name(self):
        with tlslib.Certs() as certs:
            other = certs.leaf("other.pem", "other-key.pem", cn="other",
                               san="DNS:other.example,DNS:*.wild.example")
            flags = certs.server_flags() + ["--tls-cert", other[0], "--tls-key", other[1]]
            with pierlib.Pier("echo", "--threads", "2", *flags) as srv:
                for args, cn in ((["-servername", "other.example"], "other"),
                                 (["-servername", "a.wild.example"], "other"),
                                 (["-servername", "localhost"], "localhost"),
                                 (["-servername", "unknown.example"], "localhost"),
                                 (["-noservername"], "localhost")):
                    code, out = tlslib.s_client(srv.port, "-CAfile", certs.ca, *args)
                    self.assertEqual(code, 0, out)
                    self.assertRegex(out, r"subject=\s*CN\s*=\s*%s\n" % cn, args)
                # pier's own client checks the name it asks for against what it is given
                for name in ("other.example", "x.wild.example", "localhost"):
                    p = pierlib.run(["echo-client", "--port", str(srv.port), "--tls", "--cafile", certs.ca,
                                     "--servername", name], input="hi %s\n" % name)
                    self.assertEqual((p.returncode, p.stdout), (0, "hi %s\n" % name), p.stderr)
                p = pierlib.run(["echo-client", "--port", str(srv.port), "--tls", "--cafile", certs.ca,
                                 "--servername", "unknown.example"], input="x\n")
                self.assertEqual(p.returncode, 1)
                self.assertIn("hostname mismatch", p.stderr)
                self.assertEqual(srv.stop(), 0)

    def test_pairs_must_match(self):
        with tlslib.Certs() as certs:
            p = pierlib.run(["echo", "--port", "0"] + certs.server_flags() + ["--tls-cert", certs.cert])
            self.assertEqual(p.returncode, 2)
            self.assertIn("go together", p.stderr)
            p = pierlib.run(["echo", "--port", "0"] + certs.server_flags() +
                            ["--tls-cert", certs.cert, "--tls-key", "/nonexistent"])
            self.assertEqual(p.returncode, 1)
            self.assertIn("cannot use certificate", p.stderr)


@unittest.skipUnless(tlslib.have_openssl(), "the openssl command is not installed")
class TlsTickets(unittest.TestCase):
    """Ticket keys rotate (SIGUSR1 forces it now): a ticket of the key before the current
    one still resumes, one from two rotations ago gets a full handshake; the keys are
    shared by the server's two loops."""

    def rotate(self, srv, times):
        srv.signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while srv.stderr().count("new session ticket key") < times and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(srv.stderr().count("new session ticket key"), times, srv.stderr())

    def s_client(self, srv, certs, sess, *args):
        code, out = tlslib.s_client(srv.port, "-tls1_2", "-CAfile", certs.ca, sess[0], sess[1], *args,
                                    data=b"x")
        self.assertEqual(code, 0, out)
        return "Reused" if "\nReused, TLSv1.2" in out else "New" if "\nNew, TLSv1.2" in out else out

    def python_session(self, srv, ctx, session=None):
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            s.sendall(b"ping")
            self.assertEqual(pierlib.recv_exact(s, 4), b"ping")  # the 1.3 tickets came before it
            return s.session, s.session_reused

    def test_resumption_across_rotations(self):
        with tlslib.Certs() as certs, pierlib.Pier("echo", "--threads", "2", *certs.server_flags()) as srv:
            sess = os.path.join(certs.dir, "sess.pem")
            self.assertEqual(self.s_client(srv, certs, ("-sess_out", sess)), "New")
            self.assertEqual(self.s_client(srv, certs, ("-sess_in", sess)), "Reused")
            ctx = certs.client_context()  # TLS 1.3 through Python's ssl, alongside
            py, reused = self.python_session(srv, ctx)
            self.assertFalse(reused)
            self.rotate(srv, 1)
            # sealed with the key before the current one: still resumes, several times over
            for _ in range(4):
                self.assertEqual(self.s_client(srv, certs, ("-sess_in", sess)), "Reused")
            self.assertTrue(self.python_session(srv, ctx, py)[1])
            self.rotate(srv, 2)
            # two rotations ago: a full handshake, which works
            self.assertEqual(self.s_client(srv, certs, ("-sess_in", sess)), "New")
            self.assertFalse(self.python_session(srv, ctx, py)[1])
            # and the tickets of the new key resume again
            fresh = os.path.join(certs.dir, "fresh.pem")
            self.assertEqual(self.s_client(srv, certs, ("-sess_out", fresh)), "New")
            self.assertEqual(self.s_client(srv, certs, ("-sess_in", fresh)), "Reused")
            self.assertEqual(srv.stop(), 0)


def kernel_ktls():
    """None if this kernel lets a TCP socket take the "tls" upper-layer protocol (kTLS),
    else the error that says why not."""
    with socket.socket() as lst, socket.socket() as a:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        a.connect(lst.getsockname())
        b, _ = lst.accept()
        try:
            a.setsockopt(socket.IPPROTO_TCP, 31, b"tls")  # TCP_ULP
            return None
        except OSError as e:
            return e
        finally:
            b.close()


@unittest.skipUnless(tlslib.have_openssl(), "the openssl command is not installed")
class TlsKtls(unittest.TestCase):
    def test_detection_matches_the_kernel(self):
        # pier says at start whether the kernel has kTLS, as the kernel itself answers
        with tlslib.Certs() as certs, pierlib.Pier("http", *certs.server_flags()) as srv:
            err = kernel_ktls()
            text = "the kernel offers kTLS" if err is None else "no kTLS in this kernel"
            self.assertTrue(srv.wait_stderr(text), srv.stderr())
            if err is not None:
                self.assertIn(os.strerror(err.errno), srv.stderr())
            self.assertEqual(srv.stop(), 0)

    def test_static_file_by_ktls(self):
        err = kernel_ktls()
        if err is not None:
            self.skipTest("this kernel has no kTLS (setsockopt TCP_ULP \"tls\": %s), so files over TLS "
                          "cannot go by sendfile here; the read+encrypt paths are tested by "
                          "TlsHttp.test_static_file_over_tls, in both write modes" % err)
        # the kernel counts the connections it encrypts for: one more while pier serves
        with tlslib.Certs() as certs, tempfile.TemporaryDirectory() as root:
            big = os.urandom(3 << 20)
            with open(os.path.join(root, "big.bin"), "wb") as f:
                f.write(big)
            with pierlib.Pier("http", "--root", root, *certs.server_flags()) as srv:
                before = tls_tx_count()
                code, out, cerr = pierlib.curl("--cacert", certs.ca, "https://localhost:%d/static/big.bin" % srv.port)
                self.assertEqual(code, 0, cerr)
                self.assertTrue(out == big, "the file came back different")
                self.assertGreater(tls_tx_count(), before, "the kernel did not encrypt for pier")
                self.assertEqual(srv.stop(), 0)


def tls_tx_count():
    """Connections the kernel has encrypted for since boot (kTLS, software or device)."""
    with open("/proc/net/tls_stat") as f:
        stats = dict(line.split() for line in f if line.strip())
    return int(stats.get("TlsTxSw", 0)) + int(stats.get("TlsTxDevice", 0))


@unittest.skipUnless(tlslib.have_openssl(), "the openssl command is not installed")
class TlsMsg(unittest.TestCase):
    def test_round_trip(self):
        with tlslib.Certs() as certs, pierlib.Pier("msg", *certs.server_flags()) as srv:
            raw = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
            with certs.client_context().wrap_socket(raw, server_hostname="localhost") as s:
                body = json.dumps({"id": 1001, "data": "over tls"}).encode()
                s.sendall(struct.pack(">HH", 1001, len(body)) + body)
                mid, n = struct.unpack(">HH", pierlib.recv_exact(s, 4))
                reply = json.loads(pierlib.recv_exact(s, n))
            self.assertEqual((mid, reply["data"]), (1001, "server has received msg, over tls"))
            self.assertEqual(srv.stop(), 0)

    def test_msg_client(self):
        with tlslib.Certs() as certs, pierlib.Pier("msg", *certs.server_flags()) as srv:
            tls = ["msg-client", "--port", str(srv.port), "--tls", "--timeout", "30"]
            p = pierlib.run(tls + ["--cafile", certs.ca, "--servername", "localhost"], input="one\ntwo\n")
            self.assertEqual((p.returncode, p.stdout),
                             (0, "server has received msg, one\nserver has received msg, two\n"), p.stderr)
            # the load mode, with the same output line as over TCP
            p = pierlib.run(tls + ["--cafile", certs.ca, "--conns", "20", "--count", "200", "--size", "1000"])
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertRegex(p.stdout, r"20 conns x 200 msgs: 4000 of 4000 replies in .* 0 wrong, 0 reconnects\n")
            # a refused certificate ends the client at once, in both modes, without retrying
            for mode in ([], ["--count", "10"]):
                p = pierlib.run(tls + ["--cafile", certs.ca, "--servername", "wrong.example"] + mode, input="x\n")
                self.assertEqual(p.returncode, 1, p.stdout)
                self.assertIn("certificate was rejected", p.stderr)
                self.assertIn("hostname mismatch", p.stderr)
            p = pierlib.run(tls, input="x\n")  # the system's CAs do not know the test CA
            self.assertEqual(p.returncode, 1)
            self.assertIn("certificate was rejected", p.stderr)
            p = pierlib.run(tls + ["--insecure"], input="x\n")
            self.assertEqual((p.returncode, p.stdout), (0, "server has received msg, x\n"), p.stderr)
            p = pierlib.run(["msg-client", "--servername", "localhost"])
            self.assertEqual(p.returncode, 2)
            self.assertEqual(srv.stop(), 0)


if __name__ == "__main__":
    pierlib.run_tests(globals())
