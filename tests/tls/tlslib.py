"""Helpers for pier's TLS end-to-end tests (tests/e2e/test_tls_*.py): certificates made at
test time with the openssl command into a temporary folder (no key is committed), and
Python ssl contexts that trust them.

    with tlslib.Certs() as certs:       # certs.ca, certs.cert, certs.key (PEM paths)
        ctx = certs.client_context()    # verifies against certs.ca, host name localhost
"""
import os
import shutil
import ssl
import subprocess
import tempfile


def openssl(*args, cwd=None):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, capture_output=True, timeout=60)


class Certs:
    """A CA and an ECDSA P-256 leaf for localhost and 127.0.0.1 signed by it."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="pier-tls-")
        d = self.dir
        self.ca = os.path.join(d, "ca.pem")
        self.cert = os.path.join(d, "cert.pem")
        self.key = os.path.join(d, "key.pem")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        openssl("req", "-x509", *ec, "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2",
                "-subj", "/CN=pier test CA", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
        with open(os.path.join(d, "ext.cnf"), "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n")
        self.leaf("cert.pem", "key.pem")

    def leaf(self, cert, key, cn="localhost", san=None):
        """Another leaf signed by the CA, for localhost or for the names of san ("DNS:a,DNS:b"),
        written to cert and key (file names in the folder); returns their paths."""
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        ext = "ext.cnf"
        if san:
            ext = cert + ".cnf"
            with open(os.path.join(self.dir, ext), "w") as f:
                f.write("subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\n" % san)
        openssl("req", *ec, "-keyout", key, "-out", "leaf.csr", "-subj", "/CN=" + cn, cwd=self.dir)
        openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext, cwd=self.dir)
        return os.path.join(self.dir, cert), os.path.join(self.dir, key)

    def client_context(self):
        ctx = ssl.create_default_context(cafile=self.ca)
        ctx.check_hostname = True
        return ctx

    def server_flags(self):
        return ["--tls-cert", self.cert, "--tls-key", self.key]

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def have_openssl():
    """The openssl command is there, and pier was built with TLS (PIER_TLS)."""
    if shutil.which("openssl") is None:
        return False
    import pierlib
    p = pierlib.run(["echo", "--port", "0", "--tls-cert", "/nonexistent", "--tls-key", "/nonexistent"])
    return "built without TLS" not in p.stderr


def s_client(port, *args, data=b"", timeout=20):
    """Runs `openssl s_client -connect 127.0.0.1:port ARGS`, sending data then EOF; returns
    (exit code, stdout+stderr as text)."""
    p = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port] + list(args),
                       input=data, capture_output=True, timeout=timeout)
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")
