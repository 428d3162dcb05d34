"""--admin on every server command: echo and msg count their own traffic (bytes,
frames by id), a bad value is one line and exit 2, an admin port in use is one line and
exit 1, and the help of each command (serve: on 9901 by default) names the flag."""
import socket
import struct

import pierlib
from admin_util import admin_port, get, metric, wait_metric


def echo_counts():
    srv = pierlib.Pier("echo", "--admin", "127.0.0.1:0")
    try:
        aport = admin_port(srv)
        s = srv.connect(10)
        s.sendall(b"x" * 1000)
        got = b""
        while len(got) < 1000:
            got += s.recv(4096)
        got_in = wait_metric(aport, "pier_bytes_received_total", 1000)
        pierlib.check(got_in == 1000, "echo: 1000 bytes in counted (got %r)" % got_in)
        got_out = wait_metric(aport, "pier_bytes_sent_total", 1000)
        pierlib.check(got_out == 1000, "echo: 1000 bytes out counted (got %r)" % got_out)
        pierlib.check(wait_metric(aport, "pier_connections_open", 1) == 1, "echo: one connection open")
        # the start-up probe of pierlib (wait_port) is a connection too
        accepted = metric(get(aport, "/metrics")[2], "pier_connections_accepted_total")
        s.close()
        got = wait_metric(aport, 'pier_connections_closed_total{reason="clean"}', accepted)
        pierlib.check(got == accepted, "echo: the clean close is counted (%r of %r)" % (got, accepted))
    finally:
        code = srv.stop()
    pierlib.check(code == 0, "echo with --admin exits 0 (got %r)" % code)


def msg_counts():
    srv = pierlib.Pier("msg", "--admin", "127.0.0.1:0")  # ids 1001 and 1002, ping 1, pong 2
    try:
        aport = admin_port(srv)
        s = srv.connect(10)
        s.sendall(struct.pack(">HH", 1, 0) * 3)  # three pings (id 1)
        got = b""
        while len(got) < 12:
            got += s.recv(4096)
        pierlib.check(got == struct.pack(">HH", 2, 0) * 3, "msg: three pongs")
        n = wait_metric(aport, 'pier_msg_frames_total{id="1"}', 3)
        pierlib.check(n == 3, "msg: three frames of id 1 counted (got %r)" % n)
        body = b'{"id":1001,"data":"hi"}'
        s.sendall(struct.pack(">HH", 1002, 2) + b"ab" + struct.pack(">HH", 1001, len(body)) + body +
                  struct.pack(">HH", 999, 0))
        for name in ('pier_msg_frames_total{id="1002"}', 'pier_msg_frames_total{id="1001"}',
                     'pier_msg_frames_total{id="other"}'):
            n = wait_metric(aport, name, 1)
            pierlib.check(n == 1, "msg: %s counts one frame (got %r)" % (name, n))
        s.close()
    finally:
        code = srv.stop()
    pierlib.check(code == 0, "msg with --admin exits 0 (got %r)" % code)


def msg_stalled_frames_counted_once():
    """A frame that waits for room at the workers is decoded again when room comes: it is
    still one frame."""
    srv = pierlib.Pier("msg", "--workers", "1", "--inflight", "1", "--delay-us", "2000", "--admin", "127.0.0.1:0")
    try:
        aport = admin_port(srv)
        s = srv.connect(20)
        s.sendall((struct.pack(">HH", 1002, 1) + b"x") * 50)
        got = b""
        while len(got) < 50 * 5:
            data = s.recv(4096)
            if not data:
                break
            got += data
        pierlib.check(len(got) == 250, "msg: 50 echoes back (%d bytes)" % len(got))
        n = metric(get(aport, "/metrics")[2], 'pier_msg_frames_total{id="1002"}')
        pierlib.check(n == 50, "msg: 50 frames counted once each, stalls or not (got %r)" % n)
        s.close()
    finally:
        srv.stop()


def msg_heartbeat_drop():
    srv = pierlib.Pier("msg", "--heartbeat", "0.1", "--admin", "127.0.0.1:0")
    try:
        aport = admin_port(srv)
        s = srv.connect(20)
        s.settimeout(20)
        pierlib.check(s.recv(16) == b"", "msg: a silent connection is closed by the heartbeat")
        s.close()
        n = wait_metric(aport, "pier_msg_heartbeat_drops_total", 1)
        pierlib.check(n == 1, "msg: the heartbeat drop is counted (got %r)" % n)
        n = metric(get(aport, "/metrics")[2], "pier_msg_worker_queue_depth")
        pierlib.check(n == 0, "msg: nothing waits at the workers (got %r)" % n)
    finally:
        srv.stop()


def bad_values():
    for cmd in ("http", "echo", "msg", "serve"):
        for value in ("nonsense", "127.0.0.1:70000", ":80", "127.0.0.1:"):
            r = pierlib.run([cmd, "--admin", value], timeout=10)
            lines = r.stderr.strip().splitlines()
            pierlib.check(r.returncode == 2 and len(lines) == 1 and "--admin" in lines[0],
                          "pier %s --admin %s: one line, exit 2 (got %d: %r)" % (cmd, value, r.returncode, lines))
        r = pierlib.run([cmd, "--help"], timeout=10)
        pierlib.check(r.returncode == 0 and "--admin HOST:PORT" in r.stdout, "pier %s --help names --admin" % cmd)
        if cmd == "serve":
            pierlib.check("127.0.0.1:9901" in r.stdout, "pier serve --help names the default admin port")


def index_page():
    srv = pierlib.HttpServer("--admin", "127.0.0.1:0")
    try:
        status, _, body = get(admin_port(srv), "/")
        pierlib.check(status == 200 and all(p in body for p in (b'"/status"', b'"/metrics"', b'"/healthz"')),
                      "the admin port's / links its pages (got %d)" % status)
    finally:
        srv.stop()


def proxy_outcomes():
    """PROXY header outcomes reach /metrics: one good v1 header, one bad one."""
    srv = pierlib.Pier("http", "--proxy-protocol", "--admin", "127.0.0.1:0")
    try:
        aport = admin_port(srv)
        with srv.connect(10) as s:
            s.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\n"
                      b"GET /plaintext HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            r = pierlib.Reader(s).response()
            pierlib.check(r is not None and r.status == 200, "a request after a good PROXY header is answered")
        with srv.connect(10) as s:
            s.sendall(b"PROXY TCP4 999.0.2.7 127.0.0.1 5555 80\r\n")
            try:
                rest = pierlib.recv_until_eof(s)
            except ConnectionResetError:
                rest = b""  # pier resets a socket whose header is bad
            pierlib.check(rest == b"", "a bad PROXY header closes its connection with nothing sent")
        ok = wait_metric(aport, 'pier_proxy_headers_total{outcome="ok"}', 1)
        bad = wait_metric(aport, 'pier_proxy_headers_total{outcome="bad"}', 1)
        pierlib.check(ok == 1 and bad == 1, "PROXY outcomes counted: ok %r, bad %r (want 1 and 1)" % (ok, bad))
    finally:
        srv.stop()


def port_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = pierlib.run(["http", "--port", "0", "--admin", "127.0.0.1:%d" % port], timeout=30)
    lines = [l for l in r.stderr.splitlines() if "--admin" in l]
    pierlib.check(r.returncode == 1 and len(lines) == 1 and "in use" in lines[0],
                  "admin port in use: one line, exit 1 (got %d: %r)" % (r.returncode, r.stderr))


def main():
    echo_counts()
    msg_counts()
    msg_stalled_frames_counted_once()
    msg_heartbeat_drop()
    bad_values()
    index_page()
    proxy_outcomes()
    port_in_use()
    pierlib.finish("test_admin_flags")


if __name__ == "__main__":
    main()
