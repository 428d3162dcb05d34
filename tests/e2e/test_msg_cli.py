"""The msg commands as a user meets them: --help, one clear line and a non-zero exit for
a bad flag or a port already in use."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pierlib  # noqa: E402


class Cli(unittest.TestCase):
    def test_help(self):
        for cmd in ("msg", "msg-client"):
            r = pierlib.run([cmd, "--help"], timeout=10)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertTrue(r.stdout.startswith("usage: pier " + cmd), r.stdout)
            self.assertIn("--heartbeat", r.stdout)
            self.assertIn("--port", r.stdout)

    def test_bad_flags_one_line_and_exit_2(self):
        cases = [
            ["msg", "--bogus"],
            ["msg", "--port", "70000"],
            ["msg", "--port"],
            ["msg", "--workers", "x"],
            ["msg", "--heartbeat", "0"],
            ["msg", "--max-body", "70000"],  # needs --wide
            ["msg", "--out-policy", "sometimes"],
            ["msg", "--inflight", "0"],
            ["msg", "--inflight-total", "many"],
            ["msg", "stray"],
            ["msg-client", "--count", "0"],
            ["msg-client", "--port", "0"],
            ["msg-client", "--conns", "-3"],
            ["msg-client", "--heartbeat", "soon"],
        ]
        for args in cases:
            r = pierlib.run(args, timeout=10)
            self.assertEqual(r.returncode, 2, (args, r.stdout, r.stderr))
            lines = r.stderr.strip().splitlines()
            self.assertEqual(len(lines), 1, (args, r.stderr))
            self.assertTrue(lines[0].startswith("pier " + args[0] + ":"), (args, lines))

    def test_port_in_use(self):
        with pierlib.Pier("msg") as srv:
            r = pierlib.run(["msg", "--port", str(srv.port)], timeout=10)
            self.assertNotEqual(r.returncode, 0, r.stderr)
            self.assertIn("in use", r.stderr)
            self.assertIn(str(srv.port), r.stderr)
            # the running server was not disturbed
            s = srv.connect()
            s.sendall(b"\x00\x01\x00\x00")
            self.assertEqual(pierlib.recv_exact(s, 4), b"\x00\x02\x00\x00")
            s.close()

    def test_bad_host(self):
        r = pierlib.run(["msg", "--host", "not-an-address", "--port", "0"], timeout=10)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("not-an-address", r.stderr)


if __name__ == "__main__":
    pierlib.run_tests(globals())
