"""permessage-deflate (RFC 7692) on `pier http`'s /ws/echo and /ws/chat, where the tool
turns it on. Two independent peers: Debian's python3-websockets (run with /usr/bin/python3,
whose module it is; it offers permessage-deflate by default) for echo of small, large and
fragmented messages under several negotiations (context takeover kept or not by the
client, smaller windows), the chat room with members with and without compression, and a
raw client using Python's own zlib to see the wire: RSV1 on the first frame of a compressed
message only, small messages and control frames sent as they are, offers declined, RSV1 on
a continuation or a ping failing the connection (1002), and a compression bomb (1 GiB of
zeros in about 1 MiB) getting 1009 without the server's memory growing past the message
limit. `--no-deflate` turns it off; `pier ws-client` offers it, and reports a refused
handshake with its status."""
import asyncio
import os
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pierlib  # noqa: E402
from pierlib import check  # noqa: E402
import wslib  # noqa: E402

websockets = wslib.websockets_module("test_ws_deflate", __name__)
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory  # noqa: E402

ZERO = wslib.ZERO_MASK
TAIL = b"\x00\x00\xff\xff"


def compressible(n, seed=0):
    words = [b"pier ", b"socket ", b"frame ", b"deflate ", b"loop "]
    out = bytearray()
    i = seed
    while len(out) < n:
        out += words[(i * 7 + len(out)) % 5]
        i += 1
    return bytes(out[:n])


# ---- python3-websockets ----

async def echo_all(url, what, **kw):
    async with websockets.connect(url, max_size=None, **kw) as ws:
        ext = ws.response_headers.get("Sec-WebSocket-Extensions")
        for n in (0, 1, 127, 128, 200, 65536, 1 << 20, 8 << 20):
            text = compressible(n).decode()
            await ws.send(text)
            check(await ws.recv() == text, "%s: text of %d bytes echoed" % (what, n))
        for n in (100, 70000):
            data = os.urandom(n)
            await ws.send(data)
            check(await ws.recv() == data, "%s: incompressible binary of %d bytes echoed" % (what, n))
        # many similar messages: with context takeover each leans on the ones before
        for i in range(50):
            msg = "message %d of a chatty stream, like the ones before it" % i
            await ws.send(msg)
            check(await ws.recv() == msg, "%s: message %d of a stream" % (what, i))

        async def pieces():
            for p in ("frag" * 200, "mented " * 300, "€", ""):
                yield p
        await ws.send(pieces())
        check(await ws.recv() == "frag" * 200 + "mented " * 300 + "€", "%s: a fragmented message" % what)
        await ws.close()
        return ext


async def python_clients(base):
    url = base + "/ws/echo"
    ext = await echo_all(url, "default offer")
    check(ext is not None and ext.startswith("permessage-deflate"), "permessage-deflate agreed (got %r)" % ext)
    check("server_no_context_takeover" in (ext or ""), "the server keeps no context: frames can be shared")
    variants = [
        dict(client_no_context_takeover=True),
        dict(server_max_window_bits=10, client_max_window_bits=9),
        dict(server_no_context_takeover=True, client_max_window_bits=True),
        dict(server_max_window_bits=9),
    ]
    for kw in variants:
        ext = await echo_all(url, str(kw), extensions=[ClientPerMessageDeflateFactory(**kw)], compression=None)
        check(ext is not None and "permessage-deflate" in ext, "%s: agreed (got %r)" % (kw, ext))
    ext = await echo_all(url, "no compression", compression=None)
    check(ext is None, "no extension when none is offered (got %r)" % ext)


async def chat(base):
    url = base + "/ws/chat"
    members = [await websockets.connect(url, max_size=None) for _ in range(2)]
    members.append(await websockets.connect(url, max_size=None, compression=None))
    members.append(await websockets.connect(url, max_size=None, extensions=[
        ClientPerMessageDeflateFactory(server_max_window_bits=11)], compression=None))
    try:
        for i, m in enumerate(members):
            msg = ("member %d says: " % i) + compressible(5000, i).decode()
            await m.send(msg)
            for j, other in enumerate(members):
                got = await asyncio.wait_for(other.recv(), 20)
                check(got == msg, "chat: member %d gets member %d's message" % (j, i))
    finally:
        for m in members:
            await m.close()


# ---- a raw client, to see the wire ----

class Raw(wslib.Client):
    """A raw client of /ws/echo offering the extensions ext (None: none); ext is what the
    server agreed to."""

    def __init__(self, srv, ext=None):
        super().__init__(srv, wslib.request(extensions=ext), timeout=30)
        self.ext = wslib.header(self.head, "Sec-WebSocket-Extensions")

    def send(self, b0, payload, mask=b"\x0a\x0b\x0c\x0d"):
        self.s.sendall(wslib.frame(b0, payload, mask))

    def recv(self):
        """(b0, payload) of the next frame."""
        b0, payload, _ = self.frames.next()
        return b0, payload

    def expect_close(self, code, what):
        wslib.expect_close(self.frames, code, what)


def deflate(data, bits=15):
    c = zlib.compressobj(6, zlib.DEFLATED, -bits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


def inflate(data):
    d = zlib.decompressobj(-15)
    return d.decompress(data + TAIL)


def raw_wire(srv):
    c = Raw(srv, "permessage-deflate; client_max_window_bits")
    check(c.head.startswith("HTTP/1.1 101"), "raw: 101 with an offer")
    check(c.ext == "permessage-deflate; server_no_context_takeover; client_max_window_bits=15",
          "raw: the agreement (got %r)" % c.ext)
    text = compressible(3000)
    c.send(0xC1, deflate(text))
    b0, payload = c.recv()
    check(b0 == 0xC1, "raw: a compressed message comes back with FIN, RSV1, text (got %#x)" % b0)
    check(inflate(payload) == text, "raw: and inflates to what was sent")
    check(len(payload) < len(text) // 4, "raw: compressed on the wire (%d of %d bytes)" % (len(payload), len(text)))
    c.send(0x81, b"tiny")
    check(c.recv() == (0x81, b"tiny"), "raw: a small message is sent as it is")
    c.send(0x89, b"ping")
    check(c.recv() == (0x8A, b"ping"), "raw: the pong carries no RSV1")
    # a compressed message in fragments, RSV1 on the first alone, a ping between
    z = deflate(text)
    c.send(0x41, z[:10])
    c.send(0x89, b"")
    c.send(0x00, z[10:20])
    c.send(0x80, z[20:])
    check(c.recv() == (0x8A, b""), "raw: a ping between compressed fragments is answered")
    b0, payload = c.recv()
    check(b0 == 0xC1 and inflate(payload) == text, "raw: compressed fragments make one message")
    # a message compressed alone each time: the same bytes, whatever came before
    c.send(0x82, text)
    first = c.recv()
    c.send(0x82, text)
    check(first == c.recv() and first[0] == 0xC2, "raw: with no server context, a message compresses alike")
    # a compressed text that is not UTF-8 once inflated
    c.send(0xC1, deflate(b"valid so far \xff"))
    c.expect_close(1007, "raw: compressed invalid UTF-8")

    c = Raw(srv, "permessage-deflate")
    c.send(0x41, deflate(text)[:10])
    c.send(0xC0, deflate(text)[10:])
    c.expect_close(1002, "raw: RSV1 on a continuation")
    c = Raw(srv, "permessage-deflate")
    c.send(0xC9, b"")
    c.expect_close(1002, "raw: RSV1 on a ping")
    c = Raw(srv, "permessage-deflate")
    c.send(0xC1, b"\xff\xff\xff\xff")
    c.expect_close(1007, "raw: a compressed message that is not DEFLATE")


def negotiation(srv):
    cases = [
        ("permessage-deflate; server_max_window_bits=16", None),
        ("permessage-deflate; server_max_window_bits=8", None),
        ("permessage-deflate; mystery=1", None),
        ("x-webkit-deflate-frame", None),
        ("permessage-deflate;;", None),
        ("x-foo, permessage-deflate; client_max_window_bits=10",
         "permessage-deflate; server_no_context_takeover; client_max_window_bits=10"),
        ("permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=12",
         "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"),
        ("permessage-deflate; client_no_context_takeover",
         "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
    ]
    for offer, want in cases:
        c = Raw(srv, offer)
        check(c.head.startswith("HTTP/1.1 101"), "offer %r: still a 101" % offer)
        check(c.ext == want, "offer %r: answered %r (got %r)" % (offer, want, c.ext))
        if want is None:
            c.send(0xC1, deflate(b"x" * 100))
            c.expect_close(1002, "offer %r declined: RSV1 then fails" % offer)
        else:
            c.s.close()


def zeros_bomb(total):
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    out = [c.compress(chunk) for _ in range(total >> 20)]
    out.append(c.flush(zlib.Z_SYNC_FLUSH))
    return b"".join(out)[:-4]


def bomb():
    srv = pierlib.HttpServer()
    try:
        bomb = zeros_bomb(1 << 30)
        check(len(bomb) < 2 << 20, "the bomb is small (%d bytes)" % len(bomb))
        c = Raw(srv, "permessage-deflate")
        c.send(0x81, b"warm up")
        c.recv()
        before = srv.rss()["hwm"]
        c.send(0xC2, bomb, mask=ZERO)
        c.expect_close(1009, "a compression bomb of 1 GiB")
        grown = srv.rss()["hwm"] - before
        # the limit (16 MiB) of inflated output, the compressed message, and some slack; a
        # sanitizer keeps freed blocks (the output's smaller steps) in quarantine a while.
        # Unbounded, the peak would be a whole GiB.
        with open(pierlib.pier_bin(), "rb") as f:
            image = f.read()
        sanitized = b"AddressSanitizer" in image or b"ThreadSanitizer" in image
        bound = (96 if sanitized else 40) << 20
        check(grown < bound, "the bomb did not grow the server's memory past the limit (peak +%d MiB, bound %d)"
              % (grown >> 20, bound >> 20))
        check(srv.alive(), "the server survives the bomb")
    finally:
        srv.stop()


def tool_client(srv):
    url = "ws://127.0.0.1:%d/ws/echo" % srv.port
    line = "a long line " * 100
    r = pierlib.run(["ws-client", url], input=line + "\n", timeout=30)
    check(r.returncode == 0 and r.stdout == line + "\n", "pier ws-client with deflate echoes (rc %d, %r)"
          % (r.returncode, r.stderr))
    r = pierlib.run(["ws-client", "--no-deflate", url], input="plain\n", timeout=30)
    check(r.returncode == 0 and r.stdout == "plain\n", "pier ws-client --no-deflate echoes")
    r = pierlib.run(["ws-client", "ws://127.0.0.1:%d/nothing" % srv.port], input="", timeout=30)
    check(r.returncode == 1 and "404" in r.stderr, "a refused handshake is reported with its status (%r)" % r.stderr)


async def no_deflate():
    srv = pierlib.HttpServer("--no-deflate")
    try:
        ext = await echo_all("ws://127.0.0.1:%d/ws/echo" % srv.port, "--no-deflate")
        check(ext is None, "--no-deflate: no extension agreed (got %r)" % ext)
    finally:
        srv.stop()


def built_without_zlib():
    """True when the build being tested has PIER_WS_DEFLATE off (its CMake cache says so)."""
    cache = os.path.join(os.environ.get("PIER_BUILD") or os.path.join(pierlib.REPO, "build"), "CMakeCache.txt")
    try:
        with open(cache) as f:
            return "PIER_WS_DEFLATE:BOOL=OFF" in f.read()
    except OSError:
        return False


def run():
    if built_without_zlib():
        print("test_ws_deflate: skipped: pier was built without zlib (PIER_WS_DEFLATE=OFF)")
        sys.exit(0)
    srv = pierlib.HttpServer("--threads", "2")
    try:
        base = "ws://127.0.0.1:%d" % srv.port
        asyncio.run(python_clients(base))
        asyncio.run(chat(base))
        raw_wire(srv)
        negotiation(srv)
        tool_client(srv)
        check(srv.alive(), "the server is still up")
    finally:
        srv.stop()
    asyncio.run(no_deflate())
    bomb()
    pierlib.finish("test_ws_deflate")


if __name__ == "__main__":
    run()
