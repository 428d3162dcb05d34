"""Pub/sub behind `pier http --threads 2`'s /ws/chat room, with an independent client
(Debian's python3-websockets, run with /usr/bin/python3): two members publish at once to
sixteen members spread by the kernel over both loops, and every member gets every
message exactly once, each sender's messages in the order sent, its own included."""
import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pierlib  # noqa: E402
from pierlib import check  # noqa: E402
import wslib  # noqa: E402

websockets = wslib.websockets_module("test_ws_pubsub", __name__)

MEMBERS = 16
PER_SENDER = 200


async def collect(ws):
    """Messages until both senders' "end", in the order they came."""
    got, ends = [], 0
    while ends < 2:
        msg = await asyncio.wait_for(ws.recv(), 20)
        if msg.endswith(":end"):
            ends += 1
        else:
            got.append(msg)
    return got


async def send_all(ws, tag):
    for i in range(PER_SENDER):
        await ws.send("%s:%d" % (tag, i))
    await ws.send("%s:end" % tag)


async def main(url):
    members = [await websockets.connect(url) for _ in range(MEMBERS)]
    try:
        # every member is in the room once its handshake is done; a first round trip on
        # each proves it before the flood
        await members[0].send("hello")
        for m in members:
            check(await asyncio.wait_for(m.recv(), 20) == "hello", "a member is in the room")
        readers = [asyncio.ensure_future(collect(m)) for m in members]
        await asyncio.gather(send_all(members[0], "a"), send_all(members[1], "b"))
        results = await asyncio.gather(*readers)
        for j, got in enumerate(results):
            for tag in ("a", "b"):
                mine = [g for g in got if g.startswith(tag + ":")]
                want = ["%s:%d" % (tag, i) for i in range(PER_SENDER)]
                check(mine == want, "member %d gets sender %s's %d messages once each, in order (got %d)"
                      % (j, tag, PER_SENDER, len(mine)))
            check(len(got) == 2 * PER_SENDER, "member %d gets nothing else" % j)
    finally:
        for m in members:
            await m.close()


def run():
    srv = pierlib.HttpServer("--threads", "2")
    try:
        asyncio.run(main("ws://127.0.0.1:%d/ws/chat" % srv.port))
    finally:
        srv.stop()
    pierlib.finish("test_ws_pubsub")


if __name__ == "__main__":
    run()
