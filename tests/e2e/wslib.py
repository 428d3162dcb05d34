"""Raw WebSocket (RFC 6455) for the e2e tests, written and read by hand so that a test
sees exactly what goes over the wire: the opening handshake, frames, the close.
Python 3 stdlib only, beside pierlib.

    c = wslib.Client(srv)                            # request sent, the answer's head read
    check(c.status == 101, "upgraded")
    c.s.sendall(wslib.frame(wslib.first_byte(1), b"hi", wslib.MASK))
    b0, payload, masked = c.frames.next()
    wslib.expect_close(c.frames, 1000, "a normal close")
"""
import base64
import hashlib
import os
import socket
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pierlib import check  # noqa: E402

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # the key of RFC 6455 1.3
MASK = b"\x11\x22\x33\x44"
ZERO_MASK = b"\0\0\0\0"  # masks nothing: big payloads need no masking work in Python


def accept(key):
    """The Sec-WebSocket-Accept that answers key (RFC 6455 1.3)."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def request(path="/ws/echo", key=KEY, version="13", upgrade="websocket", connection="Upgrade", method="GET",
            proto="HTTP/1.1", extensions=None):
    """The opening handshake's request; a field given as None is left out."""
    lines = ["%s %s %s" % (method, path, proto), "Host: localhost"]
    for name, value in (("Upgrade", upgrade), ("Connection", connection), ("Sec-WebSocket-Key", key),
                        ("Sec-WebSocket-Version", version), ("Sec-WebSocket-Extensions", extensions)):
        if value is not None:
            lines.append("%s: %s" % (name, value))
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_head(s):
    """(head, rest): an HTTP head read from s up to its blank line (latin-1, without the
    blank line; all that came when the peer closes first), and the bytes behind it."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


def header(head, name):
    """The value of the field name in head (None: absent)."""
    for line in head.split("\r\n")[1:]:
        if line.lower().startswith(name.lower() + ":"):
            return line.split(":", 1)[1].strip()
    return None


# ---- frames ----

def first_byte(op, fin=True, rsv=0):
    """A frame's first byte: FIN, the three RSV bits (RSV1 is 4) and the opcode."""
    return (0x80 if fin else 0) | (rsv << 4) | op


def mask(payload, key):
    """payload masked with key (masking twice unmasks)."""
    if key == ZERO_MASK:
        return payload
    return bytes(c ^ key[i % 4] for i, c in enumerate(payload))


def frame(b0, payload=b"", key=None, length=None):
    """One frame's bytes: first byte b0, masked with key (None: not masked), declaring
    length instead of the payload's own length when it is given."""
    n = len(payload) if length is None else length
    m = 0 if key is None else 0x80
    if n < 126:
        head = struct.pack("!BB", b0, m | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, m | 126, n)
    else:
        head = struct.pack("!BBQ", b0, m | 127, n)
    if key is None:
        return head + payload
    return head + key + mask(payload, key)


def close_code(payload):
    """The code of a close frame's payload (None: it has none)."""
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


class Frames:
    """The frames a peer sends on socket s; buf holds what has been received and not read
    (at the start, what came behind the handshake's head). With from_server, each frame
    is a check() that it comes unmasked, as a server's must."""

    def __init__(self, s, buf=b"", from_server=False):
        self.s = s
        self.buf = buf
        self.from_server = from_server

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(1 << 20)
            if not chunk:
                raise EOFError("closed with %d of %d bytes" % (len(self.buf), n))
            self.buf += chunk

    def next(self):
        """(first byte, payload, was_masked) of the next frame, its payload unmasked."""
        self._need(2)
        b1 = self.buf[1]
        if self.from_server:
            check(not b1 & 0x80, "server frames are not masked")
        n, off = b1 & 0x7F, 2
        if n == 126:
            self._need(4)
            n, off = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            self._need(10)
            n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
        masked = bool(b1 & 0x80)
        key = b""
        if masked:
            self._need(off + 4)
            key, off = self.buf[off:off + 4], off + 4
        self._need(off + n)
        payload = self.buf[off:off + n]
        if masked:
            payload = mask(payload, key)
        b0 = self.buf[0]
        self.buf = self.buf[off + n:]
        return b0, payload, masked

    def close_frame(self):
        """(payload, was_masked) of the next close frame, the frames before it skipped;
        EOFError, ConnectionResetError or socket.timeout when none comes."""
        while True:
            b0, payload, masked = self.next()
            if b0 & 0x0F == 8:
                return payload, masked

    def ends(self):
        """True if the peer ends TCP with nothing more sent."""
        try:
            return self.s.recv(100) == b"" and not self.buf
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False


def expect_close(frames, code, what, then_eof=False):
    """Checks that the next frames end with a close frame carrying code, and with then_eof
    that the TCP connection then ends; closes the socket after a close frame."""
    try:
        payload, _ = frames.close_frame()
    except (EOFError, ConnectionResetError, socket.timeout) as e:
        check(False, "%s: a close frame with %d (got %r)" % (what, code, e))
        return
    got = close_code(payload)
    check(got == code, "%s: close code %d (got %r)" % (what, code, got))
    if then_eof:
        try:
            rest = frames.s.recv(100)
        except ConnectionResetError:
            rest = b""
        check(rest == b"", "%s: the TCP connection ends after the close frame (got %r)" % (what, rest))
    frames.s.close()


class Client:
    """A raw client connection to srv: the handshake request req (default: request()) sent
    with extra bytes right behind it, and the head of the answer read; s is the socket,
    frames what follows the head (from_server: see Frames)."""

    def __init__(self, srv, req=None, extra=b"", timeout=10, from_server=False):
        self.s = srv.connect(timeout=timeout)
        self.s.sendall((request() if req is None else req) + extra)
        self.head, rest = read_head(self.s)
        self.status = int(self.head.split()[1]) if self.head else 0
        self.frames = Frames(self.s, rest, from_server)


# ---- python3-websockets ----

def websockets_module(name, main):
    """Debian's python3-websockets for the test name: when it runs as a script (main is
    its __name__) under another interpreter, it runs again under /usr/bin/python3, whose
    module it is; without the module it exits 1 naming the package."""
    if main == "__main__" and sys.executable != "/usr/bin/python3" and os.path.exists("/usr/bin/python3"):
        sys.exit(subprocess.call(["/usr/bin/python3"] + sys.argv))
    try:
        import websockets
    except ImportError:
        print("%s: needs python3-websockets (scripts/deps.sh installs it)" % name)
        sys.exit(1)
    return websockets
