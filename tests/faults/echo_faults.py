"""Echo under faults: clients send random data in random pieces, half-close, and read
until the server closes; what comes back must be a prefix of what was sent (all of it
when the connection was not cut)."""
from lib import Conn, Failure, Pier, describe_mismatch, first_diff, run_conns, seeded, split


def echo_conn(rng, addr, max_len):
    data = rng.randbytes(rng.choice([rng.randint(1, 4096), rng.randint(1, max_len)]))
    pieces = split(rng, data, rng.choice([64, 4096, 65536, 1 << 20]))
    gap = rng.choice([0, 0, 0.001]) if len(pieces) < 200 else 0  # a trickle, but not for long
    return Conn(addr, pieces, shut_wr=True, timeout=20.0, gap=gap, tag=data)


SECONDS = 2.5


def check_echo(name, conns, need_complete):
    complete = 0
    for c in conns:
        data = c.tag
        if c.outcome == "timeout":
            raise Failure("%s: hang: connection got %d of %d bytes back and no end within %.0f s" % (
                name, len(c.recv), len(data), c.timeout))
        if c.recv != data[:len(c.recv)]:
            at = first_diff(c.recv, data)
            raise Failure("%s: corrupt echo stream (%d bytes back of %d) %s" % (
                name, len(c.recv), len(data), describe_mismatch(c.recv, data, at)))
        if len(c.recv) > len(data):
            raise Failure("%s: %d bytes back for %d sent" % (name, len(c.recv), len(data)))
        if len(c.recv) == len(data) and c.outcome == "eof":
            complete += 1
        elif need_complete:
            raise Failure("%s: after the faults stopped, a connection ended (%s) with %d of %d bytes" % (
                name, c.outcome, len(c.recv), len(data)))
    return complete


def run(binary, seed, rate, stats):
    name = "echo seed %d" % seed
    rng = seeded(seed, 1)
    args = ["echo", "--port", "0", "--threads", "2"] + (["--single-acceptor"] if seed % 2 == 0 else [])
    srv = Pier(binary, args, name, faults={"seed": seed, "rate": rate})
    try:
        addr = ("127.0.0.1", srv.port)
        srv.start_faults()
        conns = run_conns(lambda: echo_conn(rng, addr, 600000), parallel=16, seconds=SECONDS)
        complete = check_echo(name, conns, False)
        stats["streams"] += len(conns)
        stats["cut"] += len(conns) - complete
        srv.stop_faults()
        after = [echo_conn(rng, addr, 300000) for _ in range(6)]
        check_echo(name + " (after faults)", run_conns(after, parallel=6), True)
        srv.terminate()
    finally:
        srv.kill()
    return srv.faults, srv.fault_detail
