#!/usr/bin/env python3
"""pier serve also serves HTTPS on 8443 with a self-signed certificate that it makes on its
first run in the folder it names in its log (here --tls-dir, under a temporary HOME), with
the key readable by its owner only; a second run uses the same certificate. curl -k and
curl --cacert with that certificate both get /plaintext.
"""
# pier-test: fixed ports (pier serve's 8080, 8443 and admin 9901)
import os
import shutil
import stat
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tls"))
import pierlib  # noqa: E402
import tlslib  # noqa: E402


def curl(*args):
    return pierlib.curl(*args, max_time=30)


@unittest.skipUnless(tlslib.have_openssl() and shutil.which("curl"), "openssl or curl is not installed")
class ServeHttps(unittest.TestCase):
    def test_self_signed_on_first_run(self):
        home = tempfile.mkdtemp(prefix="pier-serve-")
        try:
            env = dict(os.environ, HOME=home)
            folder = os.path.join(home, ".config", "pier", "tls")
            cert = os.path.join(folder, "cert.pem")
            with pierlib.Pier("serve", port=8443, port_flag=False, env=env) as srv:
                self.assertIn("made a self-signed certificate for localhost in " + folder, srv.stderr())
                code, out, err = curl("-k", "https://localhost:8443/plaintext")
                self.assertEqual((code, out), (0, b"Hello, World!"), err)
                code, out, err = curl("--cacert", cert, "https://localhost:8443/plaintext")
                self.assertEqual((code, out), (0, b"Hello, World!"), err)
                code, out, err = curl("http://localhost:8888/plaintext")  # plain HTTP as before
                self.assertEqual(out, b"Hello, World!")
                self.assertEqual(srv.stop(), 0)
            mode = stat.S_IMODE(os.stat(os.path.join(folder, "key.pem")).st_mode)
            self.assertEqual(mode, 0o600)
            with open(cert, "rb") as f:
                first = f.read()
            with pierlib.Pier("serve", port=8443, port_flag=False, env=env) as srv:
                self.assertNotIn("made a self-signed", srv.stderr())
                code, out, err = curl("--cacert", cert, "https://localhost:8443/plaintext")
                self.assertEqual(out, b"Hello, World!", err)
                self.assertEqual(srv.stop(), 0)
            with open(cert, "rb") as f:
                self.assertEqual(f.read(), first)
        finally:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    pierlib.run_tests(globals())
