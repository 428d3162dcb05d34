"""Every "Fail the WebSocket Connection" rule of RFC 6455 sections 5.1-5.5, 5.5.1, 7.4 and
8.1, one case each, on both sides of pier:

- the server (`pier http`, /ws/echo), fed by a raw client socket whose frames are masked
  except where the rule is about masking;
- the client (`pier ws-client`), fed by a raw server socket in this test that completes
  the handshake and then sends the offending frames, unmasked except where the rule is
  about masking.

Either side must answer with a close frame carrying the code the rule calls for (1002
protocol error, 1007 invalid data; masked from the client, unmasked from the server) and
then end the TCP connection without waiting for anything more; the client also exits 1
and names the code. Close codes that RFC 6455 7.4 allows are answered in kind, so the
close-code cases can tell a refused code from an accepted one."""
import base64
import os
import socket
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pierlib  # noqa: E402
from pierlib import check  # noqa: E402
import wslib  # noqa: E402

MASK = b"\x37\xfa\x21\x3d"


def frame(op, payload=b"", fin=True, rsv=0, masked=None, length=None):
    """One frame's bytes; masked None means as the sender's side must (set per run)."""
    return wslib.frame(wslib.first_byte(op, fin, rsv), payload, MASK if masked else None, length)


def close_body(code, reason=b""):
    return struct.pack("!H", code) + reason


# (section, rule, frames as dicts for frame(), expected close code). A frame without
# "masked" is masked as its sender must mask it.
RULES = [
    ("5.2", "RSV1 set with no extension negotiated", [dict(op=1, payload=b"x", rsv=4)], 1002),
    ("5.2", "RSV2 set", [dict(op=2, payload=b"x", rsv=2)], 1002),
    ("5.2", "RSV3 set", [dict(op=1, payload=b"x", rsv=1)], 1002),
    ("5.2", "RSV bits on a control frame", [dict(op=9, payload=b"x", rsv=7)], 1002),
] + [
    ("5.2", "reserved non-control opcode 0x%X" % op, [dict(op=op, payload=b"x")], 1002) for op in range(3, 8)
] + [
    ("5.2", "reserved control opcode 0x%X" % op, [dict(op=op, payload=b"x")], 1002) for op in range(0xB, 0x10)
] + [
    ("5.2", "a 64-bit payload length with its most significant bit set",
     [dict(op=2, payload=b"", length=1 << 63)], 1002),
    ("5.4", "a fragmented ping", [dict(op=9, payload=b"p", fin=False)], 1002),
    ("5.4", "a fragmented pong", [dict(op=10, payload=b"p", fin=False)], 1002),
    ("5.4", "a fragmented close", [dict(op=8, payload=close_body(1000), fin=False)], 1002),
    ("5.4", "a continuation frame with no message started", [dict(op=0, payload=b"x")], 1002),
    ("5.4", "a final continuation frame with no message started", [dict(op=0, payload=b"x", fin=True)], 1002),
    ("5.4", "a text frame inside an unfinished text message",
     [dict(op=1, payload=b"a", fin=False), dict(op=1, payload=b"b")], 1002),
    ("5.4", "a binary frame inside an unfinished text message",
     [dict(op=1, payload=b"a", fin=False), dict(op=2, payload=b"b")], 1002),
    ("5.4", "a text frame inside an unfinished binary message, after a ping between fragments",
     [dict(op=2, payload=b"a", fin=False), dict(op=9, payload=b"p"), dict(op=1, payload=b"b", fin=False)], 1002),
    ("5.5", "a ping of 126 bytes", [dict(op=9, payload=b"p" * 126)], 1002),
    ("5.5", "a pong of 126 bytes", [dict(op=10, payload=b"p" * 126)], 1002),
    ("5.5", "a close of 126 bytes", [dict(op=8, payload=close_body(1000, b"r" * 124))], 1002),
    ("5.5", "a ping declaring 65536 bytes (64-bit length form)", [dict(op=9, payload=b"", length=65536)], 1002),
    ("5.5.1", "a close body of one byte", [dict(op=8, payload=b"\x03")], 1002),
    ("5.5.1", "a close reason that is not UTF-8", [dict(op=8, payload=close_body(1000, b"ok\xc0\xaf"))], 1007),
    ("5.5.1", "a close reason cut inside a character", [dict(op=8, payload=close_body(1000, b"\xe2\x82"))], 1007),
] + [
    ("7.4", "close code %d, which no endpoint may send" % code, [dict(op=8, payload=close_body(code))], 1002)
    for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 1999, 2000, 2999, 5000, 65535)
] + [
    ("8.1", "text that is not UTF-8 (a lone continuation byte)", [dict(op=1, payload=b"ab\x80cd")], 1007),
    ("8.1", "text with an overlong encoding", [dict(op=1, payload=b"\xc0\xaf")], 1007),
    ("8.1", "text with a UTF-16 surrogate", [dict(op=1, payload=b"\xed\xa0\x80")], 1007),
    ("8.1", "text above U+10FFFF", [dict(op=1, payload=b"\xf4\x90\x80\x80")], 1007),
    ("8.1", "invalid UTF-8 in a middle fragment",
     [dict(op=1, payload=b"fine ", fin=False), dict(op=0, payload=b"\xff", fin=False), dict(op=0, payload=b"!")], 1007),
    ("8.1", "a character split across fragments whose second part is wrong",
     [dict(op=1, payload=b"\xe2\x82", fin=False), dict(op=0, payload=b"\x28")], 1007),
    ("8.1", "text whose final fragment ends inside a character",
     [dict(op=1, payload=b"a", fin=False), dict(op=0, payload=b"\xf0\x9f\x98")], 1007),
    ("8.1", "invalid UTF-8 in a first fragment, the message left unfinished",
     [dict(op=1, payload=b"ok \xc3\x28", fin=False)], 1007),
]

# Only one side has these: masking runs one way (5.1).
SERVER_ONLY = [("5.1", "an unmasked frame from the client", [dict(op=1, payload=b"x", masked=False)], 1002)]
CLIENT_ONLY = [("5.1", "a masked frame from the server", [dict(op=1, payload=b"x", masked=True)], 1002)]

# 7.4.1 and 7.4.2: codes an endpoint may send; each is answered, not refused.
VALID_CODES = (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999)


# ---- reading frames ----

def close_code(fr):
    """The code of the first close frame of fr (None: none came), and whether it was masked."""
    try:
        payload, masked = fr.close_frame()
    except (EOFError, ConnectionResetError, socket.timeout):
        return None, None
    return wslib.close_code(payload), masked


def send_frames(sock, frames, masked):
    for f in frames:
        f = dict(f)
        f.setdefault("masked", masked)
        sock.sendall(frame(**f))


# ---- the server side ----

def server_conn(srv):
    c = wslib.Client(srv, wslib.request(key=base64.b64encode(os.urandom(16)).decode()))
    check(c.head.startswith("HTTP/1.1 101"), "server: handshake (got %r)" % c.head[:40])
    return c.s, c.frames


def rule_holds(side, s, fr, section, rule, frames, code):
    """Sends frames to pier's side ("server" or "client") on s, masked as its peer must,
    and checks that pier closes with code, its close frame masked as that side's must
    be, then ends TCP; returns what names the case."""
    pier_masks = side == "client"
    send_frames(s, frames, masked=not pier_masks)
    got, masked = close_code(fr)
    what = "%s, RFC 6455 %s, %s" % (side, section, rule)
    check(got == code, "%s: closes with %d (got %r)" % (what, code, got))
    check(masked is pier_masks or got is None,
          "%s: its close frame is %s" % (what, "masked" if pier_masks else "not masked"))
    check(fr.ends(), "%s: then ends the TCP connection" % what)
    s.close()
    return what


def server_rule(srv, *rule):
    s, fr = server_conn(srv)
    rule_holds("server", s, fr, *rule)


def server_valid_code(srv, code):
    s, fr = server_conn(srv)
    send_frames(s, [dict(op=8, payload=close_body(code, b"why"))], masked=True)
    got, _ = close_code(fr)
    check(got == code, "server: close code %d is allowed and answered with it (got %r)" % (code, got))
    s.close()


# ---- the client side ----

class RawServer:
    """A listening socket that completes the handshake of each pier ws-client."""

    def __init__(self):
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.ls.settimeout(20)
        self.port = self.ls.getsockname()[1]

    def client(self):
        """Starts pier ws-client (stdin kept open, so it never closes on its own) and
        accepts it; (process, socket, Frames)."""
        p = subprocess.Popen([pierlib.pier_bin(), "ws-client", "ws://127.0.0.1:%d/" % self.port],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        s, _ = self.ls.accept()
        s.settimeout(20)
        key = wslib.header(wslib.read_head(s)[0], "Sec-WebSocket-Key")
        acc = wslib.accept(key) if key else ""
        s.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Accept: %s\r\n\r\n" % acc).encode())
        return p, s, wslib.Frames(s)


def finish_client(p):
    try:
        _, err = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    return p.returncode, err.decode("utf-8", "replace")


def client_rule(rs, section, rule, frames, code):
    p, s, fr = rs.client()
    what = rule_holds("client", s, fr, section, rule, frames, code)
    rc, err = finish_client(p)
    check(rc == 1 and "(%d" % code in err, "%s: pier ws-client exits 1 naming %d (got %s, %r)" % (what, code, rc, err))


def main():
    srv = pierlib.HttpServer()
    rs = RawServer()
    try:
        for rule in RULES + SERVER_ONLY:
            server_rule(srv, *rule)
        for code in VALID_CODES:
            server_valid_code(srv, code)
        check(srv.alive(), "the server is still up")
        for rule in RULES + CLIENT_ONLY:
            client_rule(rs, *rule)
    finally:
        srv.stop()
        rs.ls.close()
    pierlib.finish("test_ws_fail_rules")


if __name__ == "__main__":
    main()
