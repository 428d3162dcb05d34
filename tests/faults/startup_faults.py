"""Start-up and shut-down under faults: each server command runs with faults from its
first call to its last. It may fail to start (exit 1 with one line saying why), but it
must not crash, leak or hang; if it does start, it gets a few requests and SIGTERM, and
must then exit by itself, with no sanitizer report."""
import os
import socket
import tempfile

from lib import Failure, Pier

COMMANDS = [
    ["http", "--port", "0", "--threads", "2"],
    ["echo", "--port", "0", "--threads", "2"],
    ["msg", "--port", "0", "--threads", "2", "--workers", "2"],
]


def poke(port, raw):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
    except OSError:
        pass  # refused, reset or slow: faults may do that; only the server's fate counts


def hold(port, raw, n):
    socks = []
    for _ in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=1)
            s.sendall(raw)
            socks.append(s)
        except OSError:
            pass
    return socks


def run(binary, seed, rate, stats):
    args = list(COMMANDS[seed % len(COMMANDS)])
    if args[0] == "http":
        root = tempfile.mkdtemp(prefix="pier-faults-www-")
        with open(os.path.join(root, "a.txt"), "w") as f:
            f.write("a\n")
        args += ["--root", root]
    name = "startup %s seed %d" % (args[0], seed)
    srv = Pier(binary, args, name, faults={"seed": seed, "rate": rate}, start_now=True, listen=False)
    try:
        try:
            srv.wait_listening(timeout=20)
        except Failure:
            if srv.proc.poll() is None:
                raise
            code = srv.wait(10)  # it gave up starting: cleanly, with a reason?
            if code != 1 or not srv.stderr().strip():
                raise Failure("%s: start-up failed with exit %s and %r" % (name, code, srv.stderr()[-500:]))
            stats["failed to start"] += 1
            return srv.faults, srv.fault_detail
        stats["started"] += 1
        req = {"http": b"GET /static/a.txt HTTP/1.1\r\nHost: x\r\n\r\nGET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n",
               "echo": b"hello" * 1000,
               "msg": b"\x03\xea\x00\x03abc\x00\x01\x00\x00"}[args[0]]
        for _ in range(5):
            poke(srv.port, req)
        held = hold(srv.port, req[:7], 4)  # open across SIGTERM: the drain closes them
        code = srv.terminate(codes=(0, 1))
        for s in held:
            s.close()
        stats["exit %d" % code] += 1
    finally:
        srv.kill()
    return srv.faults, srv.fault_detail
