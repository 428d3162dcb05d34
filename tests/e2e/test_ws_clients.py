"""WebSocket on `pier http` with an independent client: Debian's python3-websockets (run
with /usr/bin/python3, whose module it is). Echo of text and binary messages of every
length form, a fragmented message, ping and pong, close codes in both directions, the chat
room across two loops (every member gets every message, the sender included), and the
/chat page. The test runs itself again under /usr/bin/python3 when ctest's python3 is
another interpreter; without the module it fails, naming the package."""
import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pierlib  # noqa: E402
from pierlib import check  # noqa: E402
import wslib  # noqa: E402

websockets = wslib.websockets_module("test_ws_clients", __name__)


async def echo(url):
    async with websockets.connect(url, max_size=None) as ws:
        for n in (0, 1, 125, 126, 65535, 65536, 1 << 20):
            text = "é" * (n // 2) + "x" * (n % 2)
            await ws.send(text)
            got = await ws.recv()
            check(got == text, "text of %d bytes echoed as text" % n)
            data = os.urandom(n)
            await ws.send(data)
            got = await ws.recv()
            check(got == data, "binary of %d bytes echoed as binary" % n)

        async def pieces():
            for p in ("frag", "mented ", "€", ""):
                yield p
        await ws.send(pieces())
        check(await ws.recv() == "fragmented €", "a fragmented message comes back whole")
        waiter = await ws.ping(b"are you there")
        await asyncio.wait_for(waiter, 10)
        check(True, "ping answered with a pong")
        await ws.close(4001, "done here")
        check(ws.close_code == 4001, "the server answers our close with its code (got %r)" % ws.close_code)


async def chat(url):
    members = [await websockets.connect(url) for _ in range(3)]
    try:
        for i, m in enumerate(members):
            await m.send("hello from %d" % i)
            for j, other in enumerate(members):
                got = await asyncio.wait_for(other.recv(), 10)
                check(got == "hello from %d" % i, "member %d gets member %d's message (got %r)" % (j, i, got))
    finally:
        for m in members:
            await m.close()


async def main(srv):
    base = "ws://127.0.0.1:%d" % srv.port
    await echo(base + "/ws/echo")
    await chat(base + "/ws/chat")
    resp = pierlib.request(srv, "GET", "/chat")
    check(resp.status == 200 and b"/ws/chat" in resp.body, "the chat page is served and uses /ws/chat")
    check(b"src=\"http" not in resp.body and b"href=\"http" not in resp.body, "it loads nothing from outside")


def run():
    srv = pierlib.HttpServer("--threads", "2")
    try:
        asyncio.run(main(srv))
    finally:
        srv.stop()
    pierlib.finish("test_ws_clients")


if __name__ == "__main__":
    run()
