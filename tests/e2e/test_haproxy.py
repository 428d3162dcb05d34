"""Scale-out behind Debian's HAProxy: three `pier http --proxy-protocol` servers behind
deploy/haproxy.cfg (its bind and server lines pointed at loopback ports, its health
checks made faster), send-proxy-v2 and health checks with a PROXY header. Under load
from clients bound to 127.0.0.2 (HAProxy connects from 127.0.0.1):

  - one pier is drained with SIGTERM, exits 0, and is started again on its port;
  - another is upgraded in place with SIGUSR2: the old process exits 0, the new one
    (named by the pid file) serves;
  - no request fails (httpload.py's rule: none at all here, since HAProxy keeps the
    client's connection and retries the backend side itself);
  - every load request in the backends' access logs names the clients' address
    127.0.0.2, not HAProxy's 127.0.0.1, and each of the three, the restarted one and
    the upgraded one included, served some after the restart and the upgrade.

deploy/haproxy.cfg itself must pass `haproxy -c`."""
# pier-test: threads (HAProxy, three servers and a threaded client)
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import httpload  # noqa: E402
import pierlib  # noqa: E402
from test_upgrade import alive, read_pid, wait_gone, wait_pid_change  # noqa: E402

HAPROXY = "/usr/sbin/haproxy"
DEPLOY_CFG = os.path.join(pierlib.REPO, "deploy", "haproxy.cfg")
CLIENT = "127.0.0.2"


def proxy_protocol_available():
    out = pierlib.run(["http", "--help"])
    return "--proxy-protocol" in out.stdout + out.stderr


def test_config(deploy_text, front_port, backend_ports, proxy):
    """deploy/haproxy.cfg for this test: loopback addresses, no syslog, fewer
    connections, checks every 100 ms (so that a stopped server is taken out while the
    load runs)."""
    text = re.sub(r"^\s*log /dev/log.*$", "", deploy_text, flags=re.M)
    text = re.sub(r"^(\s*)bind :80\s*$", r"\1bind 127.0.0.1:%d" % front_port, text, flags=re.M)
    servers = iter(backend_ports)
    text = re.sub(r"^(\s*server pier\d+) \S+$", lambda m: "%s 127.0.0.1:%d" % (m.group(1), next(servers)),
                  text, flags=re.M)
    text = text.replace("inter 1s fall 2 rise 2", "inter 100ms fall 1 rise 1")
    text = re.sub(r"maxconn \d+", "maxconn 2000", text)  # within a test's descriptor limit
    if not proxy:
        text = text.replace(" send-proxy-v2 check-send-proxy", "")
    return text


def access_lines(path):
    """(client host, request line) of each access-log line so far."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                m = re.match(r'(\S+) - - \[[^\]]*\] "([^"]*)"', line)
                if m:
                    out.append((m.group(1), m.group(2)))
    except FileNotFoundError:
        pass
    return out


def load_lines(path):
    return [h for h, req in access_lines(path) if req.startswith("GET /plaintext ")]


class HAProxyScaleOut(unittest.TestCase):
    def setUp(self):
        if not os.access(HAPROXY, os.X_OK):
            self.skipTest("%s is not installed (Debian package haproxy)" % HAPROXY)
        self.tmp = tempfile.TemporaryDirectory()
        self.procs = []
        self.orphans = []
        self.haproxy = None

    def tearDown(self):
        if self.haproxy and self.haproxy.poll() is None:
            self.haproxy.kill()
            self.haproxy.wait()
        for pid in self.orphans:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        for p in self.procs:
            p.kill()
        self.tmp.cleanup()

    def pier(self, i, port=None):
        args = ["--threads", "1", "--access-log", os.path.join(self.tmp.name, "access%d.log" % i),
                "--pid-file", os.path.join(self.tmp.name, "pier%d.pid" % i)]
        if self.proxy:
            args.append("--proxy-protocol")
        srv = pierlib.Pier("http", *args, port=port)
        self.procs.append(srv)
        return srv

    def test_deploy_config_is_valid(self):
        out = subprocess.run([HAPROXY, "-c", "-f", DEPLOY_CFG], capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)

    def test_drain_restart_and_upgrade_under_load(self):
        self.proxy = proxy_protocol_available()
        if not self.proxy:
            print("NOTE: this pier has no --proxy-protocol: testing without the PROXY protocol, "
                  "and the client addresses are not checked")
        servers = [self.pier(i) for i in range(3)]
        front = pierlib.free_port()
        cfg = os.path.join(self.tmp.name, "haproxy.cfg")
        with open(DEPLOY_CFG) as f:
            text = test_config(f.read(), front, [s.port for s in servers], self.proxy)
        with open(cfg, "w") as f:
            f.write(text)
        herr = open(os.path.join(self.tmp.name, "haproxy.err"), "w+")
        self.haproxy = subprocess.Popen([HAPROXY, "-f", cfg, "-db"], stdin=subprocess.DEVNULL,
                                        stdout=herr, stderr=subprocess.STDOUT)
        self.assertTrue(pierlib.wait_port("127.0.0.1", front, 20, self.haproxy), open(herr.name).read())
        logs = [os.path.join(self.tmp.name, "access%d.log" % i) for i in range(3)]
        pid2 = os.path.join(self.tmp.name, "pier2.pid")

        load = httpload.Load("127.0.0.1", front, keepalive=3, fresh=2, source=CLIENT).start()
        try:
            self.assertTrue(load.wait_more(300), "traffic flows through HAProxy")
            # 1. drain server 0 with SIGTERM, then start it again on its port
            self.assertEqual(servers[0].stop(30), 0, "a drained pier exits 0:\n" + servers[0].stderr())
            self.assertTrue(load.wait_more(200), "the other two serve meanwhile")
            before_restart = len(load_lines(logs[0]))
            servers[0] = self.pier(0, port=servers[0].port)
            # 2. upgrade server 2 in place
            servers[2].signal(signal.SIGUSR2)
            new2 = wait_pid_change(pid2, servers[2].pid)
            self.assertIsNotNone(new2, servers[2].stderr())
            self.orphans.append(new2)
            self.assertEqual(servers[2].wait(30), 0, "the upgraded pier's old process exits 0")
            before_more = [len(load_lines(p)) for p in logs]
            # health checks bring server 0 back; round robin then gives everyone work
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                now = [len(load_lines(p)) for p in logs]
                if all(n > b for n, b in zip(now, before_more)) and now[0] > before_restart:
                    break
                time.sleep(0.05)
            self.assertTrue(load.wait_more(200))
        finally:
            st = load.stop()
        print("load through HAProxy:", st)
        self.assertEqual(st.failures, [], "no request fails")
        self.assertEqual(st.retried, 0, "HAProxy keeps the clients' connections: nothing to retry")
        now = [len(load_lines(p)) for p in logs]
        self.assertTrue(all(n > b for n, b in zip(now, before_more)),
                        "each server, restarted and upgraded ones included, served after: %s then %s"
                        % (before_more, now))
        self.assertGreater(now[0], before_restart, "the restarted server serves")
        served = sum(now)
        self.assertGreaterEqual(served, st.ok, "every answered request is in some access log")
        if self.proxy:
            hosts = {h for p in logs for h in load_lines(p)}
            self.assertEqual(hosts, {CLIENT}, "the access logs name the clients, not HAProxy")
        # the end: HAProxy first, then every pier drains and exits 0
        self.haproxy.send_signal(signal.SIGTERM)
        self.haproxy.wait(15)
        os.kill(new2, signal.SIGTERM)
        self.assertTrue(wait_gone(new2))
        for s in servers[:2]:
            self.assertEqual(s.stop(30), 0, s.stderr())
        herr.close()


if __name__ == "__main__":
    pierlib.run_tests(globals())
