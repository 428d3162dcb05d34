"""GET /healthz on the admin port: 200 while serving, 503 once SIGTERM has begun the
drain, which a load balancer reads to stop sending traffic. The admin port keeps answering
while a response in flight on the public port finishes, and the server still exits 0.
The drain and the end cross the admin thread (pier-test: threads)."""
import signal
import socket
import time

import pierlib
from admin_util import admin_port, get


def main():
    srv = pierlib.HttpServer("--admin", "127.0.0.1:0")
    aport = admin_port(srv)
    status, _, body = get(aport, "/healthz")
    pierlib.check(status == 200 and body == b"ok\n", "healthz: 200 ok while serving (got %d %r)" % (status, body))

    # A client that does not read a large response keeps its connection flushing, and so
    # the drain going, until it reads again.
    slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.settimeout(30)
    slow.connect(("127.0.0.1", srv.port))
    slow.sendall(b"GET /stream?n=16&size=1048576 HTTP/1.1\r\nHost: x\r\n\r\n")
    first = slow.recv(100)
    pierlib.check(first.startswith(b"HTTP/1.1 200"), "the large response has begun (got %r)" % first[:40])
    srv.proc.send_signal(signal.SIGTERM)

    seen = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status, _, body = get(aport, "/healthz")
        if status == 503:
            seen = body
            break
        time.sleep(0.02)
    pierlib.check(seen == b"draining\n", "healthz: 503 draining after SIGTERM (got %r)" % seen)
    status, _, body = get(aport, "/metrics")
    pierlib.check(status == 200 and b"pier_connections_open 1\n" in body,
                  "/metrics still answers during the drain and shows the open connection")
    status, _, body = get(aport, "/status.json")
    pierlib.check(status == 200 and b'"draining":true' in body, "status.json says draining")

    total = len(first)
    try:
        while True:
            data = slow.recv(1 << 20)
            if not data:
                break
            total += len(data)
    except OSError:
        pass
    slow.close()
    pierlib.check(total > 16 << 20, "the response in flight is flushed during the drain (%d bytes)" % total)
    rc = srv.proc.wait(20)
    pierlib.check(rc == 0, "server exits 0 after the drain (got %r); stderr:\n%s" % (rc, srv.stderr()))
    pierlib.finish("test_admin_healthz")


if __name__ == "__main__":
    main()
