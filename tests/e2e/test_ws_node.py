"""WebSocket interop with Node's `ws` (Debian node-ws), in both directions.

Node as the client of `pier http` (test_ws_node.js client): /ws/echo with text, binary,
an empty message, a message fragmented across a UTF-8 character, every payload length
form up to 1 MiB, ping and pong, close codes (4001 and 1001 answered in kind, 1007 for
text that is not UTF-8); /ws/chat with two Node clients that each see the other's
messages and their own.

pier ws-client as the client of a Node `ws` server (test_ws_node.js server): lines go
out as text messages and the echoes are printed; the server's ping is answered, its
fragmented message and a 1 MiB message are printed whole; the end of stdin closes with
1000, which the server sees; a close from the server with 4002 makes the client exit 1
and say so.

pier ws-client's load (--url --conns --size --seconds) against the Node server and
against pier http's /ws/echo prints echo-client's line with no errors, and against the
/ws/chat room, where every message comes back once per member, it reports errors and
exits 1."""
import json
import os
import queue
import shutil
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pierlib  # noqa: E402
from pierlib import check  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "test_ws_node.js")
NODE = shutil.which("node") or "/usr/bin/node"
NODE_PATH = "/usr/share/nodejs"


def node_env():
    env = dict(os.environ)
    env["NODE_PATH"] = NODE_PATH + (":" + env["NODE_PATH"] if env.get("NODE_PATH") else "")
    return env


def have_node_ws():
    if not os.access(NODE, os.X_OK):
        return "node is not installed"
    r = subprocess.run([NODE, "-e", "require('ws')"], env=node_env(), capture_output=True, timeout=30)
    return None if r.returncode == 0 else "Node's ws module is missing (Debian node-ws)"


class Lines:
    """The stdout of a process, line by line, with a timeout per line."""

    def __init__(self, proc):
        self.q = queue.Queue()
        self.seen = []
        threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True).start()

    def _pump(self, f):
        for line in f:
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def next(self, timeout=20):
        try:
            line = self.q.get(timeout=timeout)
        except queue.Empty:
            return None
        if line is not None:
            self.seen.append(line)
        return line


def node_clients_against_pier():
    srv = pierlib.HttpServer("--threads", "2")
    try:
        r = subprocess.run([NODE, SCRIPT, "client", "ws://127.0.0.1:%d" % srv.port], env=node_env(),
                           capture_output=True, text=True, timeout=180)
        print(r.stdout, end="")
        oks = [line for line in r.stdout.splitlines() if line.startswith("ok ")]
        check(r.returncode == 0 and r.stdout.rstrip().endswith("PASSED"),
              "every check of the Node client passes (exit %d); stderr: %s" % (r.returncode, r.stderr[-2000:]))
        check(len(oks) >= 24, "the Node client ran all its checks (%d)" % len(oks))
        check(srv.alive(), "pier http is still up after the Node clients")
    finally:
        srv.stop()


class NodeServer:
    def __init__(self):
        self.proc = subprocess.Popen([NODE, SCRIPT, "server"], env=node_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines = Lines(self.proc)
        first = self.lines.next()
        if not first or not first.startswith("port "):
            self.stop()
            raise RuntimeError("the Node server did not start: %r %s" % (first, self.proc.stderr.read()))
        self.port = int(first.split()[1])

    def event(self, timeout=20):
        line = self.lines.next(timeout)
        return json.loads(line) if line else None

    def events_until(self, pred, timeout=20):
        got = []
        while True:
            ev = self.event(timeout)
            if ev is None:
                return got, None
            got.append(ev)
            if pred(ev):
                return got, ev

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def pier_client(url):
    p = subprocess.Popen([pierlib.pier_bin(), "ws-client", url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    return p, Lines(p)


def pier_client_against_node():
    node = NodeServer()
    try:
        p, out = pier_client("ws://127.0.0.1:%d/room?x=1" % node.port)
        ev = node.event()
        check(ev == {"ev": "open", "path": "/room?x=1"}, "Node sees pier ws-client open /room?x=1 (got %r)" % ev)
        p.stdin.write("hello node\nünïcödé €\n")
        p.stdin.flush()
        check(out.next() == "hello node", "the echo of the first line is printed")
        check(out.next() == "ünïcödé €", "the echo of a UTF-8 line is printed")
        p.stdin.write("send tricky\n")
        p.stdin.flush()
        check(out.next() == "fragmented", "a fragmented message from Node is printed whole")
        big = out.next()
        check(big == "x" * (1 << 20), "a 1 MiB message from Node is printed (got %d bytes)" % len(big or ""))
        got, pong = node.events_until(lambda e: e["ev"] == "pong")
        check(pong is not None and pong["data"] == "ping from node",
              "pier ws-client answers Node's ping with its data (events %r)" % got)
        p.stdin.close()  # end of input: a close with 1000
        got, close = node.events_until(lambda e: e["ev"] == "close")
        check(close is not None and close["code"] == 1000, "Node sees the client's close 1000 (got %r)" % close)
        rc = p.wait(20)
        check(rc == 0, "pier ws-client exits 0 after a normal close (got %s: %s)" % (rc, p.stderr.read()))

        p, out = pier_client("ws://127.0.0.1:%d/" % node.port)
        node.event()
        p.stdin.write("please close\n")
        p.stdin.flush()
        got, close = node.events_until(lambda e: e["ev"] == "close")
        check(close is not None and close["code"] == 4002, "Node's close 4002 completes (got %r)" % close)
        rc = p.wait(20)
        err = p.stderr.read()
        check(rc == 1, "pier ws-client exits 1 when the server closes with 4002 (got %s)" % rc)
        check("4002" in err and "asked to" in err, "and names the code and reason (stderr %r)" % err)
        p.stdin.close()
    finally:
        node.stop()


def load_line(url, *args):
    r = subprocess.run([pierlib.pier_bin(), "ws-client", "--url", url] + list(args), capture_output=True, text=True,
                       timeout=60)
    fields = dict(kv.split("=", 1) for kv in r.stdout.split()[1:] if "=" in kv)
    return r.returncode, fields, r.stdout + r.stderr


def pier_load():
    node = NodeServer()
    srv = pierlib.HttpServer()
    try:
        for what, url in (("Node", "ws://127.0.0.1:%d/" % node.port), ("pier", "ws://127.0.0.1:%d/ws/echo" % srv.port)):
            for size in ("64", "70000"):
                rc, f, out = load_line(url, "--conns", "4", "--size", size, "--seconds", "1")
                check(rc == 0 and f.get("conns") == "4" and f.get("size") == size and f.get("errors") == "0"
                      and int(f.get("messages", "0")) > 0,
                      "load of %s-byte messages against %s's echo: a clean line (rc %d: %r)" % (size, what, rc, out))
        rc, f, out = load_line("ws://127.0.0.1:%d/ws/chat" % srv.port, "--conns", "2", "--seconds", "1")
        check(rc == 1 and int(f.get("errors", "0")) > 0,
              "load against a room, where echoes come twice: errors reported, exit 1 (rc %d: %r)" % (rc, out))
    finally:
        node.stop()
        srv.stop()


def main():
    missing = have_node_ws()
    if missing:
        print("test_ws_node: skipped: %s" % missing)
        sys.exit(0)
    node_clients_against_pier()
    pier_client_against_node()
    pier_load()
    pierlib.finish("test_ws_node")


if __name__ == "__main__":
    main()
