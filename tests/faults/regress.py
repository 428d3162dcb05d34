"""Bugs the fault scenarios found, each replayed as a fixed exchange that provokes it
(through fault injection narrowed to one kind of call where it needs a fault; every time,
but for tls_read_kept, which says how often). Each failed before its fix. Run by
faults.py before the random scenarios."""
import os
import re
import socket
import subprocess
import tempfile
import time

from lib import Failure, Pier, first_diff, seeded


def exchange(port, raw, half_close=True, timeout=10.0, slow=False):
    """Sends raw, half-closes, reads until the server closes. slow: a small receive
    buffer and a pause before reading, so that the server's output queues up."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        if slow:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        try:
            s.sendall(raw)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server reset the connection already: read what came
        got = bytearray()
        if slow:
            time.sleep(0.5)
        try:
            while True:
                d = s.recv(262144)
                if not d:
                    break
                got += d
        except socket.timeout:
            raise Failure("no end of the connection within %.0f s (%d bytes came)" % (timeout, len(got)))
        except OSError:
            pass  # a reset
        return bytes(got)


def half_close_behind_big_deferred(binary):
    """A request pipelined behind a deferred response that leaves more than the output
    high-water mark (256 KiB) queued (a client slow to read) was dropped when the client
    had half-closed: the pending requests were held for the answer to drain, and the
    connection was closed as if none were left."""
    srv = Pier(binary, ["http", "--port", "0"], "regress: half-close behind a big deferred response")
    try:
        raw = (b"GET /defer?ms=20&size=8000000 HTTP/1.1\r\nHost: pier\r\n\r\n"
               b"GET /plaintext HTTP/1.1\r\nHost: pier\r\n\r\n")
        got = exchange(srv.port, raw, slow=True)
        if got.count(b"HTTP/1.1 200 OK") != 2 or not got.endswith(b"Hello, World!"):
            raise Failure("%s: %d bytes came, %d responses; want both (the last is Hello, World!)" % (
                srv.name, len(got), got.count(b"HTTP/1.1 200 OK")))
        srv.terminate()
    finally:
        srv.kill()


def static_root():
    root = tempfile.mkdtemp(prefix="pier-faults-regress-")
    with open(os.path.join(root, "small.txt"), "wb") as f:
        f.write(b"hello\n")
    os.makedirs(os.path.join(root, "list"))
    for i in range(3):
        with open(os.path.join(root, "list", "f%d.txt" % i), "wb") as f:
            f.write(b"x")
    return root


def static_statuses(binary, name, calls, count=30, path=b"/static/small.txt"):
    """The status lines of count pipelined GET path while every call in calls fails (an
    injected call fails with one of its errors at random: count makes each one come)."""
    srv = Pier(binary, ["http", "--port", "0", "--root", static_root()], "regress: " + name,
               faults={"rate": 1, "calls": calls}, start_now=True)
    req = b"GET " + path + b" HTTP/1.1\r\nHost: pier\r\n"
    try:
        got = exchange(srv.port, (req + b"\r\n") * (count - 1) + req + b"Connection: close\r\n\r\n")
        srv.terminate()
    finally:
        srv.kill()
    return re.findall(rb"HTTP/1\.1 \d{3} [^\r\n]*", got), got


def static_fstat_fails(binary):
    """When fstat failed, the static handler went on with an uninitialized struct stat:
    it answered 200 with stack garbage as size, ETag and Last-Modified (or 404). Since
    the http split it answers 404, which tells the client the file is not there."""
    statuses, got = static_statuses(binary, "fstat fails in the static handler", "fstat", count=1)
    if statuses != [b"HTTP/1.1 503 Service Unavailable"]:
        raise Failure("regress: fstat failing with ENOMEM: want 503, got %r" % got[:400])


def static_openat_enomem(binary):
    """openat failing with ENOMEM (or anything but EACCES, EMFILE, ENFILE) answered 404
    Not Found, which tells the client the file does not exist."""
    statuses, got = static_statuses(binary, "openat fails in the static handler", "openat")
    wrong = [s for s in statuses if s != b"HTTP/1.1 503 Service Unavailable"]
    if wrong or len(statuses) != 30:
        raise Failure("regress: openat failing (EMFILE, ENFILE or ENOMEM): want 30 x 503, got %d answers, "
                      "these not 503: %r" % (len(statuses), sorted(set(wrong))))


def listing_out_of_memory(binary):
    """A directory listing whose name array or a name could not be allocated stopped
    there and was answered 200 with the entries it had: a wrong listing."""
    srv = Pier(binary, ["http", "--port", "0", "--root", static_root()], "regress: listing out of memory",
               faults={"rate": 1, "calls": "malloc"})
    req = b"GET /static/list/ HTTP/1.1\r\nHost: pier\r\nConnection: close\r\n\r\n"
    try:
        whole = exchange(srv.port, req)  # also fills the loop's cache of output buffers
        srv.start_faults()
        time.sleep(0.05)
        got = exchange(srv.port, req)
        srv.stop_faults()
        srv.terminate()
    finally:
        srv.kill()
    if got.startswith(b"HTTP/1.1 200") and got.split(b"\r\n\r\n", 1)[1] != whole.split(b"\r\n\r\n", 1)[1]:
        raise Failure("regress: listing with malloc failing: a 200 with a different listing:\n%r\nwant a 5xx or\n%r" % (
            got[-300:], whole[-300:]))


DATES = re.compile(rb"Date: [^\r\n]*")


def undated(b):
    return DATES.sub(b"Date: -", b)


def responses_out_of_memory(binary):
    """A response went out as several writes, each checked or not on its own: a chunk's
    size line was queued and its data not (or a head and not its body, or nothing of a
    whole response, the next one then taking its place), and the stream went on corrupt.
    With the queue's allocations failing now and then, every stream must stay a prefix of
    the expected one: a failed response resets the connection."""
    reqs = [b"GET /stream?n=60&size=20000 HTTP/1.1\r\nHost: pier\r\n\r\n",
            b"GET /stream?n=200&size=3000 HTTP/1.1\r\nHost: pier\r\n\r\n",
            b"GET /defer?ms=0&size=100000 HTTP/1.1\r\nHost: pier\r\n\r\n",
            b"GET /plaintext HTTP/1.1\r\nHost: pier\r\nConnection: close\r\n\r\n"]
    raw = b"".join(reqs)
    srv = Pier(binary, ["http", "--port", "0"], "regress: responses out of memory",
               faults={"rate": 0.2, "calls": "malloc,realloc", "seed": 7})
    try:
        want = exchange(srv.port, raw)
        srv.start_faults()
        time.sleep(0.05)
        cut = 0
        for _ in range(10):
            got = exchange(srv.port, raw)
            g, w = undated(got), undated(want)
            if not w.startswith(g):
                i = first_diff(g, w)
                raise Failure("regress: a response stream with allocations failing is corrupt at byte %d:\n"
                              "  got  %r\n  want %r" % (i, g[max(0, i - 60):i + 60], w[max(0, i - 60):i + 60]))
            cut += len(got) < len(want)
        srv.stop_faults()
        srv.terminate()
    finally:
        srv.kill()
    if cut == 0:
        raise Failure("regress: no stream was cut: the faults did not hit the responses")


def msg_replies_out_of_memory(binary):
    """A reply the message server could not queue (a worker's reply buffer, or the
    connection's queue, out of memory) was dropped and the connection went on, so the
    client took the next reply for it. Now the connection is reset: the replies that
    come are always a prefix of those due."""
    import msg_faults
    rng = seeded(11, 5)
    for args in (["--workers", "2"], []):
        srv = Pier(binary, ["msg", "--port", "0"] + args, "regress: msg replies out of memory",
                   faults={"rate": 0.3, "calls": "realloc,malloc", "seed": 3})
        try:
            srv.start_faults()
            time.sleep(0.05)
            cut = 0
            for _ in range(20):
                c = msg_faults.msg_conn(rng, ("127.0.0.1", srv.port))
                c.chunks = [b"".join(c.chunks)]
                got = exchange(srv.port, c.chunks[0])
                replies, pings = c.tag
                cut += msg_faults.verify(got, replies, pings) < len(replies)
            srv.stop_faults()
            srv.terminate()
        finally:
            srv.kill()
        if cut == 0:
            raise Failure("regress: no msg stream was cut: the faults did not hit the replies")


def stop_out_of_memory(binary):
    """The listeners' start, stop and close-all tasks were allocated when posted; if that
    failed the task was lost with a log line. A lost stop left the listener open and the
    server impossible to free: pier echo leaked it at exit (and a lost start left a
    listener taking its share of connections that nobody accepted)."""
    for cmd in (["echo"], ["http"], ["msg", "--workers", "1"]):
        srv = Pier(binary, cmd + ["--port", "0", "--threads", "2"], "regress: %s stops out of memory" % cmd[0],
                   faults={"rate": 1, "calls": "malloc"})
        try:
            srv.start_faults()
            time.sleep(0.05)
            srv.terminate()
        finally:
            srv.kill()


def unwatched_listener(binary):
    """A listener whose epoll registration failed stayed open and bound: the kernel went
    on giving it its share of new connections, which waited in its backlog with nobody to
    accept them. Here every listener fails so (the first three epoll_ctl ADDs are the
    loops' wake-up fds and the signalfd): a connection must be refused, not left hanging."""
    srv = Pier(binary, ["echo", "--port", "0", "--threads", "2"], "regress: unwatched listener",
               faults={"rate": 1, "calls": "epoll_ctl", "skip": 3}, start_now=True)
    try:
        time.sleep(0.2)  # the start tasks have run
        for _ in range(4):
            try:
                with socket.create_connection(("127.0.0.1", srv.port), timeout=2) as s:
                    s.sendall(b"ping")
                    if s.recv(10):
                        raise Failure("regress: unwatched listener: a listener was watched after all")
            except socket.timeout:
                raise Failure("regress: a connection to a listener that could not be watched hangs")
            except (ConnectionRefusedError, ConnectionResetError):
                pass
        srv.terminate()
    finally:
        srv.kill()


def http_start_fails_late(binary):
    """pier http could not add its routes (out of memory): it stopped the server, whose
    stop posted close-all tasks to loops that were not running yet, so the free that
    followed answered -EBUSY, unchecked: the server leaked, and nothing said why the
    command exited 1. (The first two strdups are the server's host and name.)"""
    srv = Pier(binary, ["http", "--port", "0"], "regress: http start-up fails after the server exists",
               faults={"rate": 1, "calls": "strdup", "skip": 2}, start_now=True, listen=False)
    try:
        code = srv.wait(20)
    finally:
        srv.kill()
    if code != 1 or b"pier http: cannot add the routes" not in srv.stderr():
        raise Failure("regress: http start-up failing: exit %s, want 1 with a reason:\n%s" % (
            code, srv.stderr()[-1000:].decode(errors="replace")))


def loop_thread_fails(binary):
    """A loop thread that could not be created made pier_group_run return at once with
    the error, which pier_cli_run ignored: the command logged 'stopped cleanly' and
    exited 0 without ever serving. (The first two threads are the msg workers.)"""
    srv = Pier(binary, ["msg", "--port", "0", "--threads", "2", "--workers", "2"], "regress: a loop thread fails",
               faults={"rate": 1, "calls": "pthread_create", "skip": 2}, start_now=True, listen=False)
    try:
        code = srv.wait(20)
    finally:
        srv.kill()
    if code != 1 or b"cannot start loop thread" not in srv.stderr():
        raise Failure("regress: a loop thread could not start: exit %s, want 1 with the reason:\n%s" % (
            code, srv.stderr()[-1000:].decode(errors="replace")))


def signal_watch_fails(binary):
    """pier_loop_signal blocked the signal before creating the signalfd, and left it
    blocked when that failed: nobody read it, and SIGTERM could no longer stop the
    process. pier msg-client (which ignores the error) then waited on stdin forever."""
    srv = Pier(binary, ["msg", "--port", "0"], "regress: signalfd fails (server)")
    client = None
    try:
        client = Pier(binary, ["msg-client", "--port", str(srv.port)], "regress: signalfd fails",
                      faults={"rate": 1, "calls": "signalfd"}, start_now=True, listen=False, stdin=subprocess.PIPE)
        time.sleep(0.5)  # reading stdin, which stays open
        try:
            client.terminate(timeout=10, codes=(0, 1, -15))
        except Failure as e:
            raise Failure("regress: with signalfd failing, SIGTERM does not stop msg-client: %s" % str(e)[:300])
        srv.terminate()
    finally:
        srv.kill()
        if client:
            client.kill()
            client.proc.stdin.close()


def server_signals_fail(binary):
    """pier_cli_run ignored pier_loop_signal's errors: with no signalfd a server ran on
    with SIGINT and SIGTERM blocked (or, once they were unblocked, died of them without
    its drain). It must refuse to start instead."""
    srv = Pier(binary, ["echo", "--port", "0"], "regress: signalfd fails (server)",
               faults={"rate": 1, "calls": "signalfd"}, start_now=True, listen=False)
    try:
        try:
            code = srv.wait(5)
        except Failure:
            raise Failure("regress: an echo server that cannot watch its signals runs on")
    finally:
        srv.kill()
    if code != 1 or b"cannot watch SIGINT, SIGTERM" not in srv.stderr():
        raise Failure("regress: signalfd failing: exit %s, want 1 with the reason:\n%s" % (
            code, srv.stderr()[-600:].decode(errors="replace")))


def deferred_abort_out_of_memory(binary):
    """A deferred response whose send could not be posted (out of memory) was to reset
    its connection through pier_with_conn, and if even that could not be posted, through
    pier_close: both allocate a task in the core, so under the same shortage neither
    happened, and the client waited for the keep-alive timeout. Here the library's mallocs
    fail from the second one after the faults start (the first is the handle
    pier_http_res_later makes): the connection must be reset at once."""
    srv = Pier(binary, ["http", "--port", "0", "--keepalive-timeout", "60"], "regress: deferred abort out of memory",
               faults={"rate": 1, "calls": "malloc", "skip": 1})
    try:
        srv.start_faults()
        time.sleep(0.05)
        try:
            got = exchange(srv.port, b"GET /defer?ms=10&size=10 HTTP/1.1\r\nHost: pier\r\n\r\n", half_close=False,
                           timeout=5)
        except Failure as e:
            raise Failure("regress: a deferred response that cannot be posted leaves its client waiting: %s" % e)
        if got:
            raise Failure("regress: deferred response out of memory: want a reset, got %r" % got[:200])
        srv.stop_faults()
        srv.terminate()
    finally:
        srv.kill()


def msg_drain_out_of_memory(binary):
    """The msg server's drain posted its steps with pier_loop_post, which allocates; when
    that failed, the step that closes the connections never ran, and SIGTERM waited for
    the command's 20 s deadline with connections open. Here malloc fails from just before
    the SIGTERM, with a client connected."""
    srv = Pier(binary, ["msg", "--port", "0", "--threads", "2", "--workers", "1"], "regress: msg drain out of memory",
               faults={"rate": 1, "calls": "malloc"})
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            s.sendall(b"\x00\x01\x00\x00")  # a ping: the connection is up
            s.recv(4)
            srv.start_faults()
            time.sleep(0.05)
            srv.terminate(timeout=15)
    finally:
        srv.kill()


def tls_read_kept(binary):
    """The TLS transport's read returned data and asked to be called again (*more: a
    buffer full of records OpenSSL had read, or an error kept for the next call), but the
    core queued the next read only if the socket was still marked readable, and a read
    earlier in the same loop iteration could have cleared that: the rest waited for an
    edge that never came (the records were in OpenSSL's buffer, not in the socket), and
    the client hung. Here reads fail now and then (ENOMEM and the like kept with data,
    short reads, EAGAIN) under TLS echo: no connection may hang. (Not deterministic: it
    hung in every one of 5 runs of 3 s before the fix.)"""
    import threading
    import tls_faults
    c = tls_faults.certs()
    for seed in (1, 2):
        srv = Pier(binary, ["echo", "--port", "0", "--threads", "1"] + c.server_flags(), "regress: tls read kept",
                   faults={"seed": seed, "rate": 0.1, "calls": "read"})
        try:
            ctx = c.client_context()
            srv.start_faults()
            results, lock = [], threading.Lock()
            rng = seeded(seed, 6)
            until = time.monotonic() + 3
            threads = [threading.Thread(target=tls_faults.client, args=("", ctx, srv.port, rng, until, results, lock))
                       for _ in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            hung = [(len(back), len(data)) for data, back, how in results if how == "timeout"]
            if hung:
                raise Failure("regress: TLS echo with reads failing: %d connections hung (bytes back, sent): %s" % (
                    len(hung), hung[:3]))
            srv.stop_faults()
            srv.terminate()
        finally:
            srv.kill()



def http_deadline_lists_out_of_memory(binary):
    """The first request on a loop makes its HTTP deadline lists (header, body). When the
    header list was made and the body list's allocation failed, the loop never tried
    again: every later connection on it was aborted, long after the memory came back
    (found by the http scenario, seed 8: after the faults stopped, new connections got a
    reset or an EOF and no response). Each calloc from the k-th on fails; after the stop
    the server must answer."""
    req = b"GET /plaintext HTTP/1.1\r\nHost: pier\r\nConnection: close\r\n\r\n"
    for k in range(8):
        srv = Pier(binary, ["http", "--port", "0", "--threads", "1"],
                   "regress: http deadline lists out of memory (skip %d)" % k,
                   faults={"rate": 1, "calls": "calloc", "skip": k})
        try:
            srv.start_faults()
            time.sleep(0.05)  # the fault layer looks for the start file every 10 ms at most
            exchange(srv.port, req)
            srv.stop_faults()
            time.sleep(0.05)
            got = exchange(srv.port, req)
            if not got.startswith(b"HTTP/1.1 200 OK") or not got.endswith(b"Hello, World!"):
                raise Failure("regress: callocs failing from the %dth on, then none: want a 200 after the "
                              "stop, got %r" % (k, got[:200]))
            srv.terminate()
        finally:
            srv.kill()

STARTUP_CALLS = ("malloc", "calloc", "realloc", "strdup", "open", "socket", "eventfd", "epoll_create1", "epoll_ctl",
                 "signalfd", "pthread_create")


def startup_each_call_fails(binary):
    """Each allocation and system call a server makes while starting fails in turn (the
    call kind at rate 1 from its k-th call on, k = 0, 1, ... until the server starts
    anyway): every start-up that fails must fail cleanly (exit 1, a reason, no leak or
    sanitizer report), and one that starts must stop cleanly. Found: the WebSocket
    endpoint set its loop count before allocating the loops, so its clean-up walked a NULL
    array when that allocation failed (UBSan: applying zero offset to null pointer)."""
    for cmd in (["http", "--threads", "2"], ["msg", "--threads", "2", "--workers", "2"]):
        for call in STARTUP_CALLS:
            for k in range(200):
                name = "regress: %s start-up, %s failing from its call %d" % (cmd[0], call, k)
                srv = Pier(binary, cmd + ["--port", "0"], name, faults={"rate": 1, "calls": call, "skip": k},
                           start_now=True, listen=False)
                try:
                    if not srv.start_or_give_up():
                        continue
                    srv.terminate(codes=(0, 1))
                    break  # past its start-up calls of this kind
                finally:
                    srv.kill()


CHECKS = [half_close_behind_big_deferred, static_fstat_fails, static_openat_enomem, listing_out_of_memory,
          responses_out_of_memory, msg_replies_out_of_memory, stop_out_of_memory,
          unwatched_listener, http_start_fails_late, loop_thread_fails,
          signal_watch_fails, server_signals_fail, deferred_abort_out_of_memory, msg_drain_out_of_memory,
          tls_read_kept, http_deadline_lists_out_of_memory, startup_each_call_fails]


def run(binary, seed, rate, stats):
    failed = []
    for check in CHECKS:
        try:
            check(binary)
            stats["checks"] += 1
        except Failure as e:
            failed.append("%s: %s" % (check.__name__, e))
    if failed:
        raise Failure("%d of %d regression checks failed:\n%s" % (len(failed), len(CHECKS), "\n".join(failed)))
    return 0, ""
