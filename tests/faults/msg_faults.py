"""The message server under faults, and reconnecting message clients under faults.

run_server: `pier msg` with worker threads and faults, loaded by `pier msg-client` (which
checks every reply's content and order, reconnects and resends) and by raw-frame clients
here, which check every byte: the replies that come back (pongs aside, which may
overtake) must be the expected frames in order, a cut stream a prefix of them.

run_client: `pier msg-client` with faults against a `pier msg` without: it must still get
every reply, correct and in order, once the faults stop.
"""
import json
import struct
import subprocess
import time

from lib import Conn, Failure, Pier, check_stderr, run_conns, sanitizer_env, seeded, split

SECONDS = 3.0
PING, PONG, JSON_ID, ECHO_ID, UNKNOWN_ID = 1, 2, 1001, 1002, 3000
PREFIX = b"server has received msg, "
ALNUM = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def frame(mid, body):
    return struct.pack(">HH", mid, len(body)) + body


def random_message(rng):
    """(request frame, expected reply frame or None, is a ping)"""
    k = rng.randrange(100)
    if k < 45:
        body = rng.randbytes(rng.choice([0, rng.randint(1, 64), rng.randint(1, 2048)]))
        return frame(ECHO_ID, body), frame(ECHO_ID, body), False
    if k < 85:
        data = bytes(rng.choice(ALNUM) for _ in range(rng.choice([0, rng.randint(1, 40), rng.randint(1, 1500)])))
        req = json.dumps({"id": JSON_ID, "data": data.decode()}, separators=(",", ":")).encode()
        reply = b'{"id":1001,"data":"' + PREFIX + data + b'"}'
        return frame(JSON_ID, req), frame(JSON_ID, reply), False
    if k < 95:
        return frame(PING, b""), None, True
    return frame(UNKNOWN_ID, rng.randbytes(rng.randint(0, 100))), None, False


def msg_conn(rng, addr):
    n = rng.choice([1, rng.randint(1, 20), rng.randint(1, 300)])
    raw, replies, pings = bytearray(), [], 0
    for _ in range(n):
        req, reply, ping = random_message(rng)
        raw += req
        pings += ping
        if reply:
            replies.append(reply)
    pieces = split(rng, raw, rng.choice([3, 100, 4096, 1 << 20]))
    gap = rng.choice([0, 0, 0.001]) if len(pieces) < 200 else 0
    c = Conn(addr, pieces, shut_wr=True, timeout=20.0, gap=gap)
    c.tag = (replies, pings)
    return c


def verify(recv, replies, pings):
    """Returns the replies that came whole, or raises Failure."""
    pos, k, pongs = 0, 0, 0
    while len(recv) - pos >= 4:
        mid, n = struct.unpack_from(">HH", recv, pos)
        if len(recv) - pos < 4 + n:
            break  # a cut frame: must be a prefix of what was due
        f = bytes(recv[pos:pos + 4 + n])
        if mid == PONG and n == 0:
            pongs += 1
            if pongs > pings:
                raise Failure("%d pongs for %d pings" % (pongs, pings))
        elif k < len(replies) and f == replies[k]:
            k += 1
        else:
            want = replies[k][:120] if k < len(replies) else b"(no more replies)"
            raise Failure("reply %d of %d is wrong:\n  got  %r\n  want %r" % (k + 1, len(replies), f[:120], want))
        pos += 4 + n
    rest = bytes(recv[pos:])
    if rest and not (k < len(replies) and replies[k].startswith(rest)) and not frame(PONG, b"").startswith(rest):
        raise Failure("the stream ends in bytes that begin no due frame: %r" % rest[:60])
    return k


def check_msg(name, conns, need_complete, stats):
    for c in conns:
        replies, pings = c.tag
        if c.outcome == "timeout":
            raise Failure("%s: hang: %d of %d replies and no end within %.0f s" % (
                name, verify(c.recv, replies, pings), len(replies), c.timeout))
        try:
            k = verify(c.recv, replies, pings)
        except Failure as e:
            raise Failure("%s: %s (%d frames expected, outcome %s)" % (name, e, len(replies), c.outcome))
        stats["replies"] += k
        if k < len(replies):
            stats["cut"] += 1
            if need_complete:
                raise Failure("%s: after the faults stopped, %d of %d replies came (%s)" % (
                    name, k, len(replies), c.outcome))


def msg_client(binary, port, conns, count, rate, timeout=60, extra=()):
    args = [binary, "msg-client", "--port", str(port), "--conns", str(conns), "--count", str(count),
            "--window", "16", "--timeout", str(timeout), "--backoff-max", "0.05", "--quiet"] + list(extra)
    if rate:
        args += ["--rate", str(rate)]
    return args


def finish_client(name, proc, out_f, err_f, want):
    """Waits for a msg-client; it must have had every reply, correct and in order."""
    try:
        code = proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise Failure("%s: msg-client hang (no exit within 90 s)" % name)
    out_f.seek(0)
    err_f.seek(0)
    out, err = out_f.read(), err_f.read()
    faults, detail = check_stderr(name + " msg-client", err)
    if code != 0 or (b"%d of %d replies" % (want, want)) not in out:
        raise Failure("%s: msg-client exit %d: %s\n%s" % (name, code, out.decode(errors="replace").strip(),
                                                          err[-2000:].decode(errors="replace")))
    return faults, detail, out


def spawn(args, env=None):
    import tempfile
    out_f, err_f = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out_f, stderr=err_f, env=env or sanitizer_env())
    return proc, out_f, err_f


def run_server(binary, seed, rate, stats):
    name = "msg seed %d" % seed
    rng = seeded(seed, 3)
    workers = ["--workers", "2"] if seed % 2 else []  # handlers on workers, or on the loops
    srv = Pier(binary, ["msg", "--port", "0", "--threads", "2"] + workers, name, faults={"seed": seed, "rate": rate})
    try:
        addr = ("127.0.0.1", srv.port)
        srv.start_faults()
        load = spawn(msg_client(binary, srv.port, 4, 1000, 1500))
        conns = run_conns(lambda: msg_conn(rng, addr), parallel=12, seconds=SECONDS)
        stats["conns"] += len(conns)
        check_msg(name, conns, False, stats)
        srv.stop_faults()  # the load client finishes without them: it must get every reply
        finish_client(name, *load, want=4 * 1000)
        check_msg(name + " (after faults)", run_conns([msg_conn(rng, addr) for _ in range(8)], parallel=8), True, stats)
        finish_client(name + " (after faults)", *spawn(msg_client(binary, srv.port, 2, 200, 0)), want=400)
        srv.terminate()
    finally:
        srv.kill()
    return srv.faults, srv.fault_detail


def run_client(binary, seed, rate, stats):
    name = "reconnect seed %d" % seed
    srv = Pier(binary, ["msg", "--port", "0", "--workers", "2"], name + " server")
    try:
        import os
        import tempfile
        d = tempfile.mkdtemp(prefix="pier-faults-client-")
        start, stop = os.path.join(d, "start"), os.path.join(d, "stop")
        env = sanitizer_env({"PIER_FAULT_SEED": seed, "PIER_FAULT_RATE": rate, "PIER_FAULT_START": start,
                             "PIER_FAULT_STOP": stop})
        beat = ["--heartbeat", "0.05"] if seed % 2 == 0 else []  # pings, and 150 ms silence reconnects
        proc, out_f, err_f = spawn(msg_client(binary, srv.port, 4, 1000, 1500, extra=beat), env)
        time.sleep(0.3)  # its loop and clients are set up by now: the faults hit the run
        open(start, "w").close()
        time.sleep(SECONDS)
        open(stop, "w").close()
        faults, detail, out = finish_client(name, proc, out_f, err_f, want=4 * 1000)
        m = out.split(b" wrong, ")[1].split(b" reconnects")[0] if b" wrong, " in out else b"?"
        stats["reconnects"] += int(m) if m.isdigit() else 0
        srv.terminate()
    finally:
        srv.kill()
    return faults, detail
