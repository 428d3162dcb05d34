"""WebSocket (RFC 6455) on `pier http`'s /ws/echo, spoken with raw sockets: the opening
handshake and its refusals (400, 426), bytes sent right behind the handshake, echo,
fragmentation with control frames between fragments, the close handshake, and every rule
whose breach must fail the connection, each on a connection of its own with the close code
it must get (1002 protocol error, 1007 invalid data, 1009 too big), followed by the end of
the TCP connection. Invalid UTF-8 must fail the connection before the rest of its message
(or frame) has been sent."""
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pierlib  # noqa: E402
from pierlib import check  # noqa: E402
import wslib  # noqa: E402
from wslib import KEY, ZERO_MASK, read_head, request  # noqa: E402


class Conn(wslib.Client):
    """A raw WebSocket client connection on srv, past the handshake; every frame read is
    checked to come unmasked."""

    def __init__(self, srv, extra=b""):
        super().__init__(srv, extra=extra, from_server=True)

    def send(self, op, payload=b"", fin=True, rsv=0, mask=wslib.MASK, length=None, masked=True):
        self.s.sendall(wslib.frame(wslib.first_byte(op, fin, rsv), payload, mask if masked else None, length))

    def recv(self):
        """(fin, opcode, payload) of the next frame."""
        b0, payload, _ = self.frames.next()
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def expect_close(self, code, what):
        """The next frames end with a close frame carrying code, and then the TCP end."""
        wslib.expect_close(self.frames, code, what, then_eof=True)


def refused(srv, what, req, status, header=None):
    s = srv.connect(timeout=10)
    s.sendall(req)
    head, _ = read_head(s)
    got = int(head.split()[1]) if head else 0
    check(got == status, "%s: %d (got %d: %r)" % (what, status, got, head[:80]))
    if header:
        check(header.lower() in head.lower(), "%s: head carries %r" % (what, header))
    s.close()


def test_handshake(srv):
    c = Conn(srv)
    check(c.status == 101, "upgrade answered 101 (got %r)" % c.head[:60])
    check("Sec-WebSocket-Accept: " + wslib.accept(KEY) in c.head, "accept key of RFC 6455 1.3")
    check("Upgrade: websocket" in c.head and "Connection: Upgrade" in c.head, "Upgrade and Connection fields")
    check("Content-Length" not in c.head, "a 101 has no body framing")
    c.send(1, b"hi")
    check(c.recv() == (True, 1, b"hi"), "echo after the handshake")
    c.s.close()
    refused(srv, "no key", request(key=None), 400)
    refused(srv, "a key that is not 16 bytes of base64", request(key="c2hvcnQ="), 400)
    refused(srv, "a key with a character outside base64", request(key="dGhlIHNhbXBsZSBub25j*Q=="), 400)
    refused(srv, "no Upgrade field", request(upgrade=None), 400)
    refused(srv, "Upgrade to another protocol", request(upgrade="h2c"), 400)
    refused(srv, "Connection without upgrade", request(connection="keep-alive"), 400)
    refused(srv, "no version", request(version=None), 400)
    refused(srv, "version 8", request(version="8"), 426, "Sec-WebSocket-Version: 13")
    refused(srv, "HTTP/1.0", request(proto="HTTP/1.0"), 400)
    refused(srv, "HEAD", request(method="HEAD"), 400)
    c = Conn(srv)  # lists in the fields, in any case
    c.s.close()
    s = srv.connect(timeout=10)
    s.sendall(request(connection="keep-alive, UPGRADE", upgrade="WebSocket"))
    head, _ = read_head(s)
    check(head.startswith("HTTP/1.1 101"), "token lists and case in Connection and Upgrade (got %r)" % head[:40])
    s.close()


def test_bytes_behind_the_handshake(srv):
    c = Conn(srv, extra=wslib.frame(0x81, b"early", b"\x01\x02\x03\x04"))
    check(c.status == 101, "101 with a frame behind the request")
    check(c.recv() == (True, 1, b"early"), "the frame sent with the handshake is echoed")
    c.s.close()


def test_messages(srv):
    c = Conn(srv)
    c.send(2, b"\x00\xff\x80")
    check(c.recv() == (True, 2, b"\x00\xff\x80"), "binary echoed as binary")
    c.send(1, "héllo €".encode())
    check(c.recv() == (True, 1, "héllo €".encode()), "text echoed as text")
    c.send(1, b"")
    check(c.recv() == (True, 1, b""), "an empty message")
    # a fragmented message with a ping and a pong between its fragments; the euro sign is cut
    euro = "€".encode()
    c.send(1, b"ab" + euro[:1], fin=False)
    c.send(9, b"between")
    c.send(0, euro[1:], fin=False)
    c.send(10, b"unsolicited")
    c.send(0, b"", fin=False)
    c.send(0, b"cd")
    check(c.recv() == (True, 10, b"between"), "ping between fragments answered at once with its payload")
    check(c.recv() == (True, 1, b"ab" + euro + b"cd"), "fragments delivered as one message")
    big = os.urandom(300000)
    c.send(2, big, mask=ZERO_MASK)
    check(c.recv() == (True, 2, big), "a 300 kB message")
    # one frame dribbled in pieces
    payload = b"x" * 1000
    data = wslib.frame(0x82, payload, b"\x05\x06\x07\x08")
    for i in range(0, len(data), 97):
        c.s.sendall(data[i:i + 97])
    check(c.recv() == (True, 2, payload), "a frame that arrives in pieces")
    c.s.close()


def test_close_handshake(srv):
    c = Conn(srv)
    c.send(8, struct.pack("!H", 4000) + b"bye")
    fin, op, payload = c.recv()
    check(op == 8 and payload[:2] == struct.pack("!H", 4000), "close answered with the same code (got %r)" % payload)
    check(c.s.recv(10) == b"", "then the server ends the TCP connection")
    c = Conn(srv)
    c.send(8)
    fin, op, payload = c.recv()
    check(op == 8 and payload == b"", "an empty close answered with an empty close")
    c = Conn(srv)
    c.send(1, b"before")
    c.send(8, struct.pack("!H", 1000))
    c.send(1, b"after the close")
    check(c.recv() == (True, 1, b"before"), "a message before the close is answered")
    fin, op, payload = c.recv()
    check(op == 8, "then the close; nothing after it")
    check(c.s.recv(10) == b"", "the end of the connection")


def fails(srv, what, code, *frames):
    c = Conn(srv)
    for f in frames:
        c.send(**f)
    c.expect_close(code, what)


def test_failures(srv):
    fails(srv, "unmasked frame", 1002, dict(op=1, payload=b"x", masked=False))
    fails(srv, "RSV1 without an extension", 1002, dict(op=1, payload=b"x", rsv=4))
    fails(srv, "RSV2", 1002, dict(op=2, payload=b"x", rsv=2))
    fails(srv, "RSV3", 1002, dict(op=2, payload=b"x", rsv=1))
    fails(srv, "reserved data opcode 3", 1002, dict(op=3, payload=b"x"))
    fails(srv, "reserved control opcode 0xB", 1002, dict(op=0xB, payload=b"x"))
    fails(srv, "ping of 126 bytes", 1002, dict(op=9, payload=b"p" * 126))
    fails(srv, "fragmented ping", 1002, dict(op=9, payload=b"p", fin=False))
    fails(srv, "fragmented close", 1002, dict(op=8, payload=struct.pack("!H", 1000), fin=False))
    fails(srv, "continuation with no message", 1002, dict(op=0, payload=b"x"))
    fails(srv, "a new message inside a fragmented one", 1002, dict(op=1, payload=b"a", fin=False),
          dict(op=1, payload=b"b"))
    fails(srv, "a 64-bit length with its top bit", 1002, dict(op=2, payload=b"", length=1 << 63))
    fails(srv, "close with a one-byte body", 1002, dict(op=8, payload=b"\x03"))
    for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000):
        fails(srv, "close code %d" % code, 1002, dict(op=8, payload=struct.pack("!H", code)))
    fails(srv, "invalid UTF-8 in a close reason", 1007, dict(op=8, payload=struct.pack("!H", 1000) + b"\xc0\xaf"))
    fails(srv, "invalid UTF-8 text", 1007, dict(op=1, payload=b"ok \xed\xa0\x80"))
    fails(srv, "text ending inside a character", 1007, dict(op=1, payload=b"ok \xe2\x82"))
    fails(srv, "text whose last fragment ends inside a character", 1007, dict(op=1, payload=b"a", fin=False),
          dict(op=0, payload=b"\xf0\x9f"))
    fails(srv, "a declared length over 16 MiB, with no payload sent", 1009,
          dict(op=2, payload=b"", length=(16 << 20) + 1))


def test_fail_fast(srv):
    # invalid UTF-8 in the first fragment: the close comes before any further fragment
    c = Conn(srv)
    c.send(1, b"fine \xc3\x28", fin=False)
    c.expect_close(1007, "invalid UTF-8 in a first fragment, the message unfinished")
    # inside one frame: 100 bytes declared, 10 sent, the invalid byte among them
    c = Conn(srv)
    c.s.sendall(wslib.frame(0x81, b"abcd\xffefgh", ZERO_MASK, length=100))
    c.expect_close(1007, "invalid UTF-8 early in a frame whose rest never comes")
    # a fragmented message that grows past the limit: 1009 on the declared length
    c = Conn(srv)
    c.send(2, b"\0" * (8 << 20), fin=False, mask=ZERO_MASK)
    c.s.sendall(wslib.frame(0x00, b"", ZERO_MASK, length=(8 << 20) + 1))
    c.expect_close(1009, "fragments over 16 MiB in all")


def test_limit_holds_the_message(srv):
    c = Conn(srv)
    c.send(2, b"\0" * (16 << 20), mask=ZERO_MASK)
    fin, op, payload = c.recv()
    check(op == 2 and len(payload) == 16 << 20, "a message of exactly 16 MiB is taken")
    c.s.close()


def main():
    srv = pierlib.HttpServer()
    try:
        for t in (test_handshake, test_bytes_behind_the_handshake, test_messages, test_close_handshake,
                  test_failures, test_fail_fast, test_limit_holds_the_message):
            t(srv)
        check(srv.alive(), "the server is still up")
    finally:
        srv.stop()
    pierlib.finish("test_ws_protocol")


if __name__ == "__main__":
    main()
