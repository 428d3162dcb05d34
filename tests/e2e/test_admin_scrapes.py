"""1,000 concurrent scrapes of /metrics on the admin port do not disturb served traffic:
while they all connect and read at once, a keep-alive client on the public port goes on
being answered, every request, and every scrape gets the whole text. The admin thread
reads what the loop writes, so CI runs this under TSan too (pier-test: threads)."""
import asyncio
import re
import threading
import time

import pierlib
from admin_util import admin_port

SCRAPES = 1000


def whole(data):
    """The response carries all the body its Content-Length says, and the body is the
    whole exposition: its first family and the last line of its last one."""
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?i)\r\ncontent-length: (\d+)", head)
    return (m is not None and int(m.group(1)) == len(body) and body.startswith(b"# HELP pier_")
            and body.endswith(b'pier_proxy_headers_total{outcome="aborted"} 0\n'))


async def scrape(port, results):
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 60)
        w.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await w.drain()
        data = await asyncio.wait_for(r.read(), 60)
        w.close()
        ok = data.startswith(b"HTTP/1.1 200") and whole(data)
        results["ok" if ok else "bad"] += 1
    except (OSError, asyncio.TimeoutError) as e:
        results["bad"] += 1
        results.setdefault("errors", []).append(repr(e))


async def scrape_all(port, results):
    await asyncio.gather(*(scrape(port, results) for _ in range(SCRAPES)))


def keep_alive(srv, stop, counts):
    s = srv.connect(30)
    reader = pierlib.Reader(s)
    # at least a few requests after the scrapes ended, so some overlap them
    while not stop.is_set() or counts["after"] < 20:
        try:
            s.sendall(b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n")
            r = reader.response()
        except OSError:
            r = None
        if r is None or r.status != 200 or r.body != b"Hello, World!":
            counts["bad"] += 1
            break
        counts["ok"] += 1
        if stop.is_set():
            counts["after"] += 1
    s.close()


def main():
    srv = pierlib.HttpServer("--admin", "127.0.0.1:0")
    try:
        aport = admin_port(srv)
        counts = {"ok": 0, "bad": 0, "after": 0}
        stop = threading.Event()
        client = threading.Thread(target=keep_alive, args=(srv, stop, counts))
        client.start()
        while counts["ok"] < 20 and client.is_alive():  # the keep-alive client is going first
            time.sleep(0.01)
        results = {"ok": 0, "bad": 0}
        asyncio.run(scrape_all(aport, results))
        stop.set()
        client.join(60)
        pierlib.check(results["ok"] == SCRAPES, "all %d scrapes answered in full (%r)" % (SCRAPES, {
            k: (v[:3] if isinstance(v, list) else v) for k, v in results.items()}))
        pierlib.check(counts["bad"] == 0, "the keep-alive client was served throughout (%r)" % counts)
        pierlib.check(counts["after"] >= 20, "the keep-alive client carried on after the scrapes (%r)" % counts)
        print("keep-alive requests served: %d; scrapes: %d" % (counts["ok"], results["ok"]))
    finally:
        srv.stop()
    pierlib.finish("test_admin_scrapes")


if __name__ == "__main__":
    main()
