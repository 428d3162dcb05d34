"""Start-up and shut-down under faults: each server command runs with faults from its
first call to its last. It may fail to start (exit 1 with one line saying why), but it
must not crash, leak or hang; if it does start, it gets connections that keep coming
through a SIGTERM, and must then exit by itself (0, or 1 if what it had to free could not
be), with no sanitizer report."""
import os
import tempfile
import threading
import time

import msg_faults
from lib import Conn, Pier, run_conns, seeded, split

COMMANDS = [
    ["http", "--port", "0", "--threads", "2"],
    ["echo", "--port", "0", "--threads", "2"],
    ["msg", "--port", "0", "--threads", "2", "--workers", "2"],
]


def load(rng, port, kind, seconds):
    """Connections that keep coming for `seconds` (through the SIGTERM): what they get
    back is not checked here, only the server's fate."""
    def make():
        if kind == "http":
            raw = b"GET /static/a.txt HTTP/1.1\r\nHost: x\r\n\r\n" * rng.randint(1, 5) + \
                b"GET /stream?n=20&size=3000 HTTP/1.1\r\nHost: x\r\n\r\n"
        elif kind == "msg":
            raw = b"".join(msg_faults.random_message(rng)[0] for _ in range(rng.randint(1, 50)))
        else:
            raw = rng.randbytes(rng.randint(1, 200000))
        # half of them never end their input: the drain must close them
        return Conn(("127.0.0.1", port), split(rng, raw, 65536), shut_wr=rng.random() < 0.5, timeout=15.0)
    return run_conns(make, parallel=8, seconds=seconds)


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
        if not srv.start_or_give_up():
            stats["failed to start"] += 1
            return srv.faults, srv.fault_detail
        stats["started"] += 1
        rng = seeded(seed, 4)
        t = threading.Thread(target=load, args=(rng, srv.port, args[0], 1.0))
        t.start()
        time.sleep(0.5)
        code = srv.terminate(codes=(0, 1))
        t.join()
        stats["exit %d" % code] += 1
    finally:
        srv.kill()
    return srv.faults, srv.fault_detail
