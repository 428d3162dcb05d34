"""HTTP under faults: pipelined requests of every kind (plain, POST /echo with
Content-Length and chunked bodies, static files with ranges and listings, deferred and
streamed responses) on many connections. The expected answer to each request is what a
second pier, without faults, answers to the same bytes. Every response that comes back
whole must be exactly that (the Date value aside), or a well-formed 500/503 (a server
may answer a failed allocation so); a cut stream must be a prefix of the expected bytes."""
import collections
import os
import re
import socket
import tempfile

from lib import Conn, Failure, Pier, run_conns, seeded, split

SECONDS = 3.0
DATE_LEN = 29  # "Tue, 01 Dec 2026 14:47:23 GMT"


# ---- the static folder ----

def make_root(rng):
    root = tempfile.mkdtemp(prefix="pier-faults-www-")
    files = {
        "small.txt": b"hello from a static file\n",
        "page.html": b"<!doctype html><p>" + b"x" * 2000 + b"</p>\n",
        "medium.bin": rng.randbytes(100 * 1024),
        "large.bin": rng.randbytes(1200 * 1024),
        "sub/index.html": b"<p>the index of sub</p>\n",
        "list/one.txt": b"1\n",
        "list/two.txt": b"22\n",
        "list/three.css": b"p{}\n",
        ".secret": b"never served\n",
    }
    for name, data in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    os.makedirs(os.path.join(root, "list", "deeper"), exist_ok=True)
    return root


# ---- requests ----

def get(path, fields=b"", method=b"GET"):
    return method + b" " + path + b" HTTP/1.1\r\nHost: pier\r\n" + fields


def post_length(rng):
    body = rng.randbytes(rng.choice([0, rng.randint(1, 2000), rng.randint(1, 200000)]))
    ctype = rng.choice([b"application/octet-stream", b"text/plain", b"application/x-pier"])
    return (b"POST /echo HTTP/1.1\r\nHost: pier\r\nContent-Type: " + ctype + b"\r\nContent-Length: " +
            str(len(body)).encode() + b"\r\n", body)


def post_chunked(rng):
    body = rng.randbytes(rng.choice([rng.randint(0, 3000), rng.randint(1, 150000)]))
    enc = bytearray()
    for piece in split(rng, body, rng.choice([16, 1000, 20000])):
        enc += b"%x\r\n" % len(piece) + piece + b"\r\n"
    enc += b"0\r\n\r\n"
    return b"POST /echo HTTP/1.1\r\nHost: pier\r\nTransfer-Encoding: chunked\r\n", bytes(enc)


def random_request(rng):
    """(head without its final CRLF, body, is HEAD)"""
    k = rng.randrange(100)
    if k < 12:
        return get(rng.choice([b"/plaintext", b"/json", b"/", b"/nowhere"])), b"", False
    if k < 16:
        return get(b"/plaintext", method=b"HEAD"), b"", True
    if k < 28:
        h, b = post_length(rng)
        return h, b, False
    if k < 40:
        h, b = post_chunked(rng)
        return h, b, False
    if k < 60:
        path = rng.choice([b"/static/small.txt", b"/static/page.html", b"/static/medium.bin", b"/static/large.bin",
                           b"/static/sub/", b"/static/list/", b"/static/sub", b"/static/missing.txt",
                           b"/static/.secret", b"/static/list/two.txt"])
        fields = rng.choice([b"", b"", b"Range: bytes=100-4999\r\n", b"Range: bytes=-500\r\n",
                             b"Range: bytes=0-0\r\n"])
        head = rng.random() < 0.15
        return get(path, fields, b"HEAD" if head else b"GET"), b"", head
    if k < 75:
        q = "/defer?ms=%d&size=%d" % (rng.choice([0, 1, 5, 30]), rng.choice([0, 10, 3000, 70000, 300000]))
        return get(q.encode()), b"", False
    q = "/stream?n=%d&size=%d" % (rng.choice([1, 3, 20, 100]), rng.choice([1, 100, 4000, 20000]))
    if rng.random() < 0.5:
        q += "&defer=%d" % rng.choice([0, 2, 10])
    return get(q.encode()), b"", False


def serialize(head, body, close):
    return head + (b"Connection: close\r\n" if close else b"") + b"\r\n" + body


# ---- expected answers, from the reference server ----

def read_response(sock, is_head):
    """One whole response from a trusted server."""
    buf = bytearray()
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            n = body_length(buf, end, is_head)
            if n is not None and len(buf) >= end + 4 + n:
                return bytes(buf[:end + 4 + n])
        data = sock.recv(262144)
        if not data:
            raise Failure("reference server: closed before a whole response: %r" % bytes(buf[:300]))
        buf += data


def body_length(buf, end, is_head):
    head = bytes(buf[:end]).lower()
    status = int(head[9:12])
    if is_head or status in (204, 304) or status < 200:
        return 0
    m = re.search(rb"\r\ncontent-length: *(\d+)", head)
    if m:
        return int(m.group(1))
    if b"\r\ntransfer-encoding: chunked" in head:
        i = end + 4
        while True:
            eol = buf.find(b"\r\n", i)
            if eol < 0:
                return None
            size = int(bytes(buf[i:eol]).split(b";")[0], 16)
            if size == 0:
                return eol + 4 - (end + 4) if len(buf) >= eol + 4 else None
            i = eol + 2 + size + 2
            if i > len(buf):
                return None
    return None


class Reference:
    def __init__(self, port):
        self.port = port
        self.cache = {}

    def answer(self, raw, is_head):
        if raw not in self.cache:
            with socket.create_connection(("127.0.0.1", self.port), timeout=20) as s:
                s.sendall(raw)
                self.cache[raw] = read_response(s, is_head)
        return self.cache[raw]


def date_masks(resp):
    """Where the Date values are: they may differ."""
    head_end = resp.find(b"\r\n\r\n")
    i = resp.find(b"\r\nDate: ", 0, head_end)
    return [(i + 8, i + 8 + DATE_LEN)] if i >= 0 else []


def same(got, want, masks):
    """got equals want[:len(got)], except inside the masks."""
    if len(got) > len(want):
        return False
    pos = 0
    for a, b in masks:
        if a >= len(got):
            break
        if got[pos:a] != want[pos:a]:
            return False
        pos = min(b, len(got))
    return got[pos:] == want[pos:len(got)]


ERROR_HEAD = re.compile(rb"HTTP/1\.1 (50[03]) ([A-Za-z ]+)\r\n((?:[!-~][^\r\n]*\r\n)*)\r\n")


def error_response(rest, is_head):
    """A 500 or 503 at the start of rest: (length, closes) if whole, 'cut' if rest is a
    plausible start of one, else None."""
    m = ERROR_HEAD.match(rest)
    if not m:
        return "cut" if len(rest) < 200 and b"HTTP/1.1 50".startswith(rest[:11]) and b"\r\n\r\n" not in rest else None
    cl = re.search(rb"(?i)\r\ncontent-length: (\d+)\r\n", b"\r\n" + m.group(3))
    if not cl:
        return None
    body = b"" if is_head else ("%s %s\n" % (m.group(1).decode(), m.group(2).decode())).encode()
    if int(cl.group(1)) != len(("%s %s\n" % (m.group(1).decode(), m.group(2).decode())).encode()):
        return None
    whole = m.end() + len(body)
    if len(rest) < whole:
        return "cut" if rest[m.end():] == body[:len(rest) - m.end()] else None
    if rest[m.end():whole] != body:
        return None
    return whole, b"connection: close" in m.group(3).lower()


CLOSE_FIELD = b"Connection: close\r\n"


def with_close(rest, want):
    """After a half-close the server may add Connection: close to a response that the
    reference answered without it: the response as the reference would have sent it,
    and the length of the field taken out."""
    end = rest.find(b"\r\n\r\n")
    if CLOSE_FIELD in want[:want.find(b"\r\n\r\n") + 4]:
        return rest, 0
    i = rest.find(b"\r\n" + CLOSE_FIELD, 0, end + 2 if end >= 0 else len(rest))
    if i < 0:
        if end < 0:
            # The stream may have been cut inside the added field: the head up to it is
            # then a cut response as the reference would have sent it.
            j = rest.rfind(b"\r\n")
            if j >= 0 and 0 < len(rest) - j - 2 < len(CLOSE_FIELD) and \
                    CLOSE_FIELD.startswith(rest[j + 2:]):
                return rest[:j + 2], 0
        return rest, 0
    return rest[:i + 2] + rest[i + 2 + len(CLOSE_FIELD):], len(CLOSE_FIELD)


def verify(recv, expected, half_closed=False):
    """Checks the received stream against the expected responses. Returns (responses
    whole, errors answered) or raises Failure."""
    pos, whole, errors = 0, 0, 0
    for i, (want, is_head) in enumerate(expected):
        rest = bytes(recv[pos:])
        if not rest:
            return whole, errors
        masks = date_masks(want)
        seen, extra = with_close(rest, want) if half_closed else (rest, 0)
        if same(seen[:len(want)], want, masks):
            if len(seen) < len(want):
                return whole, errors  # cut inside response i
            pos += len(want) + extra
            whole += 1
            continue
        alt = error_response(rest, is_head)
        if alt == "cut":
            return whole, errors
        if alt is None:
            at = next((k for k in range(min(len(rest), len(want))) if rest[k] != want[k] and
                       not any(a <= k < b for a, b in masks)), min(len(rest), len(want)))
            raise Failure("response %d of %d is wrong at byte %d of it:\n  got  %r\n  want %r" % (
                i + 1, len(expected), at, rest[max(0, at - 80):at + 120], want[max(0, at - 80):at + 120]))
        pos += alt[0]
        whole += 1
        errors += 1
        if alt[1]:
            if pos != len(recv):
                raise Failure("%d bytes after a 'Connection: close' error response (response %d): %r" % (
                    len(recv) - pos, i + 1, bytes(recv[pos:pos + 200])))
            return whole, errors
    if pos != len(recv):
        raise Failure("%d bytes after the last expected response: %r" % (len(recv) - pos, bytes(recv[pos:pos + 200])))
    return whole, errors


# ---- connections ----

def http_conn(rng, addr, ref, max_reqs=6):
    n = rng.randint(1, max_reqs)
    raw, expected, desc = bytearray(), [], []
    half_close = rng.random() < 0.2
    for k in range(n):
        head, body, is_head = random_request(rng)
        r = serialize(head, body, close=(k == n - 1 and not half_close))
        raw += r
        expected.append((ref.answer(r, is_head), is_head))
        desc.append(head.split(b"\r\n")[0].decode() + (" +%d body bytes" % len(body) if body else ""))
    pieces = split(rng, raw, rng.choice([7, 500, 65536, 1 << 21]))
    gap = rng.choice([0, 0, 0, 0.001]) if len(pieces) < 200 else 0  # a trickle, but not for long
    c = Conn(addr, pieces, shut_wr=half_close, timeout=20.0, gap=gap)
    c.tag = (expected, desc, half_close)
    c.shape = "%d bytes in %d pieces%s%s" % (len(raw), len(pieces), ", 1 ms apart" if c.gap else "",
                                            ", then a half-close" if half_close else "")
    return c


def save(c):
    """Keeps what a failing connection sent and received, for a closer look."""
    d = tempfile.mkdtemp(prefix="pier-faults-http-")
    with open(os.path.join(d, "received"), "wb") as f:
        f.write(c.recv)
    with open(os.path.join(d, "expected"), "wb") as f:
        f.write(b"".join(w for w, _ in c.tag[0]))
    return d


def check_http(name, conns, need_complete, stats):
    for c in conns:
        expected, desc, half_closed = c.tag
        try:
            if c.outcome == "timeout":
                raise Failure("hang: no end of the connection within %.0f s, %d bytes received" % (c.timeout, len(c.recv)))
            whole, errors = verify(c.recv, expected, half_closed)
        except Failure as e:
            raise Failure("%s: %s\n  requests: %s\n  sent: %s (%s)\n  received stream saved in %s" % (
                name, e, "; ".join(desc), c.shape, c.outcome, save(c)))
        stats["responses"] += whole
        stats["5xx"] += errors
        if whole < len(expected):
            stats["cut"] += 1
            if need_complete:
                raise Failure("%s: after the faults stopped, %d of %d responses came (%s)\n  requests: %s\n"
                              "  sent: %s\n  received stream saved in %s" % (
                                  name, whole, len(expected), c.outcome, "; ".join(desc), c.shape, save(c)))
        if need_complete and errors:
            raise Failure("%s: after the faults stopped, an error response came\n  requests: %s" % (name, "; ".join(desc)))


def run(binary, seed, rate, stats):
    name = "http seed %d" % seed
    rng = seeded(seed, 2)
    root = make_root(rng)
    args = ["http", "--port", "0", "--root", root, "--threads", "2"]
    ref = Pier(binary, args, "http reference")
    srv = None
    try:
        srv = Pier(binary, args, name, faults={"seed": seed, "rate": rate})
        r = Reference(ref.port)
        addr = ("127.0.0.1", srv.port)
        srv.start_faults()
        conns = run_conns(lambda: http_conn(rng, addr, r), parallel=12, seconds=SECONDS)
        stats["conns"] += len(conns)
        check_http(name, conns, False, stats)
        srv.stop_faults()
        try:
            check_http(name + " (after faults)", run_conns([http_conn(rng, addr, r) for _ in range(8)], parallel=8),
                       True, collections.Counter())
        except Failure as e:
            raise Failure("%s\n  the server's log ends:\n%s" % (e, srv.stderr()[-1500:].decode(errors="replace")))
        srv.terminate()
        ref.terminate()
    finally:
        ref.kill()
        if srv:
            srv.kill()
    return srv.faults, srv.fault_detail
