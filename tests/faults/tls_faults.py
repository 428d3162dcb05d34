"""Echo over TLS under faults: the TLS transport's reads and writes go through the same
failing calls. Clients (threads, one TLS connection at a time each) shake hands, send
random data while reading it back, and check it: what comes back must be a prefix of
what was sent, all of it when the connection was not cut."""
import os
import select
import socket
import ssl
import sys
import threading
import time

from lib import Failure, Pier, first_diff, seeded

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tls"))
import tlslib  # noqa: E402

SECONDS = 3.0
CONN_TIMEOUT = 20.0
_certs = None


def certs():
    global _certs
    if _certs is None:
        _certs = tlslib.Certs()
    return _certs


def exchange(sock, data, deadline):
    """Sends data while reading it back on this thread. Returns (bytes back, how it ended)."""
    back = bytearray()
    off = 0
    while len(back) < len(data):
        if time.monotonic() > deadline:
            return back, "timeout"
        progress = False
        try:
            if off < len(data):
                off += sock.send(data[off:off + (1 << 16)])
                progress = True
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            pass
        except (ssl.SSLError, OSError):
            off = len(data)  # cut: read what came
        try:
            chunk = sock.recv(1 << 18)
            if not chunk:
                return back, "eof"
            back += chunk
            progress = True
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            pass
        except (ssl.SSLError, OSError):
            return back, "reset"
        if not progress:
            select.select([sock], [sock] if off < len(data) else [], [], 0.2)
    return back, "whole"


def one(ctx, port, data):
    deadline = time.monotonic() + CONN_TIMEOUT
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=CONN_TIMEOUT)
    except OSError:
        return b"", "refused"
    try:
        raw.settimeout(CONN_TIMEOUT)
        try:
            s = ctx.wrap_socket(raw, server_hostname="localhost")
        except socket.timeout:
            return b"", "timeout"
        except (ssl.SSLError, OSError):
            return b"", "handshake cut"
        s.setblocking(False)
        back, how = exchange(s, data, deadline)
        s.close()
        return bytes(back), how
    finally:
        raw.close()


def check(name, data, back, how, need_whole):
    if how == "timeout":
        raise Failure("%s: hang: %d of %d bytes back and no end within %.0f s" % (name, len(back), len(data),
                                                                                CONN_TIMEOUT))
    if back != data[:len(back)]:
        i = first_diff(back, data)
        raise Failure("%s: corrupt TLS echo at byte %d of %d: got %r, want %r" % (
            name, i, len(data), back[max(0, i - 20):i + 40], data[max(0, i - 20):i + 40]))
    if need_whole and how != "whole":
        raise Failure("%s: after the faults stopped, a TLS connection ended (%s) with %d of %d bytes" % (
            name, how, len(back), len(data)))
    return how == "whole"


def client(name, ctx, port, rng, until, results, lock):
    while time.monotonic() < until:
        with lock:
            data = rng.randbytes(rng.choice([rng.randint(1, 2000), rng.randint(1, 200000)]))
        back, how = one(ctx, port, data)
        with lock:
            results.append((data, back, how))


def run(binary, seed, rate, stats):
    name = "tls seed %d" % seed
    rng = seeded(seed, 6)
    c = certs()
    srv = Pier(binary, ["echo", "--port", "0", "--threads", "2"] + c.server_flags(), name,
               faults={"seed": seed, "rate": rate})
    try:
        ctx = c.client_context()
        srv.start_faults()
        results, lock = [], threading.Lock()
        until = time.monotonic() + SECONDS
        threads = [threading.Thread(target=client, args=(name, ctx, srv.port, rng, until, results, lock))
                   for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for data, back, how in results:
            try:
                check(name, data, back, how, False)
            except Failure as e:
                raise Failure("%s\n  the server's log ends:\n%s" % (e, srv.stderr()[-1500:].decode(errors="replace")))
            stats["conns"] += 1
            stats[how] += 1
        srv.stop_faults()
        for _ in range(4):
            data = rng.randbytes(rng.randint(1, 100000))
            back, how = one(ctx, srv.port, data)
            check(name + " (after faults)", data, back, how, True)
        srv.terminate()
    finally:
        srv.kill()
    return srv.faults, srv.fault_detail
