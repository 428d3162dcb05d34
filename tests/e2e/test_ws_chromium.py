"""The chat page of `pier http` in headless Chromium, two tabs: what tab A sends shows in
tab B and in A (the room sends every message to every member, the sender included), and
the reverse; read back from each page's DOM. The browser is driven through the DevTools
protocol over its own WebSocket, with Debian's python3-websockets (so the test runs
itself under /usr/bin/python3). The page must load nothing from outside, throw no
exception and log no error. A screenshot of each tab is kept in
$PIER_BUILD/test-output/test_ws_chromium/. Skipped only when chromium is not installed."""
import asyncio
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pierlib  # noqa: E402
from pierlib import check  # noqa: E402
import wslib  # noqa: E402

websockets = wslib.websockets_module("test_ws_chromium", __name__)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OUT = os.path.join(os.environ.get("PIER_BUILD") or os.path.join(pierlib.REPO, "build"), "test-output",
                   "test_ws_chromium")


def start_browser(profile):
    """Chromium with a DevTools endpoint on a port of its choosing; (process, ws URL)."""
    argv = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
            "--disable-dev-shm-usage", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
            "--user-data-dir=" + profile, "--window-size=900,700", "about:blank"]
    err = open(os.path.join(profile, "stderr.txt"), "w+")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        err.seek(0)
        m = re.search(r"DevTools listening on (ws://\S+)", err.read())
        if m:
            return proc, m.group(1)
        time.sleep(0.1)
    err.seek(0)
    stop_browser(proc)
    raise RuntimeError("chromium gave no DevTools endpoint; stderr:\n" + err.read()[-3000:])


def stop_browser(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the browser and its helpers
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class DevTools:
    """One connection to the browser; commands to a tab go with its session id."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0
        self.pending = {}
        self.events = []  # (session, method, params)
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self):
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg and msg["id"] in self.pending:
                self.pending.pop(msg["id"]).set_result(msg)
            elif "method" in msg:
                self.events.append((msg.get("sessionId"), msg["method"], msg.get("params", {})))

    async def call(self, method, session=None, **params):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        fut = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        await self.ws.send(json.dumps(msg))
        reply = await asyncio.wait_for(fut, 30)
        if "error" in reply:
            raise RuntimeError("%s: %s" % (method, reply["error"]))
        return reply["result"]

    async def tab(self, url):
        target = await self.call("Target.createTarget", url="about:blank")
        session = (await self.call("Target.attachToTarget", targetId=target["targetId"], flatten=True))["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            await self.call(domain + ".enable", session)
        await self.call("Page.navigate", session, url=url)
        return session

    async def js(self, session, expr):
        r = await self.call("Runtime.evaluate", session, expression=expr, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError("%s: %s" % (expr, r["exceptionDetails"]))
        return r["result"].get("value")

    async def wait_js(self, session, expr, want, timeout=30):
        deadline = time.monotonic() + timeout
        got = None
        while time.monotonic() < deadline:
            try:
                got = await self.js(session, expr)
            except RuntimeError:
                got = None  # the page is still loading
            if want(got):
                return got
            await asyncio.sleep(0.1)
        return got


LOG_LINES = "Array.from(document.querySelectorAll('#log p:not(.sys)')).map(p => p.textContent)"


async def send(dt, session, name, text):
    """Types into the page's fields and clicks Send, as a user would."""
    await dt.js(session, "document.getElementById('name').value = %s" % json.dumps(name))
    await dt.js(session, "document.getElementById('msg').focus()")
    await dt.call("Input.insertText", session, text=text)
    await dt.js(session, "document.querySelector('#form button').click()")


async def shows(dt, session, line, what):
    got = await dt.wait_js(session, LOG_LINES, lambda v: isinstance(v, list) and line in v)
    check(isinstance(got, list) and line in got, "%s (log: %r)" % (what, got))
    return got


async def screenshot(dt, session, name):
    await dt.call("Page.bringToFront", session)
    shot = await dt.call("Page.captureScreenshot", session, format="png")
    path = os.path.join(OUT, name)
    with open(path, "wb") as f:
        f.write(base64.b64decode(shot["data"]))
    check(os.path.getsize(path) > 1000, "a screenshot of the page is kept at %s" % path)


async def chat(ws_url, page):
    async with websockets.connect(ws_url, max_size=None, ping_interval=None) as ws:
        dt = DevTools(ws)
        a = await dt.tab(page)
        b = await dt.tab(page)
        for s, n in ((a, "A"), (b, "B")):
            st = await dt.wait_js(s, "document.getElementById('state').textContent", lambda v: v == "connected")
            check(st == "connected", "tab %s: the page says connected (got %r)" % (n, st))
        await send(dt, a, "alice", "hello from tab A <b>not bold</b>")
        await shows(dt, b, "alice: hello from tab A <b>not bold</b>", "tab B shows what tab A sent, as text")
        await shows(dt, a, "alice: hello from tab A <b>not bold</b>", "tab A shows its own message too")
        await send(dt, b, "bob", "and back from tab B: ünïcödé €")
        await shows(dt, a, "bob: and back from tab B: ünïcödé €", "tab A shows what tab B sent")
        got = await shows(dt, b, "bob: and back from tab B: ünïcödé €", "tab B shows its own message")
        check(got == ["alice: hello from tab A <b>not bold</b>", "bob: and back from tab B: ünïcödé €"],
              "each message shows once, in order (tab B: %r)" % got)
        bold = await dt.js(b, "document.querySelectorAll('#log b').length")
        check(bold == 0, "a message's markup is shown, not interpreted (%r <b> elements)" % bold)
        empty = await dt.js(a, "document.getElementById('msg').value")
        check(empty == "", "the message field is cleared after sending (got %r)" % empty)
        await screenshot(dt, a, "tab-a.png")
        await screenshot(dt, b, "tab-b.png")
        problems = [(m, p) for s, m, p in dt.events
                    if m == "Runtime.exceptionThrown"
                    or (m == "Log.entryAdded" and p["entry"]["level"] == "error")
                    or (m == "Runtime.consoleAPICalled" and p["type"] == "error")]
        check(not problems, "no exception or error in the pages (got %r)" % problems[:3])
        urls = [p["request"]["url"] for s, m, p in dt.events if m == "Network.requestWillBeSent"]
        outside = [u for u in urls if not u.startswith(page.rsplit("/", 1)[0]) and not u.startswith("data:")]
        check(urls and not outside, "the page loads nothing from outside (requests %r)" % urls)
        try:
            await dt.call("Browser.close")
        except Exception:
            pass  # the browser may drop the connection before it answers
        dt.reader.cancel()


def main():
    if not os.access(CHROMIUM, os.X_OK):
        print("test_ws_chromium: skipped: chromium is not installed")
        sys.exit(0)
    os.makedirs(OUT, exist_ok=True)
    srv = pierlib.HttpServer("--threads", "2")
    profile = tempfile.mkdtemp(prefix="pier-chromium-")
    proc = None
    try:
        proc, ws_url = start_browser(profile)
        asyncio.run(asyncio.wait_for(chat(ws_url, "http://127.0.0.1:%d/chat" % srv.port), 150))
        check(srv.alive(), "pier http is still up")
    finally:
        if proc:
            stop_browser(proc)
        shutil.rmtree(profile, ignore_errors=True)
        srv.stop()
    pierlib.finish("test_ws_chromium")


if __name__ == "__main__":
    main()
