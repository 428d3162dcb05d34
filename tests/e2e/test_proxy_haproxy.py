#!/usr/bin/env python3
"""A real HAProxy (Debian's haproxy, run in the foreground by this test) in front of one
pier http --proxy-protocol: one frontend forwards with send-proxy (v1), another with
send-proxy-v2 (with a CRC32C TLV, which pier checks, and a unique-id TLV), both with
health checks that carry a PROXY header too. Clients connect from
127.0.0.2 and 127.0.0.3 while HAProxy reaches pier from 127.0.0.1, so pier's access log
shows the clients' own addresses only if it took them from the headers.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import pierlib  # noqa: E402
from pierlib import check  # noqa: E402

CFG = """global
    maxconn 256
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend v1
    bind 127.0.0.1:{p1}
    default_backend b1
frontend v2
    bind 127.0.0.1:{p2}
    default_backend b2
backend b1
    option httpchk GET /json
    server pier 127.0.0.1:{port} send-proxy check check-send-proxy inter 300ms
backend b2
    option httpchk GET /json
    server pier 127.0.0.1:{port} send-proxy-v2 proxy-v2-options crc32c,unique-id check check-send-proxy inter 300ms
"""

REQUESTS = 20


def get(port, source):
    """GET /plaintext through HAProxy from source; the status, or None if it failed."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
            s.sendall(b"GET /plaintext HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = pierlib.recv_until_eof(s)
        return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.") else None
    except OSError:
        return None


def main():
    haproxy = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None)
    if not haproxy:
        print("skip: no haproxy on this machine (Debian: apt-get install haproxy)")
        return 0
    with tempfile.TemporaryDirectory(prefix="pier-haproxy-") as d:
        log = os.path.join(d, "access.log")
        srv = pierlib.HttpServer("--proxy-protocol", "--access-log", log)
        p1, p2 = pierlib.free_port(), pierlib.free_port()
        cfg = os.path.join(d, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(CFG.format(p1=p1, p2=p2, port=srv.port))
        herr = open(os.path.join(d, "haproxy.err"), "w+")
        hap = subprocess.Popen([haproxy, "-f", cfg, "-db"], stdin=subprocess.DEVNULL, stdout=herr, stderr=herr)
        try:
            up = pierlib.wait_port("127.0.0.1", p1, proc=hap) and pierlib.wait_port("127.0.0.1", p2, proc=hap)
            herr.seek(0)
            check(up, "haproxy listens; its output:\n%s" % herr.read())
            # the first request goes through once the health check has seen pier up
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (get(p1, "127.0.0.2") != 200 or get(p2, "127.0.0.3") != 200):
                time.sleep(0.2)
            ok1 = sum(get(p1, "127.0.0.2") == 200 for _ in range(REQUESTS))
            ok2 = sum(get(p2, "127.0.0.3") == 200 for _ in range(REQUESTS))
            check(ok1 == REQUESTS, "send-proxy: %d of %d requests answered 200" % (ok1, REQUESTS))
            check(ok2 == REQUESTS, "send-proxy-v2: %d of %d requests answered 200" % (ok2, REQUESTS))
        finally:
            pierlib.end_process(hap, 10)
            herr.close()
        srv.stop()
        with open(log) as f:
            lines = [line for line in f if '"GET /plaintext ' in line]
        clients = {}
        for line in lines:
            clients[line.split(" ", 1)[0]] = clients.get(line.split(" ", 1)[0], 0) + 1
        check(set(clients) == {"127.0.0.2", "127.0.0.3"}, "the log shows the clients' own addresses: %s" % clients)
        check(clients.get("127.0.0.2", 0) >= REQUESTS and clients.get("127.0.0.3", 0) >= REQUESTS,
              "every request logged: %s" % clients)
        err = srv.stderr()
        check("closed: 0 bad" in err, "no header from haproxy was refused:\n%s" % err[-600:])
        checks = sum(1 for line in open(log) if '"GET /json ' in line)
        print("health checks logged by pier: %d; %s" % (checks, err.strip().splitlines()[-2]))
    pierlib.finish("test_proxy_haproxy")


if __name__ == "__main__":
    sys.exit(main())
